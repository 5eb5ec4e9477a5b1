"""Inbound calls to a tenant's number, queued and bridged to an agent's softphone.

The :class:`AgentBridge` is a :data:`~voicegw.calls.sip_calls.CallHandler`.
Each call joins its tenant's :class:`~voicegw.calls.queues.CallQueue`; the
bridge drives the queue (it is sans-IO) with the loop's clock and the
:class:`~voicegw.calls.agents.AgentDirectory`'s available agents, and carries
out what the queue decides:

* ``Offer``: :meth:`AgentDirectory.offer_call` with a
  :class:`~voicegw.media.webrtc.LiveSource` fed with the caller's decoded
  20 ms frames (what the agent hears) and a sink that encodes the agent's
  frames onto the SIP leg once the agent has answered;
* ``Waiting``: the caller is answered and hears hold music (with no hold music
  configured, the caller keeps hearing ringback instead);
* ``StopRinging``: the agent's ring ends, the queue moves on;
* ``Overflowed``: an unanswered caller gets the overflow status (480 by
  default); an answered one hears the announcement (if any), then our BYE.

Hang-up works both ways: the caller's BYE ends the agent's call, the agent's
hang-up sends BYE to the caller. The SIP call is answered at the latest when an
agent answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicegw.calls.agents import AgentCall, AgentDirectory, SoftphoneError
from voicegw.calls.agents import CallState as AgentCallState
from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.queues import (
    CallQueue,
    Offer,
    Overflowed,
    QueueAction,
    QueueSettings,
    StopRinging,
    Waiting,
)
from voicegw.calls.sip_calls import CallState as SipCallState
from voicegw.calls.sip_calls import InboundCall
from voicegw.logs import mask_number
from voicegw.media.clock import MediaClock
from voicegw.media.playback import BufferSource, Playback, PlaybackSource, tone
from voicegw.media.webrtc import FRAME_BYTES, LiveSource
from voicegw.sip.errors import SipParseError
from voicegw.sip.uri import SipURI, TelURI, parse_uri

__all__ = [
    "AgentBridge",
    "AgentBridgeConfig",
    "OverflowTreatment",
    "WaitingCaller",
    "caller_of",
    "default_hold_music",
]

log = logging.getLogger(__name__)

#: SIP states in which the caller has not been answered yet.
_UNANSWERED = frozenset({SipCallState.OFFERED, SipCallState.RINGING})
#: The longest an overflow announcement may hold the line.
_MAX_ANNOUNCEMENT_SECONDS = 60.0


def caller_of(call: InboundCall) -> str:
    """The caller's number (the From URI's user part) for the agent's screen, which masks it."""
    try:
        uri = parse_uri(call.offer.from_uri)
    except SipParseError:
        return ""
    if isinstance(uri, TelURI):
        return uri.number
    return (uri.user or "") if isinstance(uri, SipURI) else ""


def default_hold_music() -> PlaybackSource:
    """A soft two-note chime every three seconds (no licensed music ships with the gateway)."""
    chime = np.concatenate(
        [
            tone(523.25, 0.25, amplitude=0.1),
            tone(659.25, 0.35, amplitude=0.1),
            np.zeros(int(2.4 * 8000), dtype=np.int16),
        ]
    )
    return BufferSource(chime, loop=True)


@dataclass(frozen=True, slots=True)
class OverflowTreatment:
    """What a caller who waited too long gets."""

    #: Final response for a caller still unanswered (480, or 603 to say "do not retry").
    status: int = 480
    reason: str = "Temporarily Unavailable"
    #: Played to an answered caller before our BYE (None: BYE at once).
    announcement: Callable[[], PlaybackSource] | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 699:
            raise ValueError("overflow status must be a final failure (400..699)")


@dataclass(frozen=True, slots=True)
class AgentBridgeConfig:
    queue: QueueSettings = field(default_factory=QueueSettings)
    #: What a waiting caller hears (None: ringback, the call stays unanswered while queued).
    hold_music: Callable[[], PlaybackSource] | None = default_hold_music
    overflow: OverflowTreatment = field(default_factory=OverflowTreatment)
    #: How often waiting calls look again for agents who became available.
    poll_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class WaitingCaller:
    """One caller in a tenant's queue, as a supervisor sees it."""

    call_id: str
    caller: str  # masked: never the raw number
    waited: float  # seconds since the call joined the queue
    ringing_agent: int | None


