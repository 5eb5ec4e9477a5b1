"""The consent flow of one call: ask, capture the answer, persist it, then (maybe) record.

It ties the pure consent policy (:mod:`voicegw.consent`) to a live call
(:class:`~voicegw.calls.call_media.CallMedia`) and the recorder:

1. the mode is resolved from the tenant's settings, the dialled number's
   override and the caller's jurisdiction (:func:`load_consent_policy`);
2. the notice is played: the tenant's uploaded audio file, else its text
   through the policy-chosen TTS; no playable prompt means nothing is recorded
   (the caller cannot have been told);
3. answers are taken from DTMF (the tenant's accept/decline keys) and, when
   the tenant allows speech and an eligible ASR exists, from spoken words
   (a :class:`CallTranscriber` in ``spoken_answer`` mode with the tenant's
   answer phrases — :func:`spoken_answers` — as its grammar; words below the
   tenant's ``min_speech_confidence`` are no answer), each fed to the
   :class:`ConsentMachine` with the media clock's time; answer timeouts are
   checked on every media tick;
4. every decision is stored and audited (``add_consent_record``) *before* the
   recorder is told to start, and the recorder itself re-checks that link;
5. every frame of every party goes through one :class:`RecordingGate`: the
   recorder admits through it, other sinks ask ``gate.sinks_open(party, t)``. A
   withdrawal (key sequence or :meth:`ConsentFlow.withdraw`) and a secure
   pause (:meth:`ConsentFlow.pause`) act on the next frame and are audited.

Why opening inputs are post-dated by ``open_guard``: the gate is keyed on the
media clock's tick times, but a tick carries caller audio that sat in the
jitter buffer (up to its ``max_delay``), while a key press is seen the moment
its packet arrives. Moving every input that *opens* recording (a "yes", the
end of a notice, a resume) forward by the buffer's worst-case delay keeps
audio spoken before the consent instant out of the file; inputs that *close*
it (withdraw, pause, hang-up) act at once, so the error is always towards
recording less.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt
import soundfile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.asr.base import TranscriptKind
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.call_media import CallMedia, KeyPress
from voicegw.calls.call_transcript import CallTranscript, TranscriptTarget
from voicegw.calls.prompts import PromptSynthesizer
from voicegw.calls.speech_policy import CallSpeech, SpeechFeature
from voicegw.calls.transcription import CallTranscriber, TranscriptSubscription
from voicegw.consent import (
    Answer,
    CallContext,
    CaptureConfig,
    ConsentDecision,
    ConsentEvent,
    ConsentInput,
    ConsentMachine,
    ConsentPolicy,
    DecisionMade,
    Dtmf,
    DtmfKeys,
    Hangup,
    ModeResolution,
    PartyRole,
    PermissionChanged,
    PromptFinished,
    PromptRef,
    PromptStarted,
    RecordingGate,
    RecordingMode,
    Speech,
    State,
    StopPrompt,
    SuppressedInterval,
    resolve_mode,
)
from voicegw.consent.answers import PHRASES
from voicegw.media.playback import BufferSource, Playback, PlaybackOutcome, PlaybackSource, resample
from voicegw.media.taps import TapFrame
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError
from voicegw.privacy.processing import ProcessingRecord, RecordSink
from voicegw.recording.errors import RecordingError
from voicegw.recording.keys import KeyWrapper
from voicegw.recording.metadata import persist_consent_decision
from voicegw.recording.recorder import Recorder, RecorderConfig, RecordingResult
from voicegw.recording.storage import StorageBackend
from voicegw.store import audit, tenants
from voicegw.store import campaigns as store_campaigns
from voicegw.store.prompt_files import PromptError, PromptLibrary
from voicegw.tenant_settings import TenantSettings

__all__ = [
    "CallInfo",
    "ConsentFlow",
    "ConsentOutcome",
    "ConsentServices",
    "FlowConfig",
    "StoredDecision",
    "capture_config",
    "consent_policy",
    "load_consent_policy",
    "spoken_answers",
]

log = logging.getLogger("voicegw.calls.consent_flow")

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160
#: Tap frames one consumer may fall behind before it loses the oldest (2 s).
_FRAME_QUEUE: Final = 100
#: Caller states in which the question is open: keys and words are answers then.
_ANSWERABLE: Final = frozenset({State.PROMPTING, State.AWAITING_ANSWER})


def _ignore(record: ProcessingRecord) -> None:
    """Default processing-record sink (callers that store them pass their own)."""


FrameSink = Callable[[TapFrame], None]


@dataclass(frozen=True)
class CallInfo:
    """Who and what the call is, as far as consent is concerned. Numbers are never logged."""

    tenant_id: str
    call_id: str
    region: str
    caller: str | None  # E.164; None when withheld (treated as "could be anywhere")
    dialled: str | None = None
    campaign: str | None = None


@dataclass(frozen=True)
class ConsentServices:
    """What the flow uses besides the call's media: database, storage, keys, speech."""

    sessions: async_sessionmaker[AsyncSession]
    storage: StorageBackend
    keys: KeyWrapper
    prompts: PromptSynthesizer | None = None
    prompt_files: PromptLibrary | None = None
    asr: AsrRegistry | None = None
    on_record: RecordSink = _ignore
    recorder_config: RecorderConfig | None = None


