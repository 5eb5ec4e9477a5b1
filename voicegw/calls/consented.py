"""Consent on live SIP calls: a :data:`CallHandler` wrapper that asks before anything is kept.

``with_consent(inner, deps)`` answers an inbound call to a tenant, runs the
tenant's :class:`~voicegw.calls.consent_flow.ConsentFlow` on the call's media
for the whole call (notice or question, DTMF and spoken answers, the
recorder behind the gate) and hands the call to ``inner`` (echo today, the
agent queue later) once the prompt phase is over, so the caller hears the
notice before anything else and the recording covers the rest of the call as
far as the gate allows. A tenant whose mode resolves to ``off`` goes straight
to ``inner``: no prompt, nothing recorded.

Why the prompt comes first and ``inner`` second: the flow plays the prompt on
the caller's leg; a service that relays or plays on the same leg meanwhile
would mix into the notice the caller must be able to hear.

Consent state changes are published as :class:`ConsentStateChanged` (for the
agent's softphone) and the live flows are kept by call id, so secure pause,
resume and withdrawal (:meth:`ConsentedService.flow`) reach the right call.
The flow reports no state events of its own, so each tick's first frame is
compared with the last state seen: a change shows up within one 20 ms frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.asr.registry import AsrRegistry
from voicegw.calls.consent_flow import (
    CallInfo,
    ConsentFlow,
    ConsentOutcome,
    ConsentServices,
    FlowConfig,
    load_consent_policy,
)
from voicegw.calls.prompts import PromptCache, PromptSynthesizer
from voicegw.calls.routing import E164_USER
from voicegw.calls.sip_calls import CallHandler, CallOffer, InboundCall
from voicegw.calls.speech_policy import CallSpeech
from voicegw.consent import CallContext, ConsentPolicy, RecordingMode, State, resolve_mode
from voicegw.media.clock import MediaClock
from voicegw.media.taps import TapFrame
from voicegw.privacy.processing import ProcessingRecord, RecordSink
from voicegw.recording.keys import KeyWrapper
from voicegw.recording.recorder import RecorderConfig
from voicegw.recording.storage import StorageBackend
from voicegw.sip.errors import SipParseError
from voicegw.sip.uri import SipURI, parse_uri
from voicegw.store import tenants
from voicegw.store.prompt_files import PromptLibrary
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.registry import TtsRegistry

__all__ = [
    "ConsentStateChanged",
    "ConsentedDeps",
    "ConsentedService",
    "caller_number",
    "with_consent",
]

log = logging.getLogger("voicegw.calls.consented")

#: Caller states in which the prompt is still being set up or played.
_PROMPT_PHASE: Final = frozenset({State.PENDING, State.PROMPTING})
#: Seconds to wait for the caller's ACK before giving up on the call.
_ACK_WAIT: Final = 32.0


def _ignore_record(record: ProcessingRecord) -> None:
    """Default processing-record sink (a node that stores them passes its own)."""


@dataclass(frozen=True, slots=True)
class ConsentStateChanged:
    """A party's consent state moved (``at`` on the media clock). No numbers, no audio."""

    call_id: str
    tenant_id: str
    party: str
    state: State
    at: float


@dataclass(frozen=True)
class ConsentedDeps:
    """What the wrapper needs besides the call: the store, recording, speech and the clock."""

    sessions: async_sessionmaker[AsyncSession]
    storage: StorageBackend
    keys: KeyWrapper
    #: The node's media clock (running): frames, key presses and decisions are timed on it.
    clock: MediaClock
    tts: TtsRegistry | None = None
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    asr: AsrRegistry | None = None
    prompt_files: PromptLibrary | None = None
    on_record: RecordSink = _ignore_record
    recorder_config: RecorderConfig | None = None
    flow_config: FlowConfig = field(default_factory=FlowConfig)


def caller_number(offer: CallOffer) -> str | None:
    """The caller's E.164 number when the From user is one, else None ("could be anywhere")."""
    text = offer.from_uri.strip()
    if "<" in text:  # name-addr: the URI is what the angle brackets hold
        text = text.split("<", 1)[1].split(">", 1)[0]
    try:
        uri = parse_uri(text)
    except (SipParseError, ValueError):
        return None
    user = uri.user if isinstance(uri, SipURI) else None
    return user if user is not None and E164_USER.match(user) else None


class _StateWatch:
    """A frame sink that reports the caller's consent state when it changes."""

    def __init__(self, service: ConsentedService, call: CallInfo) -> None:
        self.flow: ConsentFlow | None = None
        self.prompt_over = asyncio.Event()
        self._service = service
        self._call = call
        self._last: State | None = None

    def __call__(self, frame: TapFrame) -> None:
        machine = self.flow.caller_machine if self.flow is not None else None
        if machine is None or machine.state is self._last:
            return
        self._last = machine.state
        if machine.state not in _PROMPT_PHASE:
            self.prompt_over.set()
        change = ConsentStateChanged(
            self._call.call_id, self._call.tenant_id, machine.party, machine.state, frame.time
        )
        self._service.publish(change)


