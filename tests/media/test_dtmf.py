"""RFC 4733 telephone-event: payload, the receiver against real carrier habits, the sender."""

from __future__ import annotations

import pytest

from voicegw.media.dtmf import (
    DtmfDigit,
    DtmfError,
    DtmfReceiver,
    ScheduledEventPacket,
    TelephoneEvent,
    digit_packets,
    digits_packets,
)
from voicegw.media.rtp import RtpPacket

PT = 101


def rtp(p: ScheduledEventPacket, seq: int) -> RtpPacket:
    return RtpPacket(PT, seq & 0xFFFF, p.timestamp, 0x1234, p.payload, p.marker)


def run(receiver: DtmfReceiver, packets: list[tuple[float, RtpPacket]]) -> list[DtmfDigit]:
    """Deliver packets at their times, polling the receiver's deadline in between."""
    digits: list[DtmfDigit] = []
    for now, packet in packets:
        deadline = receiver.next_deadline()
        if deadline is not None and deadline <= now:
            digits += receiver.poll(deadline)
        digits += receiver.receive(packet, now)
    deadline = receiver.next_deadline()
    if deadline is not None:
        digits += receiver.poll(deadline)
    return digits


def timed(
    scheduled: list[ScheduledEventPacket], start: float = 0.0
) -> list[tuple[float, RtpPacket]]:
    return [(start + p.offset, rtp(p, i)) for i, p in enumerate(scheduled)]


def test_rfc4733_payload_layout() -> None:
    # Event 9, E bit, volume 10, duration 1600 (RFC 4733 §2.3 figure 1).
    event = TelephoneEvent(event=9, end=True, volume=10, duration=1600)
    assert bytes(event) == bytes.fromhex("09 8a 0640")
    assert TelephoneEvent.parse(bytes(event)) == event
    assert event.digit == "9"
    assert TelephoneEvent(11).digit == "#"
    assert TelephoneEvent(16).digit is None


def test_payload_errors() -> None:
    with pytest.raises(DtmfError, match="shorter than 4 bytes"):
        TelephoneEvent.parse(b"\x01\x8a")
    with pytest.raises(DtmfError, match="out of range"):
        bytes(TelephoneEvent(1, volume=64))
    with pytest.raises(DtmfError, match="duration out of range"):
        bytes(TelephoneEvent(1, duration=70000))


def test_sender_packet_sequence_for_a_100ms_digit() -> None:
    packets = digit_packets("5", timestamp=48000, duration=0.1)
    assert [p.offset for p in packets] == pytest.approx([0.0, 0.05, 0.07, 0.09])
    assert [p.marker for p in packets] == [True, False, False, False]
    assert {p.timestamp for p in packets} == {48000}
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [(e.event, e.end, e.duration) for e in events] == [
        (5, False, 400),
        (5, True, 800),
        (5, True, 800),
        (5, True, 800),
    ]


def test_sender_updates_every_50ms_for_long_digits() -> None:
    packets = digit_packets("#", timestamp=0, duration=0.25)
    updates = [p for p in packets if not TelephoneEvent.parse(p.payload).end]
    assert [p.offset for p in updates] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert [TelephoneEvent.parse(p.payload).duration for p in updates] == [400, 800, 1200, 1600]
    ends = [p for p in packets if TelephoneEvent.parse(p.payload).end]
    assert len(ends) == 3
    assert {TelephoneEvent.parse(p.payload).duration for p in ends} == {2000}


def test_sender_rejects_non_digits() -> None:
    with pytest.raises(DtmfError, match="not a DTMF digit"):
        digit_packets("x", timestamp=0)
    with pytest.raises(DtmfError, match="not a DTMF digit"):
        digit_packets("12", timestamp=0)


def test_clean_stream_yields_each_digit_once_despite_three_end_packets() -> None:
    digits = run(DtmfReceiver(), timed(digits_packets("1234#", timestamp=1000)))
    assert [d.digit for d in digits] == list("1234#")
    assert all(d.ended and d.duration == 800 for d in digits)


def test_duplicated_end_packets_from_the_network_are_ignored() -> None:
    packets = timed(digit_packets("7", timestamp=0))
    doubled = [item for item in packets for _ in range(2)]
    receiver = DtmfReceiver()
    assert [d.digit for d in run(receiver, doubled)] == ["7"]
    # The repeated start is an update of the open event; the five end packets
    # after the first one are recognised as belonging to a finished event.
    assert receiver.ignored == 5


def test_same_digit_twice_is_two_digits() -> None:
    digits = run(DtmfReceiver(), timed(digits_packets("55", timestamp=0)))
    assert [d.digit for d in digits] == ["5", "5"]
    assert digits[0].timestamp != digits[1].timestamp


