"""The inbound screen on a controllable clock: drops counted per reason and transport, and
rate-limited sources reported as security events without flooding the log."""

from __future__ import annotations

from voicegw.sip.edge import (
    MAX_THROTTLED_SOURCES,
    Deliver,
    Drop,
    Dropped,
    InboundScreen,
    SourceThrottled,
)
from voicegw.sip.security import BanList, RateLimiter
from voicegw.sip.transaction import Destination

OPTIONS = (
    b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:probe@example.com>;tag=a\r\n"
    b"To: <sip:gw@127.0.0.1>\r\n"
    b"Call-ID: probe@example.com\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def screen_with(rate: float, burst: float) -> tuple[InboundScreen, list[SourceThrottled]]:
    events: list[SourceThrottled] = []
    limiter = RateLimiter(rate=rate, burst=burst)
    return InboundScreen(BanList(), limiter, on_throttled=events.append), events


def test_a_throttled_source_is_reported_once_then_with_the_drops_since_each_report() -> None:
    screen, events = screen_with(rate=1.0, burst=2.0)
    udp = Destination("192.0.2.7", 5060, "UDP")
    verdicts = [screen.screen(OPTIONS, udp, now=0.0) for _ in range(50)]
    assert sum(isinstance(v, Deliver) for v in verdicts) == 2
    # The first drop is reported at once; the next 47 only counted.
    assert events == [SourceThrottled("192.0.2.7", "UDP", 1)]
    # Over the next seconds, at 1/s, one in eight gets through: 4 allowed, 28 dropped.
    verdicts = [screen.screen(OPTIONS, udp, now=1.0 + i * 0.125) for i in range(32)]
    assert sum(isinstance(v, Deliver) for v in verdicts) == 4
    assert len(events) == 1
    # Ten seconds after the first report the next drop reports all those since.
    verdicts = [screen.screen(OPTIONS, udp, now=10.0) for _ in range(3)]
    assert [type(v) for v in verdicts] == [Deliver, Deliver, Drop]
    assert events[1:] == [SourceThrottled("192.0.2.7", "UDP", 47 + 28 + 1)]
    assert screen.counters.dropped["rate_limited"] == 48 + 28 + 1
    assert screen.counters.dropped_by_transport == {"UDP": 48 + 28 + 1}


def test_stream_messages_and_connections_are_screened_and_counted_like_datagrams() -> None:
    screen, events = screen_with(rate=1.0, burst=3.0)
    tcp = Destination("192.0.2.8", 40000, "TCP")
    assert screen.admit_connection(tcp, now=0.0) is None
    assert [screen.admit(tcp, now=0.0) for _ in range(3)] == [
        None,
        None,
        Drop(Dropped.RATE_LIMITED),
    ]
    assert screen.counters.connections == 1 and screen.counters.received == 3
    assert screen.counters.dropped_by_transport == {"TCP": 1}
    assert events == [SourceThrottled("192.0.2.8", "TCP", 1)]
    screen.bans.ban("192.0.2.8", now=0.0, duration=60.0)
    assert screen.admit_connection(tcp, now=1.0) == Drop(Dropped.BANNED)
    assert screen.banned(tcp, now=1.0) == Drop(Dropped.BANNED)
    assert screen.counters.dropped == {
        "banned": 2,
        "rate_limited": 1,
        "unparseable": 0,
        "no_via": 0,
    }
    assert screen.counters.dropped_by_transport == {"TCP": 3}


def test_throttled_sources_are_tallied_in_bounded_memory() -> None:
    screen, events = screen_with(rate=1.0, burst=1.0)
    for i in range(MAX_THROTTLED_SOURCES + 500):
        source = Destination(f"10.0.{i >> 8}.{i & 255}", 5060, "UDP")
        screen.admit(source, now=0.0)
        screen.admit(source, now=0.0)
    assert len(events) == MAX_THROTTLED_SOURCES + 500  # each source reported once
    assert screen.throttled_sources == MAX_THROTTLED_SOURCES
