"""The consent decision record: what was asked, what was answered, which rule applied."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from voicegw.consent.policy import ModeResolution


class Decision(enum.StrEnum):
    GRANTED = "granted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    NOTICE_ONLY = "notice-only"
    NOT_REQUIRED = "not-required"
    OFF = "off"  # recording is switched off for this call; nothing to consent to


class Method(enum.StrEnum):
    DTMF = "dtmf"
    SPEECH = "speech"
    NOTICE = "notice"
    NONE = "none"


class PartyRole(enum.StrEnum):
    CALLER = "caller"  # consent is asked per the resolved mode
    AGENT = "agent"  # informed by employment terms: consent not required


@dataclass(frozen=True)
class Evidence:
    """What the decision rests on: a key, recognised words + confidence, or a reason."""

    reason: str
    digit: str | None = None
    words: str | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class PromptRef:
    """Identifies exactly what the party heard: content hash plus a human version label."""

    sha256: str
    version: str

    @classmethod
    def for_content(cls, content: bytes | str, version: str) -> PromptRef:
        """Hash the prompt's text or audio bytes."""
        data = content.encode() if isinstance(content, str) else content
        return cls(hashlib.sha256(data).hexdigest(), version)


@dataclass(frozen=True)
class ConsentDecision:
    """One decision about one party; stored and audited before any byte is recorded."""

    party: str
    role: PartyRole
    decision: Decision
    method: Method
    evidence: Evidence
    prompt: PromptRef | None
    policy: ModeResolution
    prompt_started_at: float | None
    decided_at: float

    @property
    def allows_recording(self) -> bool:
        return self.decision in RECORDING_DECISIONS


RECORDING_DECISIONS = frozenset({Decision.GRANTED, Decision.NOTICE_ONLY, Decision.NOT_REQUIRED})
