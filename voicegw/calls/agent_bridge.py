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

Transfers (the bridge is the agent calls' :class:`~voicegw.calls.agents.TransferControl`):
the sans-IO :class:`~voicegw.calls.agent_transfers.Transfer` decides, the bridge
carries its actions out. The caller's SIP leg never changes: hold music plays
on it while the target rings or the agents consult, and the agent side is
re-pointed with :meth:`AgentDirectory.reroute` (the agents' WebRTC legs stay
up). Whatever runs on the caller's leg (the consent flow, its recorder, its
transcription) therefore carries on as the same call and the same recording,
its agent channel now fed by the new agent. A queue target puts the caller
back into the queue loop of :meth:`AgentBridge.__call__`.

The recording's agent channel (:meth:`RtpCallMedia.push_agent
<voicegw.calls.call_media.RtpCallMedia.push_agent>`) carries what an agent
connected to the caller says, as the caller is sent it: nothing while an agent
rings, nothing while the caller is held (hold music is not a party) or the
agents consult, the new agent from the moment they are connected to the caller.
An external number is heard by the caller but not recorded: that party was
never told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicegw.calls.agent_transfers import (
    ConnectCaller,
    ConnectConsult,
    DropTarget,
    HoldCaller,
    ReleaseAgent,
    Requeue,
    ReturnCaller,
    RingTarget,
    TargetKind,
    Transfer,
    TransferAction,
    TransferError,
    TransferEvent,
    TransferMode,
    TransferState,
    TransferTarget,
)
from voicegw.calls.agents import (
    AgentCall,
    AgentDirectory,
    HoldSilence,
    SoftphoneError,
    TransferView,
)
from voicegw.calls.agents import CallState as AgentCallState
from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.queues import (
    DEFAULT_QUEUE,
    CallQueue,
    Offer,
    Overflowed,
    QueueAction,
    QueueDefinition,
    QueueSettings,
    QueueTable,
    StopRinging,
    Waiting,
)
from voicegw.calls.routing import E164_USER
from voicegw.calls.sip_calls import CallFailed, InboundCall, OutboundCall, SipCalls
from voicegw.calls.sip_calls import CallState as SipCallState
from voicegw.calls.trunks import TrunkTable, place_trunk_call
from voicegw.config import QueueConfig
from voicegw.logs import mask_number
from voicegw.media.clock import MediaClock
from voicegw.media.playback import BufferSource, Playback, PlaybackSource, tone
from voicegw.media.taps import TapFrame
from voicegw.media.webrtc import FRAME_BYTES, LiveSource
from voicegw.sip.errors import SipParseError
from voicegw.sip.uri import SipURI, TelURI, parse_uri

__all__ = [
    "AgentBridge",
    "AgentBridgeConfig",
    "Dialer",
    "OverflowTreatment",
    "WaitingCaller",
    "caller_of",
    "default_hold_music",
    "queue_definitions",
    "trunk_dialer",
]

log = logging.getLogger(__name__)

#: SIP states in which the caller has not been answered yet.
_UNANSWERED = frozenset({SipCallState.OFFERED, SipCallState.RINGING})
#: The longest an overflow announcement may hold the line.
_MAX_ANNOUNCEMENT_SECONDS = 60.0


def _drop(_pcm: bytes) -> None:
    """Where an agent's audio goes while it must reach nobody."""


#: Places an external transfer's call: (tenant, E.164 number, our From URI, answer timeout).
Dialer = Callable[[str, str, str, float], Awaitable[OutboundCall | CallFailed]]


def queue_definitions(queues: Iterable[QueueConfig]) -> tuple[QueueDefinition, ...]:
    """The ``[[queues]]`` of the server config, as the bridge's queue table takes them."""
    return tuple(
        QueueDefinition(
            name=q.name,
            tenant_id=q.tenant,
            numbers=frozenset(q.numbers),
            skills=frozenset(q.skills),
            settings=QueueSettings(
                ring_timeout=q.ring_timeout, max_wait=q.max_wait, retry_after=q.retry_after
            ),
            hold_music=q.music == "hold",
            overflow_queue=q.overflow_queue,
            overflow_status=q.overflow_status,
        )
        for q in queues
    )


def trunk_dialer(calls: SipCalls, trunks: TrunkTable) -> Dialer:
    """External transfers through the tenant's first trunk that can place calls."""

    async def dial(
        tenant_id: str, number: str, caller: str, answer_timeout: float
    ) -> OutboundCall | CallFailed:
        for trunk in trunks.trunks:
            if trunk.tenant_id == tenant_id and trunk.outbound is not None:
                return await place_trunk_call(
                    calls, trunk, number, caller=caller, answer_timeout=answer_timeout
                )
        return CallFailed(503, "No outbound trunk")

    return dial


@dataclass(eq=False)
class _External:
    """An external number called for a transfer: its SIP leg and where its audio goes."""

    dialling: asyncio.Task[None]
    leg: OutboundCall | None = None
    #: Where the external party's frames go now (the consulting agent, then the caller).
    deliver: Callable[[bytes], None] = _drop

    def send(self, pcm: bytes) -> None:
        if self.leg is not None and not self.leg.ended.is_set():
            self.leg.transport.send_pcm(pcm)

    def hang_up(self) -> None:
        self.dialling.cancel()  # an unanswered INVITE is CANCELled as place_call unwinds
        if self.leg is not None:
            self.leg.hang_up()


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
    #: Settings of each tenant's ``default`` queue (the one no configured queue claims).
    queue: QueueSettings = field(default_factory=QueueSettings)
    #: Configured queues (dialled numbers, skills, their own settings).
    queues: tuple[QueueDefinition, ...] = ()
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
    queue: str = DEFAULT_QUEUE


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
    #: The current (or last) transfer, the agent who started it and the target's call.
    transfer: Transfer | None = None
    first: AgentCall | None = None
    target: AgentCall | None = None
    ring_timer: asyncio.TimerHandle | None = None
    #: A consult's two directions: what the target hears and what the first agent hears.
    to_target: LiveSource = field(default_factory=LiveSource)
    to_first: LiveSource = field(default_factory=LiveSource)
    #: Set by a transfer to a queue: the queue the caller joins once the agent is released.
    requeue: str | None = None
    #: An external number being called, consulted or talking to the caller.
    external: _External | None = None
    #: Where the caller's frames go instead of the agent's source (an external party).
    forward: Callable[[bytes], None] | None = None

    def from_agent(self, pcm: bytes) -> None:
        # Until the agent answered, nothing of theirs reaches the caller (hold music plays).
        if self.connected and not self.call.ended.is_set():
            self.call.transport.send_pcm(pcm)
            # The recording's agent channel: exactly what the caller is sent by an agent.
            self.media.push_agent(pcm)

    def from_external(self, pcm: bytes) -> None:
        # An external party was never told of the recording: the caller hears them,
        # the agent channel stays silent.
        if self.connected and not self.call.ended.is_set():
            self.call.transport.send_pcm(pcm)

    def connected_agent(self) -> AgentCall | None:
        return self.agent_call

    def stop_music(self) -> None:
        if self.music is not None:
            self.music.cancel()
            self.music = None


#: (tenant id, queue name)
QueueKey = tuple[str, str]


@dataclass(eq=False)
class _TenantQueue:
    definition: QueueDefinition
    queue: CallQueue
    calls: dict[str, _Bridged] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None

    @property
    def key(self) -> QueueKey:
        return (self.definition.tenant_id, self.definition.name)


class AgentBridge:
    """Queues inbound calls per tenant and bridges each to an agent's WebRTC softphone."""

    def __init__(
        self,
        agents: AgentDirectory,
        config: AgentBridgeConfig | None = None,
        *,
        clock: MediaClock | None = None,
        dial: Dialer | None = None,
    ) -> None:
        self.agents = agents
        #: Places external transfers' calls (None: no transfers to numbers).
        self.dial = dial
        #: Told (SIP call id, agent call) whenever a caller gets an agent call (offer, transfer).
        self.on_agent_call: Callable[[str, AgentCall], None] | None = None
        self.config = config or AgentBridgeConfig()
        self.table = QueueTable(self.config.queues, default=self.config.queue)
        self.clock = clock or MediaClock()
        self._tenants: dict[QueueKey, _TenantQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def agent_call_of(self, sip_call_id: str) -> AgentCall | None:
        """The agent call the caller on ``sip_call_id`` has now (ringing or connected)."""
        for tenant in self._tenants.values():
            bridged = tenant.calls.get(sip_call_id)
            if bridged is not None:
                return bridged.agent_call
        return None

    def sip_call_of(self, agent_call: AgentCall) -> str | None:
        for tenant in self._of_tenant(agent_call.tenant_id):
            for bridged in tenant.calls.values():
                if bridged.agent_call is agent_call:
                    return bridged.call.id
        return None

    def _of_tenant(self, tenant_id: str) -> list[_TenantQueue]:
        return [q for key, q in self._tenants.items() if key[0] == tenant_id]

    def _live_queue(self, definition: QueueDefinition) -> _TenantQueue:
        key = (definition.tenant_id, definition.name)
        live = self._tenants.get(key)
        if live is None:
            live = _TenantQueue(definition, CallQueue(definition.settings))
            self._tenants[key] = live
        return live

    def _told(self, bridged: _Bridged, agent_call: AgentCall) -> None:
        if self.on_agent_call is not None:
            self.on_agent_call(bridged.call.id, agent_call)

    def queued(self, tenant_id: str, queue: str | None = None) -> int:
        """Calls of ``tenant_id`` (in ``queue``, or any) waiting for an agent, ringing included."""
        return sum(
            len(t.queue)
            for t in self._of_tenant(tenant_id)
            if queue is None or t.definition.name == queue
        )

    def waiting(self, tenant_id: str) -> list[WaitingCaller]:
        """The callers of ``tenant_id`` still queued (ringing ones included), longest first."""
        now = self._now()
        queued = [
            (b, tenant)
            for tenant in self._of_tenant(tenant_id)
            for key, b in tenant.calls.items()
            if key in tenant.queue
        ]
        return [
            WaitingCaller(
                call_id=b.call.id,
                caller=mask_number(caller_of(b.call)),
                waited=max(0.0, now - b.arrived),
                ringing_agent=tenant.queue.ringing(b.call.id),
                queue=tenant.definition.name,
            )
            for b, tenant in sorted(queued, key=lambda pair: pair[0].arrived)
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
        definition = self.table.for_call(tenant_id, call.offer.route.number)
        tenant = self._live_queue(definition)
        caller_gone = asyncio.create_task(call.ended.wait())
        try:
            passed_over: tuple[int, ...] = ()
            while True:
                tenant.calls[call.id] = bridged
                tenant.queue.join(call.id, self._now(), passed_over=passed_over)
                self._step(tenant.key)
                first: set[asyncio.Future[Any]] = {bridged.outcome, caller_gone}
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                if not bridged.outcome.done() or call.ended.is_set():
                    return  # the caller hung up while queued (the finally ends any ring)
                answered = bridged.outcome.result()
                if answered is None:
                    onward = definition.overflow_queue
                    following = self.table.get(tenant_id, onward) if onward else None
                    if following is None:
                        await self._overflow(bridged, caller_gone, definition)
                        return
                    # Overflow into another queue: the wait starts again there.
                    log.info("call %s overflows to queue %s", call.id, following.name)
                    passed_over, definition = (), following
                else:
                    await self._talk(bridged, answered, caller_gone)
                    if bridged.requeue is None or call.ended.is_set():
                        return
                    # Transferred to a queue: wait (hold music goes on) for the next agent.
                    definition = self.table.get(tenant_id, bridged.requeue) or definition
                    bridged.requeue = None
                    released = answered if bridged.first is None else bridged.first
                    passed_over = (released.agent_id,)
                    bridged.agent_call = None
                tenant.queue.leave(call.id)
                tenant.calls.pop(call.id, None)
                tenant = self._live_queue(definition)
                bridged.outcome = asyncio.get_running_loop().create_future()
        finally:
            tenant.queue.leave(call.id)
            tenant.calls.pop(call.id, None)
            bridged.stop_music()
            pump.cancel()
            caller_gone.cancel()
            if bridged.ring_timer is not None:
                bridged.ring_timer.cancel()
            if bridged.external is not None:
                bridged.external.hang_up()
            reason = "caller_hangup" if call.ended.is_set() else "shutdown"
            for agent_call in {bridged.agent_call, bridged.target, bridged.first}:
                if agent_call is not None and agent_call.state is not AgentCallState.ENDED:
                    await self.agents.end_call(agent_call.call_id, reason)
            if call.state is not SipCallState.ENDED:
                call.hang_up()
            for other in self._of_tenant(tenant_id):  # a freed agent may take a waiting call
                self._step(other.key)
            if not any(t.calls for t in self._tenants.values()):
                # Nothing to pace: no clock task outlives the last call (server shutdown).
                await self.clock.stop()

    async def _talk(
        self,
        bridged: _Bridged,
        agent_call: AgentCall,
        caller_gone: asyncio.Task[Any],
    ) -> None:
        """Until the caller or the connected agent hangs up; a transfer changes the agent."""
        call = bridged.call
        bridged.stop_music()
        if call.state in _UNANSWERED:
            call.answer()
        bridged.agent_call = agent_call
        bridged.connected = True
        log.info("call %s bridged to agent %s", call.id, agent_call.agent_id)
        while True:
            current = bridged.connected_agent()  # a transfer may have changed it
            if current is None:
                external = bridged.external
                if external is not None and external.leg is not None and bridged.requeue is None:
                    # Transferred to an external number: until either side hangs up.
                    external_gone = asyncio.ensure_future(external.leg.ended.wait())
                    try:
                        await asyncio.wait(
                            {caller_gone, external_gone}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        external_gone.cancel()
                return  # released to a queue, or the external party is gone
            agent_done = asyncio.create_task(current.until(_ended))
            try:
                await asyncio.wait({caller_gone, agent_done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                agent_done.cancel()
            self._agent_free(current)
            if caller_gone.done() or bridged.agent_call is current:
                return

    def _agent_free(self, agent_call: AgentCall) -> None:
        """The agent finished a call: idle from now on in every queue of the tenant."""
        for tenant in self._of_tenant(agent_call.tenant_id):
            tenant.queue.agent_free(agent_call.agent_id, self._now())

    async def _overflow(
        self, bridged: _Bridged, caller_gone: asyncio.Task[Any], definition: QueueDefinition
    ) -> None:
        call, treatment = bridged.call, self.config.overflow
        if definition.overflow_status is not None:
            treatment = OverflowTreatment(
                definition.overflow_status, "Temporarily Unavailable", treatment.announcement
            )
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
                if bridged.forward is not None:
                    bridged.forward(frame.pcm)
                else:
                    bridged.source.push(frame.pcm)

    # --- the queue -----------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _step(self, key: QueueKey) -> None:
        """Ask the queue what to do now, do it, and come back at its next deadline."""
        tenant = self._tenants.get(key)
        if tenant is None:
            return
        if tenant.timer is not None:
            tenant.timer.cancel()
            tenant.timer = None
        now = self._now()
        definition = tenant.definition
        available = self.agents.available_agents(definition.tenant_id, definition.skills)
        for action in tenant.queue.decide(now, available):
            self._carry_out(tenant, action)
        if len(tenant.queue) == 0:
            return
        deadline = now + self.config.poll_interval
        queued_deadline = tenant.queue.next_deadline()
        if queued_deadline is not None:
            deadline = min(deadline, queued_deadline)
        tenant.timer = asyncio.get_running_loop().call_at(deadline, self._step, key)

    def _carry_out(self, tenant: _TenantQueue, action: QueueAction) -> None:
        bridged = tenant.calls.get(action.call)
        if bridged is None:
            return
        if isinstance(action, Offer):
            self._offer(tenant, bridged, action.agent_id)
        elif isinstance(action, StopRinging):
            ringing, bridged.agent_call = bridged.agent_call, None
            if ringing is not None:
                self._spawn(self.agents.end_call(ringing.call_id, action.reason))
        elif isinstance(action, Waiting):
            self._wait(bridged, tenant.definition)
        elif isinstance(action, Overflowed) and not bridged.outcome.done():
            bridged.outcome.set_result(None)

    def _offer(self, tenant: _TenantQueue, bridged: _Bridged, agent: int) -> None:
        try:
            agent_call = self.agents.offer_call(
                tenant_id=tenant.definition.tenant_id,
                agent_id=agent,
                caller=caller_of(bridged.call),
                source=bridged.source,
                sink=bridged.from_agent,
                control=self,
            )
        except SoftphoneError:
            # Gone between the availability check and the offer: try the next one soon.
            tenant.queue.declined(bridged.call.id, agent, self._now())
            asyncio.get_running_loop().call_soon(self._step, tenant.key)
            return
        bridged.agent_call = agent_call
        self._told(bridged, agent_call)
        self._spawn(self._watch_ring(tenant, bridged, agent_call))

    async def _watch_ring(
        self, tenant: _TenantQueue, bridged: _Bridged, agent_call: AgentCall
    ) -> None:
        outcome = bridged.outcome
        await agent_call.until(lambda c: c.state is not AgentCallState.RINGING)
        if bridged.call.ended.is_set() or outcome.done() or outcome is not bridged.outcome:
            return
        if agent_call.state is AgentCallState.ENDED:
            # Declined, or stopped for ring timeout: the queue moves on.
            if bridged.agent_call is agent_call:
                bridged.agent_call = None
            tenant.queue.declined(bridged.call.id, agent_call.agent_id, self._now())
            self._step(tenant.key)
            return
        tenant.queue.leave(bridged.call.id)
        outcome.set_result(agent_call)

    def _wait(self, bridged: _Bridged, definition: QueueDefinition) -> None:
        music = self.config.hold_music if definition.hold_music else None
        call = bridged.call
        if music is None or bridged.music is not None or call.ended.is_set():
            return
        if call.state in _UNANSWERED:
            call.answer()
        bridged.music = bridged.media.play(music())

    # --- transfers (TransferControl) -----------------------------------------------------

    def _bridged_of(self, call: AgentCall) -> _Bridged:
        for tenant in self._of_tenant(call.tenant_id):
            for bridged in tenant.calls.values():
                if bridged.agent_call is call:
                    return bridged
        raise TransferError("transfer_unavailable", "the call is not connected to a caller")

    def queue_names(self, tenant_id: str) -> frozenset[str]:
        """The queues a caller of ``tenant_id`` can be transferred to."""
        return self.table.names(tenant_id)

    async def start_transfer(
        self, call: AgentCall, mode: TransferMode, target: TransferTarget
    ) -> None:
        bridged = self._bridged_of(call)
        if bridged.transfer is not None and not bridged.transfer.over:
            raise TransferError("transfer_in_progress", "a transfer of this call is under way")
        transfer = Transfer(mode, target, call.agent_id)  # refuses what no state could allow
        self._check_target(call, target)
        bridged.transfer, bridged.first, bridged.target = transfer, call, None
        log.info(
            "call %s: agent %s starts a %s transfer to a %s",
            bridged.call.id,
            call.agent_id,
            mode.value,
            target.kind.value,
        )
        await self._apply(bridged, transfer, transfer.start())

    async def complete_transfer(self, call: AgentCall) -> None:
        bridged = self._bridged_of(call)
        transfer = self._transfer_of(bridged, call)
        await self._apply(bridged, transfer, transfer.handle(TransferEvent.COMPLETE))

    async def cancel_transfer(self, call: AgentCall) -> None:
        bridged = self._bridged_of(call)
        transfer = self._transfer_of(bridged, call)
        await self._apply(bridged, transfer, transfer.handle(TransferEvent.CANCEL, "cancelled"))

    @staticmethod
    def _transfer_of(bridged: _Bridged, call: AgentCall) -> Transfer:
        transfer = bridged.transfer
        if transfer is None or transfer.over or bridged.first is not call:
            raise TransferError("invalid_transfer_state", "no transfer of this call is under way")
        return transfer

    def _check_target(self, call: AgentCall, target: TransferTarget) -> None:
        if target.kind is TargetKind.AGENT:
            numeric = target.value.isascii() and target.value.isdigit()
            agent_id = int(target.value) if numeric else None
            # Only agents of the call's own tenant, and only those free to ring now.
            if agent_id is None or agent_id not in self.agents.available_agents(call.tenant_id):
                raise TransferError("agent_unavailable", "that agent cannot take a call now")
        elif target.kind is TargetKind.QUEUE:
            if target.value not in self.queue_names(call.tenant_id):
                raise TransferError("invalid_target", "no such queue")
        elif self.dial is None:
            raise TransferError("transfer_unavailable", "no trunk to call external numbers")
        elif not E164_USER.match(target.value):
            raise TransferError("invalid_target", "an external number is E.164: +<digits>")

    async def _apply(
        self, bridged: _Bridged, transfer: Transfer, actions: list[TransferAction]
    ) -> None:
        for action in actions:
            await self._do(bridged, transfer, action)
        first = bridged.first
        if first is not None and first.state is not AgentCallState.ENDED:
            target = transfer.target
            self.agents.show_transfer(
                first,
                TransferView(
                    mode=transfer.mode.value,
                    target=(
                        f"number:{mask_number(target.value)}"
                        if target.kind is TargetKind.NUMBER
                        else target.label()
                    ),
                    state=transfer.state.value,
                    reason=transfer.reason,
                ),
            )

    async def _do(self, bridged: _Bridged, transfer: Transfer, action: TransferAction) -> None:
        first, target = bridged.first, bridged.target
        assert first is not None
        if isinstance(action, HoldCaller):
            bridged.connected = False
            self.agents.reroute(first, HoldSilence(), _drop)
            self._hold_music(bridged)
        elif isinstance(action, RingTarget):
            await self._ring_target(bridged, transfer, action)
        elif isinstance(action, ConnectConsult) and bridged.external is not None:
            bridged.external.deliver = bridged.to_first.push
            self.agents.reroute(first, bridged.to_first, bridged.external.send)
        elif isinstance(action, ConnectConsult) and target is not None:
            self.agents.reroute(first, bridged.to_first, bridged.to_target.push)
        elif isinstance(action, ConnectCaller) and bridged.external is not None:
            self._cancel_ring_timer(bridged)
            bridged.stop_music()
            bridged.external.deliver = bridged.from_external
            bridged.forward = bridged.external.send
            if bridged.agent_call is first:
                bridged.agent_call = None
            bridged.connected = True
        elif isinstance(action, ConnectCaller) and target is not None:
            self._cancel_ring_timer(bridged)
            bridged.stop_music()
            target.control = self
            target.secure_pause = first.secure_pause
            self.agents.show_consent(target, first.consent, recording=first.recording)
            self.agents.reroute(
                target, bridged.source, bridged.from_agent, caller=caller_of(bridged.call)
            )
            bridged.agent_call = target
            bridged.connected = True
            self._told(bridged, target)
        elif isinstance(action, ReleaseAgent):
            if bridged.agent_call is first:
                bridged.agent_call = None
            await self.agents.end_call(first.call_id, "transferred")
        elif isinstance(action, DropTarget):
            self._cancel_ring_timer(bridged)
            external, bridged.external = bridged.external, None
            if external is not None:
                external.hang_up()
            bridged.target = None
            if target is not None:
                await self.agents.end_call(target.call_id, "transfer_cancelled")
        elif isinstance(action, ReturnCaller):
            bridged.stop_music()
            self.agents.reroute(first, bridged.source, bridged.from_agent)
            bridged.connected = True
        elif isinstance(action, Requeue):
            bridged.requeue = action.queue

    def _hold_music(self, bridged: _Bridged) -> None:
        music = self.config.hold_music
        if music is not None and bridged.music is None and not bridged.call.ended.is_set():
            bridged.music = bridged.media.play(music())

    async def _ring_target(self, bridged: _Bridged, transfer: Transfer, ring: RingTarget) -> None:
        first = bridged.first
        assert first is not None
        if ring.target.kind is TargetKind.NUMBER:
            dialling = self._spawn(self._dial_target(bridged, transfer, ring.target.value))
            bridged.external = _External(dialling)
            return
        try:
            target = self.agents.offer_call(
                tenant_id=first.tenant_id,
                agent_id=int(ring.target.value),
                caller=caller_of(bridged.call),
                source=bridged.to_target if ring.consult else bridged.source,
                sink=bridged.to_first.push if ring.consult else bridged.from_agent,
                # Blind: the target rings with the caller's own call, not a consult.
                from_agent=first.agent_id if ring.consult else None,
            )
        except SoftphoneError:
            # Taken between the check and the ring: the caller goes back to the first agent.
            for action in transfer.handle(TransferEvent.TARGET_FAILED, "agent_unavailable"):
                await self._do(bridged, transfer, action)
            return
        bridged.target = target
        bridged.ring_timer = asyncio.get_running_loop().call_later(
            self.config.queue.ring_timeout,
            lambda: self._spawn(self.agents.end_call(target.call_id, "no_answer")),
        )
        self._spawn(self._watch_target(bridged, transfer, target))

    async def _dial_target(self, bridged: _Bridged, transfer: Transfer, number: str) -> None:
        """Call the external number; its answer, failure or hang-up become transfer events."""
        assert self.dial is not None
        route = bridged.call.offer.route
        # Our From: the tenant's own number that the caller dialled (never the caller's).
        caller = bridged.call.offer.to_uri
        result = await self.dial(route.tenant_id, number, caller, self.config.queue.ring_timeout)
        external = bridged.external
        if external is None or transfer is not bridged.transfer or transfer.over:
            if isinstance(result, OutboundCall):
                result.hang_up()
            return
        if isinstance(result, CallFailed):
            bridged.external = None
            reason = "no_answer" if result.status in (408, 480, 487) else f"sip_{result.status}"
            await self._apply(
                bridged, transfer, transfer.handle(TransferEvent.TARGET_FAILED, reason)
            )
            return
        external.leg = result
        media = result.media(self.clock)
        pump = asyncio.create_task(
            self._pump_external(media.frames(), media.caller_party, external)
        )
        try:
            await self._apply(bridged, transfer, transfer.handle(TransferEvent.TARGET_ANSWERED))
            await result.ended.wait()
        finally:
            pump.cancel()
            result.hang_up()
        if transfer is bridged.transfer and transfer.state is TransferState.CONSULTING:
            bridged.external = None
            failed = transfer.handle(TransferEvent.TARGET_FAILED, "target_hangup")
            await self._apply(bridged, transfer, failed)
        elif bridged.external is external and transfer.state is TransferState.COMPLETED:
            bridged.call.hang_up()  # the external party hung up on the caller

    @staticmethod
    async def _pump_external(
        frames: AsyncIterator[TapFrame], party: str, external: _External
    ) -> None:
        async for frame in frames:
            if frame.party == party and len(frame.pcm) == FRAME_BYTES:
                external.deliver(frame.pcm)

    @staticmethod
    def _cancel_ring_timer(bridged: _Bridged) -> None:
        if bridged.ring_timer is not None:
            bridged.ring_timer.cancel()
            bridged.ring_timer = None

    async def _watch_target(self, bridged: _Bridged, transfer: Transfer, target: AgentCall) -> None:
        """The target's answer, decline, ring timeout or hang-up, as transfer events."""
        await target.until(lambda c: c.state is not AgentCallState.RINGING)
        if transfer is not bridged.transfer or transfer.over:
            return
        self._cancel_ring_timer(bridged)
        if target.state is AgentCallState.ENDED:
            failed = transfer.handle(TransferEvent.TARGET_FAILED, target.ended_reason)
            bridged.target = None
            await self._apply(bridged, transfer, failed)
            return
        await self._apply(bridged, transfer, transfer.handle(TransferEvent.TARGET_ANSWERED))
        if transfer.state is not TransferState.CONSULTING:
            return
        await target.until(_ended)
        if transfer is bridged.transfer and transfer.state is TransferState.CONSULTING:
            bridged.target = None
            failed = transfer.handle(TransferEvent.TARGET_FAILED, "target_hangup")
            await self._apply(bridged, transfer, failed)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _ended(call: AgentCall) -> bool:
    return call.state is AgentCallState.ENDED
