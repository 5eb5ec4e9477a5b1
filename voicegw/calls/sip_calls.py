"""SIP call legs, inbound and outbound: the API the rest of voicegw handles calls with.

:class:`SipCalls` attaches to a :class:`~voicegw.calls.sip_service.SipService`
and turns each routed INVITE into an :class:`InboundCall`: the SDP offer is
answered at once (488 with a Warning when it cannot be), RTP ports are bound
from the configured range and a :class:`~voicegw.media.session.MediaLeg` runs
on them, and the service the router chose gets the call to :meth:`~InboundCall.ring`,
:meth:`~InboundCall.answer` or :meth:`~InboundCall.reject`.

An INVITE without SDP (delayed offer, §13.2.1) gets our offer in the 200 and
its answer is taken from the ACK (an ACK without a usable one: BYE, Reason 488).
A service may ring with early media (183 with our SDP, :meth:`InboundCall.ring`).

After the 200 the call owns its dialog (:class:`~voicegw.sip.dialog.Dialog`):
the 2xx is resent until the ACK (:class:`~voicegw.sip.dialog.AckWait`; BYE
after 64*T1 without one), re-INVITEs put the call on hold and back
(sendonly/inactive offers are answered recvonly/inactive and the leg stops
sending), :meth:`CallLeg.reinvite` does the same towards the peer (491 glare
retried per §14.1), INFO digits become the same
:class:`~voicegw.media.session.DtmfReceived` events as RFC 4733 digits, REFER
from an authenticated peer becomes a :class:`~voicegw.calls.transfer.TransferRequested`
(202, NOTIFYs with message/sipfrag progress; RFC 3515), BYE ends it from either
side (ours with a Reason header, the peer's Reason passed on in
:class:`CallEnded`), and an RFC 4028 session timer is honoured when the caller
asks (the caller refreshes; we send BYE if it stops).

Outbound, :meth:`SipCalls.place_call` sends our offer through a trunk or to a
registered contact, answers 401/407 with the trunk's credentials only where
:func:`~voicegw.sip.digest.credential_guard` allows, reports provisional
responses (:class:`CallProgress`; a 183 with SDP opens the media early, in an
early dialog per §12.1.2), ACKs the 2xx and returns an :class:`OutboundCall`;
both kinds share :class:`CallLeg` for everything in the dialog.

Timing: every call keeps one loop timer, re-armed to its earliest deadline
(2xx resend, session expiry, duration limit) after every input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.call_types import (
    ALLOW,
    BYE_REASONS,
    SDP,
    CallConfirmed,
    CallEnded,
    CallEvent,
    CallFailed,
    CallState,
    EndReason,
    HoldChanged,
    srtp_context,
)
from voicegw.calls.info_dtmf import INFO_DTMF, info_digit
from voicegw.calls.outbound_invite import CallProgress, EarlyMedia, LegParts, OutboundInvite
from voicegw.calls.routing import (
    Caller,
    CallerIdentity,
    Refusal,
    Route,
    Router,
    Service,
    dialled_number,
)
from voicegw.calls.sip_service import INVITE_EXTENSIONS, AuthenticatedRequest, SipService
from voicegw.calls.transfer import TransferHandler, TransferProgress, TransferRequested
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import codec_by_name
from voicegw.media.ports import PortAllocator, PortsExhausted, RtpPorts
from voicegw.media.session import DtmfReceived, LegConfig, MediaEvent, MediaLeg
from voicegw.media.transport import LegTransport, wallclock_offset
from voicegw.sip.dialog import AckWait, Dialog, DialogId, DialogState, glare_retry_delay
from voicegw.sip.digest import DigestClient
from voicegw.sip.headers import Headers, unsupported_options
from voicegw.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
)
from voicegw.sip.offer_answer import (
    Answer,
    MediaCapabilities,
    NegotiatedAudio,
    SrtpPolicy,
    answer_offer,
    apply_answer,
    create_offer,
    new_origin,
)
from voicegw.sip.refer import ReferError, ReferTo, notify_headers, read_refer, sipfrag
from voicegw.sip.sdp import CODECS, Direction, SdpError, SessionDescription
from voicegw.sip.transaction import Destination
from voicegw.sip.transaction_layer import (
    ResponseReceived,
    TransactionId,
    TransactionTimedOut,
    TransportFailed,
    response_destination,
)
from voicegw.sip.uri import URI, SipURI

log = logging.getLogger("voicegw.calls.sip_calls")

#: RFC 4028 §5: the smallest Session-Expires we accept (and announce in Min-SE).
DEFAULT_MIN_SE = 90
_HISTORY = 64  # call events kept on the call for inspection
#: How often a re-INVITE of ours is retried after 491 Request Pending (§14.1) before giving up.
GLARE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class CallOffer:
    """What an inbound call asks for; numbers in it are personal data: never log them."""

    from_uri: str
    to_uri: str
    request_uri: str
    caller: CallerIdentity
    route: Route
    #: The INVITE's offer; None when it had none (delayed offer: the answer comes in the ACK).
    remote_sdp: SessionDescription | None
    #: The outbound campaign that placed the call, for a campaign's callee taken through the
    #: inbound services (its recording-mode override applies); None for a real inbound call.
    campaign: str | None = None


@dataclass(frozen=True, slots=True)
class SipCallsConfig:
    #: Address RTP binds to and SDP advertises (an IP literal).
    media_address: str = "127.0.0.1"
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    min_session_expires: int = DEFAULT_MIN_SE
    #: Calls longer than this get our BYE (None: no limit).
    max_call_seconds: float | None = None
    #: SDES-SRTP when we answer: OPTIONAL takes RTP/SAVP and crypto-bearing offers.
    srtp: SrtpPolicy = SrtpPolicy.OPTIONAL
    #: SDES-SRTP in the offers of our outbound calls (plain RTP unless a trunk needs it).
    offer_srtp: SrtpPolicy = SrtpPolicy.DISABLED


CallHandler = Callable[["InboundCall"], Awaitable[None]]
#: Decides where a REFER from a leg's peer may send the call (the router's signature).
ReferRoute = Callable[[URI, CallerIdentity], Awaitable[Route | Refusal]]


@dataclass(frozen=True, slots=True)
class CallSetup:
    """An INVITE that passed routing and offer/answer: what its call leg is built from."""

    transaction: TransactionId
    invite: SipRequest
    source: Destination
    offer: CallOffer
    ports: RtpPorts
    #: Our answer to the INVITE's offer; for a delayed offer (``delayed``), our offer
    #: and what the leg assumes until the ACK brings the answer.
    answer: Answer
    session_expires: int | None
    delayed: bool = False


def _session_expires(request: SipRequest) -> int | None:
    raw = request.headers.get("Session-Expires")
    if raw is None:
        return None
    seconds = raw.split(";")[0].strip()
    return int(seconds) if seconds.isdigit() and len(seconds) <= 10 else None


def _supports_timer(request: SipRequest) -> bool:
    options = request.headers.values("Supported") + request.headers.values("Require")
    return any(option.strip().lower() == "timer" for option in options)


class CallLeg:
    """One call leg's dialog and media, whichever side set it up: hold, INFO, REFER, BYE, timers.

    ``identity`` is who the far end of this leg is (an inbound leg's authenticated
    caller, or the user an outbound leg was placed to); only an authenticated
    identity may transfer the call (REFER), and only to what it could call itself.
    """

    def __init__(
        self,
        calls: SipCalls,
        call_id: str,
        *,
        tenant_id: str,
        identity: CallerIdentity | None,
        source: Destination,
        ports: RtpPorts,
        transport: LegTransport,
        audio: NegotiatedAudio,
        local_sdp: SessionDescription,
        tag: str,
    ) -> None:
        self.id = call_id
        self.tenant_id = tenant_id
        self.identity = identity
        self.state = CallState.CONFIRMED
        self.transport = transport
        self.audio = audio
        self.local_sdp = local_sdp
        self.dialog: Dialog | None = None
        self.end_reason: EndReason | None = None
        self.ended = asyncio.Event()
        self.confirmed = asyncio.Event()
        #: Told of every call event on the event loop; keep it quick.
        self.on_event: Callable[[CallEvent], None] | None = None
        #: Takes this leg's accepted REFERs (:class:`~voicegw.calls.transfer.TransferRequested`);
        #: None: a REFER gets 403.
        self.on_transfer: TransferHandler | None = None
        #: Decides a REFER's target instead of the call layer's router (an agent's phone
        #: transfers to agents, queues and numbers by the agents' rules); None: the router.
        self.refer_route: ReferRoute | None = None
        self.events: deque[CallEvent] = deque(maxlen=_HISTORY)
        self._calls = calls
        self._source = source
        self._ports = ports
        self._tag = tag
        self._session_expires: int | None = None
        self._ack_wait: AckWait | None = None
        self._bye_after_ack: EndReason | None = None
        self._limit_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._call_media: RtpCallMedia | None = None
        self._bye_reason: str | None = None  # a Reason header to send instead of ours
        self._peer_reason: str | None = None  # the Reason of the peer's BYE
        # The offer we put in a 2xx (the INVITE had none): its answer comes in the ACK.
        self._offer_in_2xx: SessionDescription | None = None
        self._reinvite_lock = asyncio.Lock()
        self._reinvite_tid: TransactionId | None = None
        self._reinvite_result: asyncio.Future[SipResponse | None] | None = None
        self._reinvite_ack: SipRequest | None = None
        transport.on_event = self._on_media_event
        transport.held = not self.audio.direction.sends
        transport.srtp = srtp_context(audio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.state.value})"

    @property
    def held(self) -> bool:
        return self.transport.held

    def hang_up(
        self, reason: EndReason = EndReason.LOCAL_HANGUP, reason_header: str | None = None
    ) -> None:
        """End the call from our side with BYE.

        ``reason_header`` (RFC 3326) replaces the Reason we would send for ``reason``:
        a bridge passes on the other leg's, so the cause reaches the far end.
        """
        self._bye_reason = reason_header
        if self.state is CallState.ANSWERED:
            # §15: no BYE before the ACK (or its timeout) on the callee side.
            self._bye_after_ack = reason
        elif self.state is CallState.CONFIRMED:
            self._send_bye(reason)

    def media(self, clock: MediaClock) -> RtpCallMedia:
        """The call's media as the consent flow sees it (prompts, keys, frames, end)."""
        if self._call_media is None:
            self._call_media = RtpCallMedia(self.transport, clock)
            if self.ended.is_set():
                self._call_media.hang_up()
        return self._call_media

    # --- from SipCalls ----------------------------------------------------------------------

    def receive_ack(self, ack: SipRequest) -> None:
        wait = self._ack_wait
        if wait is None or not wait.receive_ack(ack):
            return
        self._ack_wait = None
        if self._offer_in_2xx is not None and not self._take_ack_answer(ack):
            # Our offer went out in the 2xx; an ACK without a usable answer ends the call.
            self.state = CallState.CONFIRMED
            self.confirmed.set()
            self._send_bye(EndReason.BAD_ANSWER)
            return
        if self.state is CallState.ANSWERED:
            self.state = CallState.CONFIRMED
            self.confirmed.set()
            self._emit(CallConfirmed())
            if self._bye_after_ack is not None:
                self._send_bye(self._bye_after_ack)
                return
        self._arm()

    def in_dialog(self, tid: TransactionId, request: SipRequest) -> None:
        dialog = self.dialog
        assert dialog is not None
        status = dialog.receive_request(request)
        if status is not None:
            self._calls.service.respond(tid, make_response(request, status))
            return
        handler = _IN_DIALOG.get(request.method)
        if handler is None:
            allow = (("Allow", ALLOW),)
            self._calls.service.respond(tid, make_response(request, 405, headers=allow))
            return
        supported = _IN_DIALOG_EXTENSIONS.get(request.method, frozenset())
        unsupported = unsupported_options(request.headers, supported)
        if unsupported:
            # RFC 3261 §8.2.2.3 holds inside a dialog too: refuse rather than act on a
            # request whose required extension we would ignore. The call goes on.
            headers = (("Unsupported", ", ".join(unsupported)),)
            self._calls.service.respond(tid, make_response(request, 420, headers=headers))
            return
        handler(self, tid, request)

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        """The fate of our in-dialog requests: a re-INVITE's answer matters, BYE's and
        NOTIFY's do not (the call ended, or the NOTIFY only reports)."""
        result = self._reinvite_result
        if event.transaction == self._reinvite_tid and result is not None:
            if isinstance(event, ResponseReceived):
                if event.response.status < 200:
                    return
                if not result.done():
                    result.set_result(event.response)
            elif not result.done():
                result.set_result(None)
            return
        ack = self._reinvite_ack
        if (
            isinstance(event, ResponseReceived)
            and ack is not None
            and 200 <= event.response.status < 300
            and event.response.cseq.method == "INVITE"
            and event.response.cseq.seq == ack.cseq.seq
            and self.dialog is not None
        ):
            # §13.2.2.4: every retransmission of the 2xx gets the ACK again.
            self._calls.service.send_stateless(ack, self._calls.hop(self.dialog, self._source))

    # --- gateway-initiated re-INVITE (§14.1) -------------------------------------------------

    async def reinvite(self, direction: Direction) -> bool:
        """Offer ``direction`` to the peer in a re-INVITE (RFC 3261 §14.1, RFC 3264 §8.4).

        ``direction`` is ours: SENDONLY puts the peer on hold (we may still send,
        e.g. music on hold, and take nothing from it), INACTIVE stops media both
        ways, SENDRECV resumes. Codec, addresses and SRTP key stay as negotiated.

        Returns True once the peer's 2xx answer is applied and ACKed (a
        :class:`HoldChanged` with ``by_peer=False`` is emitted when the direction
        changed). Returns False, the session unchanged, when the peer refuses,
        when the leg is not confirmed or has ended, or when 491 Request Pending
        (glare) came back more than :data:`GLARE_RETRIES` times; after each 491
        it waits the §14.1 interval (:func:`~voicegw.sip.dialog.glare_retry_delay`).
        A 408/481, a timeout or an unusable answer ends the call with BYE.
        Calls on one leg run one after the other.
        """
        async with self._reinvite_lock:
            for attempt in range(GLARE_RETRIES + 1):
                if attempt:
                    assert self.dialog is not None
                    owns_call_id = self.dialog.we_are_uac
                    await asyncio.sleep(glare_retry_delay(owns_call_id, random.random()))
                outcome = await self._reinvite_once(direction)
                if outcome is not None:
                    return outcome
            return False

    async def _reinvite_once(self, direction: Direction) -> bool | None:
        """One re-INVITE: True/False as :meth:`reinvite` says, None after a 491."""
        dialog = self.dialog
        if (
            self.state is not CallState.CONFIRMED
            or dialog is None
            or dialog.state is not DialogState.CONFIRMED
        ):
            return False
        if self._ack_wait is not None:
            return None  # §14.1: the peer's INVITE transaction is not over yet: like glare
        audio = self.audio
        caps = dataclasses.replace(
            self._calls.capabilities(self._ports),
            codecs=(audio.codec.name,),
            telephone_event_pt=audio.telephone_event_pt or 101,
            direction=direction,
            srtp=SrtpPolicy.DISABLED if audio.local_crypto is None else SrtpPolicy.REQUIRED,
            srtp_suites=(audio.local_crypto.suite,) if audio.local_crypto else (),
            rtcp_mux=audio.rtcp_mux,
        )
        offer = create_offer(
            caps, self.local_sdp.origin, previous=self.local_sdp, keep_crypto=audio.local_crypto
        )
        via = self._calls.via(self._source)
        headers = (("Content-Type", SDP), ("Allow", ALLOW))
        request = dialog.create_request("INVITE", via, headers=headers, body=bytes(offer))
        result: asyncio.Future[SipResponse | None] = asyncio.get_running_loop().create_future()
        self._reinvite_result = result
        self._reinvite_tid = self._calls.send_in_dialog(self, request, self._source)
        try:
            response = await result
        finally:
            self._reinvite_tid = self._reinvite_result = None
        if self.ended.is_set():
            return False
        if response is None or response.status in (408, 481):
            self._send_bye(EndReason.FAILED)  # §14.1: the dialog is gone or unreachable
            return False
        if response.status == 491:
            return None
        if response.status >= 300:
            return False
        dialog.receive_response(response, self._calls.now())
        ack = dialog.create_ack(request.cseq.seq, via)
        self._reinvite_ack = ack
        self._calls.service.send_stateless(ack, self._calls.hop(dialog, self._source))
        try:
            answered = apply_answer(offer, SessionDescription.parse(response.body), caps)
            if (answered.codec, answered.payload_type) != (audio.codec, audio.payload_type):
                raise SdpError("answer changed the codec")
        except SdpError:
            self._send_bye(EndReason.BAD_ANSWER)  # §14.1: ACK first, then end it
            return False
        self.local_sdp = offer
        self._apply(answered, by_peer=False)
        self._arm()
        return True

    # --- in-dialog requests -------------------------------------------------------------------

    def _on_bye(self, tid: TransactionId, request: SipRequest) -> None:
        self._calls.service.respond(tid, make_response(request, 200))
        self._peer_reason = request.headers.get("Reason")
        self._finish(EndReason.REMOTE_BYE)

    def _on_refer(self, tid: TransactionId, request: SipRequest) -> None:
        handler, identity = self.on_transfer, self.identity
        if handler is None:
            self._calls.service.respond(tid, make_response(request, 403, "Transfer Not Available"))
            return
        if identity is None or identity.kind is Caller.PUBLIC:
            response = make_response(request, 403, "Transfer Needs Authentication")
            self._calls.service.respond(tid, response)
            return
        try:
            refer = read_refer(request)
        except ReferError as error:
            self._calls.service.respond(tid, make_response(request, error.status, error.reason))
            return
        self._calls.spawn(self._refer(tid, request, refer, identity, handler))

    async def _refer(
        self,
        tid: TransactionId,
        request: SipRequest,
        refer: ReferTo,
        identity: CallerIdentity,
        handler: TransferHandler,
    ) -> None:
        # The same table as a call: a transfer reaches nothing the referrer could not dial.
        route_uri = self.refer_route or self._calls.router.route_uri
        route = await route_uri(refer.target, identity)
        respond = self._calls.service.respond
        if self.ended.is_set():
            respond(tid, make_response(request, 481))
            return
        if isinstance(route, Refusal) or route.tenant_id != self.tenant_id:
            status, why = (route.status, route.reason) if isinstance(route, Refusal) else (403, "")
            respond(tid, make_response(request, status, f"Transfer Target {why or 'Forbidden'}"))
            log.info("sip.call.refer_refused", extra={"call": self.id, "status": status})
            return
        headers = [("Contact", self._calls.contact(self._source))]
        if not refer.subscription:
            headers.append(("Refer-Sub", "false"))  # RFC 4488 §4: no NOTIFYs will follow
        respond(tid, make_response(request, 202, headers=tuple(headers)))
        progress = TransferProgress(lambda status, reason: self._notify(refer, status, reason))
        progress.report(100, "Trying")  # §2.4.4: the first NOTIFY follows the 202 at once
        log.info(
            "sip.call.refer_accepted",
            extra={
                "call": self.id,
                "service": route.service.value,
                "attended": bool(refer.replaces),
            },
        )
        event = TransferRequested(
            self, refer.target, route, refer.replaces, refer.referred_by, progress
        )
        try:
            handler(event)
        except Exception as error:
            log.error("sip.call.transfer_handler_failed", extra={"error": type(error).__name__})
            progress.report(500, "Server Internal Error")

    def _notify(self, refer: ReferTo, status: int, reason: str) -> bool:
        dialog = self.dialog
        if self.state is CallState.ENDED or dialog is None:
            return False
        if not refer.subscription:
            return True  # RFC 4488: the referrer wants no NOTIFY; the report is only recorded
        request = dialog.create_request(
            "NOTIFY",
            self._calls.via(self._source),
            headers=notify_headers(refer.event_id, status),
            body=sipfrag(status, reason),
        )
        self._calls.send_in_dialog(self, request, self._source)
        return True

    def _on_notify(self, tid: TransactionId, request: SipRequest) -> None:
        # We send no REFER, so no subscription of ours exists (RFC 6665 §4.1.3).
        self._calls.service.respond(tid, make_response(request, 481, "No Such Subscription"))

    def _on_info(self, tid: TransactionId, request: SipRequest) -> None:
        digit = info_digit(request.content_type, request.body)
        if digit is None and request.body:
            accept = (("Accept", ", ".join(INFO_DTMF)),)
            self._calls.service.respond(tid, make_response(request, 415, headers=accept))
            return
        self._calls.service.respond(tid, make_response(request, 200))
        if digit is not None and self.transport.on_event is not None:
            # Through the transport's handler chain, like an RFC 4733 digit from the leg.
            self.transport.on_event(DtmfReceived(digit))

    def _on_options(self, tid: TransactionId, request: SipRequest) -> None:
        self._calls.service.respond(tid, make_response(request, 200))

    def _on_reinvite(self, tid: TransactionId, request: SipRequest) -> None:
        if self._ack_wait is not None or self._reinvite_tid is not None:
            # §14.2: an INVITE transaction of either side is in progress (glare if it is ours).
            self._calls.service.respond(tid, make_response(request, 491))
            return
        if request.body:
            try:
                offer = SessionDescription.parse(request.body)
                answer = answer_offer(
                    offer,
                    self._calls.capabilities(self._ports),
                    self.local_sdp.origin,
                    previous=self.local_sdp,
                    keep_crypto=self.audio.local_crypto,
                )
            except SdpError as error:
                self._calls.service.respond(tid, self._calls.not_acceptable(request, error))
                return
            self._apply(answer.audio)
            self.local_sdp = answer.sdp
        else:
            # Without an offer, ours goes in the 200 again; its answer comes in the ACK.
            self._offer_in_2xx = self.local_sdp
        self._session_expires = _session_expires(request) if _supports_timer(request) else None
        response = self._answer_to(request, 200, body=bytes(self.local_sdp), session=True)
        self._calls.service.respond(tid, response)
        now = self._calls.now()
        assert self.dialog is not None
        self.dialog.send_response(response, now)
        self._wait_for_ack(request, response, now, self._calls.source_of(tid, self._source))
        self._arm()

    def _take_ack_answer(self, ack: SipRequest) -> bool:
        """Apply the answer an ACK carries to the offer in our 2xx; False if it has none usable."""
        offer, self._offer_in_2xx = self._offer_in_2xx, None
        assert offer is not None
        try:
            if (ack.content_type or "").split(";")[0].strip().lower() != SDP:
                raise SdpError("the ACK has no SDP answer")
            caps = dataclasses.replace(
                self._calls.capabilities(self._ports),
                codecs=(self.audio.codec.name,),
                telephone_event_pt=self.audio.telephone_event_pt or 101,
            )
            audio = apply_answer(offer, SessionDescription.parse(ack.body), caps)
        except SdpError as error:
            log.info("sip.call.bad_ack_answer", extra={"call": self.id, "error": error.reason})
            return False
        self._apply(audio)
        return True

    def _apply(self, audio: NegotiatedAudio, *, by_peer: bool = True) -> None:
        previous, self.audio = self.audio, audio
        now = self._calls.now()
        remote = (audio.remote_address, audio.remote_port)
        if remote != (previous.remote_address, previous.remote_port):
            self.transport.leg.relearn(now, remote)
        if (audio.local_crypto, audio.remote_crypto) != (
            previous.local_crypto,
            previous.remote_crypto,
        ):
            self.transport.srtp = srtp_context(audio)  # re-keyed, or SRTP turned on/off
        held = not audio.direction.sends
        if held != self.transport.held or audio.direction != previous.direction:
            self.transport.held = held
            self._emit(HoldChanged(held, audio.direction, by_peer))

    # --- internals ------------------------------------------------------------------------------

    def _answer_to(
        self,
        request: SipRequest,
        status: int,
        reason: str | None = None,
        *,
        body: bytes = b"",
        session: bool = False,
    ) -> SipResponse:
        """Our response to the INVITE or a re-INVITE: our tag, Contact, session timer, SDP."""
        headers: list[tuple[str, str]] = []
        if 100 < status < 300:
            headers.append(("Contact", self._calls.contact(self._source)))
        if session:
            headers += self._session_header()
        if body:
            headers.append(("Content-Type", SDP))
        return make_response(
            request, status, reason, to_tag=self._tag, headers=tuple(headers), body=body
        )

    def _session_header(self) -> tuple[tuple[str, str], ...]:
        if self._session_expires is None:
            return ()
        return (
            ("Session-Expires", f"{self._session_expires};refresher=uac"),
            ("Require", "timer"),
        )

    def _wait_for_ack(
        self, request: SipRequest, response: SipResponse, now: float, source: Destination
    ) -> None:
        destination = response_destination(request, source)
        self._ack_wait = AckWait.start(response, destination, self._calls.service.layer.config, now)

    def _send_bye(self, reason: EndReason) -> None:
        dialog = self.dialog
        assert dialog is not None
        text = self._bye_reason or BYE_REASONS.get(reason, BYE_REASONS[EndReason.LOCAL_HANGUP])
        headers = (("Reason", text),)
        bye = dialog.create_request("BYE", self._calls.via(self._source), headers=headers)
        dialog.terminate()
        self._calls.send_in_dialog(self, bye, self._source)
        self._finish(reason)

    def _on_media_event(self, event: MediaEvent) -> None:
        if isinstance(event, DtmfReceived):
            self._emit(event)

    def _emit(self, event: CallEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state is CallState.ENDED:
            return
        deadlines = [self._limit_at]
        if self._ack_wait is not None:
            deadlines.append(self._ack_wait.get_timer())
        session = self.dialog.session if self.dialog is not None else None
        if session is not None and not session.we_refresh:
            deadlines.append(session.deadline)
        due = min((d for d in deadlines if d is not None), default=None)
        if due is not None:
            self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._calls.now()
        wait = self._ack_wait
        if wait is not None:
            gave_up = wait.handle_timer(now)
            for response in wait.take_sends():
                self._calls.service.send_stateless(response, wait.destination)
            if gave_up:
                self._ack_wait = None
                if self.state is CallState.ANSWERED:
                    self.state = CallState.CONFIRMED  # §13.3.1.4: give up waiting, then BYE
                    self._send_bye(EndReason.NO_ACK)
                    return
        session = self.dialog.session if self.dialog is not None else None
        if (
            self.state is CallState.CONFIRMED
            and session is not None
            and not session.we_refresh
            and now >= session.deadline
        ):
            self._send_bye(EndReason.SESSION_EXPIRED)
            return
        if self._limit_at is not None and now >= self._limit_at:
            self._limit_at = None
            self.hang_up(EndReason.DURATION_LIMIT)
            if self.state is CallState.ENDED:
                return
        self._arm()

    def _start_limit(self, now: float) -> None:
        limit = self._calls.config.max_call_seconds
        self._limit_at = None if limit is None else now + limit

    def _finish(self, reason: EndReason) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.end_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ack_wait = None
        if self._reinvite_result is not None and not self._reinvite_result.done():
            self._reinvite_result.set_result(None)
        self.transport.close()
        self._calls.ports.release(self._ports)
        self._calls.forget(self)
        if self._call_media is not None:
            self._call_media.hang_up()
        log.info("sip.call.ended", extra={"call": self.id, "reason": reason.value})
        self._emit(CallEnded(reason, self._peer_reason))
        self.ended.set()


#: Option tags an in-dialog request may Require of us: session timers on a re-INVITE
#: (as on the INVITE), no implicit subscription on a REFER (RFC 4488, ``Refer-Sub``).
_IN_DIALOG_EXTENSIONS: dict[str, frozenset[str]] = {
    "INVITE": INVITE_EXTENSIONS,
    "REFER": frozenset({"norefersub"}),
}
_IN_DIALOG: dict[str, Callable[[CallLeg, TransactionId, SipRequest], None]] = {
    "BYE": CallLeg._on_bye,
    "INFO": CallLeg._on_info,
    "INVITE": CallLeg._on_reinvite,
    "OPTIONS": CallLeg._on_options,
    "REFER": CallLeg._on_refer,
    "NOTIFY": CallLeg._on_notify,
}


class InboundCall(CallLeg):
    """One inbound call leg. The service that takes it rings, answers or rejects it."""

    def __init__(
        self, calls: SipCalls, call_id: str, setup: CallSetup, transport: LegTransport
    ) -> None:
        super().__init__(
            calls,
            call_id,
            tenant_id=setup.offer.route.tenant_id,
            identity=setup.offer.caller,
            source=setup.source,
            ports=setup.ports,
            transport=transport,
            audio=setup.answer.audio,
            local_sdp=setup.answer.sdp,
            tag=new_tag(),
        )
        self.state = CallState.OFFERED
        self.offer = setup.offer
        self.transaction = setup.transaction
        self._invite = setup.invite
        self._session_expires = setup.session_expires
        self._early_media = False
        if setup.delayed:
            self._offer_in_2xx = setup.answer.sdp

    # --- the service's surface ------------------------------------------------------------

    def ring(self, *, early_media: bool = False) -> None:
        """Send 180 Ringing, or with ``early_media`` 183 Session Progress with our SDP
        answer: from then on what the leg sends (a relayed ringback, an announcement)
        reaches the caller before the answer. Once per kind; a delayed-offer call
        (our offer goes in the 200) only rings.
        """
        early_media = early_media and self._offer_in_2xx is None
        # 180 then 183 is allowed: the callee's announcement may start after it rang.
        upgrade = self.state is CallState.RINGING and early_media and not self._early_media
        if self.state is not CallState.OFFERED and not upgrade:
            return
        if early_media:
            response = self._response(183, body=bytes(self.local_sdp))
        else:
            response = self._response(180)
        if not self._respond(response):
            self._finish(EndReason.CANCELLED)  # the INVITE transaction is over already
            return
        self._early_media = self._early_media or early_media
        self.state = CallState.RINGING

    def answer(self) -> None:
        """Send 200 with our SDP answer; the call is confirmed when the ACK comes."""
        if self.state not in (CallState.OFFERED, CallState.RINGING):
            return
        response = self._response(200, body=bytes(self.local_sdp), session=True)
        if not self._respond(response):
            self._finish(EndReason.CANCELLED)  # a CANCEL won the race
            return
        now = self._calls.now()
        self.dialog = Dialog.as_uas(self._invite, response, now)
        self._calls.register_dialog(self)
        self.state = CallState.ANSWERED
        self._wait_for_ack(self._invite, response, now, self._source)
        self._start_limit(now)
        self._arm()

    def reject(self, status: int, reason: str | None = None) -> None:
        """A final failure response (>= 300) before the call was answered."""
        if status < 300:
            raise ValueError("reject needs a final failure status")
        if self.state not in (CallState.OFFERED, CallState.RINGING):
            return
        self._respond(self._response(status, reason))
        self._finish(EndReason.REJECTED)

    def hang_up(
        self, reason: EndReason = EndReason.LOCAL_HANGUP, reason_header: str | None = None
    ) -> None:
        """End the call from our side: 480 before the answer, else BYE (after the ACK)."""
        if self.state in (CallState.OFFERED, CallState.RINGING):
            self._respond(self._response(480))
            self._finish(reason)
        else:
            super().hang_up(reason, reason_header)

    def cancelled(self) -> None:
        if self.state in (CallState.OFFERED, CallState.RINGING):
            self._finish(EndReason.CANCELLED)

    def _response(
        self,
        status: int,
        reason: str | None = None,
        *,
        body: bytes = b"",
        session: bool = False,
    ) -> SipResponse:
        return self._answer_to(self._invite, status, reason, body=body, session=session)

    def _respond(self, response: SipResponse) -> bool:
        return self._calls.service.respond(self.transaction, response)


class OutboundCall(CallLeg):
    """A call we placed and the callee answered (ACK sent): media flows both ways."""

    def __init__(
        self,
        calls: SipCalls,
        call_id: str,
        dialog: Dialog,
        *,
        tenant_id: str,
        identity: CallerIdentity | None,
        source: Destination,
        ports: RtpPorts,
        transport: LegTransport,
        audio: NegotiatedAudio,
        local_sdp: SessionDescription,
    ) -> None:
        assert dialog.local.tag is not None
        super().__init__(
            calls,
            call_id,
            tenant_id=tenant_id,
            identity=identity,
            source=source,
            ports=ports,
            transport=transport,
            audio=audio,
            local_sdp=local_sdp,
            tag=dialog.local.tag,
        )
        self.dialog = dialog
        self.confirmed.set()


class SipCalls:
    """The call layer of one SIP service: routes INVITEs to services, owns the calls."""

    def __init__(
        self,
        service: SipService,
        router: Router,
        ports: PortAllocator,
        services: Mapping[Service, CallHandler],
        config: SipCallsConfig | None = None,
    ) -> None:
        self.service = service
        self.router = router
        self.ports = ports
        self.services = dict(services)
        self.config = config or SipCallsConfig()
        #: Told of every new call before its service handler runs (metrics, tests).
        self.on_call: Callable[[InboundCall], None] | None = None
        self.calls: dict[str, CallLeg] = {}
        self._by_invite: dict[TransactionId, InboundCall] = {}
        self._by_dialog: dict[DialogId, CallLeg] = {}
        self._by_client: dict[TransactionId, CallLeg | OutboundInvite] = {}
        self._outbound: dict[str, OutboundInvite] = {}
        self._sources: dict[TransactionId, Destination] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    def attach(self) -> None:
        """Become the service's INVITE handler and in-dialog request sink."""
        self.service.on_invite = self._on_authenticated_invite
        self.service.dialogs = self

    async def close(self) -> None:
        """Hang every call up and stop the service handlers."""
        for call in list(self.calls.values()):
            call.hang_up()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # --- SipService.dialogs ------------------------------------------------------------------

    def in_dialog(
        self, transaction: TransactionId | None, request: SipRequest, source: Destination
    ) -> bool:
        dialog_id = DialogId.of_request(request)
        call = None if dialog_id is None else self._by_dialog.get(dialog_id)
        if request.method == "ACK":
            if call is not None:
                call.receive_ack(request)
            # An ACK to a non-2xx final is the transaction's business: consumed either way.
            return call is not None or transaction is not None
        if call is None or transaction is None:
            return False
        self._sources[transaction] = source
        try:
            call.in_dialog(transaction, request)
        finally:
            self._sources.pop(transaction, None)
        return True

    def cancelled(self, transaction: TransactionId) -> None:
        call = self._by_invite.get(transaction)
        if call is not None:
            call.cancelled()

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        owner = self._by_client.get(event.transaction)
        if owner is None:
            return
        final = not isinstance(event, ResponseReceived) or event.response.status >= 200
        invite_2xx = (
            isinstance(event, ResponseReceived)
            and event.response.cseq.method == "INVITE"
            and 200 <= event.response.status < 300
        )
        if final and not invite_2xx and isinstance(owner, CallLeg):
            # Our BYE/NOTIFY: one answer is all we wait for. A re-INVITE's 2xx may come
            # again (its ACK is resent), so that one stays until the call ends.
            del self._by_client[event.transaction]
        owner.client_event(event)

    def track_client(self, transaction: TransactionId, owner: CallLeg | OutboundInvite) -> None:
        self._by_client[transaction] = owner

    # --- placing calls --------------------------------------------------------------------------

    async def place_call(
        self,
        target: URI,
        destination: Destination,
        *,
        caller: str,
        tenant_id: str,
        digest: DigestClient | None = None,
        answer_timeout: float = 60.0,
        identity: CallerIdentity | None = None,
        on_progress: Callable[[CallProgress], None] | None = None,
    ) -> OutboundCall | CallFailed:
        """Call ``target`` through ``destination`` (a trunk, or a registered contact's source).

        ``caller`` is our From URI; ``digest`` answers the far end's 401/407 with the trunk's
        credentials, and only when :func:`~voicegw.sip.digest.credential_guard` allows
        it. Unanswered after ``answer_timeout`` seconds, the INVITE is cancelled.
        ``identity`` is who the callee is (e.g. the tenant user called), which lets it
        transfer the call later (REFER); None: it may not. ``on_progress`` hears every
        provisional response above 100 (:class:`CallProgress`): a 18x with SDP opens the
        leg's media early (the callee's ringback or announcement arrives on
        ``early_media``) and the answered call keeps using it.
        """
        try:
            ports = self.ports.allocate()
        except PortsExhausted:
            return CallFailed(503, "No RTP ports")
        caps = self.capabilities(ports, self.config.offer_srtp)
        offer = create_offer(caps, new_origin(self.config.media_address))
        from_tag = new_tag()
        pairs = [
            ("Via", f"{self.via(destination)};branch={new_branch()}"),
            ("Max-Forwards", "70"),
            ("From", f"<{caller}>;tag={from_tag}"),
            ("To", f"<{target}>"),
            ("Call-ID", new_call_id(self.config.media_address)),
            ("CSeq", "1 INVITE"),
            ("Contact", self.contact(destination)),
            ("Allow", "INVITE, ACK, CANCEL, BYE, INFO, OPTIONS"),
            ("Content-Type", SDP),
        ]
        request = SipRequest(
            method="INVITE", uri=target, headers=Headers.of(pairs), body=bytes(offer)
        )
        pending = OutboundInvite(self, request, destination, digest)
        early = EarlyMedia(self, offer, caps, ports, on_progress)
        pending.on_provisional = early.provisional
        call_id = f"call-{next(self._ids)}"
        self._outbound[call_id] = pending
        pending.send()
        try:
            result = await self._final(pending, answer_timeout)
            if isinstance(result, CallFailed):
                await early.close()
                self._forget_outbound(call_id)
                self.ports.release(ports)
                return result
            leg = LegParts(offer, caps, ports, tenant_id, identity)
            return await self._outbound_leg(call_id, pending, result, leg, early)
        except asyncio.CancelledError:
            if not pending.result.done():
                # Whoever placed the call gave up (a bridged caller hung up): CANCEL (§9.1).
                self.service.cancel(pending.transaction)
            await asyncio.shield(early.close())
            self._forget_outbound(call_id)
            self.ports.release(ports)
            raise
        except BaseException:
            await early.close()
            self._forget_outbound(call_id)
            self.ports.release(ports)
            raise

    async def _final(
        self, pending: OutboundInvite, answer_timeout: float
    ) -> SipResponse | CallFailed:
        try:
            return await asyncio.wait_for(asyncio.shield(pending.result), answer_timeout)
        except TimeoutError:
            self.service.cancel(pending.transaction)
            # 487 (or a 200 that crossed the CANCEL) comes back; Timer B bounds the wait.
            return await asyncio.wait_for(pending.result, self.service.layer.config.timeout)

    async def _outbound_leg(
        self,
        call_id: str,
        pending: OutboundInvite,
        response: SipResponse,
        parts: LegParts,
        early: EarlyMedia,
    ) -> OutboundCall | CallFailed:
        dialog = pending.dialog
        assert dialog is not None
        offer, caps, ports, tenant_id = parts.offer, parts.caps, parts.ports, parts.tenant_id
        transport = await early.opened()
        try:
            if response.body or early.audio is None:
                audio = apply_answer(offer, SessionDescription.parse(response.body), caps)
            else:
                audio = early.audio  # §13.2.1: the 18x's SDP was the answer
            if early.audio is not None and audio.codec != early.audio.codec:
                raise SdpError("the 2xx answer changed the early media's codec")
            leg_config = self.leg_config_for(audio)
        except SdpError:
            if transport is not None:
                transport.close()
            # Acknowledged already (§13.2.2.4); an answer we cannot use ends the call at once.
            reason = (("Reason", 'SIP;cause=488;text="Unusable SDP answer"'),)
            bye = dialog.create_request("BYE", self.via(pending.destination), headers=reason)
            dialog.terminate()
            self.service.send_request(bye, self.hop(dialog, pending.destination))
            self._forget_outbound(call_id)
            self.ports.release(ports)
            return CallFailed(488, "Not Acceptable Here")
        if transport is None:
            opened = await LegTransport.open(MediaLeg(leg_config, self.now()), ports)
            transport = opened
        elif early.audio is not None and (audio.remote_address, audio.remote_port) != (
            early.audio.remote_address,
            early.audio.remote_port,
        ):
            transport.leg.relearn(self.now(), (audio.remote_address, audio.remote_port))
        transport.peer = None  # an early-media relay ends with the answer; the bridge re-decides
        call = OutboundCall(
            self,
            call_id,
            dialog,
            tenant_id=tenant_id,
            identity=parts.identity,
            source=pending.destination,
            ports=ports,
            transport=transport,
            audio=audio,
            local_sdp=offer,
        )
        self.calls[call.id] = call
        self.register_dialog(call)
        call._start_limit(self.now())
        call._arm()
        log.info("sip.call.placed", extra={"call": call.id, "tenant_id": tenant_id})
        return call

    def _forget_outbound(self, call_id: str) -> None:
        pending = self._outbound.pop(call_id, None)
        if pending is not None:
            for tid in pending.transactions:
                self._by_client.pop(tid, None)

    async def open_invite(
        self, transaction: TransactionId, request: SipRequest, source: Destination
    ) -> bool:
        if dialled_number(request) is None:
            return False  # not a number: only authenticated users dial anything else
        caller = CallerIdentity(Caller.PUBLIC)
        route = await self.router.route(request, caller)
        if isinstance(route, Refusal):
            return False  # challenge it: with credentials it may be routable
        self._offer(transaction, request, source, caller, route)
        return True

    async def _on_authenticated_invite(
        self, service: SipService, invite: AuthenticatedRequest
    ) -> None:
        # A trunk's tenant comes from the trunk configuration, never from the request.
        kind = Caller.TRUNK if invite.trunk else Caller.USER
        caller = CallerIdentity(kind, invite.tenant_id, invite.username, invite.realm or None)
        route = await self.router.route(invite.request, caller)
        if isinstance(route, Refusal):
            response = make_response(invite.request, route.status, route.reason)
            service.respond(invite.transaction, response)
            return
        self._offer(invite.transaction, invite.request, invite.source, caller, route)

    # --- setting a call up ------------------------------------------------------------------

    def _offer(
        self,
        tid: TransactionId,
        request: SipRequest,
        source: Destination,
        caller: CallerIdentity,
        route: Route,
    ) -> None:
        handler = self.services.get(route.service)
        if handler is None:
            self.service.respond(tid, make_response(request, 404))
            return
        if not request.contact:
            self.service.respond(tid, make_response(request, 400, "Missing Contact"))
            return
        session_expires = _session_expires(request) if _supports_timer(request) else None
        minimum = self.config.min_session_expires
        if session_expires is not None and session_expires < minimum:
            headers = (("Min-SE", str(minimum)),)
            self.service.respond(tid, make_response(request, 422, headers=headers))
            return
        # Delayed offer (§13.2.1): no body at all; our offer goes in the 200, the answer in the ACK.
        delayed = not request.body and request.content_type is None
        try:
            if delayed:
                offer = None
            elif (request.content_type or "").split(";")[0].strip().lower() != SDP:
                raise SdpError("the INVITE body is not SDP")
            else:
                offer = SessionDescription.parse(request.body)
        except SdpError as error:
            self.service.respond(tid, self.not_acceptable(request, error))
            return
        try:
            ports = self.ports.allocate()
        except PortsExhausted:
            retry = (("Retry-After", str(self.service.config.retry_after)),)
            self.service.respond(tid, make_response(request, 503, headers=retry))
            return
        try:
            if offer is None:
                answer = self._delayed_offer(ports)
                # Nowhere to send until the ACK's answer says where (counted as unsent).
                leg_config = dataclasses.replace(
                    self.leg_config_for(answer.audio), remote_rtp=None, remote_rtcp=None
                )
            else:
                answer = answer_offer(
                    offer, self.capabilities(ports), new_origin(self.config.media_address)
                )
                leg_config = self.leg_config_for(answer.audio)
        except SdpError as error:
            self.ports.release(ports)
            self.service.respond(tid, self.not_acceptable(request, error))
            return
        call_offer = CallOffer(
            from_uri=str(request.from_.uri),
            to_uri=str(request.to.uri),
            request_uri=str(request.uri),
            caller=caller,
            route=route,
            remote_sdp=offer,
        )
        setup = CallSetup(
            tid, request, source, call_offer, ports, answer, session_expires, delayed=delayed
        )
        self.spawn(self._start(setup, leg_config, handler))

    def _delayed_offer(self, ports: RtpPorts) -> Answer:
        """Our offer for an INVITE without one, and what the leg assumes until the answer.

        Only our first codec is offered, so the answer cannot pick one the leg was
        not built for; the address and port are learnt from the ACK's answer.
        """
        caps = dataclasses.replace(
            self.capabilities(ports, self.config.offer_srtp), codecs=self.config.codecs[:1]
        )
        offer = create_offer(caps, new_origin(self.config.media_address))
        codec = CODECS[caps.codecs[0].lower()]
        assert codec.static_pt is not None  # every codec in CODECS has one
        assumed = NegotiatedAudio(
            media_index=0,
            remote_address="",  # unknown until the answer
            remote_port=0,
            remote_rtcp_port=0,
            rtcp_mux=caps.rtcp_mux,
            codec=codec,
            payload_type=codec.static_pt,
            telephone_event_pt=caps.telephone_event_pt,
            ptime=caps.ptime,
            direction=caps.direction,
        )
        return Answer(offer, assumed)

    async def _start(self, setup: CallSetup, leg_config: LegConfig, handler: CallHandler) -> None:
        tid, request, ports = setup.transaction, setup.invite, setup.ports
        try:
            leg = MediaLeg(leg_config, self.now())
            transport = await LegTransport.open(leg, ports)
        except OSError:
            self.ports.release(ports)
            self.service.respond(tid, make_response(request, 500))
            return
        call = InboundCall(self, f"call-{next(self._ids)}", setup, transport)
        self.calls[call.id] = call
        self._by_invite[tid] = call
        log.info(
            "sip.call.offered",
            extra={
                "call": call.id,
                "tenant_id": setup.offer.route.tenant_id,
                "caller": setup.offer.caller.kind.value,
                "service": setup.offer.route.service.value,
            },
        )
        if self.on_call is not None:
            self.on_call(call)
        try:
            await handler(call)
        except asyncio.CancelledError:
            call.hang_up()
            raise
        except Exception as error:
            log.error("sip.call.handler_failed", extra={"error": type(error).__name__})
            if call.state in (CallState.OFFERED, CallState.RINGING):
                call.reject(500)
            else:
                call.hang_up(EndReason.FAILED)

    def leg_config_for(self, audio: NegotiatedAudio) -> LegConfig:
        """The media leg's configuration for what offer/answer agreed (SdpError: no codec)."""
        codec = codec_by_name(audio.codec.name)
        if codec is None:
            raise SdpError("negotiated codec has no media implementation")
        loop = asyncio.get_running_loop()
        return LegConfig(
            codecs={audio.payload_type: codec},
            send_payload_type=audio.payload_type,
            telephone_event_payload_type=audio.telephone_event_pt,
            remote_rtp=(audio.remote_address, audio.remote_port),
            remote_rtcp=None if audio.rtcp_mux else (audio.remote_address, audio.remote_rtcp_port),
            rtcp_mux=audio.rtcp_mux,
            wallclock_offset=wallclock_offset(loop),
        )

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` as a task the layer keeps (and cancels on :meth:`close`)."""

        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- helpers for the calls --------------------------------------------------------------

    def capabilities(self, ports: RtpPorts, srtp: SrtpPolicy | None = None) -> MediaCapabilities:
        """What we offer or answer with; ``srtp`` defaults to the answering policy."""
        return MediaCapabilities(
            address=self.config.media_address,
            port=ports.rtp_port,
            codecs=self.config.codecs,
            rtcp_mux=ports.rtcp is None,
            srtp=self.config.srtp if srtp is None else srtp,
        )

    def not_acceptable(self, request: SipRequest, error: SdpError) -> SipResponse:
        """488 naming why (RFC 3261 §21.4.26, Warning 305 "Incompatible media format")."""
        host = self._listen(Destination("", 0))[0]
        text = str(error.reason).replace('"', "'")
        return make_response(request, 488, headers=(("Warning", f'305 {host} "{text}"'),))

    def contact(self, source: Destination) -> str:
        host, port = self._listen(source)
        transport = source.transport.lower()
        return f"<sip:{host}:{port};transport={transport}>"

    def via(self, source: Destination) -> str:
        host, port = self._listen(source)
        return f"SIP/2.0/{source.transport.upper()} {host}:{port};rport"

    def _listen(self, source: Destination) -> tuple[str, int]:
        bound = self.service.transports.bound
        found = getattr(bound, source.transport.lower(), None) or bound.udp or bound.tcp
        assert found is not None, "the SIP service is not listening"
        return found

    def source_of(self, tid: TransactionId, default: Destination) -> Destination:
        return self._sources.get(tid, default)

    def hop(self, dialog: Dialog, source: Destination) -> Destination:
        """Where an in-dialog request goes: the dialog's next hop (the connection, if reliable)."""
        hop = dialog.next_hop
        if source.reliable or not isinstance(hop, SipURI):
            return source
        transport = (hop.transport or source.transport).upper()
        return Destination(hop.host_bare, hop.port or 5060, transport)

    def send_in_dialog(
        self, call: CallLeg, request: SipRequest, source: Destination
    ) -> TransactionId:
        assert call.dialog is not None
        tid = self.service.send_request(request, self.hop(call.dialog, source))
        self._by_client[tid] = call
        return tid

    def register_dialog(self, call: CallLeg) -> None:
        assert call.dialog is not None
        self._by_dialog[call.dialog.id] = call

    def forget(self, call: CallLeg) -> None:
        self.calls.pop(call.id, None)
        if isinstance(call, InboundCall):
            self._by_invite.pop(call.transaction, None)
        self._forget_outbound(call.id)
        if call.dialog is not None:
            self._by_dialog.pop(call.dialog.id, None)
        for tid in [tid for tid, owner in self._by_client.items() if owner is call]:
            del self._by_client[tid]


__all__ = [
    "BYE_REASONS",
    "INFO_DTMF",
    "CallConfirmed",
    "CallEnded",
    "CallEvent",
    "CallFailed",
    "CallHandler",
    "CallLeg",
    "CallOffer",
    "CallProgress",
    "CallSetup",
    "CallState",
    "EndReason",
    "HoldChanged",
    "InboundCall",
    "OutboundCall",
    "ReferRoute",
    "SipCalls",
    "SipCallsConfig",
    "info_digit",
    "srtp_context",
]
