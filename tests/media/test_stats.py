"""Receiver statistics (RFC 3550 A.1, A.3, A.8) and round-trip time (§6.4.1)."""

from __future__ import annotations

import pytest

from voicegw.media.rtcp import ReportBlock
from voicegw.media.stats import (
    ReceiverStats,
    SenderStats,
    StreamSummary,
    round_trip_time,
    round_trip_time_ntp,
)

CLOCK = 8000
STEP = 160  # 20 ms of 8 kHz audio


def feed(stats: ReceiverStats, seqs: list[int], *, start: float = 0.0) -> None:
    for seq in seqs:
        stats.on_packet(seq & 0xFFFF, seq * STEP, start + seq * 0.02)


def test_rfc3550_figure2_round_trip_time_example() -> None:
    # A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000 (46853.125 s),
    # DLSR = 0x0005:4000 (5.250 s) -> RTT = 0x0006:2000 (6.125 s).
    assert round_trip_time_ntp(0xB7108000, 0xB7052000, 0x00054000) == 6.125


def test_rtt_is_unknown_without_lsr_or_when_negative() -> None:
    assert round_trip_time_ntp(0xB7108000, 0, 0) is None
    assert round_trip_time_ntp(0xB7050000, 0xB7052000, 0) is None


def test_rfc3550_a8_jitter_on_alternating_arrival_pattern() -> None:
    # Packets every 20 ms, every other one 10 ms late: |D| is 10 ms = 80 units for
    # each pair, so J_n = 80 * (1 - (15/16)**n) after n differences.
    stats = ReceiverStats(1, CLOCK, probation=0)
    n = 60
    for i in range(n + 1):
        stats.on_packet(i, i * STEP, i * 0.02 + (0.01 if i % 2 else 0.0))
    assert stats.jitter == pytest.approx(80 * (1 - (15 / 16) ** n))
    assert stats.report_block(now=2.0).jitter == int(stats.jitter)
    assert stats.summary().jitter_ms == pytest.approx(stats.jitter / 8)


def test_jitter_is_zero_for_perfectly_paced_packets_across_timestamp_wrap() -> None:
    stats = ReceiverStats(1, CLOCK, probation=0)
    base = 0xFFFFFFFF - 5 * STEP
    for i in range(20):
        stats.on_packet(i, (base + i * STEP) & 0xFFFFFFFF, 100.0 + i * 0.02)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_rfc3550_a3_cumulative_and_interval_loss() -> None:
    stats = ReceiverStats(7, CLOCK, probation=0)
    feed(stats, [s for s in range(100) if s not in (10, 20, 30)])
    first = stats.report_block(now=2.0)
    assert (first.packets_lost, first.highest_sequence) == (3, 99)
    assert first.fraction_lost == 3 * 256 // 100
    feed(stats, list(range(100, 150)))
    second = stats.report_block(now=3.0)
    assert (second.packets_lost, second.fraction_lost) == (3, 0)
    assert stats.summary() == StreamSummary(
        ssrc=7,
        packets_received=147,
        packets_expected=150,
        packets_lost=3,
        loss_fraction=3 / 150,
        jitter_ms=0.0,
        rtt_ms=None,
    )


def test_duplicates_make_cumulative_loss_negative_but_fraction_zero() -> None:
    stats = ReceiverStats(7, CLOCK, probation=0)
    feed(stats, [0, 1, 2, 2, 3, 3, 4])
    block = stats.report_block(now=1.0)
    assert (block.packets_lost, block.fraction_lost) == (-2, 0)
    assert stats.summary().packets_lost == 0


def test_extended_sequence_counts_wrap_cycles() -> None:
    stats = ReceiverStats(7, CLOCK, probation=0)
    feed(stats, list(range(65530, 65546)))
    assert stats.extended_highest_sequence == 65545
    assert stats.report_block(now=1.0).highest_sequence == 65545
    assert stats.packets_expected == stats.packets_received == 16


def test_rfc3550_a1_probation_discards_until_sequential() -> None:
    stats = ReceiverStats(7, CLOCK)
    assert not stats.on_packet(500, 0, 0.0)
    assert stats.on_packet(501, 160, 0.02)
    assert stats.on_packet(502, 320, 0.04)
    assert (stats.packets_received, stats.packets_expected) == (2, 2)


def test_rfc3550_a1_large_jump_is_confirmed_by_next_packet() -> None:
    stats = ReceiverStats(7, CLOCK, probation=0)
    feed(stats, [100, 101, 102])
    assert not stats.on_packet(20000, 0, 1.0)  # maybe a stray packet
    assert stats.on_packet(20001, 160, 1.02)  # no: the sender restarted
    assert stats.on_packet(20002, 320, 1.04)
    assert stats.extended_highest_sequence == 20002
    assert (stats.packets_received, stats.packets_lost) == (2, 0)


def test_lsr_and_dlsr_from_last_sender_report() -> None:
    stats = ReceiverStats(7, CLOCK, probation=0)
    assert stats.report_block(now=0.0).lsr == 0
    stats.on_sender_report(0xB44DB705_20000000, arrival=10.0)
    block = stats.report_block(now=15.25)
    assert block.lsr == 0xB7052000
    assert block.dlsr == 0x00054000


def test_round_trip_through_sr_and_rr() -> None:
    sender = SenderStats(0xCAFE, CLOCK)
    for _ in range(50):
        sender.on_sent(160)
    sr = sender.sender_report(now=1_763_856_000.0, rtp_timestamp=8000)
    assert (sr.packet_count, sr.octet_count) == (50, 8000)
    receiver = ReceiverStats(0xCAFE, CLOCK, probation=0)
    # The receiver's own clock has another origin; only its differences matter.
    receiver.on_sender_report(sr.ntp_timestamp, arrival=5.05)
    block = receiver.report_block(now=5.55)
    rtt = round_trip_time(block, arrival=1_763_856_000.0 + 0.05 + 0.5 + 0.05)
    assert rtt == pytest.approx(0.1, abs=2 / 65536)
    summary = receiver.summary(rtt=rtt)
    assert summary.rtt_ms == pytest.approx(100.0, abs=0.05)


def test_report_block_fraction_is_8_bit_fixed_point() -> None:
    stats = ReceiverStats(9, CLOCK, probation=0)
    feed(stats, [0, 1, 3])
    block = stats.report_block(now=0.1)
    assert block == ReportBlock(9, 64, 1, 3, 0, 0, 0)
