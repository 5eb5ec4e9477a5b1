"""Abuse defences: per-source rate limits and failure bans, on a controllable clock."""

from __future__ import annotations

import pytest

from voicegw.sip.digest import (
    AuthorizationHeader,
    DigestAuthenticator,
    DigestClient,
    Rejection,
    TrunkCredentials,
    ha1,
)
from voicegw.sip.security import (
    BanList,
    BanReason,
    PendingShares,
    ProvenSources,
    RateLimiter,
    SecurityEvent,
    source_key,
)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("Not-An-IP", "not-an-ip"),
    ],
)
def test_sources_are_keyed_per_ipv4_address_and_per_ipv6_64(host: str, key: str) -> None:
    assert source_key(host) == key


# --- rate limiter ----------------------------------------------------------------


def test_a_source_gets_its_burst_then_the_sustained_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=5.0)
    assert [limiter.allow("192.0.2.1", now=0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("192.0.2.1", now=0.1)  # one token back after 100 ms at 10/s
    assert not limiter.allow("192.0.2.1", now=0.1)
    assert [limiter.allow("192.0.2.1", now=10.0) for _ in range(6)] == [True] * 5 + [False]


def test_sources_do_not_share_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("192.0.2.1", now=0.0)
    assert not limiter.allow("192.0.2.1", now=0.0)
    assert limiter.allow("192.0.2.2", now=0.0)


def test_one_ipv6_host_cannot_escape_its_limit_by_rotating_addresses() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0)
    results = [limiter.allow(f"2001:db8:0:1::{i:x}", now=0.0) for i in range(1, 5)]
    assert results == [True, True, False, False]


def test_a_flood_from_many_spoofed_sources_cannot_grow_memory() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now=i * 0.001)
    assert len(limiter) == 100


def test_the_least_recently_seen_source_is_the_one_forgotten() -> None:
    limiter = RateLimiter(rate=0.001, burst=1.0, max_sources=2)
    assert limiter.allow("192.0.2.1", now=0.0)
    assert limiter.allow("192.0.2.2", now=0.0)
    assert not limiter.allow("192.0.2.1", now=1.0)  # touched: now most recent
    assert limiter.allow("192.0.2.3", now=2.0)  # evicts .2
    assert not limiter.allow("192.0.2.1", now=3.0)  # .1 still tracked, still empty
    assert limiter.allow("192.0.2.2", now=3.0)  # .2 forgotten, starts again full


def test_global_bucket_caps_the_total_whatever_the_number_of_sources() -> None:
    limiter = RateLimiter(rate=100.0, burst=100.0, global_rate=10.0, global_burst=3.0)
    allowed = [limiter.allow(f"192.0.2.{i}", now=0.0) for i in range(1, 10)]
    assert allowed == [True] * 3 + [False] * 6
    assert limiter.allow("192.0.2.50", now=0.1)


def test_a_clock_stepping_back_mints_no_tokens() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("192.0.2.1", now=100.0)
    assert not limiter.allow("192.0.2.1", now=50.0)
    assert not limiter.allow("192.0.2.1", now=100.5)
    assert limiter.allow("192.0.2.1", now=101.0)


def test_rate_limiter_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(rate=0.0, burst=1.0)


# --- bans -------------------------------------------------------------------------


def test_n_failures_within_the_window_ban_the_source_and_emit_one_event() -> None:
    bans = BanList(max_failures=3, window=60.0, ban_for=600.0)
    assert bans.record_failure("198.51.100.9", now=0.0) is None
    assert bans.record_failure("198.51.100.9", now=10.0) is None
    assert not bans.should_drop("198.51.100.9", now=10.0)
    event = bans.record_failure("198.51.100.9", now=20.0)
    assert event == SecurityEvent(
        source="198.51.100.9", reason=BanReason.AUTH_FAILURES, until=620.0, failures=3
    )
    assert bans.should_drop("198.51.100.9", now=20.0)
    assert bans.should_drop("198.51.100.9", now=619.9)
    assert not bans.should_drop("198.51.100.9", now=620.0)