@dataclass(frozen=True)
class FlowConfig:
    caller_party: str = "caller"
    agent_party: str = "agent"
    #: Seconds inputs that open recording are post-dated (module docstring): at least
    #: the jitter buffer's ``max_delay`` plus one frame.
    open_guard: float = 0.24
    actor: str = "consent-flow"


@dataclass(frozen=True)
class StoredDecision:
    """A decision as stored: its row id and where its audit event sits in the chain."""

    record_id: int
    audit_seq: int
    party: str
    decision: str


@dataclass(frozen=True)
class ConsentOutcome:
    """What happened on the call, for the call record and for tests."""

    resolution: ModeResolution
    decisions: tuple[ConsentDecision, ...]
    stored: tuple[StoredDecision, ...]
    recording: RecordingResult | None
    #: Media time of the first frame the recorder was fed (sample 0 of the file).
    first_frame_time: float | None
    intervals: dict[str, tuple[SuppressedInterval, ...]] = field(default_factory=dict)
    #: Ids of the transcripts stored for the call (one per party that has one).
    transcripts: tuple[str, ...] = ()


# --- policy from settings -------------------------------------------------------------


def _policy_version(
    settings: TenantSettings,
    overrides: dict[str, RecordingMode],
    campaigns: dict[str, RecordingMode] | None = None,
) -> str:
    """Short content hash of everything the mode depends on: evidence names the exact rules."""
    basis: dict[str, object] = {
        "mode": settings.recording_mode,
        "jurisdictions": sorted(settings.all_party_consent_jurisdictions),
        "numbers": sorted((k, v.value) for k, v in overrides.items()),
    }
    if campaigns:  # absent when there are none: earlier evidence keeps its version
        basis["campaigns"] = sorted((k, v.value) for k, v in campaigns.items())
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


def consent_policy(
    settings: TenantSettings,
    number_modes: dict[str, str | None] | None = None,
    campaign_modes: dict[str, str] | None = None,
) -> ConsentPolicy:
    """A tenant's policy: default mode, all-party jurisdictions, number and campaign overrides."""
    overrides = {n: RecordingMode(m) for n, m in (number_modes or {}).items() if m is not None}
    campaigns = {c: RecordingMode(m) for c, m in (campaign_modes or {}).items()}
    return ConsentPolicy(
        default_mode=RecordingMode(settings.recording_mode),
        all_party_jurisdictions=frozenset(settings.all_party_consent_jurisdictions),
        number_overrides=overrides,
        campaign_overrides=campaigns,
        version=_policy_version(settings, overrides, campaigns),
    )


