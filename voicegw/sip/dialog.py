"""Dialogs (RFC 3261 §12-15), the UAS 2xx retransmission (§13.3.1.4) and
the session timer (RFC 4028), all sans-IO.

A :class:`Dialog` is created from the request and response that establish it,
checks in-dialog requests (CSeq order, §12.2.2), builds in-dialog requests
(§12.2.1.1) and follows target refreshes. :class:`AckWait` resends the UAS's
2xx until the ACK arrives. Neither reads the clock.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from voicegw.sip import grammar
from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import Headers, NameAddress
from voicegw.sip.message import SipRequest, SipResponse, new_branch
from voicegw.sip.timers import TimerConfig
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import URI, SipURI

# §12.2: requests that may change the remote target (RFC 3261 INVITE, RFC 3311
# UPDATE, RFC 6665 SUBSCRIBE/NOTIFY, RFC 3515 REFER) and so carry our Contact.
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
# Methods whose CSeq is not a new number in the dialog (they reuse the INVITE's).
SAME_CSEQ_METHODS = frozenset({"ACK", "CANCEL"})
# §12.2.1.2: a 481 or 408 to an in-dialog request ends the dialog.
DIALOG_ENDING_STATUSES = frozenset({408, 481})
MAX_FORWARDS = "70"


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag, remote tag, from this side's point of view."""

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def of_request(cls, request: SipRequest) -> DialogId | None:
        """The dialog an incoming request belongs to (we are the To side); None outside one."""
        local, remote = request.to.tag, request.from_.tag
        if local is None or remote is None:
            return None
        return cls(request.call_id, local, remote)

    @classmethod
    def of_response(cls, response: SipResponse) -> DialogId | None:
        """The dialog a response to our request belongs to (we are the From side)."""
        local, remote = response.from_.tag, response.to.tag
        if local is None or remote is None:
            return None
        return cls(response.call_id, local, remote)


# --- RFC 4028 session timer ------------------------------------------------------------------

_SESSION_EXPIRES_RE = re.compile(r"[ \t]*(?P<seconds>\d{1,10})(?P<params>.*)", re.DOTALL)
REFRESHERS = frozenset({"uac", "uas"})


@dataclass(frozen=True, slots=True)
class SessionTimer:
    """A negotiated RFC 4028 session interval and who refreshes it.

    ``we_refresh`` is from this side's point of view: the refresher sends a
    re-INVITE/UPDATE at half the interval (§7.4, §9); the other side sends
    BYE if no refresh came by ``min(32, interval/3)`` before expiry (§10).
    """

    interval: int
    refresher: str
    we_refresh: bool
    started_at: float

    @classmethod
    def from_response(
        cls, response: SipResponse, we_are_uac: bool, now: float
    ) -> SessionTimer | None:
        """The session timer a 2xx to an INVITE/UPDATE negotiated, None if it has none."""
        raw = response.headers.get("Session-Expires")
        if raw is None:
            return None
        m = _SESSION_EXPIRES_RE.fullmatch(raw)
        if m is None:
            return None
        try:
            params = grammar.parse_params(m.group("params"))
        except SipParseError:
            return None  # a header we cannot read negotiates nothing
        refresher = (params.get("refresher") or "").lower()
        # RFC 4028 §7.2: a 2xx without a refresher leaves the refreshing to the UAC.
        if refresher not in REFRESHERS:
            refresher = "uac"
        interval = int(m.group("seconds"))
        if interval <= 0:
            return None
        return cls(interval, refresher, (refresher == "uac") == we_are_uac, now)

    @property
    def expires_at(self) -> float:
        return self.started_at + self.interval

    @property
    def deadline(self) -> float:
        """When to act: refresh (if we refresh) or send BYE (if the peer failed to)."""
        if self.we_refresh:
            return self.started_at + self.interval / 2
        return self.expires_at - min(32.0, self.interval / 3)


# --- the dialog ---------------------------------------------------------------------------------


def _contact_uri(message: SipRequest | SipResponse) -> URI | None:
    contacts = message.contact
    return contacts[0].uri if contacts else None


