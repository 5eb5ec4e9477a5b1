"""Abuse defences for the SIP edge: per-source rate limits and ban lists (sans-IO).

Both run *before* the transport hands a datagram to the parser or allocates
transaction/dialog state, so their own memory is what a flood can reach: each
keeps at most a fixed number of sources and evicts the least recently seen
one. Time is always passed in as ``now`` (seconds, monotonic).

Sources are keyed by :func:`source_key`: an IPv4 address as is, an IPv6
address by its /64, because one host routinely owns a whole /64 and would
otherwise dodge a per-address limit by rotating addresses.

Ban on spoofable input with care: over UDP anyone can forge a source address.
Count as a failure only what proves the source received our reply, such as a
wrong digest response carrying a nonce we issued to that address
(:attr:`voicegw.sip.digest.Rejection.counts_as_failure`); otherwise a forger
could get a legitimate trunk banned.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

IPV6_AGGREGATE_PREFIX = 64


def source_key(host: str) -> str:
    """The key that one abusive source cannot escape by changing its address.

    Not an IP literal (should not happen for a socket address) -> the string
    itself, lower-cased, so the function never raises on the hot path.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_AGGREGATE_PREFIX), strict=False)
        return str(network)
    return str(address)


class _Bucket:
    """Token bucket state for one source; refilled lazily when touched."""

    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Per-source token buckets: ``rate`` requests/s sustained, ``burst`` at once.

    Memory is bounded by ``max_sources``; when full, the least recently seen
    source is forgotten. A forgotten source starts again with a full bucket,
    so a spoofed flood can at worst reset honest sources' buckets, never grow
    memory. ``global_rate``/``global_burst`` add one aggregate bucket that
    caps the total work whatever the number of sources.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_sources: int = 10_000,
        global_rate: float | None = None,
        global_burst: float | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._global_rate = global_rate
        default_burst = global_rate if global_rate is not None else 1.0
        self._global_burst = max(1.0, default_burst if global_burst is None else global_burst)
        self._global: _Bucket | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens of ``host``'s bucket; False means drop the datagram."""
        key = source_key(host)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            _refill(bucket, now, self.rate, self.burst)
        if bucket.tokens < cost:
            return False
        if self._global_rate is not None:
            if self._global is None:
                self._global = _Bucket(self._global_burst, now)
            else:
                _refill(self._global, now, self._global_rate, self._global_burst)
            if self._global.tokens < cost:
                return False
            self._global.tokens -= cost
        bucket.tokens -= cost
        return True


def _refill(bucket: _Bucket, now: float, rate: float, burst: float) -> None:
    # A clock that steps backwards (it should not: callers pass a monotonic
    # time) must not mint tokens, hence max(0, ...).
    elapsed = max(0.0, now - bucket.updated)
    bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
    bucket.updated = max(now, bucket.updated)


class BanReason(enum.StrEnum):
    """Why a source was banned; values are stable strings for logs and metrics."""

    AUTH_FAILURES = "auth-failures"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """A source was banned: the caller logs it (structured) and counts it."""

    source: str
    reason: BanReason
    until: float
    failures: int


class BanList:
    """Failure counting per source and the resulting bans.

    ``max_failures`` failures within ``window`` seconds ban the source for
    ``ban_for`` seconds, during which :meth:`should_drop` is True for every
    datagram from it. Tracked sources and bans are each capped; when the ban
    table is full the ban that would end soonest makes room, so the newest
    offender is always held.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        ban_for: float = 600.0,
        max_tracked: int = 10_000,
        max_bans: int = 10_000,
    ) -> None:
        if max_failures < 1 or window <= 0 or ban_for <= 0 or max_tracked < 1 or max_bans < 1:
            raise ValueError("BanList limits must be positive")
        self.max_failures = max_failures
        self.window = window
        self.ban_for = ban_for
        self.max_tracked = max_tracked
        self.max_bans = max_bans
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._bans: dict[str, float] = {}

    @property
    def tracked(self) -> int:
        """Sources with failures on record (bounded by ``max_tracked``)."""
        return len(self._failures)

    @property
    def banned(self) -> int:
        """Bans on record, expired ones included until touched (bounded by ``max_bans``)."""
        return len(self._bans)

    def should_drop(self, host: str, now: float) -> bool:
        """True while ``host`` is banned: drop its traffic before parsing it."""
        key = source_key(host)
        until = self._bans.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._bans[key]
        return False

    def record_failure(
        self, host: str, now: float, reason: BanReason = BanReason.AUTH_FAILURES
    ) -> SecurityEvent | None:
        """Count one failure; returns the ban event when this one tips the source over."""
        key = source_key(host)
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= self.max_tracked:
                self._failures.popitem(last=False)
            times = deque(maxlen=self.max_failures)
            self._failures[key] = times
        else:
            self._failures.move_to_end(key)
        times.append(now)
        if len(times) < self.max_failures or now - times[0] > self.window:
            return None
        failures = len(times)
        del self._failures[key]
        return self._ban(key, now, now + self.ban_for, reason, failures)

    def record_success(self, host: str) -> None:
        """Forget earlier failures: a user who mistyped once then succeeded is no attacker."""
        self._failures.pop(source_key(host), None)

    def ban(
        self, host: str, now: float, duration: float, reason: BanReason = BanReason.MANUAL
    ) -> SecurityEvent:
        """Ban ``host`` outright (operator action or another detector)."""
        return self._ban(source_key(host), now, now + duration, reason, 0)

    def unban(self, host: str) -> None:
        """Lift a ban and forget the source's failures."""
        key = source_key(host)
        self._bans.pop(key, None)
        self._failures.pop(key, None)

    def _ban(
        self, key: str, now: float, until: float, reason: BanReason, failures: int
    ) -> SecurityEvent:
        if key not in self._bans and len(self._bans) >= self.max_bans:
            for expired in [k for k, end in self._bans.items() if end <= now]:
                del self._bans[expired]
        if key not in self._bans and len(self._bans) >= self.max_bans:
            del self._bans[min(self._bans, key=self._bans.__getitem__)]
        self._bans[key] = max(until, self._bans.get(key, until))
        return SecurityEvent(source=key, reason=reason, until=self._bans[key], failures=failures)