def test_carrier_without_marker_bit() -> None:
    packets = [
        (t, RtpPacket(PT, p.sequence_number, p.timestamp, p.ssrc, p.payload, marker=False))
        for t, p in timed(digits_packets("90", timestamp=0))
    ]
    assert [d.digit for d in run(DtmfReceiver(), packets)] == ["9", "0"]


def test_lost_end_packets_finish_the_digit_at_the_timeout() -> None:
    packets = [(t, p) for t, p in timed(digit_packets("3", timestamp=0, duration=0.2))]
    without_end = [(t, p) for t, p in packets if not TelephoneEvent.parse(p.payload).end]
    receiver = DtmfReceiver(timeout=0.25)
    for now, packet in without_end:
        assert receiver.receive(packet, now) == []
    last = without_end[-1][0]
    assert receiver.next_deadline() == pytest.approx(last + 0.25)
    assert receiver.poll(last + 0.2) == []
    (digit,) = receiver.poll(last + 0.25)
    # The duration is the last one reported: the end packets carried the final 1600.
    assert (digit.digit, digit.ended, digit.duration) == ("3", False, 1200)
    assert receiver.next_deadline() is None


def test_lost_end_packets_digit_is_finished_by_the_next_event() -> None:
    first = [
        item
        for item in timed(digit_packets("1", timestamp=0))
        if not TelephoneEvent.parse(item[1].payload).end
    ]
    second = timed(digit_packets("2", timestamp=1600), start=0.2)
    receiver = DtmfReceiver(timeout=10.0)
    digits = [d for now, p in first + second for d in receiver.receive(p, now)]
    assert [(d.digit, d.ended) for d in digits] == [("1", False), ("2", True)]


def test_end_packets_arriving_after_the_timeout_do_not_repeat_the_digit() -> None:
    packets = timed(digit_packets("4", timestamp=0))
    receiver = DtmfReceiver(timeout=0.01)
    digits = receiver.receive(packets[0][1], 0.0)
    digits += receiver.poll(0.02)
    for _, packet in packets[1:]:
        digits += receiver.receive(packet, 1.0)
    assert [(d.digit, d.ended) for d in digits] == [("4", False)]


def test_out_of_order_packets_within_an_event() -> None:
    packets = timed(digit_packets("8", timestamp=0, duration=0.2))
    start, *updates_and_ends = packets
    reordered = [updates_and_ends[1], start, updates_and_ends[0], *updates_and_ends[2:]]
    digits = run(DtmfReceiver(), reordered)
    assert [(d.digit, d.duration) for d in digits] == [("8", 1600)]


def test_straggler_from_an_older_event_is_dropped() -> None:
    one = timed(digit_packets("1", timestamp=0))
    two = timed(digit_packets("2", timestamp=2000), start=0.3)
    stream = one[:1] + two + one[1:]
    receiver = DtmfReceiver(timeout=10.0)
    digits = [d for now, p in stream for d in receiver.receive(p, now)]
    assert [d.digit for d in digits] == ["1", "2"]
    # Two repeated end packets of "2", then three stale packets of "1".
    assert receiver.ignored == 5


def test_rfc4733_long_event_segments_are_one_digit() -> None:
    # §2.5.1.3: a press longer than 0xFFFF units continues in a new segment at
    # timestamp + 0xFFFF, without the marker bit.
    receiver = DtmfReceiver()
    segment1 = [
        RtpPacket(PT, 1, 0, 1, bytes(TelephoneEvent(0, False, 10, 400)), True),
        RtpPacket(PT, 2, 0, 1, bytes(TelephoneEvent(0, False, 10, 0xFFFF)), False),
    ]
    segment2 = [
        RtpPacket(PT, 3, 0xFFFF, 1, bytes(TelephoneEvent(0, False, 10, 400)), False),
        RtpPacket(PT, 4, 0xFFFF, 1, bytes(TelephoneEvent(0, True, 10, 800)), False),
        RtpPacket(PT, 5, 0xFFFF, 1, bytes(TelephoneEvent(0, True, 10, 800)), False),
    ]
    digits = [d for i, p in enumerate(segment1 + segment2) for d in receiver.receive(p, i * 0.05)]
    assert [(d.digit, d.duration, d.timestamp) for d in digits] == [("0", 0xFFFF + 800, 0)]


def test_timestamp_wrap_between_digits() -> None:
    digits = run(DtmfReceiver(), timed(digits_packets("*1", timestamp=0xFFFFFF00)))
    assert [d.digit for d in digits] == ["*", "1"]


def test_malformed_payload_is_counted_not_raised() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(RtpPacket(PT, 1, 0, 1, b"\x01"), 0.0) == []
    assert receiver.malformed == 1