@dataclass(eq=False, slots=True)
class Dialog:
    """One dialog's state (§12.1): ids, route set, remote target and CSeq counters."""

    id: DialogId
    state: DialogState
    local: NameAddress  # our From in requests we send, with our tag
    remote: NameAddress  # our To in requests we send, with the peer's tag
    remote_target: URI
    route_set: tuple[NameAddress, ...]
    local_cseq: int | None
    remote_cseq: int | None
    we_are_uac: bool
    local_contact: NameAddress | None = None
    secure: bool = False
    session: SessionTimer | None = None

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse, now: float) -> Dialog:
        """§12.1.2: from our dialog-creating request and a 101-299 response with a To tag."""
        dialog_id = DialogId.of_response(response)
        if dialog_id is None or not 101 <= response.status < 300:
            raise ValueError("a dialog needs a 101-299 response with From and To tags")
        contacts = request.contact
        dialog = cls(
            id=dialog_id,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            local=request.from_,
            remote=response.to,
            remote_target=_contact_uri(response) or request.uri,
            route_set=tuple(reversed(response.record_route)),
            local_cseq=request.cseq.seq,
            remote_cseq=None,
            we_are_uac=True,
            local_contact=contacts[0] if contacts else None,
            secure=request.uri.scheme == "sips",
        )
        if response.status >= 200:
            dialog.session = SessionTimer.from_response(response, True, now)
        return dialog

    @classmethod
    def as_uas(cls, request: SipRequest, response: SipResponse, now: float) -> Dialog:
        """§12.1.1: from the request we received and our 101-299 response with our tag."""
        local = response.to
        remote_tag = request.from_.tag
        if local.tag is None or remote_tag is None or not 101 <= response.status < 300:
            raise ValueError("a dialog needs a 101-299 response with our tag and a From tag")
        contacts = response.contact
        remote_target = _contact_uri(request)
        if remote_target is None:
            raise ValueError("a dialog-creating request needs a Contact")
        dialog = cls(
            id=DialogId(request.call_id, local.tag, remote_tag),
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            local=local,
            remote=request.from_,
            remote_target=remote_target,
            route_set=request.record_route,
            local_cseq=None,
            remote_cseq=request.cseq.seq,
            we_are_uac=False,
            local_contact=contacts[0] if contacts else None,
            secure=request.uri.scheme == "sips",
        )
        if response.status >= 200:
            dialog.session = SessionTimer.from_response(response, False, now)
        return dialog

    # --- incoming -----------------------------------------------------------------------------

    def receive_request(self, request: SipRequest) -> int | None:
        """§12.2.2: check an in-dialog request; the status to reject it with, or None.

        A CSeq lower than the last one seen is out of order (500); a request
        in a terminated dialog gets 481. ACK and CANCEL reuse the INVITE's
        number and are not counted. A target refresh takes the remote target
        from its Contact; a BYE ends the dialog.
        """
        if request.method in SAME_CSEQ_METHODS:
            return None
        if self.state is DialogState.TERMINATED:
            return 481  # §12.2.2: the dialog is gone (e.g. a request crossing our BYE)
        seq = request.cseq.seq
        if self.remote_cseq is not None and seq < self.remote_cseq:
            return 500
        self.remote_cseq = seq
        if request.method in TARGET_REFRESH_METHODS:
            self.remote_target = _contact_uri(request) or self.remote_target
        if request.method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def receive_response(self, response: SipResponse, now: float) -> None:
        """A response to a request of ours in this dialog (or to the one that created it)."""
        method = response.cseq.method
        if response.status in DIALOG_ENDING_STATUSES and self.state is DialogState.CONFIRMED:
            self.state = DialogState.TERMINATED
            return
        if 200 <= response.status < 300 and self.state is DialogState.EARLY and self.we_are_uac:
            # §13.2.2.4: confirming an early dialog recomputes its route set from the 2xx.
            self.state = DialogState.CONFIRMED
            self.route_set = tuple(reversed(response.record_route))
        elif response.status >= 300 and self.state is DialogState.EARLY:
            self.state = DialogState.TERMINATED  # §12.3: a non-2xx final ends early dialogs
            return
        if method in TARGET_REFRESH_METHODS and 101 <= response.status < 300:
            self.remote_target = _contact_uri(response) or self.remote_target
        if 200 <= response.status < 300 and method in ("INVITE", "UPDATE"):
            self.session = SessionTimer.from_response(response, self.we_are_uac, now) or (
                self.session
            )

    def send_response(self, response: SipResponse, now: float) -> None:
        """Our (UAS) response to the dialog-creating INVITE or a re-INVITE/UPDATE:
        a 2xx confirms an early dialog and may set the session timer; a final
        failure ends an early dialog (§12.1.1, §12.3)."""
        if 200 <= response.status < 300:
            if self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED
            if response.cseq.method in ("INVITE", "UPDATE"):
                timer = SessionTimer.from_response(response, self.we_are_uac, now)
                self.session = timer or self.session
        elif response.status >= 300 and self.state is DialogState.EARLY:
            self.state = DialogState.TERMINATED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    # --- outgoing -----------------------------------------------------------------------------

    @property
    def next_hop(self) -> URI:
        """Where an in-dialog request goes first: the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def create_request(
        self,
        method: str,
        via: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> SipRequest:
        """§12.2.1.1: a new in-dialog request (BYE, re-INVITE, INFO, UPDATE ...).

        ``via`` is our sent-by part (``SIP/2.0/UDP 192.0.2.4:5060;rport``); a
        fresh branch is added. Not for ACK (see :meth:`create_ack`) or CANCEL.
        """
        if method in SAME_CSEQ_METHODS:
            raise ValueError("ACK and CANCEL are not new in-dialog requests")
        # §12.2.1.1: an empty local sequence number (UAS side) starts anywhere; we pick 1.
        self.local_cseq = (self.local_cseq or 0) + 1
        return self._build(method, via, self.local_cseq, headers, body)

    def create_ack(
        self,
        invite_cseq: int,
        via: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> SipRequest:
        """§13.2.2.4: the ACK for a 2xx, with the INVITE's CSeq number and a new branch."""
        return self._build("ACK", via, invite_cseq, headers, body)

    def _request_uri_and_routes(self) -> tuple[URI, list[str]]:
        """§12.2.1.1: loose routing keeps the target in the Request-URI; a strict
        router (no ``lr``) gets it instead and the target goes last in Route."""
        routes = [str(r) for r in self.route_set]
        first = self.route_set[0].uri if self.route_set else None
        if first is None or (isinstance(first, SipURI) and first.lr):
            return self.remote_target, routes
        return first, [*routes[1:], f"<{self.remote_target}>"]

    def _build(
        self,
        method: str,
        via: str,
        cseq: int,
        extra: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> SipRequest:
        uri, routes = self._request_uri_and_routes()
        pairs = [("Via", f"{via};branch={new_branch()}"), ("Max-Forwards", MAX_FORWARDS)]
        pairs += [("Route", r) for r in routes]
        pairs += [
            ("From", str(self.local)),
            ("To", str(self.remote)),
            ("Call-ID", self.id.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method in TARGET_REFRESH_METHODS and self.local_contact is not None:
            pairs.append(("Contact", str(self.local_contact)))
        pairs += extra
        return SipRequest(method=method, uri=uri, headers=Headers.of(pairs), body=body)


# --- §14.1: re-INVITE glare ---------------------------------------------------------------------


def glare_retry_delay(owns_call_id: bool, fraction: float) -> float:
    """§14.1: how long to wait after a 491 before sending the re-INVITE again.

    The side that generated the Call-ID (the dialog's original UAC) waits
    2.1-4 s, the other 0-2 s, so the two never collide twice in a row.
    ``fraction`` is a random number in [0, 1) chosen by the caller (no
    randomness here, so tests are exact).
    """
    low, high = (2.1, 4.0) if owns_call_id else (0.0, 2.0)
    return low + (high - low) * min(max(fraction, 0.0), 1.0)


# --- §13.3.1.4: the UAS resends its 2xx until the ACK ------------------------------------------


@dataclass(eq=False, slots=True)
class AckWait:
    """Resend a 2xx to INVITE at T1, 2*T1 ... capped at T2 until the ACK comes;
    after 64*T1 without one, give up (the TU then sends BYE, §13.3.1.4).

    The RFC asks for this on every transport (a stateless proxy on the path
    may have dropped the 2xx), so it is not skipped over TCP/TLS.
    """

    response: SipResponse
    destination: Destination
    config: TimerConfig
    invite_cseq: int
    gave_up: bool = False
    acked: bool = False
    _interval: float = 0.0
    _next: float | None = None
    _give_up_at: float = 0.0
    _outbox: list[SipResponse] = field(default_factory=list)

    @classmethod
    def start(
        cls, response: SipResponse, destination: Destination, config: TimerConfig, now: float
    ) -> AckWait:
        """Begin waiting; the first send is the transaction's, so nothing is queued yet."""
        wait = cls(response, destination, config, response.cseq.seq)
        wait._interval = config.t1
        wait._next = now + config.t1
        wait._give_up_at = now + config.timeout
        return wait

    @property
    def done(self) -> bool:
        return self.acked or self.gave_up

    def get_timer(self) -> float | None:
        return None if self.done or self._next is None else min(self._next, self._give_up_at)

    def handle_timer(self, now: float) -> bool:
        """Resend if due; True exactly once, when the ACK deadline passes."""
        if self.done or self._next is None:
            return False
        if now >= self._give_up_at:
            self.gave_up = True
            return True
        if now >= self._next:
            self._outbox.append(self.response)
            self._interval = min(2 * self._interval, self.config.t2)
            self._next = now + self._interval
        return False

    def receive_ack(self, ack: SipRequest) -> bool:
        """True if ``ack`` acknowledges this 2xx (same CSeq number, §13.3.1.4)."""
        if ack.method != "ACK" or ack.cseq.seq != self.invite_cseq:
            return False
        self.acked = True
        return True

    def take_sends(self) -> list[SipResponse]:
        out, self._outbox = self._outbox, []
        return out