async def load_consent_policy(
    session: AsyncSession, tenant_id: str, settings: TenantSettings
) -> ConsentPolicy:
    """The policy with the overrides stored for the tenant's numbers and campaigns."""
    numbers = await tenants.list_numbers(session, tenant_id)
    modes = await store_campaigns.campaign_modes(session, tenant_id)
    return consent_policy(settings, {n.e164: n.recording_mode for n in numbers}, modes)


def capture_config(settings: TenantSettings) -> CaptureConfig:
    """The machine's capture settings. The first accept/decline key stands for all of them."""
    capture = settings.consent_capture
    decline = capture.decline_keys[0]
    keys = DtmfKeys(
        yes=capture.accept_keys[0],
        no=decline,
        opt_out=decline,
        withdraw_sequence=capture.withdraw_sequence,
    )
    language = settings.consent_prompt.language.split("-")[0]
    return CaptureConfig(
        keys=keys,
        answer_timeout=float(capture.timeout_seconds),
        min_speech_confidence=capture.min_speech_confidence,
        language=language,
        answers=spoken_answers(settings),
    )


def spoken_answers(settings: TenantSettings) -> dict[str, Answer]:
    """Phrase -> answer for the prompt's language: the tenant's list, else the built-in one.

    The same phrases are the recogniser's grammar (a grammar engine can only hear
    them) and the machine's table (a vendor's free text is matched against them).
    """
    language = settings.consent_prompt.language.split("-")[0]
    own = settings.consent_capture.spoken_answers.get(language)
    if own is None:
        return dict(PHRASES.get(language, {}))
    return {p: Answer.YES for p in own.yes} | {p: Answer.NO for p in own.no}


# --- the flow ---------------------------------------------------------------------------