@dataclass(eq=False)
class _Bridged:
    """One caller in the bridge: its SIP leg, its media and where it stands."""

    call: InboundCall
    media: RtpCallMedia
    source: LiveSource = field(default_factory=LiveSource)
    #: The agent call ringing or connected, if any.
    agent_call: AgentCall | None = None
    music: Playback | None = None
    connected: bool = False
    #: Loop time at which the call reached the bridge (its wait in the queue starts then).
    arrived: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    #: Set to the agent call that was answered, or None when the call overflowed.
    outcome: asyncio.Future[AgentCall | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def from_agent(self, pcm: bytes) -> None:
        # Until the agent answered, nothing of theirs reaches the caller (hold music plays).
        if self.connected and not self.call.ended.is_set():
            self.call.transport.send_pcm(pcm)

    def stop_music(self) -> None:
        if self.music is not None:
            self.music.cancel()
            self.music = None


@dataclass(eq=False)
class _TenantQueue:
    queue: CallQueue
    calls: dict[str, _Bridged] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class AgentBridge:
    """Queues inbound calls per tenant and bridges each to an agent's WebRTC softphone."""

    def __init__(
        self,
        agents: AgentDirectory,
        config: AgentBridgeConfig | None = None,
        *,
        clock: MediaClock | None = None,
    ) -> None:
        self.agents = agents
        self.config = config or AgentBridgeConfig()
        self.clock = clock or MediaClock()
        self._tenants: dict[str, _TenantQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def queued(self, tenant_id: str) -> int:
        """Calls of ``tenant_id`` waiting for an agent (ringing ones included)."""
        tenant = self._tenants.get(tenant_id)
        return 0 if tenant is None else len(tenant.queue)

    def waiting(self, tenant_id: str) -> list[WaitingCaller]:
        """The callers of ``tenant_id`` still queued (ringing ones included), longest first."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return []
        now = self._now()
        queued = [b for key, b in tenant.calls.items() if key in tenant.queue]
        return [
            WaitingCaller(
                call_id=b.call.id,
                caller=mask_number(caller_of(b.call)),
                waited=max(0.0, now - b.arrived),
                ringing_agent=tenant.queue.ringing(b.call.id),
            )
            for b in sorted(queued, key=lambda b: b.arrived)
        ]

    async def close(self) -> None:
        for tenant in self._tenants.values():
            if tenant.timer is not None:
                tenant.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.clock.stop()

    # --- one call ------------------------------------------------------------------------

    async def __call__(self, call: InboundCall) -> None:
        tenant_id = call.offer.route.tenant_id
        call.ring()
        if call.ended.is_set():
            return
        self.clock.start()
        bridged = _Bridged(call, call.media(self.clock))
        pump = asyncio.create_task(self._pump_caller(bridged), name="agent-bridge-pump")
        tenant = self._tenants.setdefault(tenant_id, _TenantQueue(CallQueue(self.config.queue)))
        tenant.calls[call.id] = bridged
        caller_gone = asyncio.create_task(call.ended.wait())
        try:
            tenant.queue.join(call.id, self._now())
            self._step(tenant_id)
            first: set[asyncio.Future[Any]] = {bridged.outcome, caller_gone}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not bridged.outcome.done() or call.ended.is_set():
                return  # the caller hung up while queued (the finally ends any ring)
            answered = bridged.outcome.result()
            if answered is None:
                await self._overflow(bridged, caller_gone)
            else:
                await self._talk(tenant_id, bridged, answered, caller_gone)
        finally:
            tenant.queue.leave(call.id)
            tenant.calls.pop(call.id, None)
            bridged.stop_music()
            pump.cancel()
            caller_gone.cancel()
            agent_call = bridged.agent_call
            if agent_call is not None and agent_call.state is not AgentCallState.ENDED:
                reason = "caller_hangup" if call.ended.is_set() else "shutdown"
                await self.agents.end_call(agent_call.call_id, reason)
            if call.state is not SipCallState.ENDED:
                call.hang_up()
            if tenant_id in self._tenants:  # the freed agent may take a waiting call
                self._step(tenant_id)
            if not any(t.calls for t in self._tenants.values()):
                # Nothing to pace: no clock task outlives the last call (server shutdown).
                await self.clock.stop()

    async def _talk(
        self,
        tenant_id: str,
        bridged: _Bridged,
        agent_call: AgentCall,
        caller_gone: asyncio.Task[Any],
    ) -> None:
        call = bridged.call
        bridged.stop_music()
        if call.state in _UNANSWERED:
            call.answer()
        bridged.connected = True
        log.info("call %s bridged to agent %s", call.id, agent_call.agent_id)
        agent_done = asyncio.create_task(agent_call.until(_ended))
        try:
            await asyncio.wait({caller_gone, agent_done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            agent_done.cancel()
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.queue.agent_free(agent_call.agent_id, self._now())

    async def _overflow(self, bridged: _Bridged, caller_gone: asyncio.Task[Any]) -> None:
        call, treatment = bridged.call, self.config.overflow
        log.info("call %s overflowed the queue", call.id)
        if call.state in _UNANSWERED:
            call.reject(treatment.status, treatment.reason)
            return
        bridged.stop_music()
        if treatment.announcement is not None:
            playback = bridged.media.play(treatment.announcement())
            played = asyncio.ensure_future(playback.wait())
            try:
                await asyncio.wait(
                    {played, caller_gone},
                    timeout=_MAX_ANNOUNCEMENT_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                playback.cancel()
                played.cancel()
        call.hang_up()

    async def _pump_caller(self, bridged: _Bridged) -> None:
        """The caller's decoded 20 ms frames, on the media clock, into the agent's source."""
        party = bridged.media.caller_party
        async for frame in bridged.media.frames():
            if frame.party == party and len(frame.pcm) == FRAME_BYTES:
                bridged.source.push(frame.pcm)

    # --- the queue -----------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _step(self, tenant_id: str) -> None:
        """Ask the tenant's queue what to do now, do it, and come back at its next deadline."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return
        if tenant.timer is not None:
            tenant.timer.cancel()
            tenant.timer = None
        now = self._now()
        for action in tenant.queue.decide(now, self.agents.available_agents(tenant_id)):
            self._carry_out(tenant_id, tenant, action)
        if len(tenant.queue) == 0:
            return
        deadline = now + self.config.poll_interval
        queued_deadline = tenant.queue.next_deadline()
        if queued_deadline is not None:
            deadline = min(deadline, queued_deadline)
        tenant.timer = asyncio.get_running_loop().call_at(deadline, self._step, tenant_id)

    def _carry_out(self, tenant_id: str, tenant: _TenantQueue, action: QueueAction) -> None:
        bridged = tenant.calls.get(action.call)
        if bridged is None:
            return
        if isinstance(action, Offer):
            self._offer(tenant_id, tenant, bridged, action.agent_id)
        elif isinstance(action, StopRinging):
            ringing, bridged.agent_call = bridged.agent_call, None
            if ringing is not None:
                self._spawn(self.agents.end_call(ringing.call_id, action.reason))
        elif isinstance(action, Waiting):
            self._wait(bridged)
        elif isinstance(action, Overflowed) and not bridged.outcome.done():
            bridged.outcome.set_result(None)

    def _offer(self, tenant_id: str, tenant: _TenantQueue, bridged: _Bridged, agent: int) -> None:
        try:
            agent_call = self.agents.offer_call(
                tenant_id=tenant_id,
                agent_id=agent,
                caller=caller_of(bridged.call),
                source=bridged.source,
                sink=bridged.from_agent,
            )
        except SoftphoneError:
            # Gone between the availability check and the offer: try the next one soon.
            tenant.queue.declined(bridged.call.id, agent, self._now())
            asyncio.get_running_loop().call_soon(self._step, tenant_id)
            return
        bridged.agent_call = agent_call
        self._spawn(self._watch_ring(tenant_id, bridged, agent_call))

    async def _watch_ring(self, tenant_id: str, bridged: _Bridged, agent_call: AgentCall) -> None:
        await agent_call.until(lambda c: c.state is not AgentCallState.RINGING)
        tenant = self._tenants.get(tenant_id)
        if tenant is None or bridged.call.ended.is_set() or bridged.outcome.done():
            return
        if agent_call.state is AgentCallState.ENDED:
            # Declined, or stopped for ring timeout: the queue moves on.
            if bridged.agent_call is agent_call:
                bridged.agent_call = None
            tenant.queue.declined(bridged.call.id, agent_call.agent_id, self._now())
            self._step(tenant_id)
            return
        tenant.queue.leave(bridged.call.id)
        bridged.outcome.set_result(agent_call)

    def _wait(self, bridged: _Bridged) -> None:
        music = self.config.hold_music
        call = bridged.call
        if music is None or bridged.music is not None or call.ended.is_set():
            return
        if call.state in _UNANSWERED:
            call.answer()
        bridged.music = bridged.media.play(music())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ended(call: AgentCall) -> bool:
    return call.state is AgentCallState.ENDED
