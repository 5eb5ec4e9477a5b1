"""SIP-to-SIP bridging: a B2BUA from an inbound call to a registered user of the same tenant.

Two dialogs: the caller's :class:`~voicegw.calls.sip_calls.InboundCall` (leg A)
and an :class:`~voicegw.calls.sip_calls.OutboundCall` the gateway places to the
callee's best registered contact (leg B, from :func:`live_bindings
<voicegw.store.sip_accounts.live_bindings>`). B's provisional responses reach A:
180 as 180, a 183 with SDP (the callee's ringback or announcement) as a 183
with our SDP, and B's early media is relayed to A until the answer. B's answer
answers A; B's failure becomes A's final response (:data:`FAILURES`); A's
CANCEL cancels B's INVITE.

Once both are up, each leg transport's ``peer`` is the other's: a packet is
relayed from inside the receive callback, its payload untouched when both legs
use the same codec (transcoded by :meth:`MediaLeg.relay
<voicegw.media.session.MediaLeg.relay>` otherwise). Telephone events are not
audio to a media leg, so a key press arriving on one leg (RFC 4733 or INFO) is
sent again as RFC 4733 packets on the other (:class:`DigitSender`).

Hold is propagated: a leg's re-INVITE to sendonly/inactive (and back) makes
the gateway re-INVITE the other leg with the matching direction
(:meth:`CallLeg.reinvite <voicegw.calls.sip_calls.CallLeg.reinvite>`); media
is relayed into a leg only while we may send to it, so the holding side's
music on hold still reaches the held side. A BYE on either leg ends the other,
passing on the RFC 3326 Reason the BYE carried (ours when it had none).

Not done here: forking to every contact of the callee (the best-q contact is called).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.records import CallRecord, CallRecords
from voicegw.calls.routing import Caller, CallerIdentity, TenantUserLookup
from voicegw.calls.sip_calls import (
    CallEnded,
    CallEvent,
    CallFailed,
    CallProgress,
    EndReason,
    HoldChanged,
    InboundCall,
    OutboundCall,
    SipCalls,
)
from voicegw.media.dtmf import DtmfError, digit_packets
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import DtmfReceived
from voicegw.media.transport import LegTransport
from voicegw.sip.errors import SipParseError
from voicegw.sip.registrar import Binding
from voicegw.sip.sdp import Direction
from voicegw.sip.uri import SipURI, parse_uri
from voicegw.store import sip_accounts

log = logging.getLogger("voicegw.calls.bridge")

#: Finds the live contacts of an address-of-record in a tenant, best first.
ContactLookup = Callable[[str, str], Awaitable[list[Binding]]]

#: Telephone-event packets go out on this clock (RFC 4733 §7: telephone-event/8000).
_EVENT_RATE = 8000
#: Regenerated tones last what the caller pressed, within these bounds (seconds).
_MIN_DIGIT, _MAX_DIGIT, _DEFAULT_DIGIT = 0.04, 2.0, 0.1
#: Source SSRCs of regenerated digits (one per digit, see DigitSender._send).
_EVENT_SOURCE_SSRC = 0x4454_4D00


@dataclass(frozen=True, slots=True)
class Failure:
    """What the caller is told when the callee leg fails, and what the record says."""

    status: int
    reason: str
    record: str


#: The callee leg's final status -> the caller leg's, and the call record's end reason.
FAILURES: dict[int, Failure] = {
    486: Failure(486, "Busy Here", "callee-busy"),
    600: Failure(600, "Busy Everywhere", "callee-busy"),
    603: Failure(603, "Decline", "callee-declined"),
    404: Failure(404, "Not Found", "callee-unknown"),
    408: Failure(408, "Request Timeout", "callee-no-answer"),
    480: Failure(480, "Temporarily Unavailable", "callee-unavailable"),
    # Our own CANCEL after the answer timeout.
    487: Failure(480, "No Answer", "callee-no-answer"),
    488: Failure(488, "Not Acceptable Here", "callee-media-refused"),
}
DEFAULT_FAILURE = Failure(502, "Bad Gateway", "callee-failed")
NOT_REGISTERED = Failure(480, "Temporarily Unavailable", "callee-not-registered")

#: How a bridged call ended, by which leg ended first and why (for the record).
END_RECORDS: dict[tuple[str, EndReason], str] = {
    ("caller", EndReason.REMOTE_BYE): "caller-hangup",
    ("callee", EndReason.REMOTE_BYE): "callee-hangup",
}


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    #: How long the callee rings before the caller gets 480 No Answer.
    answer_timeout: float = 60.0


def callee_aor(call: InboundCall) -> str | None:
    """``sip:user@realm`` of the dialled user (the realm is the caller's, routing checked)."""
    try:
        uri = parse_uri(call.offer.request_uri)
    except SipParseError:
        return None
    if not isinstance(uri, SipURI) or uri.user is None:
        return None
    return f"sip:{uri.user}@{uri.host.lower()}"


class DigitSender:
    """Sends key presses as RFC 4733 packets on one leg, one digit after the other.

    While a digit is being sent the audio relayed into the leg is paused
    (``pause``/``resume`` callbacks), so the tone's packets and the relayed audio
    never interleave on the leg's one outgoing stream.
    """

    def __init__(self, transport: LegTransport, pause: Callable[[bool], None], name: str) -> None:
        self.transport = transport
        self.name = name
        self.sent: list[str] = []
        self._pause = pause
        self._queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue(maxsize=64)
        self._task = asyncio.create_task(self._run())
        self._seq = 0
        self._digits = 0

    def send(self, digit: str, duration: float) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a key-press flood is dropped, not queued
            self._queue.put_nowait((digit, duration))

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            digit, duration = await self._queue.get()
            await self._send(digit, duration)

    async def _send(self, digit: str, duration: float) -> None:
        transport = self.transport
        pt = transport.leg.config.telephone_event_payload_type
        if pt is None:
            log.info("bridge.dtmf_unsupported", extra={"call": self.name})
            return
        try:
            packets = digit_packets(digit, 0, duration=duration, clock_rate=_EVENT_RATE)
        except DtmfError:
            return
        loop = asyncio.get_running_loop()
        # A new source SSRC per digit makes the leg's sender rebase it onto its stream at
        # "now": each digit gets its own event timestamp, even back to back (RFC 4733 §2.5.1).
        self._digits += 1
        ssrc = (_EVENT_SOURCE_SSRC + (self._digits & 0xFF)) & 0xFFFFFFFF
        self._pause(True)
        try:
            start = loop.time()
            for packet in packets:
                delay = start + packet.offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._seq = (self._seq + 1) & 0xFFFF
                source = RtpPacket(
                    pt, self._seq, packet.timestamp, ssrc, packet.payload,
                    packet.marker,
                )  # fmt: skip
                # Renumbered onto the leg's own stream, as relayed audio is.
                data = transport.leg.sender.relay(source, pt, packet.payload, loop.time())
                transport.send_rtp(data)
            self.sent.append(digit)
            log.info("bridge.dtmf_sent", extra={"call": self.name})
        finally:
            self._pause(False)


class Bridge:
    """Two answered legs relaying media, digits, hold and hang-up to each other."""

    def __init__(self, caller: InboundCall, callee: OutboundCall, record: CallRecord | None):
        self.caller = caller
        self.callee = callee
        self.record = record
        self._paused: dict[str, bool] = {"caller": False, "callee": False}
        self._tasks: set[asyncio.Task[None]] = set()
        # Digits for a leg are sent on it; while they are, relaying *into* it pauses.
        self.to_caller = DigitSender(
            caller.transport, lambda on: self._pause("caller", on), caller.id
        )
        self.to_callee = DigitSender(
            callee.transport, lambda on: self._pause("callee", on), callee.id
        )
        caller.on_event = lambda event: self._on_event("caller", event)
        callee.on_event = lambda event: self._on_event("callee", event)
        self._relay()

    async def wait(self) -> None:
        try:
            await self.caller.ended.wait()
            await self.callee.ended.wait()
        finally:
            self.to_caller.close()
            self.to_callee.close()
            for task in self._tasks:
                task.cancel()

    def _pause(self, leg: str, on: bool) -> None:
        self._paused[leg] = on
        self._relay()

    def _relay(self) -> None:
        """Set both transports' ``peer`` from the current hold and digit state.

        Media goes into a leg only while we may send to it (not held, RFC 3264
        §8.4) and no regenerated digit is being sent on it.
        """
        a, b = self.caller.transport, self.callee.transport
        ended = self.caller.ended.is_set() or self.callee.ended.is_set()
        into_callee = not (ended or self.callee.held or self._paused["callee"])
        into_caller = not (ended or self.caller.held or self._paused["caller"])
        a.peer = b if into_callee else None
        b.peer = a if into_caller else None

    @staticmethod
    async def _propagate(leg: InboundCall | OutboundCall, direction: Direction) -> None:
        if not await leg.reinvite(direction):
            # The leg refused or ended; its own direction stays, the relay follows it.
            log.info("bridge.hold_not_propagated", extra={"call": leg.id})

    def _on_event(self, side: str, event: CallEvent) -> None:
        other = self.callee if side == "caller" else self.caller
        if isinstance(event, CallEnded):
            if self.record is not None and self.record.end_reason is None:
                self.record.end_reason = END_RECORDS.get((side, event.reason), event.reason.value)
            self._relay()
            if not other.ended.is_set():
                other.hang_up(EndReason.LOCAL_HANGUP, event.reason_header)
        elif isinstance(event, HoldChanged):
            self._relay()
            if event.by_peer and not other.ended.is_set():
                # The peer's offer seen from the other leg: its sendonly is ours there.
                task = asyncio.create_task(self._propagate(other, event.direction.reversed()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif isinstance(event, DtmfReceived) and event.digit.digit is not None:
            sender = self.to_callee if side == "caller" else self.to_caller
            duration = event.digit.duration / _EVENT_RATE or _DEFAULT_DIGIT
            sender.send(event.digit.digit, min(max(duration, _MIN_DIGIT), _MAX_DIGIT))


class BridgeService:
    """The :data:`~voicegw.calls.sip_calls.CallHandler` of ``Service.BRIDGE_USER``.

    Give it the call layer with :meth:`bind` once that exists (the layer is
    built with its handlers, this handler places calls through the layer).
    """

    def __init__(
        self,
        contacts: ContactLookup,
        *,
        records: CallRecords | None = None,
        config: BridgeConfig | None = None,
    ) -> None:
        self.contacts = contacts
        self.records = records
        self.config = config or BridgeConfig()
        self.calls: SipCalls | None = None
        #: Live bridges by caller call id (inspection, tests).
        self.bridges: dict[str, Bridge] = {}

    def bind(self, calls: SipCalls) -> None:
        self.calls = calls

    async def __call__(self, call: InboundCall) -> None:
        calls = self.calls
        assert calls is not None, "BridgeService.bind(calls) was not called"
        record = None if self.records is None else self.records.record_of(call)
        aor = callee_aor(call)
        tenant_id = call.offer.route.tenant_id
        contacts = [] if aor is None else await self.contacts(tenant_id, aor)
        if not contacts:
            self._fail(call, record, NOT_REGISTERED)
            return
        callee = await self._place(calls, call, contacts[0], record)
        if callee is None:
            return
        bridge = Bridge(call, callee, record)
        if record is not None:
            record.add_leg("callee", callee)
        self.bridges[call.id] = bridge
        try:
            call.answer()
            if call.ended.is_set():  # a CANCEL crossed the callee's answer
                callee.hang_up(EndReason.LOCAL_HANGUP)
            await bridge.wait()
        finally:
            del self.bridges[call.id]

    async def _place(
        self, calls: SipCalls, call: InboundCall, contact: Binding, record: CallRecord | None
    ) -> OutboundCall | None:
        identity = call.offer.caller
        caller_uri = (
            f"sip:{identity.username}@{identity.realm}"
            if identity.username and identity.realm
            else call.offer.from_uri
        )
        # The callee is the tenant user dialled: as such it may transfer the call (REFER).
        dialled = parse_uri(call.offer.request_uri)
        callee_identity = CallerIdentity(
            Caller.USER,
            call.offer.route.tenant_id,
            dialled.user if isinstance(dialled, SipURI) else None,
            identity.realm,
        )

        def progress(event: CallProgress) -> None:
            # 180 -> 180; 183 with SDP -> 183 with ours, and the callee's early media to A.
            call.ring(early_media=event.early_media is not None)
            if event.early_media is not None and not call.ended.is_set():
                event.early_media.peer = call.transport

        placing = asyncio.create_task(
            calls.place_call(
                parse_uri(contact.contact.strip().strip("<>")),
                contact.source,
                caller=caller_uri,
                tenant_id=call.offer.route.tenant_id,
                answer_timeout=self.config.answer_timeout,
                identity=callee_identity,
                on_progress=progress,
            )
        )
        caller_gone = asyncio.create_task(call.ended.wait())
        try:
            await asyncio.wait({placing, caller_gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            caller_gone.cancel()
        if not placing.done():
            # The caller cancelled: place_call CANCELs the callee's INVITE as it unwinds.
            placing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await placing
            return None  # the record keeps the caller leg's own reason: "cancelled"
        result = placing.result()
        if isinstance(result, CallFailed):
            self._fail(call, record, FAILURES.get(result.status, DEFAULT_FAILURE))
            return None
        if call.ended.is_set():
            result.hang_up(EndReason.LOCAL_HANGUP)
            return None
        return result

    @staticmethod
    def _fail(call: InboundCall, record: CallRecord | None, failure: Failure) -> None:
        if record is not None:
            record.end_reason = failure.record
        log.info("bridge.failed", extra={"call": call.id, "reason": failure.record})
        call.reject(failure.status, failure.reason)


def store_contacts(sessions: async_sessionmaker[AsyncSession]) -> ContactLookup:
    """A :data:`ContactLookup` over the registrar's bindings in the database."""

    async def lookup(tenant_id: str, aor: str) -> list[Binding]:
        async with sessions() as session:
            return await sip_accounts.live_bindings(session, tenant_id, aor, time.time())

    return lookup


def store_tenant_users(sessions: async_sessionmaker[AsyncSession]) -> TenantUserLookup:
    """The Router's :data:`~voicegw.calls.routing.TenantUserLookup` over the SIP credentials."""

    async def exists(tenant_id: str, realm: str, username: str) -> bool:
        async with sessions() as session:
            found = await sip_accounts.find_credential(session, realm, username)
        return found is not None and found.enabled and found.tenant_id == tenant_id

    return exists


__all__ = [
    "DEFAULT_FAILURE",
    "END_RECORDS",
    "FAILURES",
    "NOT_REGISTERED",
    "Bridge",
    "BridgeConfig",
    "BridgeService",
    "ContactLookup",
    "DigitSender",
    "Failure",
    "callee_aor",
    "store_contacts",
    "store_tenant_users",
]
