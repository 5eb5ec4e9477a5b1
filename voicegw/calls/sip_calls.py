"""SIP call legs, inbound and outbound: the API the rest of voicegw handles calls with.

:class:`SipCalls` attaches to a :class:`~voicegw.calls.sip_service.SipService`
and turns each routed INVITE into an :class:`InboundCall`: the SDP offer is
answered at once (488 with a Warning when it cannot be), RTP ports are bound
from the configured range and a :class:`~voicegw.media.session.MediaLeg` runs
on them, and the service the router chose gets the call to :meth:`~InboundCall.ring`,
:meth:`~InboundCall.answer` or :meth:`~InboundCall.reject`.

After the 200 the call owns its dialog (:class:`~voicegw.sip.dialog.Dialog`):
the 2xx is resent until the ACK (:class:`~voicegw.sip.dialog.AckWait`; BYE
after 64*T1 without one), re-INVITEs put the call on hold and back
(sendonly/inactive offers are answered recvonly/inactive and the leg stops
sending), INFO digits become the same :class:`~voicegw.media.session.DtmfReceived`
events as RFC 4733 digits, BYE ends it from either side (ours with a Reason
header), and an RFC 4028 session timer is honoured when the caller asks (the
caller refreshes; we send BYE if it stops).

Outbound, :meth:`SipCalls.place_call` sends our offer through a trunk or to a
registered contact, answers 401/407 with the trunk's credentials only where
:func:`~voicegw.sip.digest.credential_guard` allows, ACKs the 2xx and returns an
:class:`OutboundCall`; both kinds share :class:`CallLeg` for everything in the
dialog.

Timing: every call keeps one loop timer, re-armed to its earliest deadline
(2xx resend, session expiry, duration limit) after every input.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.routing import (
    Caller,
    CallerIdentity,
    Refusal,
    Route,
    Router,
    Service,
    dialled_number,
)
from voicegw.calls.sip_service import AuthenticatedRequest, SipService
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import codec_by_name
from voicegw.media.dtmf import EVENT_DIGITS, DtmfDigit
from voicegw.media.ports import PortAllocator, PortsExhausted, RtpPorts
from voicegw.media.session import DtmfReceived, LegConfig, MediaEvent, MediaLeg
from voicegw.media.srtp import SrtpContext
from voicegw.media.transport import LegTransport, wallclock_offset
from voicegw.sip.dialog import AckWait, Dialog, DialogId
from voicegw.sip.digest import CHALLENGE_HEADERS, AuthAttempt, AuthorizationHeader, DigestClient
from voicegw.sip.headers import Headers
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
from voicegw.sip.sdp import Direction, SdpError, SessionDescription
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

SDP = "application/sdp"
#: RFC 4028 §5: the smallest Session-Expires we accept (and announce in Min-SE).
DEFAULT_MIN_SE = 90
_HISTORY = 64  # call events kept on the call for inspection


class CallState(enum.Enum):
    OFFERED = "offered"  # routed, SDP answered internally, nothing final sent
    RINGING = "ringing"  # 180 sent
    ANSWERED = "answered"  # 200 sent, waiting for the ACK
    CONFIRMED = "confirmed"  # ACK received
    ENDED = "ended"


class EndReason(enum.Enum):
    REMOTE_BYE = "remote-bye"
    LOCAL_HANGUP = "local-hangup"
    DURATION_LIMIT = "duration-limit"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    NO_ACK = "no-ack"
    SESSION_EXPIRED = "session-expired"
    FAILED = "failed"


#: The Reason header (RFC 3326) of the BYE we send for each way we end a call.
BYE_REASONS: dict[EndReason, str] = {
    EndReason.LOCAL_HANGUP: 'Q.850;cause=16;text="Normal call clearing"',
    EndReason.DURATION_LIMIT: 'Q.850;cause=16;text="Call duration limit"',
    EndReason.NO_ACK: 'SIP;cause=408;text="No ACK for 200"',
    EndReason.SESSION_EXPIRED: 'SIP;cause=408;text="Session expired"',
    EndReason.FAILED: 'Q.850;cause=41;text="Temporary failure"',
}


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The caller's ACK arrived: media flows both ways."""


