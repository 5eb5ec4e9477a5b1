"""Per-party consent state machine (sans-IO).

Inputs are dataclasses carrying ``at`` (seconds on the call's monotonic
clock); the machine never reads a clock. ``handle`` returns what happened
(decisions, permission changes, "stop the prompt"); ``next_deadline`` says
when to call ``handle_timeout``.

Consent is a table, ``TRANSITIONS[mode][(state, input kind)] -> Step``. Pause
is *not* a consent state: it is an orthogonal flag (a secure pause while a
card number is read may start before or after consent is decided), and the
public ``state`` reports ``paused`` while it is set over a recording state.

Speech and keys are only answers while the question is open (``prompting`` or
``awaiting_answer``): once decided, a "no" in conversation must not stop a
recording, and only the withdraw key sequence or an explicit Withdraw does.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from voicegw.consent.answers import Answer, DtmfKeys, WithdrawSequenceDetector, classify_speech
from voicegw.consent.modes import RecordingMode
from voicegw.consent.policy import ModeResolution
from voicegw.consent.records import (
    ConsentDecision,
    Decision,
    Evidence,
    Method,
    PartyRole,
    PromptRef,
)


class State(enum.StrEnum):
    PENDING = "pending"  # prompt not started yet
    PROMPTING = "prompting"  # notice / question is playing
    AWAITING_ANSWER = "awaiting_answer"  # prompt done, answer window open
    GRANTED = "granted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    NOTICE_ONLY = "notice_only"
    NOT_REQUIRED = "not_required"
    OFF = "off"
    PAUSED = "paused"  # reported only: GRANTED/NOTICE_ONLY/NOT_REQUIRED with the pause flag set
    ENDED = "ended"  # hung up after a decision


class Kind(enum.StrEnum):
    """Abstract inputs the table is written in."""

    PROMPT_STARTED = "prompt_started"
    PROMPT_FINISHED = "prompt_finished"
    YES = "yes"
    NO = "no"
    TIMEOUT = "timeout"
    WITHDRAW = "withdraw"
    HANGUP = "hangup"


# --- inputs ----------------------------------------------------------------


@dataclass(frozen=True)
class PromptStarted:
    at: float


@dataclass(frozen=True)
class PromptFinished:
    at: float


@dataclass(frozen=True)
class Dtmf:
    at: float
    digit: str


@dataclass(frozen=True)
class Speech:
    at: float
    text: str
    confidence: float


@dataclass(frozen=True)
class Withdraw:
    """Explicit withdrawal (agent button, API) rather than the key sequence."""

    at: float


@dataclass(frozen=True)
class Pause:
    at: float


@dataclass(frozen=True)
class Resume:
    at: float


@dataclass(frozen=True)
class Hangup:
    at: float


ConsentInput = PromptStarted | PromptFinished | Dtmf | Speech | Withdraw | Pause | Resume | Hangup


# --- outputs ---------------------------------------------------------------


@dataclass(frozen=True)
class DecisionMade:
    record: ConsentDecision


@dataclass(frozen=True)
class PermissionChanged:
    at: float
    allowed: bool
    state: State


@dataclass(frozen=True)
class StopPrompt:
    """An answer arrived while the prompt was playing: stop playing it."""

    at: float


ConsentEvent = DecisionMade | PermissionChanged | StopPrompt


# --- the table -------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    target: State
    reason: str


_S = State
_K = Kind
_OPEN = (_S.PENDING, _S.PROMPTING, _S.AWAITING_ANSWER)
_ANSWERABLE = (_S.PROMPTING, _S.AWAITING_ANSWER)
_RECORDING = (_S.GRANTED, _S.NOTICE_ONLY, _S.NOT_REQUIRED)
_SETTLED = (*_RECORDING, _S.DECLINED, _S.WITHDRAWN, _S.OFF)

_COMMON: dict[tuple[State, Kind], Step] = {
    (_S.PENDING, _K.PROMPT_STARTED): Step(_S.PROMPTING, "prompt_started"),
    **{(s, _K.HANGUP): Step(_S.DECLINED, "hangup_before_answer") for s in _OPEN},
    **{(s, _K.WITHDRAW): Step(_S.DECLINED, "withdrawn_before_answer") for s in _OPEN},
    **{(s, _K.WITHDRAW): Step(_S.WITHDRAWN, "withdrawn") for s in _RECORDING},
    **{(s, _K.HANGUP): Step(_S.ENDED, "hangup") for s in _SETTLED},
}

TRANSITIONS: dict[RecordingMode, dict[tuple[State, Kind], Step]] = {
    RecordingMode.OFF: dict(_COMMON),
    RecordingMode.NOTIFY: {
        **_COMMON,
        (_S.PROMPTING, _K.PROMPT_FINISHED): Step(_S.NOTICE_ONLY, "notice_played"),
    },
    RecordingMode.OPT_IN: {
        **_COMMON,
        (_S.PROMPTING, _K.PROMPT_FINISHED): Step(_S.AWAITING_ANSWER, "prompt_finished"),
        **{(s, _K.YES): Step(_S.GRANTED, "answered_yes") for s in _ANSWERABLE},
        **{(s, _K.NO): Step(_S.DECLINED, "answered_no") for s in _ANSWERABLE},
        (_S.AWAITING_ANSWER, _K.TIMEOUT): Step(_S.DECLINED, "no_answer_timeout"),
    },
    RecordingMode.OPT_OUT: {
        **_COMMON,
        (_S.PROMPTING, _K.PROMPT_FINISHED): Step(_S.AWAITING_ANSWER, "prompt_finished"),
        **{(s, _K.YES): Step(_S.GRANTED, "answered_yes") for s in _ANSWERABLE},
        **{(s, _K.NO): Step(_S.DECLINED, "opted_out") for s in _ANSWERABLE},
        (_S.AWAITING_ANSWER, _K.TIMEOUT): Step(_S.GRANTED, "no_objection_in_window"),
    },
}
"""mode -> (state, input kind) -> step. Pairs not listed are ignored."""

INITIAL_STATE: dict[tuple[RecordingMode, PartyRole], State] = {
    (RecordingMode.OFF, PartyRole.CALLER): _S.OFF,
    (RecordingMode.OFF, PartyRole.AGENT): _S.OFF,
    **{(m, PartyRole.AGENT): _S.NOT_REQUIRED for m in RecordingMode if m != RecordingMode.OFF},
    **{(m, PartyRole.CALLER): _S.PENDING for m in RecordingMode if m != RecordingMode.OFF},
}

DECISION_OF_STATE: dict[State, Decision] = {
    _S.GRANTED: Decision.GRANTED,
    _S.DECLINED: Decision.DECLINED,
    _S.WITHDRAWN: Decision.WITHDRAWN,
    _S.NOTICE_ONLY: Decision.NOTICE_ONLY,
    _S.NOT_REQUIRED: Decision.NOT_REQUIRED,
    _S.OFF: Decision.OFF,
}

MAY_RECORD: frozenset[State] = frozenset(_RECORDING)

# Which DTMF key (by DtmfKeys attribute) means which answer, per mode.
DIGIT_MEANINGS: dict[RecordingMode, tuple[tuple[str, Kind], ...]] = {
    RecordingMode.OFF: (),
    RecordingMode.NOTIFY: (),
    RecordingMode.OPT_IN: (("yes", _K.YES), ("no", _K.NO)),
    RecordingMode.OPT_OUT: (("opt_out", _K.NO), ("yes", _K.YES)),
}

_ANSWER_KIND: dict[Answer, Kind] = {Answer.YES: _K.YES, Answer.NO: _K.NO}


@dataclass(frozen=True)
class CaptureConfig:
    """How answers are captured."""

    keys: DtmfKeys = field(default_factory=DtmfKeys)
    answer_timeout: float = 8.0  # seconds after the prompt ends; silence = decline (opt_in)
    min_speech_confidence: float = 0.6
    language: str = "en"
    #: phrase -> answer accepted when spoken; None: the built-in table of ``language``.
    answers: Mapping[str, Answer] | None = None


@dataclass(frozen=True)
class _Classified:
    """An input reduced to its table kind, plus what it proves (the step adds the reason)."""

    kind: Kind
    method: Method = Method.NONE
    digit: str | None = None
    words: str | None = None
    confidence: float | None = None


class ConsentMachine:
    """Consent for one party of one call."""

    def __init__(
        self,
        party: str,
        role: PartyRole,
        resolution: ModeResolution,
        *,
        now: float,
        prompt: PromptRef | None = None,
        config: CaptureConfig | None = None,
    ) -> None:
        self.party = party
        self.role = role
        self.resolution = resolution
        self.prompt = prompt
        self.config = config or CaptureConfig()
        self._table = TRANSITIONS[resolution.mode]
        self._digit_meanings = DIGIT_MEANINGS[resolution.mode]
        self._withdraw = WithdrawSequenceDetector(self.config.keys)
        self._base = INITIAL_STATE[(resolution.mode, role)]
        self._paused = False
        self._last = now
        self._prompt_started_at: float | None = None
        self._deadline: float | None = None
        self._decisions: list[ConsentDecision] = []
        # (time, allowed, effective state): the may_record timeline.
        self._timeline: list[tuple[float, bool, State]] = [(now, self._allowed(), self.state)]
        if self._base in DECISION_OF_STATE:
            reason = "recording_off" if self._base is _S.OFF else "agent_party"
            self._record(self._base, Method.NONE, Evidence(reason), now)

    def __repr__(self) -> str:
        return f"ConsentMachine(party={self.party!r}, state={self.state.value})"

    # --- queries -----------------------------------------------------------

    @property
    def state(self) -> State:
        return _S.PAUSED if self._paused and self._base in MAY_RECORD else self._base

    @property
    def decision(self) -> ConsentDecision | None:
        """The latest decision (granted, then perhaps withdrawn), if any."""
        return self._decisions[-1] if self._decisions else None

    @property
    def decisions(self) -> tuple[ConsentDecision, ...]:
        return tuple(self._decisions)

    @property
    def timeline(self) -> tuple[tuple[float, bool, State], ...]:
        """``(from time, may record, state)`` entries, oldest first."""
        return tuple(self._timeline)

    def next_deadline(self) -> float | None:
        return self._deadline

    def _allowed(self) -> bool:
        return self._base in MAY_RECORD and not self._paused

    def may_record_now(self) -> bool:
        """Permission in the current state, whatever the time."""
        return self._allowed()

    def _entry_at(self, t: float) -> tuple[float, bool, State]:
        index = bisect.bisect_right(self._timeline, t, key=lambda e: e[0]) - 1
        # Before the machine existed nothing was decided: fail closed.
        return self._timeline[index] if index >= 0 else (t, False, _S.PENDING)

    def may_record(self, now: float) -> bool:
        """Whether recording was/is allowed at ``now``, per the timeline."""
        return self._entry_at(now)[1]

    def status_during(self, start: float, end: float) -> tuple[bool, State]:
        """Allowed only if allowed for the whole of [start, end); else the first blocking state."""
        latest = self._timeline[-1]
        if start >= latest[0]:
            return latest[1], latest[2]  # the per-frame common case: no change since
        first = self._entry_at(start)
        if not first[1]:
            return False, first[2]
        lo = bisect.bisect_right(self._timeline, start, key=lambda e: e[0])
        hi = bisect.bisect_left(self._timeline, end, key=lambda e: e[0])
        for _, allowed, state in self._timeline[lo:hi]:
            if not allowed:
                return False, state
        return True, first[2]

    # --- inputs ------------------------------------------------------------

    def handle(self, event: ConsentInput) -> tuple[ConsentEvent, ...]:
        """Feed one input; returns what happened."""
        now = max(event.at, self._last)  # inputs from several sources may arrive a little late
        self._last = now
        if self._base is _S.ENDED:
            return ()
        if isinstance(event, Pause | Resume):
            return self._set_paused(isinstance(event, Pause), now)
        classified = self._classify(event, now)
        if classified is None:
            return ()
        return self._apply(classified, now)

    def handle_timeout(self, now: float) -> tuple[ConsentEvent, ...]:
        """Call at (or after) ``next_deadline()``."""
        if self._deadline is None or now < self._deadline:
            return ()
        self._last = max(now, self._last)
        # Applied at `now`, not the deadline: the timeline never moves backwards.
        return self._apply(_Classified(_K.TIMEOUT), self._last)

    # --- internals -----------------------------------------------------------

    def _classify(self, event: ConsentInput, now: float) -> _Classified | None:
        match event:
            case PromptStarted():
                return _Classified(_K.PROMPT_STARTED)
            case PromptFinished():
                return _Classified(_K.PROMPT_FINISHED, Method.NOTICE)
            case Withdraw():
                return _Classified(_K.WITHDRAW)
            case Hangup():
                return _Classified(_K.HANGUP)
            case Dtmf(digit=digit):
                if self._withdraw.feed(digit, now):
                    sequence = self.config.keys.withdraw_sequence
                    return _Classified(_K.WITHDRAW, Method.DTMF, digit=sequence)
                for attribute, kind in self._digit_meanings:
                    if digit == getattr(self.config.keys, attribute):
                        return _Classified(kind, Method.DTMF, digit=digit)
                return None
            case Speech(text=text, confidence=confidence):
                if confidence < self.config.min_speech_confidence:
                    return None
                answer = classify_speech(text, self.config.language, self.config.answers)
                if answer is None:
                    return None
                kind = _ANSWER_KIND[answer]
                return _Classified(kind, Method.SPEECH, words=text, confidence=confidence)
        return None  # pragma: no cover - Pause/Resume handled by the caller

    def _apply(self, classified: _Classified, now: float) -> tuple[ConsentEvent, ...]:
        step = self._table.get((self._base, classified.kind))
        if step is None:
            return ()
        before_allowed, before_state = self._allowed(), self.state
        was = self._base
        self._base = step.target
        events: list[ConsentEvent] = []
        if was is _S.PROMPTING and classified.kind is not _K.PROMPT_FINISHED:
            events.append(StopPrompt(now))  # decided (or gone) before the prompt ended
        if step.target is _S.PROMPTING:
            self._prompt_started_at = now
        self._deadline = (
            now + self.config.answer_timeout if step.target is _S.AWAITING_ANSWER else None
        )
        if step.target in DECISION_OF_STATE:
            c = classified
            evidence = Evidence(step.reason, c.digit, c.words, c.confidence)
            events.append(DecisionMade(self._record(step.target, classified.method, evidence, now)))
        events.extend(self._note_permission(now, before_allowed, before_state))
        return tuple(events)

    def _set_paused(self, paused: bool, now: float) -> tuple[ConsentEvent, ...]:
        before_allowed, before_state = self._allowed(), self.state
        self._paused = paused
        return self._note_permission(now, before_allowed, before_state)

    def _note_permission(
        self, now: float, before_allowed: bool, before_state: State
    ) -> tuple[ConsentEvent, ...]:
        allowed, state = self._allowed(), self.state
        if (allowed, state) == (before_allowed, before_state):
            return ()
        self._timeline.append((now, allowed, state))
        return (PermissionChanged(now, allowed, state),) if allowed != before_allowed else ()

    def _record(
        self, target: State, method: Method, evidence: Evidence, now: float
    ) -> ConsentDecision:
        record = ConsentDecision(
            party=self.party,
            role=self.role,
            decision=DECISION_OF_STATE[target],
            method=method,
            evidence=evidence,
            prompt=self.prompt,
            policy=self.resolution,
            prompt_started_at=self._prompt_started_at,
            decided_at=now,
        )
        self._decisions.append(record)
        return record