class PendingShares:
    """Slots for requests the node is working on (credential lookups, routing), shared fairly.

    A request that passed the edge but needs slow work (a database lookup)
    holds one slot until it is answered. ``capacity`` caps the total; no
    source (:func:`source_key`) may hold more than ``per_source`` of them,
    so a few busy sources cannot take every slot and starve the others the
    way a single global cap lets them (Kamailio's pike does the same per
    address). A flood from more sources than ``capacity / per_source`` can
    still fill the shared slots: ``reserve`` more are kept for trusted
    sources (those that proved who they are, see :class:`ProvenSources`), so
    registered phones keep placing calls. Memory: one counter per source that
    holds a slot right now.
    """

    def __init__(self, capacity: int, per_source: int, reserve: int = 0) -> None:
        if capacity < 1 or not 1 <= per_source <= capacity or reserve < 0:
            raise ValueError("need capacity >= 1, 1 <= per_source <= capacity, reserve >= 0")
        self.capacity = capacity
        self.per_source = per_source
        self.reserve = reserve
        self.refused = 0  # acquisitions refused, for metrics
        self.peak = 0  # the most slots held at once, for metrics
        self._held: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        """Slots held now."""
        return self._total

    @property
    def sources(self) -> int:
        """Sources holding at least one slot (bounded by ``capacity``)."""
        return len(self._held)

    def held_by(self, host: str) -> int:
        return self._held.get(source_key(host), 0)

    def acquire(self, host: str, trusted: bool = False) -> bool:
        """Take a slot for ``host``; False (answer 503) when its share or the total is used up.

        A ``trusted`` host may also take the reserve once the shared slots are gone.
        """
        key = source_key(host)
        held = self._held.get(key, 0)
        limit = self.capacity + (self.reserve if trusted else 0)
        if held >= self.per_source or self._total >= limit:
            self.refused += 1
            return False
        self._held[key] = held + 1
        self._total += 1
        self.peak = max(self.peak, self._total)
        return True

    def release(self, host: str) -> None:
        """Give back a slot taken by :meth:`acquire` for ``host``."""
        key = source_key(host)
        held = self._held.get(key, 0)
        if held <= 0:
            raise ValueError("release without a matching acquire")
        if held == 1:
            del self._held[key]
        else:
            self._held[key] = held - 1
        self._total -= 1


class ProvenSources:
    """Sources whose credentials verified recently: the ones worth a reserved slot.

    Over UDP a source address can be forged, so this grants nothing but a share of
    :attr:`PendingShares.reserve` (still at most ``per_source`` slots): a forger
    using a proven address cannot get further than its own challenge. Bounded
    like the others: the least recently proven source is forgotten first.
    """

    def __init__(self, ttl: float = 3600.0, max_sources: int = 10_000) -> None:
        if ttl <= 0 or max_sources < 1:
            raise ValueError("ttl must be > 0 and max_sources >= 1")
        self.ttl = ttl
        self.max_sources = max_sources
        self._proven: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._proven)

    def record(self, host: str, now: float) -> None:
        """``host`` just authenticated (monotonic ``now``)."""
        key = source_key(host)
        self._proven.pop(key, None)
        if len(self._proven) >= self.max_sources:
            self._proven.popitem(last=False)
        self._proven[key] = now

    def is_proven(self, host: str, now: float) -> bool:
        key = source_key(host)
        at = self._proven.get(key)
        if at is None:
            return False
        if now - at <= self.ttl:
            return True
        del self._proven[key]
        return False
