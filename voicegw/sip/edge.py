"""The first line of defence for SIP bytes arriving from the network (sans-IO).

Every datagram or framed stream message (and every new stream connection)
passes :class:`InboundScreen` before any transaction or dialog state exists for
it, in this order, cheapest first:

1. banned source -> dropped, not even parsed (a ban that still answers lets a
   cracker keep trying);
2. over the per-source rate -> dropped;
3. parse failure -> ``400`` with a Warning when a response can be formed,
   otherwise dropped (RFC 3261 §8.2 / §17);
4. a request's top Via is stamped with ``received``/``rport`` (RFC 3261
   §18.2.1, RFC 3581) so responses find their way back through NAT (the
   routing itself is :func:`voicegw.sip.transaction_messages.response_destination`).

Every transport counts its drops here, the same way (:class:`EdgeCounters`), and a
source that goes over its rate is reported as a :class:`SourceThrottled` event, at
most once per source per ``report_every`` seconds so a flood cannot flood the log.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Callable
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
from voicegw.sip.security import BanList, RateLimiter, source_key
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
    #: Datagrams and framed stream messages screened.
    received: int = 0
    #: Stream connections screened (each costs a rate token, as a message does).
    connections: int = 0
    delivered: int = 0
    replied_400: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Dropped})
    #: The same drops by transport (``UDP``, ``TCP``, ``TLS``).
    dropped_by_transport: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceThrottled:
    """A source went over its rate: a security event for the log (structured, masked)."""

    source: str  # its :func:`~voicegw.sip.security.source_key`
    transport: str
    #: Drops of this source since its previous report (this one included).
    dropped: int


#: Reports of throttled sources: at most one per source per interval (seconds).
THROTTLE_REPORT_EVERY = 10.0
#: Sources whose drops are being tallied between reports; the least recent is forgotten.
MAX_THROTTLED_SOURCES = 1024


class _Tally:
    __slots__ = ("dropped", "reported_at")

    def __init__(self, reported_at: float) -> None:
        self.dropped = 0
        self.reported_at = reported_at


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
        *,
        on_throttled: Callable[[SourceThrottled], None] | None = None,
        report_every: float = THROTTLE_REPORT_EVERY,
    ) -> None:
        self.bans = bans
        self.rate = rate
        self.limits = limits
        self.counters = EdgeCounters()
        #: Told when a source is rate limited (see :class:`SourceThrottled`); keep it quick.
        self.on_throttled = on_throttled
        self.report_every = report_every
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()

    @property
    def throttled_sources(self) -> int:
        """Sources whose drops are tallied for their next report (bounded)."""
        return len(self._tallies)

    def admit(self, source: Destination, now: float) -> Drop | None:
        """The checks that need no parsing, for one datagram or framed message: ban and rate."""
        self.counters.received += 1
        return self._check(source, now)

    def admit_connection(self, source: Destination, now: float) -> Drop | None:
        """The same checks for a new stream connection (a banned source is refused at once)."""
        self.counters.connections += 1
        return self._check(source, now)

    def banned(self, source: Destination, now: float) -> Drop | None:
        """Only the ban check, for bytes on a stream that are not yet a whole message."""
        if self.bans.should_drop(source.host, now):
            return self._drop(Dropped.BANNED, source)
        return None

    def _check(self, source: Destination, now: float) -> Drop | None:
        if (refused := self.banned(source, now)) is not None:
            return refused
        if not self.rate.allow(source.host, now):
            self._throttled(source, now)
            return self._drop(Dropped.RATE_LIMITED, source)
        return None

    def _throttled(self, source: Destination, now: float) -> None:
        key = source_key(source.host)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= MAX_THROTTLED_SOURCES:
                self._tallies.popitem(last=False)
            # A new tally reports its first drop at once: that is when an operator wants to know.
            tally = self._tallies[key] = _Tally(now - self.report_every)
        else:
            self._tallies.move_to_end(key)
        tally.dropped += 1
        if now - tally.reported_at < self.report_every:
            return
        event = SourceThrottled(key, source.transport.upper(), tally.dropped)
        tally.dropped, tally.reported_at = 0, now
        if self.on_throttled is not None:
            self.on_throttled(event)

    def screen(
        self, data: bytes, source: Destination, now: float, datagram: bool = True
    ) -> Verdict:
        refused = self.admit(source, now)
        if refused is not None:
            return refused
        try:
            message = parse_message(data, datagram=datagram, limits=self.limits)
        except SipParseError as error:
            return self.rejected(data, error, source)
        return self.accepted(message, source)

    def rejected(self, data: bytes, error: SipParseError, source: Destination) -> Verdict:
        """A message that did not parse (already admitted): 400 if it can be formed, else drop."""
        response = build_error_response(data, error, limits=self.limits)
        if response is None:
            return self._drop(Dropped.UNPARSEABLE, source)
        self.counters.replied_400 += 1
        return Reply(bytes(response), error.reason)

    def unframeable(self, source: Destination) -> Drop:
        """A stream whose framing broke (its connection is closed): counted as unparseable."""
        return self._drop(Dropped.UNPARSEABLE, source)

    def accepted(self, message: SipMessage, source: Destination) -> Verdict:
        """A parsed message (already admitted): stamp a request's Via and deliver it."""
        if isinstance(message, SipRequest):
            try:
                message = stamp_via(message, source)
            except (SipParseError, IndexError):
                return self._drop(Dropped.NO_VIA, source)
        self.counters.delivered += 1
        return Deliver(message)

    def _drop(self, reason: Dropped, source: Destination) -> Drop:
        self.counters.dropped[reason.value] += 1
        by_transport = self.counters.dropped_by_transport
        transport = source.transport.upper()
        by_transport[transport] = by_transport.get(transport, 0) + 1
        return Drop(reason)