def test_failures_spread_wider_than_the_window_do_not_ban() -> None:
    bans = BanList(max_failures=3, window=60.0)
    events = [bans.record_failure("198.51.100.9", now=t) for t in (0.0, 40.0, 80.0, 120.0)]
    assert events == [None] * 4
    assert not bans.should_drop("198.51.100.9", now=120.0)


def test_bans_apply_to_other_sources_not_at_all() -> None:
    bans = BanList(max_failures=1)
    assert bans.record_failure("198.51.100.9", now=0.0) is not None
    assert not bans.should_drop("198.51.100.10", now=0.0)


def test_a_success_clears_earlier_failures() -> None:
    bans = BanList(max_failures=2)
    bans.record_failure("192.0.2.1", now=0.0)
    bans.record_success("192.0.2.1")
    assert bans.record_failure("192.0.2.1", now=1.0) is None


def test_failure_tracking_and_bans_are_bounded() -> None:
    bans = BanList(max_failures=1, ban_for=100.0, max_tracked=10, max_bans=10)
    for i in range(1000):
        bans.record_failure(f"10.0.{i >> 8}.{i & 255}", now=float(i))
    assert bans.banned == 10 and bans.tracked == 0
    # The newest offenders are the ones held: older bans made room.
    assert bans.should_drop("10.0.3.231", now=1000.0)  # i = 999
    assert not bans.should_drop("10.0.0.0", now=1000.0)

    counting = BanList(max_failures=5, max_tracked=10)
    for i in range(1000):
        counting.record_failure(f"10.1.{i >> 8}.{i & 255}", now=0.0)
    assert counting.tracked == 10


def test_manual_ban_and_unban() -> None:
    bans = BanList()
    event = bans.ban("203.0.113.4", now=5.0, duration=60.0)
    assert event == SecurityEvent("203.0.113.4", BanReason.MANUAL, 65.0, 0)
    assert bans.should_drop("203.0.113.4", now=6.0)
    bans.unban("203.0.113.4")
    assert not bans.should_drop("203.0.113.4", now=6.0)


def test_a_longer_ban_is_not_shortened_by_a_later_shorter_one() -> None:
    bans = BanList()
    bans.ban("203.0.113.4", now=0.0, duration=1000.0)
    assert bans.ban("203.0.113.4", now=10.0, duration=5.0).until == 1000.0


def test_banning_an_ipv6_address_drops_its_whole_64() -> None:
    bans = BanList(max_failures=1)
    bans.record_failure("2001:db8:5:6::1", now=0.0)
    assert bans.should_drop("2001:db8:5:6:ffff::2", now=1.0)
    assert not bans.should_drop("2001:db8:5:7::1", now=1.0)


# --- digest failures feeding the ban list ------------------------------------------


def test_password_guessing_from_one_source_is_banned_but_forged_nonces_count_for_nothing() -> None:
    realm, source = "sip.voicegw.example", "198.51.100.66"
    auth = DigestAuthenticator(realm, b"k" * 32)
    bans = BanList(max_failures=3, window=60.0, ban_for=900.0)
    stored = ha1("alice", realm, "correct horse", "SHA-256")

    def lookup(username: str, algorithm: str) -> str | None:
        return stored if (username, algorithm) == ("alice", "SHA-256") else None

    def attempt(password: str, now: float, nonce_source: str) -> SecurityEvent | None:
        guesser = DigestClient(TrunkCredentials("alice", password, realm, "gw.example"))
        challenge = auth.challenge(now, client_key=nonce_source)
        header = guesser.respond(
            401,
            challenge.challenges,
            method="REGISTER",
            uri="sip:gw.example",
            target_host="gw.example",
        )
        assert isinstance(header, AuthorizationHeader)
        result = auth.verify(
            [header.value], method="REGISTER", now=now, lookup=lookup, client_key=source
        )
        assert isinstance(result, Rejection)
        return bans.record_failure(source, now) if result.counts_as_failure else None

    # A forger who never saw a nonce issued to `source` cannot make failures count.
    assert [attempt(f"guess{i}", float(i), "203.0.113.1") for i in range(10)] == [None] * 10
    assert not bans.should_drop(source, now=10.0)

    events = [attempt(f"guess{i}", 20.0 + i, source) for i in range(3)]
    assert events[:2] == [None, None]
    assert events[2] == SecurityEvent(source, BanReason.AUTH_FAILURES, 922.0, 3)
    assert bans.should_drop(source, now=30.0)