class ConsentedService:
    """A :data:`CallHandler`: consent flow for the call's lifetime, then ``inner``."""

    def __init__(self, inner: CallHandler, deps: ConsentedDeps) -> None:
        self.inner = inner
        self.deps = deps
        #: Live flows by SIP call id (the softphone's pause/resume/withdraw go through these).
        self.flows: dict[str, ConsentFlow] = {}
        #: Told of every consent state change on the event loop; keep it quick.
        self.listeners: list[Callable[[ConsentStateChanged], None]] = []
        #: Told of each finished call's outcome (call record, tests).
        self.on_outcome: Callable[[str, ConsentOutcome], None] | None = None

    def flow(self, call_id: str) -> ConsentFlow | None:
        return self.flows.get(call_id)

    def publish(self, change: ConsentStateChanged) -> None:
        for listener in tuple(self.listeners):
            listener(change)

    async def __call__(self, call: InboundCall) -> None:
        route = call.offer.route
        loaded = await self._load(route.tenant_id)
        if loaded is None:
            call.reject(404)
            return
        settings, policy = loaded
        info = CallInfo(
            tenant_id=route.tenant_id,
            call_id=call.id,
            region=settings.region,
            caller=caller_number(call.offer),
            dialled=route.number,
            campaign=call.offer.campaign,
        )
        resolution = resolve_mode(policy, CallContext(info.caller, info.dialled, info.campaign))
        if resolution.mode is RecordingMode.OFF:
            await self.inner(call)
            return
        call.answer()
        if not await self._confirmed(call):
            return
        await self._run(call, info, settings, policy)

    async def _load(self, tenant_id: str) -> tuple[TenantSettings, ConsentPolicy] | None:
        async with self.deps.sessions() as session:
            tenant = await tenants.get_tenant(session, tenant_id)
            if tenant is None:
                return None
            settings = tenants.tenant_settings(tenant)
            return settings, await load_consent_policy(session, tenant_id, settings)

    async def _confirmed(self, call: InboundCall) -> bool:
        """Whether the ACK came (media flows both ways) before the call ended."""
        confirmed = asyncio.ensure_future(call.confirmed.wait())
        ended = asyncio.ensure_future(call.ended.wait())
        try:
            await asyncio.wait({confirmed, ended}, timeout=_ACK_WAIT, return_when="FIRST_COMPLETED")
        finally:
            confirmed.cancel()
            ended.cancel()
        return call.confirmed.is_set() and not call.ended.is_set()

    async def _run(
        self, call: InboundCall, info: CallInfo, settings: TenantSettings, policy: ConsentPolicy
    ) -> None:
        deps = self.deps
        media = call.media(deps.clock)
        watch = _StateWatch(self, info)
        flow = ConsentFlow(
            media,
            info,
            settings,
            policy,
            ConsentServices(
                deps.sessions,
                deps.storage,
                deps.keys,
                prompts=self._prompts(info, settings),
                prompt_files=deps.prompt_files,
                asr=deps.asr,
                on_record=deps.on_record,
                recorder_config=deps.recorder_config,
            ),
            config=deps.flow_config,
            frame_sinks=(watch,),
        )
        watch.flow = flow
        self.flows[call.id] = flow
        running = asyncio.create_task(flow.run(), name="consent-flow")
        inner: asyncio.Future[None] | None = None
        try:
            prompt_over = asyncio.ensure_future(watch.prompt_over.wait())
            try:
                await asyncio.wait({prompt_over, running}, return_when="FIRST_COMPLETED")
            finally:
                prompt_over.cancel()
            if not running.done():
                inner = asyncio.ensure_future(self.inner(call))
            outcome = await running
        finally:
            self.flows.pop(call.id, None)
            if not running.done():  # cancelled from outside: end the call, let the flow seal
                call.hang_up()
                media.hang_up()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await running
            if inner is not None:
                if not inner.done():
                    inner.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await inner
        log.info(
            "consent flow finished",
            extra={
                "call": call.id,
                "tenant_id": info.tenant_id,
                "mode": outcome.resolution.mode.value,
                "recorded": outcome.recording is not None,
            },
        )
        if self.on_outcome is not None:
            self.on_outcome(call.id, outcome)

    def _prompts(self, info: CallInfo, settings: TenantSettings) -> PromptSynthesizer | None:
        if self.deps.tts is None:
            return None
        return PromptSynthesizer.for_call(
            self.deps.tts,
            settings,
            CallSpeech(
                call_id=info.call_id,
                tenant=info.tenant_id,
                language=settings.consent_prompt.language,
            ),
            cache=self.deps.prompt_cache,
            on_record=self.deps.on_record,
        )


def with_consent(inner: CallHandler, deps: ConsentedDeps) -> ConsentedService:
    """``inner`` behind the tenant's consent flow (a :data:`CallHandler` itself)."""
    return ConsentedService(inner, deps)
