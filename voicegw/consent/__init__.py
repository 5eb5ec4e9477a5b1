"""Consent policy: recording modes, jurisdiction rules, answer capture, the recording gate.

Pure decisions over plain data: no I/O, no clock (time is passed in).
"""

from voicegw.consent.answers import Answer, DtmfKeys, classify_speech
from voicegw.consent.gate import RecordingGate, SuppressedInterval
from voicegw.consent.jurisdiction import CallerLocation, locate
from voicegw.consent.machine import (
    CaptureConfig,
    ConsentEvent,
    ConsentInput,
    ConsentMachine,
    DecisionMade,
    Dtmf,
    Hangup,
    Pause,
    PermissionChanged,
    PromptFinished,
    PromptStarted,
    Resume,
    Speech,
    State,
    StopPrompt,
    Withdraw,
)
from voicegw.consent.modes import RecordingMode
from voicegw.consent.policy import CallContext, ConsentPolicy, ModeResolution, Rule, resolve_mode
from voicegw.consent.records import (
    ConsentDecision,
    Decision,
    Evidence,
    Method,
    PartyRole,
    PromptRef,
)

__all__ = [
    "Answer",
    "CallContext",
    "CallerLocation",
    "CaptureConfig",
    "ConsentDecision",
    "ConsentEvent",
    "ConsentInput",
    "ConsentMachine",
    "ConsentPolicy",
    "Decision",
    "DecisionMade",
    "Dtmf",
    "DtmfKeys",
    "Evidence",
    "Hangup",
    "Method",
    "ModeResolution",
    "PartyRole",
    "Pause",
    "PermissionChanged",
    "PromptFinished",
    "PromptRef",
    "PromptStarted",
    "RecordingGate",
    "RecordingMode",
    "Resume",
    "Rule",
    "Speech",
    "State",
    "StopPrompt",
    "SuppressedInterval",
    "Withdraw",
    "classify_speech",
    "locate",
    "resolve_mode",
]