# --- pending-request slots ---------------------------------------------------------


def test_one_source_cannot_take_more_than_its_share_of_pending_slots() -> None:
    shares = PendingShares(capacity=10, per_source=3)
    assert [shares.acquire("192.0.2.1") for _ in range(5)] == [True] * 3 + [False] * 2
    # The slots it could not take are still there for everybody else.
    assert [shares.acquire("192.0.2.2") for _ in range(3)] == [True] * 3
    assert (len(shares), shares.sources, shares.refused) == (6, 2, 2)


def test_pending_slots_are_capped_in_total_whatever_the_number_of_sources() -> None:
    shares = PendingShares(capacity=4, per_source=2)
    taken = [shares.acquire(f"198.51.100.{i}") for i in range(10)]
    assert taken == [True] * 4 + [False] * 6
    assert len(shares) == 4 and shares.sources == 4


def test_a_released_slot_can_be_taken_again_and_idle_sources_are_forgotten() -> None:
    shares = PendingShares(capacity=4, per_source=1)
    assert shares.acquire("192.0.2.1")
    assert not shares.acquire("192.0.2.1")
    shares.release("192.0.2.1")
    assert shares.sources == 0 and len(shares) == 0
    assert shares.acquire("192.0.2.1")
    with pytest.raises(ValueError, match="without a matching acquire"):
        shares.release("192.0.2.9")


def test_an_ipv6_host_shares_its_slots_with_its_whole_64() -> None:
    shares = PendingShares(capacity=10, per_source=2)
    taken = [shares.acquire(f"2001:db8:0:1::{i:x}") for i in range(1, 5)]
    assert taken == [True, True, False, False]
    assert shares.held_by("2001:db8:0:1::ffff") == 2


def test_the_reserve_is_only_for_trusted_sources_once_the_shared_slots_are_gone() -> None:
    shares = PendingShares(capacity=4, per_source=2, reserve=2)
    assert all(shares.acquire(f"198.51.100.{i // 2}") for i in range(4))  # a flood fills them
    assert not shares.acquire("198.51.100.9")
    assert shares.acquire("192.0.2.1", trusted=True)
    assert shares.acquire("192.0.2.1", trusted=True)
    assert not shares.acquire("192.0.2.1", trusted=True)  # its share still applies
    assert shares.acquire("192.0.2.2", trusted=False) is False
    assert len(shares) == 6 and shares.refused == 3


@pytest.mark.parametrize(
    ("capacity", "per_source", "reserve"), [(0, 1, 0), (4, 0, 0), (4, 5, 0), (4, 2, -1)]
)
def test_pending_shares_refuse_impossible_limits(
    capacity: int, per_source: int, reserve: int
) -> None:
    with pytest.raises(ValueError, match="need capacity"):
        PendingShares(capacity, per_source, reserve)


def test_a_proven_source_stays_proven_for_its_ttl_and_the_table_is_bounded() -> None:
    proven = ProvenSources(ttl=60.0, max_sources=3)
    proven.record("192.0.2.1", now=0.0)
    assert proven.is_proven("192.0.2.1", now=60.0)
    assert not proven.is_proven("192.0.2.1", now=60.5)
    assert not proven.is_proven("192.0.2.2", now=0.0)
    proven.record("2001:db8:0:1::1", now=0.0)
    assert proven.is_proven("2001:db8:0:1::2", now=1.0)  # its /64
    for i in range(10):
        proven.record(f"198.51.100.{i}", now=float(i))
    assert len(proven) == 3
    assert not proven.is_proven("2001:db8:0:1::1", now=10.0)
    assert proven.is_proven("198.51.100.9", now=10.0)
