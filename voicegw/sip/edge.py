"""The first line of defence for SIP bytes arriving from the network (sans-IO).

Every datagram or framed stream message passes :class:`InboundScreen` before any
transaction or dialog state exists for it, in this order, cheapest first:

1. banned source -> dropped, not even parsed (a ban that still answers lets a
   cracker keep trying);
2. over the per-source rate -> dropped;
3. parse failure -> ``400`` with a Warning when a response can be formed,
   otherwise dropped (RFC 3261 §8.2 / §17);
4. a request's top Via is stamped with ``received``/``rport`` (RFC 3261
   §18.2.1, RFC 3581) so responses find their way back through NAT (the
   routing itself is :func:`voicegw.sip.transaction_messages.response_destination`).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import Via
from voicegw.sip.message import (
    DEFAULT_LIMITS,
    SipLimits,
    SipMessage,
    SipRequest,
    build_error_response,
    parse_message,
)
from voicegw.sip.security import BanList, RateLimiter
from voicegw.sip.transaction import Destination


class Dropped(enum.StrEnum):
    BANNED = "banned"
    RATE_LIMITED = "rate_limited"
    UNPARSEABLE = "unparseable"
    NO_VIA = "no_via"


@dataclass(frozen=True, slots=True)
class Deliver:
    message: SipMessage


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the source with these bytes and forget the request."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    reason: Dropped


Verdict = Deliver | Reply | Drop


@dataclass
class EdgeCounters:
    received: int = 0
    delivered: int = 0
    replied_400: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Dropped})


def stamp_via(request: SipRequest, source: Destination) -> SipRequest:
    """Add ``received`` when the sent-by host is not the packet's source, fill a bare ``rport``."""
    vias = request.headers.values("Via")
    top = Via.parse(vias[0])
    stamped = top
    if top.host.strip("[]") != source.host or top.rport is True:
        stamped = stamped.with_param("received", source.host)
    if top.rport is True:
        stamped = stamped.with_param("rport", str(source.port))
    if stamped is top:
        return request
    headers = request.headers.set("Via", ", ".join([str(stamped), *vias[1:]]))
    return dataclasses.replace(request, headers=headers)


class InboundScreen:
    """Bans, rate limits, parsing and Via stamping for one transport's inbound bytes."""

    def __init__(
        self,
        bans: BanList,
        rate: RateLimiter,
        limits: SipLimits = DEFAULT_LIMITS,
    ) -> None:
        self.bans = bans
        self.rate = rate
        self.limits = limits
        self.counters = EdgeCounters()

    def admit(self, source: Destination, now: float) -> Drop | None:
        """The checks that need no parsing: ban and rate."""
        self.counters.received += 1
        if self.bans.should_drop(source.host, now):
            return self._drop(Dropped.BANNED)
        if not self.rate.allow(source.host, now):
            return self._drop(Dropped.RATE_LIMITED)
        return None

    def screen(
        self, data: bytes, source: Destination, now: float, datagram: bool = True
    ) -> Verdict:
        refused = self.admit(source, now)
        if refused is not None:
            return refused
        try:
            message = parse_message(data, datagram=datagram, limits=self.limits)
        except SipParseError as error:
            return self.rejected(data, error)
        return self.accepted(message, source)

    def rejected(self, data: bytes, error: SipParseError) -> Verdict:
        response = build_error_response(data, error, limits=self.limits)
        if response is None:
            return self._drop(Dropped.UNPARSEABLE)
        self.counters.replied_400 += 1
        return Reply(bytes(response), error.reason)

    def accepted(self, message: SipMessage, source: Destination) -> Verdict:
        if isinstance(message, SipRequest):
            try:
                message = stamp_via(message, source)
            except (SipParseError, IndexError):
                return self._drop(Dropped.NO_VIA)
        self.counters.delivered += 1
        return Deliver(message)

    def _drop(self, reason: Dropped) -> Drop:
        self.counters.dropped[reason.value] += 1
        return Drop(reason)