@dataclass(frozen=True, slots=True)
class HoldChanged:
    """A re-INVITE changed the stream's direction; ``held`` means we stopped sending."""

    held: bool
    direction: Direction


@dataclass(frozen=True, slots=True)
class CallEnded:
    reason: EndReason


CallEvent = CallConfirmed | HoldChanged | CallEnded | DtmfReceived


@dataclass(frozen=True, slots=True)
class CallOffer:
    """What an inbound call asks for; numbers in it are personal data: never log them."""

    from_uri: str
    to_uri: str
    request_uri: str
    caller: CallerIdentity
    route: Route
    remote_sdp: SessionDescription


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


def srtp_context(audio: NegotiatedAudio) -> SrtpContext | None:
    """The leg's SRTP keys when the negotiation chose SDES-SRTP, else None (plain RTP)."""
    local, remote = audio.local_crypto, audio.remote_crypto
    if local is None or remote is None:
        return None
    return SrtpContext.sdes(local.suite, local.key_salt, remote.key_salt)


class CallLegTransport(LegTransport):
    """A call leg's RTP sockets that go quiet while the call is held."""

    held = False
    held_drops = 0

    def send_rtp(self, data: bytes) -> None:
        if self.held:
            self.held_drops += 1  # RFC 3264 §8.4: no media towards a recvonly/inactive peer
            return
        super().send_rtp(data)