class ConsentFlow:
    """Consent, gating and recording for one call; :meth:`run` lasts until the call ends."""

    def __init__(
        self,
        media: CallMedia,
        call: CallInfo,
        settings: TenantSettings,
        policy: ConsentPolicy,
        services: ConsentServices,
        *,
        config: FlowConfig | None = None,
        frame_sinks: Sequence[FrameSink] = (),
    ) -> None:
        """``frame_sinks`` get every tap frame and must ask ``flow.gate.sinks_open(party, t)``
        themselves (a :class:`CallTranscriber` built with ``sinks_open=flow.gate.sinks_open``
        does, and drops the utterance in progress when the gate closes)."""
        self.media = media
        self.call = call
        self.settings = settings
        self.policy = policy
        self.services = services
        self.config = config or FlowConfig()
        self.capture = capture_config(settings)
        self.gate = RecordingGate(sample_rate=SAMPLE_RATE)
        self.recorder = Recorder(
            sessions=services.sessions,
            storage=services.storage,
            keys=services.keys,
            gate=self.gate,
            tenant_id=call.tenant_id,
            call_id=call.call_id,
            region=call.region,
            caller_party=self.config.caller_party,
            agent_party=self.config.agent_party,
            config=services.recorder_config,
            actor=self.config.actor,
        )
        self._frame_sinks = tuple(frame_sinks)
        self._caller: ConsentMachine | None = None
        self._agent: ConsentMachine | None = None
        self._playback: Playback | None = None
        self._pending: asyncio.Queue[ConsentDecision | None] = asyncio.Queue()
        self._stored: list[StoredDecision] = []
        self._answers: CallTranscriber | None = None
        #: The call's transcription (both parties, behind the gate) while the tenant has it on;
        #: the agent's page subscribes to it for live lines.
        self.transcriber: CallTranscriber | None = None
        self.transcript = CallTranscript(self._transcript_target())
        self._paused = False
        self._first_frame_time: float | None = None
        self._started = False

    def __repr__(self) -> str:
        state = self._caller.state.value if self._caller is not None else "unresolved"
        return f"ConsentFlow(call_id={self.call.call_id!r}, caller={state})"

    @property
    def caller_machine(self) -> ConsentMachine | None:
        return self._caller

    def _ids(self, **more: object) -> dict[str, object]:
        return {"call_id": self.call.call_id, "tenant_id": self.call.tenant_id, **more}

    # --- the call -------------------------------------------------------------------------

    async def run(self) -> ConsentOutcome:
        """Resolve, ask, capture, record; returns once the call has ended and all is stored."""
        resolution = resolve_mode(
            self.policy, CallContext(self.call.caller, self.call.dialled, self.call.campaign)
        )
        frames = self.media.frames(_FRAME_QUEUE)
        keys = self.media.keys()
        prompt: tuple[PlaybackSource, PromptRef] | None = None
        caller_resolution = resolution
        if resolution.mode is not RecordingMode.OFF:
            prompt = await self._prompt_audio()
            if prompt is None:
                # Nobody can have been told or asked: fail closed, record nothing of the caller.
                log.warning("consent prompt unavailable: caller not recorded", extra=self._ids())
                caller_resolution = replace(resolution, mode=RecordingMode.OFF)
        self._start_machines(caller_resolution, resolution, prompt)
        tasks = [
            asyncio.create_task(self._settle_decisions(), name="consent-decisions"),
            asyncio.create_task(self._pump(frames), name="consent-frames"),
            asyncio.create_task(self._read_keys(keys), name="consent-keys"),
        ]
        self._answers = self._answer_listener()
        if self._answers is not None:
            listening = self._read_answers(self._answers.subscribe())
            tasks.append(asyncio.create_task(listening, name="consent-answers"))
        self.transcriber = self._call_transcriber()
        collecting = None
        if self.transcriber is not None:
            lines = self.transcript.collect(self.transcriber.subscribe(maxsize=1000))
            collecting = asyncio.create_task(lines, name="consent-transcript")
        try:
            if prompt is not None and not self.media.ended.is_set():
                await self._ask(prompt[0])
            await self.media.ended.wait()
            self._hang_up()
            await tasks[1]  # every frame of the call has passed the gate
        finally:
            for task in tasks[1:]:
                if not task.done():
                    task.cancel()
            for listener in (self._answers, self.transcriber):
                if listener is not None:
                    await listener.aclose()  # the last finals are in, subscriptions end
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            if collecting is not None:
                await asyncio.gather(collecting, return_exceptions=True)
            self._pending.put_nowait(None)
            try:
                await tasks[0]  # decisions stored, the recorder started if it was going to be
            finally:
                # Whatever failed, the writer thread is told to seal the file and stop.
                recording = await self.recorder.finish()
        transcripts = await self.transcript.finish() if self.transcriber is not None else []
        return ConsentOutcome(
            resolution=resolution,
            decisions=self._decisions(),
            stored=tuple(self._stored),
            recording=recording,
            first_frame_time=self._first_frame_time,
            intervals={p: self.gate.intervals(p) for p in self._parties()},
            transcripts=tuple(transcripts),
        )

    def _parties(self) -> tuple[str, str]:
        return self.config.caller_party, self.config.agent_party

    def _decisions(self) -> tuple[ConsentDecision, ...]:
        machines = [m for m in (self._caller, self._agent) if m is not None]
        return tuple(d for m in machines for d in m.decisions)

    def _start_machines(
        self,
        caller_resolution: ModeResolution,
        resolution: ModeResolution,
        prompt: tuple[PlaybackSource, PromptRef] | None,
    ) -> None:
        now = self.media.clock.now()
        caller = ConsentMachine(
            self.config.caller_party,
            PartyRole.CALLER,
            caller_resolution,
            now=now,
            prompt=prompt[1] if prompt is not None else None,
            config=self.capture,
        )
        # The agent is informed by employment terms (not asked); the tenant may still
        # keep agents out of recordings altogether.
        agent_mode = resolution.mode if self.settings.agent_recording else RecordingMode.OFF
        agent = ConsentMachine(
            self.config.agent_party,
            PartyRole.AGENT,
            replace(resolution, mode=agent_mode),
            now=now,
            config=self.capture,
        )
        self._caller, self._agent = caller, agent
        self.gate.add_party(caller)
        self.gate.add_party(agent)
        for machine in (caller, agent):
            for decision in machine.decisions:  # "off" / "not required": settled at once
                self._pending.put_nowait(decision)
        if self._paused:  # a secure pause asked for before the machines existed
            self._apply(self.gate.pause_all(now))

    async def _ask(self, source: PlaybackSource) -> None:
        caller = self._caller
        assert caller is not None
        clock = self.media.clock
        self._apply(caller.handle(PromptStarted(clock.now())))
        playback = self._playback = self.media.play(source)
        played = asyncio.ensure_future(playback.wait())
        ended = asyncio.ensure_future(self.media.ended.wait())
        try:
            await asyncio.wait({played, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            playback.cancel()  # no-op when it completed; hang-up: stop sending at once
        result = await played
        if result.outcome is PlaybackOutcome.COMPLETED and not self.media.ended.is_set():
            self._feed(caller, PromptFinished(clock.now()))

    def _hang_up(self) -> None:
        now = self.media.clock.now()
        for machine in (self._caller, self._agent):
            if machine is not None:
                self._apply(machine.handle(Hangup(now)))

    # --- inputs ---------------------------------------------------------------------------

    def _opens(self, machine: ConsentMachine, event: ConsentInput) -> bool:
        """Whether ``event`` may start recording (and so is post-dated by the guard)."""
        match event:
            case PromptFinished() | Speech():
                return True
            case Dtmf(digit=digit):
                return machine.state in _ANSWERABLE and digit == self.capture.keys.yes
        return False

    def _feed(self, machine: ConsentMachine, event: ConsentInput) -> None:
        if self._opens(machine, event):
            event = replace(event, at=event.at + self.config.open_guard)
        self._apply(machine.handle(event))

    def _apply(self, events: Sequence[ConsentEvent]) -> None:
        for event in events:
            if isinstance(event, DecisionMade):
                self._pending.put_nowait(event.record)
            elif isinstance(event, StopPrompt) and self._playback is not None:
                self._playback.cancel()
            elif isinstance(event, PermissionChanged):
                log.info(
                    "recording permission changed",
                    extra=self._ids(allowed=event.allowed, state=event.state.value),
                )

    def _answer_key(self, digit: str) -> str:
        """Any of the tenant's accept (decline) keys as the machine's one yes (no) key."""
        capture = self.settings.consent_capture
        if digit in capture.accept_keys:
            return self.capture.keys.yes
        if digit in capture.decline_keys:
            return self.capture.keys.no
        return digit

    async def _read_keys(self, keys: AsyncIterable[KeyPress]) -> None:
        dtmf_answers = "dtmf" in self.settings.consent_capture.methods
        async for key in keys:
            caller = self._caller
            if caller is None or key.party != self.config.caller_party:
                continue
            digit = key.digit
            if caller.state in _ANSWERABLE:
                if not dtmf_answers:
                    continue  # the tenant asks for spoken answers only
                digit = self._answer_key(digit)
            self._feed(caller, Dtmf(key.at, digit))

    def _answer_listener(self) -> CallTranscriber | None:
        if "speech" not in self.settings.consent_capture.methods or self.services.asr is None:
            return None
        caller = self._caller
        if caller is None or caller.state not in {State.PENDING, *_ANSWERABLE}:
            return None
        if not self.capture.answers:
            # Settings validation requires answers for the prompt's language; a stored
            # setting from before that rule may still lack them: DTMF only then.
            log.warning("no spoken answers for the prompt language", extra=self._ids())
            return None
        language = self.settings.consent_prompt.language
        listener = CallTranscriber.for_call(
            self.services.asr,
            self.settings,
            CallSpeech(call_id=self.call.call_id, tenant=self.call.tenant_id, language=language),
            parties=[self.config.caller_party],
            # Purpose-bound: the answer is listened to only while the question is open.
            sinks_open=self._answer_window_open,
            on_record=self.services.on_record,
            feature=SpeechFeature.SPOKEN_ANSWER,
            phrases=tuple(self.capture.answers or ()),
        )
        return listener if listener.active else None

    def _call_transcriber(self) -> CallTranscriber | None:
        """Both parties' speech to the policy-chosen ASR, when the tenant has transcription on."""
        if self.services.asr is None:
            return None
        transcriber = CallTranscriber.for_call(
            self.services.asr,
            self.settings,
            CallSpeech(
                call_id=self.call.call_id,
                tenant=self.call.tenant_id,
                language=self.settings.consent_prompt.language,
            ),
            parties=self._parties(),
            sinks_open=self.gate.sinks_open,
            on_record=self.services.on_record,
        )
        return transcriber if transcriber.active else None

    def _transcript_target(self) -> TranscriptTarget:
        config = self.services.recorder_config
        return TranscriptTarget(
            self.services.sessions,
            self.services.storage,
            self.services.keys,
            tenant_id=self.call.tenant_id,
            call_id=self.call.call_id,
            region=self.call.region,
            node=config.node if config is not None else None,
            actor=self.config.actor,
        )

    def _answer_window_open(self, party: str, spoken_at: float | None = None) -> bool:
        # Purpose-bound by the question's state alone: an answer the caller starts
        # before the prompt ends still answers it.
        caller = self._caller
        return (
            party == self.config.caller_party and caller is not None and caller.state in _ANSWERABLE
        )

    async def _read_answers(self, subscription: TranscriptSubscription) -> None:
        async for event in subscription:
            caller = self._caller
            if event.kind is not TranscriptKind.FINAL or caller is None:
                continue
            self._feed(caller, Speech(self.media.clock.now(), event.text, event.confidence))

    # --- frames ---------------------------------------------------------------------------

    async def _pump(self, frames: AsyncIterable[TapFrame]) -> None:
        """Every tick: answer timeouts, then each party's frame to every sink through the gate."""
        waiting: dict[int, dict[str, TapFrame]] = {}
        parties = self._parties()
        async for frame in frames:
            self._check_deadline(frame.time)
            if self._answers is not None and frame.party == self.config.caller_party:
                self._answers.push_frame(frame)
            transcriber = self.transcriber
            if transcriber is not None and frame.sample_rate == transcriber.sample_rate:
                transcriber.push_frame(frame)
            for sink in self._frame_sinks:
                sink(frame)
            waiting.setdefault(frame.index, {})[frame.party] = frame
            for index in sorted(waiting):
                tick = waiting[index]
                if index < frame.index or all(p in tick for p in self.media.parties):
                    self._record(waiting.pop(index), parties)
        for index in sorted(waiting):
            self._record(waiting.pop(index), parties)

    def _check_deadline(self, now: float) -> None:
        caller = self._caller
        if caller is None:
            return
        deadline = caller.next_deadline()
        if deadline is not None and now >= deadline:
            # An opt-out window running out opens recording: post-date it like any opening.
            self._apply(caller.handle_timeout(now + self.config.open_guard))

    def _record(self, tick: dict[str, TapFrame], parties: tuple[str, str]) -> None:
        caller_party, agent_party = parties
        first = next(iter(tick.values()))
        silence = bytes(2 * FRAME_SAMPLES)
        caller = tick[caller_party].pcm if caller_party in tick else silence
        agent = tick[agent_party].pcm if agent_party in tick else silence
        if len(caller) != len(agent):
            return  # not 8 kHz on both sides: the recorder's format cannot take it
        if self._first_frame_time is None:
            self._first_frame_time = self.transcript.origin = first.time
        self.recorder.feed(caller, agent, first.time)

    # --- decisions ------------------------------------------------------------------------

    async def _settle_decisions(self) -> None:
        """Store and audit each decision in order; start the recorder only after the grant's row."""
        while (decision := await self._pending.get()) is not None:
            stored = await self._store(decision)
            if decision.allows_recording:
                self.transcript.allow(decision.party, stored.record_id)
            is_caller = decision.party == self.config.caller_party
            if not (is_caller and decision.allows_recording and not self._started):
                continue
            self._started = True
            try:
                await self.recorder.start(stored.record_id)
            except RecordingError as exc:
                # The call goes on unrecorded: never write around a failed check.
                log.error("recording not started", extra=self._ids(error=type(exc).__name__))

    async def _store(self, decision: ConsentDecision) -> StoredDecision:
        async with self.services.sessions() as session, session.begin():
            row = await persist_consent_decision(
                session,
                actor=self.config.actor,
                tenant_id=self.call.tenant_id,
                call_id=self.call.call_id,
                decision=decision,
            )
        assert row.audit_seq is not None
        stored = StoredDecision(row.id, row.audit_seq, decision.party, decision.decision.value)
        self._stored.append(stored)
        log.info(
            "consent decision stored",
            extra=self._ids(party=decision.party, decision=decision.decision.value),
        )
        return stored

    # --- secure pause, resume, withdrawal (softphone and API) -----------------------------------

    async def pause(self, *, actor: str) -> float:
        """Secure pause: every sink of every party stops from the next frame; audited.

        Returns the media-clock instant it took effect: now, or the next frame still to
        be played when the clock runs late (so no audio spoken after the press is kept).
        """
        now = self.media.clock.unplayed_from()
        self._paused = True
        self._apply(self.gate.pause_all(now))
        await self._audit(actor, "call.secure_pause", now)
        return now

    async def resume(self, *, actor: str) -> float:
        """End a secure pause (post-dated like every input that reopens recording); audited."""
        now = self.media.clock.now()
        self._paused = False
        self._apply(self.gate.resume_all(now + self.config.open_guard))
        await self._audit(actor, "call.secure_resume", now)
        return now

    async def withdraw(self, *, actor: str, party: str | None = None) -> float:
        """Withdraw a party's consent (agent button, API); the decision is stored like any.
        It takes effect as a pause does (:meth:`pause`)."""
        now = self.media.clock.unplayed_from()
        self._apply(self.gate.withdraw(party or self.config.caller_party, now))
        await self._audit(actor, "call.withdraw_request", now)
        return now

    async def _audit(self, actor: str, action: str, at: float) -> None:
        async with self.services.sessions() as session, session.begin():
            await audit.append(
                session,
                actor=actor,
                tenant_id=self.call.tenant_id,
                action=action,
                target=f"tenant/{self.call.tenant_id}/calls/{self.call.call_id}",
                details={"at": at},
            )

    # --- the prompt -----------------------------------------------------------------------

    async def _prompt_audio(self) -> tuple[PlaybackSource, PromptRef] | None:
        """The tenant's uploaded file if set and readable, else its text through the TTS."""
        prompt = self.settings.consent_prompt
        version = f"v{prompt.version}"
        library = self.services.prompt_files
        if prompt.audio_file is not None and library is not None:
            with contextlib.suppress(OSError, PromptError, soundfile.LibsndfileError):
                path = library.path(self.call.tenant_id, prompt.audio_file)
                data = await asyncio.to_thread(path.read_bytes)
                samples = await asyncio.to_thread(_decode_audio, data)
                return BufferSource(samples, FRAME_SAMPLES), PromptRef.for_content(data, version)
            log.warning("consent prompt file unreadable", extra=self._ids())
        synthesizer = self.services.prompts
        if prompt.text is None or synthesizer is None or not synthesizer.available:
            return None
        try:
            spoken = await synthesizer.get(
                prompt.text, language=prompt.language, voice=prompt.voice
            )
        except (NoProviderAvailableError, ProviderError) as exc:
            error = type(exc).__name__
            log.warning("consent prompt synthesis failed", extra=self._ids(error=error))
            return None
        return spoken.source(), PromptRef(spoken.text_hash, version)


def _decode_audio(data: bytes) -> npt.NDArray[np.int16]:
    """An uploaded prompt (any soundfile format) as mono 16-bit at 8 kHz. Blocking."""
    pcm, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    channels = np.asarray(pcm, dtype=np.int16)
    mono = channels[:, 0] if channels.shape[1] == 1 else channels.mean(axis=1).astype(np.int16)
    return resample(np.ascontiguousarray(mono), int(rate), SAMPLE_RATE)
