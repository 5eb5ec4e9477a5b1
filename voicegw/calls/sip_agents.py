"""Agents' SIP phones: ring them for queued calls, carry their audio, honour their REFERs.

An agent linked to one of its tenant's SIP logins (``PUT .../agents/{id}/endpoint``)
is reached at that login's registered phone. :class:`SipAgentPhones` is the
:class:`~voicegw.calls.agents.AgentDirectory`'s :class:`~voicegw.calls.agents.PhoneLine`:

* **reachability**: the registrar keeps bindings in the database (shared by
  every node); :meth:`SipAgentPhones.refresh` looks at the linked logins'
  live bindings every ``poll_interval`` and tells the directory, so the queue
  only offers calls to phones that can ring;
* **ringing**: an offer INVITEs every live contact of the login (at most
  :data:`MAX_FORK`, best q first) while the caller keeps hearing hold music or
  ringback. The first 2xx answers the agent call (the others are cancelled);
  486/600/603 and every other failure end the agent call (``busy``,
  ``declined``, ...), and the queue's ring timeout ends it as for a
  softphone (``no_answer``: the INVITEs are cancelled). The queue then moves
  on to the next agent exactly as after a softphone decline;
* **audio**: the phone's leg carries the agent call's audio the way a
  softphone's WebRTC leg does: the leg sends what the call routes to the agent
  as it arrives (:meth:`AgentCall.next_frame
  <voicegw.calls.agents.AgentCall.next_frame>`) and the phone's decoded frames
  go to :meth:`AgentCall.from_agent_audio <voicegw.calls.agents.AgentCall.from_agent_audio>`.
  Going through the agent call is what lets a transfer re-point the phone, hold
  music play to the caller alone, and the caller's recording take its agent
  channel from the bridge whichever kind of agent has the call (the phone leg's
  jitter buffer has one reader: this tap). While the phone talks to the caller
  directly, the caller's RTP is relayed into the phone's leg as it arrives, as
  the B2BUA does (:class:`_CallerRelay`): no re-timing on the way in, so loop
  stalls cost the agent no audio;
* **hang-up**: the phone's BYE ends the agent call (the bridge hangs the caller
  up); the call ending on our side (caller's BYE, transfer, shutdown) sends
  the phone BYE, or CANCEL while it rings;
* **REFER** (blind transfer from the phone): the Refer-To is read by
  :func:`~voicegw.calls.sip_agent_targets.refer_target` with the agents'
  rules (another agent, a queue, an external number); a target it refuses is
  answered 403/404/480 and the call goes on. An accepted one starts the same
  blind transfer a softphone starts (the caller hears hold music while the
  target rings; consent and recording stay on the caller's leg); NOTIFYs
  report ``100 Trying``, then ``200 OK`` once the caller is with the target
  (or the queue took it) or the failure, the caller then back with this agent.
  A phone that hangs up before the final NOTIFY does not cancel the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agent_transfers import TransferError, TransferMode, TransferTarget
from voicegw.calls.agents import AgentCall, AgentDirectory, CallState, HoldSilence
from voicegw.calls.bridge import ContactLookup, store_contacts
from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.routing import (
    E164_USER,
    Caller,
    CallerIdentity,
    Refusal,
    Route,
    Service,
)
from voicegw.calls.sip_agent_targets import TenantTargets, refer_target
from voicegw.calls.sip_calls import CallFailed, CallLeg, OutboundCall, SipCalls
from voicegw.calls.sip_service import tenant_realm
from voicegw.calls.transfer import TransferProgress, TransferRequested
from voicegw.logs import mask_number
from voicegw.media.clock import MediaClock
from voicegw.media.webrtc import FRAME_BYTES
from voicegw.sip.registrar import Binding
from voicegw.sip.uri import URI, SipURI, parse_uri
from voicegw.store import sip_accounts, tenants

__all__ = [
    "END_REASONS",
    "MAX_FORK",
    "TRANSFER_ERRORS",
    "TRANSFER_FAILURES",
    "SipAgentConfig",
    "SipAgentPhones",
]

log = logging.getLogger(__name__)

#: Contacts of one login rung at once (a desk phone and a mobile client, say).
MAX_FORK: Final = 4
#: The phone's final failure -> the agent call's end reason (as a softphone's decline).
END_REASONS: Final = {
    486: "busy",
    600: "busy",
    603: "declined",
    408: "no_answer",
    480: "no_answer",
    487: "no_answer",
}
#: A refused start of the transfer (``TransferError.code``) -> the final NOTIFY.
TRANSFER_ERRORS: Final = {
    "agent_unavailable": (480, "Temporarily Unavailable"),
    "invalid_target": (404, "Not Found"),
    "transfer_in_progress": (491, "Request Pending"),
    "transfer_unavailable": (403, "Forbidden"),
}
#: How a failed transfer ended (the bridge's reason) -> the final NOTIFY.
TRANSFER_FAILURES: Final = {
    "declined": (603, "Declined"),
    "busy": (486, "Busy Here"),
    "no_answer": (480, "No Answer"),
    "unreachable": (480, "Temporarily Unavailable"),
    "agent_unavailable": (480, "Temporarily Unavailable"),
    "target_hangup": (487, "Request Terminated"),
    "cancelled": (487, "Request Terminated"),
}
#: One frame's duration, and how late the phone's pump may fall before it starts afresh.
FRAME_SECONDS: Final = 0.02
_RESYNC_SECONDS: Final = 0.2
#: The longest we wait for a transfer's outcome (the bridge's ring timeout ends it sooner).
_TRANSFER_OUTCOME_SECONDS: Final = 600.0


@dataclass(frozen=True, slots=True)
class SipAgentConfig:
    #: The SIP domain: a tenant's logins are ``sip:<user>@<tenant>.<domain>``.
    domain: str
    #: The longest a phone rings when nothing else stops it (the queue's ring timeout does).
    answer_timeout: float = 120.0
    #: How often the linked logins' registrations are looked at.
    poll_interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0.05 <= self.poll_interval <= 300:
            raise ValueError("poll_interval must be within 0.05..300 seconds")


class _CallerRelay:
    """The caller's RTP relayed into the phone's leg while the two talk directly.

    That is the B2BUA's relay (:class:`voicegw.calls.bridge.Bridge`: the caller
    transport's ``peer``), packets passed on as they arrive with no decoding or
    re-timing; the call's PCM path stays the fallback whenever the call routes
    something else to the agent (a transfer's hold or consult), and the caller's
    own taps (consent, recording, transcription) read its leg as before. The
    other direction keeps the agent call's PCM path, which is what gives the
    recording its agent channel.
    """

    def __init__(self, phones: SipAgentPhones, call: AgentCall, leg: OutboundCall) -> None:
        self.phones = phones
        self.call = call
        self.leg = leg
        self.caller: CallLeg | None = None

    def _direct(self) -> bool:
        call, transfer = self.call, self.call.transfer
        return (
            not isinstance(call.source, HoldSilence)
            and call.from_agent is None
            and call.state is CallState.ACTIVE
            and (transfer is None or transfer.state not in ("ringing", "consulting"))
            and not self.leg.held
            and not self.leg.ended.is_set()
        )

    def update(self) -> bool:
        """Relay or not, as the call stands now; True while relaying."""
        direct = self._direct()
        if direct and self.caller is None:
            self.caller = self.phones.caller_of(self.call)
        caller = self.caller
        if caller is None:
            return False
        direct = direct and not caller.ended.is_set()
        target = self.leg.transport if direct else None
        if target is not None or caller.transport.peer is self.leg.transport:
            caller.transport.peer = target
        return direct

    def stop(self) -> None:
        caller = self.caller
        if caller is not None and caller.transport.peer is self.leg.transport:
            caller.transport.peer = None


def _ended(call: AgentCall) -> bool:
    return call.state is CallState.ENDED


def _transfer_settled(call: AgentCall) -> bool:
    transfer = call.transfer
    return call.state is CallState.ENDED or (
        transfer is not None and transfer.state in ("completed", "failed", "cancelled")
    )


class SipAgentPhones:
    """Rings, carries and transfers the calls of agents reached at SIP phones."""

    def __init__(
        self,
        agents: AgentDirectory,
        sessions: async_sessionmaker[AsyncSession],
        config: SipAgentConfig,
        *,
        clock: MediaClock,
        bridge: AgentBridge | None = None,
        contacts: ContactLookup | None = None,
    ) -> None:
        self.agents = agents
        self.sessions = sessions
        self.config = config
        self.clock = clock
        #: The queues' owner: queue names, a number's queue, whether numbers can be dialled.
        self.bridge = bridge
        self.contacts = contacts or store_contacts(sessions)
        self.calls: SipCalls | None = None
        #: The answered phone legs, by agent call id (inspection, tests).
        self.legs: dict[str, OutboundCall] = {}
        #: The latest REFERs' progress (what was notified), newest last (inspection, tests).
        self.refers: deque[TransferProgress] = deque(maxlen=64)
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        agents.phones = self

    def bind(self, calls: SipCalls) -> None:
        """The call layer to place calls with (built after the handlers it routes to)."""
        self.calls = calls

    def aor(self, tenant_id: str, sip_user: str) -> str:
        return f"sip:{sip_user}@{tenant_realm(tenant_id, self.config.domain)}"

    # --- which agents have phones, and whether they are registered ---------------------

    async def load(self) -> int:
        """Link every stored agent's phone into the directory; returns how many."""
        async with self.sessions() as session:
            rows = await tenants.agents_with_sip_user(session)
        for row in rows:
            assert row.sip_user is not None
            self.agents.link_phone(row.tenant_id, row.id, row.sip_user, row.skills)
        await self.refresh()
        return len(rows)

    async def refresh(self) -> None:
        """Look at the linked logins' live bindings and tell the directory who can ring."""
        phones = self.agents.phones_of()
        if not phones:
            return
        aors = {s.agent_id: self.aor(s.tenant_id, s.phone or "") for s in phones}
        async with self.sessions() as session:
            live = await sip_accounts.registered_aors(session, aors.values(), time.time())
        for agent_id, aor in aors.items():
            self.agents.phone_registered(agent_id, aor in live)

    async def start(self) -> None:
        await self.load()
        self._poller = asyncio.create_task(self._poll(), name="sip-agent-registrations")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:  # a database hiccup must not stop the polling
            log.exception("sip_agents.refresh_failed")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *filter(None, [self._poller]), return_exceptions=True)

    # --- PhoneLine ---------------------------------------------------------------------

    def linked(self, agent_id: int) -> None:
        self._spawn(self._refresh_logged())

    def ring(self, call: AgentCall, sip_user: str) -> None:
        self._spawn(self._ring_guarded(call, sip_user))

    async def _ring_guarded(self, call: AgentCall, sip_user: str) -> None:
        try:
            await self._ring(call, sip_user)
        except Exception:
            # A bad contact or a database error: this agent fails, the queue moves on.
            log.exception("sip_agents.ring_error", extra={"call": call.call_id})
            await self.agents.end_call(call.call_id, "failed")

    async def _ring(self, call: AgentCall, sip_user: str) -> None:
        calls = self.calls
        realm = tenant_realm(call.tenant_id, self.config.domain)
        contacts = [] if calls is None else await self.contacts(call.tenant_id, self.aor(
            call.tenant_id, sip_user
        ))  # fmt: skip
        if not contacts or calls is None:
            self.agents.phone_registered(call.agent_id, False)
            await self.agents.end_call(call.call_id, "unreachable")
            return
        if _ended(call):
            return
        # The phone is the tenant user it registered as: as such it may REFER the caller.
        identity = CallerIdentity(Caller.USER, call.tenant_id, sip_user, realm)
        leg = await self._place(calls, call, contacts[:MAX_FORK], identity, realm)
        if leg is not None:
            await self._connected(call, leg)

    async def _place(
        self,
        calls: SipCalls,
        call: AgentCall,
        contacts: list[Binding],
        identity: CallerIdentity,
        realm: str,
    ) -> OutboundCall | None:
        """INVITE every contact; the first answer wins. None: nobody answered (call ended)."""
        # What the phone shows: the caller's number masked, as the softphone page does.
        shown = mask_number(call.caller) if E164_USER.match(call.caller) else "anonymous"
        placing = {
            asyncio.create_task(
                calls.place_call(
                    parse_uri(contact.contact.strip().strip("<>")),
                    contact.source,
                    caller=f"sip:{shown}@{realm}",
                    tenant_id=call.tenant_id,
                    answer_timeout=self.config.answer_timeout,
                    identity=identity,
                )
            )
            for contact in contacts
        }
        ended = asyncio.create_task(call.until(_ended))
        answered: OutboundCall | None = None
        failures: list[int] = []
        try:
            pending: set[asyncio.Task[Any]] = {*placing, ended}
            while placing & pending and answered is None and not ended.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done & placing:
                    result = task.result()
                    if isinstance(result, CallFailed):
                        failures.append(result.status)
                    elif answered is None:
                        answered = result
                    else:
                        result.hang_up()  # a second contact answered too: the first won
        finally:
            ended.cancel()
            unanswered = [task for task in placing if not task.done()]
            for task in unanswered:
                task.cancel()  # place_call CANCELs the INVITE as it unwinds
            for task in unanswered:
                with contextlib.suppress(asyncio.CancelledError):
                    result = await task
                    if isinstance(result, OutboundCall):
                        result.hang_up()
        if answered is not None and _ended(call):
            answered.hang_up()  # the queue gave up on this ring as the phone answered
            return None
        if answered is None and not _ended(call):
            # A definite no (busy, decline) speaks for the login over a contact's error.
            status = next((s for s in failures if s in (486, 600, 603)), failures[-1])
            reason = END_REASONS.get(status, f"sip_{status}")
            log.info("sip_agents.ring_failed", extra={"call": call.call_id, "status": status})
            await self.agents.end_call(call.call_id, reason)
        return answered

    async def _connected(self, call: AgentCall, leg: OutboundCall) -> None:
        """The phone answered: carry the call's audio until either side ends it."""
        self.agents.phone_answered(call)
        if call.state is not CallState.ACTIVE:
            leg.hang_up()
            return
        log.info("sip_agents.answered", extra={"call": call.call_id, "agent": call.agent_id})
        self.legs[call.call_id] = leg
        leg.refer_route = lambda uri, _who: self._refer_route(call, uri)
        leg.on_transfer = lambda request: self._spawn(self._transfer(call, request))
        media = leg.media(self.clock)
        from_phone = asyncio.create_task(self._from_phone(media, call))
        to_phone = asyncio.create_task(self._to_phone(call, leg, _CallerRelay(self, call, leg)))
        call_over = asyncio.create_task(call.until(_ended))
        phone_gone = asyncio.create_task(leg.ended.wait())
        try:
            await asyncio.wait({call_over, phone_gone}, return_when=asyncio.FIRST_COMPLETED)
            if phone_gone.done() and not _ended(call):
                if call.transfer is not None and call.transfer.state == "ringing":
                    # The phone let go after its REFER: the transfer decides what follows.
                    async with asyncio.timeout(_TRANSFER_OUTCOME_SECONDS):
                        await call.until(_transfer_settled)
                await self.agents.end_call(call.call_id, "agent_hangup")
        finally:
            to_phone.cancel()
            from_phone.cancel()
            call_over.cancel()
            phone_gone.cancel()
            leg.hang_up()
            self.legs.pop(call.call_id, None)

    def caller_of(self, call: AgentCall) -> CallLeg | None:
        """The caller's SIP leg the bridge connects ``call`` to now, if any."""
        bridge, calls = self.bridge, self.calls
        sip_call = None if bridge is None else bridge.sip_call_of(call)
        return None if sip_call is None or calls is None else calls.calls.get(sip_call)

    @staticmethod
    async def _from_phone(media: RtpCallMedia, call: AgentCall) -> None:
        party = media.caller_party  # the far end of this leg: the agent's phone
        async for frame in media.frames():
            if frame.party == party and len(frame.pcm) == FRAME_BYTES:
                call.from_agent_audio(frame.pcm)

    @staticmethod
    async def _to_phone(call: AgentCall, leg: OutboundCall, relay: _CallerRelay) -> None:
        """What the call routes to the agent, onto the phone's leg.

        While the phone talks to the caller directly, the caller's RTP is relayed into
        the phone's leg as it arrives (:class:`_CallerRelay`). Otherwise (a transfer's
        hold or consult) the call's source is followed as it is fed, as a softphone
        follows it.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while not leg.ended.is_set() and call.state is not CallState.ENDED:
                due += FRAME_SECONDS
                direct = relay.update()
                pcm = await call.source.wait_frame(due)  # drained while relaying, too
                now = loop.time()
                if now - due > _RESYNC_SECONDS:
                    due = now  # the loop stalled: count afresh rather than race to catch up
                if pcm is not None and not direct and not leg.held and not leg.ended.is_set():
                    leg.transport.send_pcm(pcm)
        finally:
            relay.stop()

    # --- REFER from the phone ------------------------------------------------------------

    async def _targets(self, call: AgentCall, uri: URI) -> TenantTargets:
        tenant_id = call.tenant_id
        owner: str | None = None
        queue: str | None = None
        user = uri.user if isinstance(uri, SipURI) else None
        bridge = self.bridge
        if user is not None and E164_USER.match(user):
            calls = self.calls
            owner = None if calls is None else await calls.router.number_owner(user)
            if owner == tenant_id and bridge is not None:
                queue = bridge.table.for_call(tenant_id, user).name
        of_tenant = self.agents.sessions(tenant_id)
        return TenantTargets(
            realm=tenant_realm(tenant_id, self.config.domain),
            from_agent=call.agent_id,
            phones={s.phone: s.agent_id for s in of_tenant if s.phone is not None},
            agents=frozenset(s.agent_id for s in of_tenant),
            available=frozenset(self.agents.available_agents(tenant_id)),
            queues=bridge.queue_names(tenant_id) if bridge is not None else frozenset(),
            can_dial=bridge is not None and bridge.dial is not None,
            number_owner=owner,
            number_queue=queue,
            tenant_id=tenant_id,
        )

    async def _refer_route(self, call: AgentCall, uri: URI) -> Route | Refusal:
        """The leg's REFER check: refused targets get their status and the call goes on."""
        consult = call.from_agent is not None
        if call.control is None or call.state is not CallState.ACTIVE or consult:
            return Refusal(403, "Not Transferable Now")
        target = refer_target(uri, await self._targets(call, uri))
        if isinstance(target, Refusal):
            return target
        return Route(Service.AGENT_QUEUE, call.tenant_id, None)

    async def _transfer(self, call: AgentCall, request: TransferRequested) -> None:
        progress = request.progress
        self.refers.append(progress)
        target = refer_target(request.target, await self._targets(call, request.target))
        control = call.control
        if isinstance(target, Refusal) or control is None:
            # Taken (or gone) between the REFER's check and now.
            status, reason = (
                (target.status, target.reason) if isinstance(target, Refusal) else (403, "")
            )
            progress.report(status, reason or "Forbidden")
            return
        log.info(
            "sip_agents.refer",
            extra={"call": call.call_id, "agent": call.agent_id, "target": target.kind.value},
        )
        if not await self._start_transfer(call, target, request):
            return
        try:
            async with asyncio.timeout(_TRANSFER_OUTCOME_SECONDS):
                await call.until(_transfer_settled)
        except TimeoutError:
            progress.report(408, "Request Timeout")
            return
        transfer = call.transfer
        if call.state is CallState.ENDED and call.ended_reason == "transferred":
            progress.report(200, "OK")
        elif transfer is not None and transfer.state in ("failed", "cancelled"):
            progress.report(*self._failure(transfer.reason))
        else:
            progress.report(487, "Request Terminated")  # the caller hung up meanwhile

    @staticmethod
    async def _start_transfer(
        call: AgentCall, target: TransferTarget, request: TransferRequested
    ) -> bool:
        assert call.control is not None
        try:
            await call.control.start_transfer(call, TransferMode.BLIND, target)
        except TransferError as error:
            request.progress.report(*TRANSFER_ERRORS.get(error.code, (403, "Forbidden")))
            return False
        return True

    @staticmethod
    def _failure(reason: str | None) -> tuple[int, str]:
        if reason is not None and reason.startswith("sip_") and reason[4:].isdigit():
            status = int(reason[4:])
            if 400 <= status <= 699:
                return status, "Transfer Failed"
        return TRANSFER_FAILURES.get(reason or "", (500, "Transfer Failed"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