CallHandler = Callable[["InboundCall"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallSetup:
    """An INVITE that passed routing and offer/answer: what its call leg is built from."""

    transaction: TransactionId
    invite: SipRequest
    source: Destination
    offer: CallOffer
    ports: RtpPorts
    answer: Answer
    session_expires: int | None


# --- INFO digits (application/dtmf-relay, application/dtmf) ------------------------------------

_SIGNAL_RE = re.compile(r"^\s*signal\s*=\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_DURATION_RE = re.compile(r"^\s*duration\s*=\s*(\d{1,6})\s*$", re.IGNORECASE | re.MULTILINE)


def _dtmf_relay(body: str) -> tuple[str, int] | None:
    signal, duration = _SIGNAL_RE.search(body), _DURATION_RE.search(body)
    if signal is None:
        return None
    return signal.group(1), int(duration.group(1)) if duration else 0


def _dtmf_plain(body: str) -> tuple[str, int] | None:
    return body.strip(), 0


#: Content types of INFO that carry one key press, and how to read (digit, duration ms).
INFO_DTMF: dict[str, Callable[[str], tuple[str, int] | None]] = {
    "application/dtmf-relay": _dtmf_relay,
    "application/dtmf": _dtmf_plain,
}


def info_digit(content_type: str | None, body: bytes) -> DtmfDigit | None:
    """The key press an INFO carries, as the RFC 4733 receiver would report it; None if none."""
    reader = INFO_DTMF.get((content_type or "").split(";")[0].strip().lower())
    if reader is None:
        return None
    found = reader(body.decode("utf-8", "replace"))
    if found is None:
        return None
    signal, duration_ms = found
    digit = signal.upper()
    event = EVENT_DIGITS.find(digit) if len(digit) == 1 else -1
    if event < 0:
        return None
    # 8 kHz units, as telephone-event durations are; no RTP timestamp exists for it.
    return DtmfDigit(digit, event, 0, min(duration_ms * 8, 0xFFFF), 0, True)


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
    """One call leg's dialog and media, whichever side set it up: hold, INFO, BYE, timers."""

    def __init__(
        self,
        calls: SipCalls,
        call_id: str,
        *,
        source: Destination,
        ports: RtpPorts,
        transport: CallLegTransport,
        audio: NegotiatedAudio,
        local_sdp: SessionDescription,
        tag: str,
    ) -> None:
        self.id = call_id
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
        transport.on_event = self._on_media_event
        transport.held = not self.audio.direction.sends
        transport.srtp = srtp_context(audio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.state.value})"

    @property
    def held(self) -> bool:
        return self.transport.held

    def hang_up(self, reason: EndReason = EndReason.LOCAL_HANGUP) -> None:
        """End the call from our side with BYE."""
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
            allow = (("Allow", "INVITE, ACK, CANCEL, BYE, INFO, OPTIONS"),)
            self._calls.service.respond(tid, make_response(request, 405, headers=allow))
            return
        handler(self, tid, request)

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        """Our BYE's answer or timeout: the call already ended; nothing left to do."""

    # --- in-dialog requests -------------------------------------------------------------------

    def _on_bye(self, tid: TransactionId, request: SipRequest) -> None:
        self._calls.service.respond(tid, make_response(request, 200))
        self._finish(EndReason.REMOTE_BYE)

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
        if self._ack_wait is not None:
            self._calls.service.respond(tid, make_response(request, 491))  # RFC 3261 §14.2
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
        # Without an offer, ours goes in the 200 again (the answer in the ACK changes nothing).
        self._session_expires = _session_expires(request) if _supports_timer(request) else None
        response = self._answer_to(request, 200, body=bytes(self.local_sdp), session=True)
        self._calls.service.respond(tid, response)
        now = self._calls.now()
        assert self.dialog is not None
        self.dialog.send_response(response, now)
        self._wait_for_ack(request, response, now, self._calls.source_of(tid, self._source))
        self._arm()

    def _apply(self, audio: NegotiatedAudio) -> None:
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
            self._emit(HoldChanged(held, audio.direction))

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
        headers = (("Reason", BYE_REASONS.get(reason, BYE_REASONS[EndReason.LOCAL_HANGUP])),)
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
        self.transport.close()
        self._calls.ports.release(self._ports)
        self._calls.forget(self)
        if self._call_media is not None:
            self._call_media.hang_up()
        log.info("sip.call.ended", extra={"call": self.id, "reason": reason.value})
        self._emit(CallEnded(reason))
        self.ended.set()


_IN_DIALOG: dict[str, Callable[[CallLeg, TransactionId, SipRequest], None]] = {
    "BYE": CallLeg._on_bye,
    "INFO": CallLeg._on_info,
    "INVITE": CallLeg._on_reinvite,
    "OPTIONS": CallLeg._on_options,
}


class InboundCall(CallLeg):
    """One inbound call leg. The service that takes it rings, answers or rejects it."""

    def __init__(
        self, calls: SipCalls, call_id: str, setup: CallSetup, transport: CallLegTransport
    ) -> None:
        super().__init__(
            calls,
            call_id,
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

    # --- the service's surface ------------------------------------------------------------

    def ring(self) -> None:
        """Send 180 Ringing (no early media)."""
        if self.state is not CallState.OFFERED:
            return
        if not self._respond(self._response(180)):
            self._finish(EndReason.CANCELLED)  # the INVITE transaction is over already
            return
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

    def hang_up(self, reason: EndReason = EndReason.LOCAL_HANGUP) -> None:
        """End the call from our side: 480 before the answer, else BYE (after the ACK)."""
        if self.state in (CallState.OFFERED, CallState.RINGING):
            self._respond(self._response(480))
            self._finish(reason)
        else:
            super().hang_up(reason)

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


@dataclass(frozen=True, slots=True)
class CallFailed:
    """An outbound call that was not answered: the final status (408: no final response)."""

    status: int
    reason: str


class OutboundCall(CallLeg):
    """A call we placed and the callee answered (ACK sent): media flows both ways."""

    def __init__(
        self,
        calls: SipCalls,
        call_id: str,
        dialog: Dialog,
        *,
        tenant_id: str,
        source: Destination,
        ports: RtpPorts,
        transport: CallLegTransport,
        audio: NegotiatedAudio,
        local_sdp: SessionDescription,
    ) -> None:
        assert dialog.local.tag is not None
        super().__init__(
            calls,
            call_id,
            source=source,
            ports=ports,
            transport=transport,
            audio=audio,
            local_sdp=local_sdp,
            tag=dialog.local.tag,
        )
        self.tenant_id = tenant_id
        self.dialog = dialog
        self.confirmed.set()


class _OutboundInvite:
    """Our INVITE until its final response: digest retries (new CSeq, same Call-ID),
    then the ACK for the 2xx, re-sent for every retransmission of it (§13.2.2.4)."""

    def __init__(
        self,
        calls: SipCalls,
        request: SipRequest,
        destination: Destination,
        digest: DigestClient | None,
    ) -> None:
        self.calls = calls
        self.request = request
        self.destination = destination
        self.digest = digest
        self.attempt: AuthAttempt | None = None
        self.result: asyncio.Future[SipResponse | CallFailed] = (
            asyncio.get_running_loop().create_future()
        )
        self.dialog: Dialog | None = None
        self.ack: SipRequest | None = None
        self.transactions: list[TransactionId] = []

    @property
    def transaction(self) -> TransactionId:
        return self.transactions[-1]

    def send(self) -> None:
        tid = self.calls.service.send_request(self.request, self.destination)
        self.transactions.append(tid)
        self.calls.track_client(tid, self)

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        if not isinstance(event, ResponseReceived):
            self._fail(408, "Request Timeout")
            return
        response = event.response
        if response.status < 200:
            return
        if response.status < 300:
            self._accepted(response)
        elif not self._retry_with_credentials(response):
            self._fail(response.status, response.reason)

    def _accepted(self, response: SipResponse) -> None:
        if self.dialog is None:
            self.dialog = Dialog.as_uac(self.request, response, self.calls.now())
            via = self.calls.via(self.destination)
            self.ack = self.dialog.create_ack(self.request.cseq.seq, via)
        assert self.ack is not None
        hop = self.calls.hop(self.dialog, self.destination)
        self.calls.service.send_stateless(self.ack, hop)
        if not self.result.done():
            self.result.set_result(response)

    def _retry_with_credentials(self, response: SipResponse) -> bool:
        challenge = CHALLENGE_HEADERS.get(response.status)
        if challenge is None or self.digest is None:
            return False
        answer = self.digest.respond(
            response.status,
            response.headers.get_all(challenge[0]),
            method="INVITE",
            uri=str(self.request.uri),
            target_host=self.destination.host,
            attempt=self.attempt,
        )
        if not isinstance(answer, AuthorizationHeader):
            return False
        self.attempt = answer.attempt
        headers = (
            self.request.headers.set(
                "Via", f"{self.calls.via(self.destination)};branch={new_branch()}"
            )
            .set("CSeq", f"{self.request.cseq.seq + 1} INVITE")
            .set(answer.name, answer.value)
        )
        self.request = SipRequest(
            method="INVITE", uri=self.request.uri, headers=headers, body=self.request.body
        )
        self.send()
        return True

    def _fail(self, status: int, reason: str) -> None:
        if not self.result.done():
            self.result.set_result(CallFailed(status, reason))


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
        self._by_client: dict[TransactionId, CallLeg | _OutboundInvite] = {}
        self._outbound: dict[str, _OutboundInvite] = {}
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
        if final and isinstance(owner, CallLeg):
            del self._by_client[event.transaction]  # our BYE: one answer is all we wait for
        owner.client_event(event)

    def track_client(self, transaction: TransactionId, owner: CallLeg | _OutboundInvite) -> None:
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
    ) -> OutboundCall | CallFailed:
        """Call ``target`` through ``destination`` (a trunk, or a registered contact's source).

        ``caller`` is our From URI; ``digest`` answers the far end's 401/407 with the trunk's
        credentials, and only when :func:`~voicegw.sip.digest.credential_guard` allows
        it. Unanswered after ``answer_timeout`` seconds, the INVITE is cancelled.
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
        pending = _OutboundInvite(self, request, destination, digest)
        call_id = f"call-{next(self._ids)}"
        self._outbound[call_id] = pending
        pending.send()
        try:
            result = await self._final(pending, answer_timeout)
            if isinstance(result, CallFailed):
                self._forget_outbound(call_id)
                self.ports.release(ports)
                return result
            return await self._outbound_leg(call_id, pending, result, offer, caps, ports, tenant_id)
        except asyncio.CancelledError:
            if not pending.result.done():
                # Whoever placed the call gave up (a bridged caller hung up): CANCEL (§9.1).
                self.service.cancel(pending.transaction)
            self._forget_outbound(call_id)
            self.ports.release(ports)
            raise
        except BaseException:
            self._forget_outbound(call_id)
            self.ports.release(ports)
            raise

    async def _final(
        self, pending: _OutboundInvite, answer_timeout: float
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
        pending: _OutboundInvite,
        response: SipResponse,
        offer: SessionDescription,
        caps: MediaCapabilities,
        ports: RtpPorts,
        tenant_id: str,
    ) -> OutboundCall | CallFailed:
        dialog = pending.dialog
        assert dialog is not None
        try:
            audio = apply_answer(offer, SessionDescription.parse(response.body), caps)
            leg_config = self._leg_config(audio)
        except SdpError:
            # Acknowledged already (§13.2.2.4); an answer we cannot use ends the call at once.
            reason = (("Reason", 'SIP;cause=488;text="Unusable SDP answer"'),)
            bye = dialog.create_request("BYE", self.via(pending.destination), headers=reason)
            dialog.terminate()
            self.service.send_request(bye, self.hop(dialog, pending.destination))
            self._forget_outbound(call_id)
            self.ports.release(ports)
            return CallFailed(488, "Not Acceptable Here")
        leg = MediaLeg(leg_config, self.now())
        transport = await CallLegTransport.open(leg, ports)
        assert isinstance(transport, CallLegTransport)
        call = OutboundCall(
            self,
            call_id,
            dialog,
            tenant_id=tenant_id,
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
        try:
            if (request.content_type or "").split(";")[0].strip().lower() != SDP:
                raise SdpError("an SDP offer is required in the INVITE")
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
            answer = answer_offer(
                offer, self.capabilities(ports), new_origin(self.config.media_address)
            )
            leg_config = self._leg_config(answer.audio)
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
        setup = CallSetup(tid, request, source, call_offer, ports, answer, session_expires)
        self._spawn(self._start(setup, leg_config, handler))

    async def _start(self, setup: CallSetup, leg_config: LegConfig, handler: CallHandler) -> None:
        tid, request, ports = setup.transaction, setup.invite, setup.ports
        try:
            leg = MediaLeg(leg_config, self.now())
            transport = await CallLegTransport.open(leg, ports)
        except OSError:
            self.ports.release(ports)
            self.service.respond(tid, make_response(request, 500))
            return
        assert isinstance(transport, CallLegTransport)
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

    def _leg_config(self, audio: NegotiatedAudio) -> LegConfig:
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

    def _spawn(self, work: Awaitable[None]) -> None:
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

    def send_in_dialog(self, call: CallLeg, request: SipRequest, source: Destination) -> None:
        assert call.dialog is not None
        tid = self.service.send_request(request, self.hop(call.dialog, source))
        self._by_client[tid] = call

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


__all__ = [
    "BYE_REASONS",
    "INFO_DTMF",
    "CallConfirmed",
    "CallEnded",
    "CallEvent",
    "CallFailed",
    "CallHandler",
    "CallLeg",
    "CallLegTransport",
    "CallOffer",
    "CallSetup",
    "CallState",
    "EndReason",
    "HoldChanged",
    "InboundCall",
    "OutboundCall",
    "SipCalls",
    "SipCallsConfig",
    "info_digit",
    "srtp_context",
]
