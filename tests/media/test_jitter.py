"""Jitter buffer: reordering, duplicates, loss concealment, wrap, adaptation, bounds."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.media.jitter import (
    JitterBuffer,
    JitterFrame,
    pcm16_fade_concealer,
    repeat_then_silence_concealer,
    silence_concealer,
)
from voicegw.media.rtp import RtpPacket

SILENCE = b"\xff" * 160
STEP = 160
TICK = 0.02


def packet(seq: int, *, ssrc: int = 1, ts: int | None = None) -> RtpPacket:
    """A PCMU packet whose payload names its (unwrapped) sequence number."""
    return RtpPacket(
        0,
        seq & 0xFFFF,
        (seq * STEP if ts is None else ts) & 0xFFFFFFFF,
        ssrc,
        seq.to_bytes(4, "big", signed=True) * 40,
    )


def label(frame: JitterFrame | None) -> str:
    if frame is None:
        return "-"
    if frame.concealed:
        return "c"
    return str(int.from_bytes(frame.payload[:4], "big", signed=True))


def simulate(
    buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], ticks: int, start: float = 0.0
) -> list[str]:
    """Push each packet at its arrival time and pop once per 20 ms tick."""
    pending = sorted(arrivals, key=lambda item: item[0])
    out = []
    for n in range(ticks):
        now = start + n * TICK
        while pending and pending[0][0] <= now + 1e-9:
            arrival, rtp = pending.pop(0)
            buffer.push(rtp, arrival)
        out.append(label(buffer.pop(now)))
    return out


def paced(seqs: list[int], *, start: float = 0.0) -> list[tuple[float, RtpPacket]]:
    return [(start + i * TICK, packet(s)) for i, s in enumerate(seqs)]


def new_buffer(**kwargs: object) -> JitterBuffer:
    return JitterBuffer(conceal=silence_concealer(SILENCE), **kwargs)  # type: ignore[arg-type]


def test_in_order_stream_plays_every_packet_once() -> None:
    buffer = new_buffer()
    out = simulate(buffer, paced(list(range(10))), ticks=10)
    assert out == [str(i) for i in range(10)]
    assert buffer.counters.received == 10
    assert buffer.counters.concealed == buffer.counters.lost == 0


def test_reordered_packets_play_in_sequence_order() -> None:
    buffer = new_buffer(min_delay=0.06)
    arrivals = [(0.0, packet(0)), (0.02, packet(2)), (0.025, packet(1)), (0.04, packet(3))]
    arrivals += paced(list(range(4, 10)), start=0.06)
    out = [o for o in simulate(buffer, arrivals, ticks=14) if o != "-"]
    assert out[:10] == [str(i) for i in range(10)]
    assert buffer.counters.lost == 0


def test_duplicates_are_dropped_and_counted() -> None:
    buffer = new_buffer()
    arrivals = [*paced([0, 1, 2, 3, 4]), (0.05, packet(2)), (0.01, packet(1)), (0.08, packet(4))]
    out = simulate(buffer, arrivals, ticks=5)
    assert out == ["0", "1", "2", "3", "4"]
    assert buffer.counters.duplicates == 3
    assert buffer.counters.received == 8


def test_lost_packet_is_concealed_and_counted() -> None:
    buffer = new_buffer()
    arrivals = paced([s for s in range(10) if s != 4])
    arrivals = [(t + (TICK if s.sequence_number > 4 else 0), s) for t, s in arrivals]
    out = simulate(buffer, arrivals, ticks=12)
    frames = [o for o in out if o != "-"]
    assert frames[:10] == ["0", "1", "2", "3", "c", "5", "6", "7", "8", "9"]
    assert buffer.counters.lost == 1
    assert buffer.counters.concealed >= 1


def test_concealed_frame_carries_expected_sequence_and_timestamp() -> None:
    buffer = new_buffer()
    frames = []
    for tick in range(4):
        if tick != 2:
            buffer.push(packet(tick if tick < 2 else 3), tick * TICK)
        frames.append(buffer.pop(tick * TICK))
    assert [label(f) for f in frames] == ["0", "1", "c", "3"]
    concealed = frames[2]
    assert concealed is not None
    assert (concealed.sequence_number, concealed.timestamp, concealed.payload) == (
        2,
        2 * STEP,
        SILENCE,
    )


def test_sequence_wrap_around() -> None:
    buffer = new_buffer()
    seqs = list(range(65530, 65542))
    out = simulate(buffer, paced(seqs), ticks=len(seqs))
    assert out == [str(s) for s in seqs]
    assert buffer.counters.lost == buffer.counters.late == 0


def test_sequence_wrap_with_reordering_and_loss() -> None:
    buffer = new_buffer(min_delay=0.06)
    order = [65533, 65535, 65534, 1, 0, 3, 4, 5, 6, 7]  # 2 is lost
    out = [o for o in simulate(buffer, paced(order), ticks=14) if o != "-"]
    assert out[:11] == ["65533", "65534", "65535", "0", "1", "c", "3", "4", "5", "6", "7"]
    assert buffer.counters.lost == 1


def test_late_packet_is_counted_and_deepens_the_buffer() -> None:
    buffer = new_buffer()
    # Packet 3 is 140 ms late: its slot was given up long before it comes.
    on_time = [(i * TICK, packet(s)) for i, s in enumerate([0, 1, 2])]
    after_gap = [(0.06 + i * TICK, packet(s)) for i, s in enumerate(range(4, 10))]
    simulate(buffer, [*on_time, *after_gap, (0.2, packet(3))], ticks=12)
    assert buffer.counters.late == 1
    assert buffer.target_delay > buffer.min_delay


def test_target_delay_follows_jitter_up_and_decays_slowly() -> None:
    rng = random.Random(4733)
    buffer = new_buffer(min_delay=0.02, max_delay=0.2)
    noisy = [(i * TICK + rng.uniform(0, 0.08), packet(i)) for i in range(150)]
    simulate(buffer, noisy, ticks=160)
    grown = buffer.target_delay
    assert 0.06 <= grown <= 0.2
    assert buffer.jitter > 0.01
    calm = paced(list(range(150, 650)), start=160 * TICK)
    simulate(buffer, calm, ticks=500, start=160 * TICK)
    assert buffer.target_delay < grown
    assert buffer.target_delay >= buffer.min_delay


def test_target_delay_never_exceeds_max() -> None:
    buffer = new_buffer(min_delay=0.02, max_delay=0.1)
    wild = [(i * TICK + (0.5 if i % 3 == 0 else 0.0), packet(i)) for i in range(100)]
    simulate(buffer, wild, ticks=130)
    assert buffer.counters.late > 0
    assert buffer.target_delay <= 0.1


def test_buffer_is_bounded_when_nobody_pops() -> None:
    buffer = new_buffer(capacity=20)
    for s in range(200):
        buffer.push(packet(s), s * TICK)
    assert buffer.depth == 20
    assert buffer.counters.dropped == 180
    frame = buffer.pop(4.0)
    assert label(frame) == "180"


def test_talkspurt_end_stops_concealing_then_resumes() -> None:
    buffer = new_buffer(max_stall=3)
    # Silence suppression: sequence numbers continue, timestamps jump 2 s ahead.
    first = paced(list(range(5)))
    second = [(1.0 + i * TICK, packet(5 + i, ts=(5 + i) * STEP + 16000)) for i in range(5)]
    out = simulate(buffer, first + second, ticks=60)
    assert out[:5] == ["0", "1", "2", "3", "4"]
    assert out[5:8] == ["c", "c", "c"]
    assert set(out[8:50]) == {"-"}
    assert [o for o in out[50:] if o != "-"][:5] == ["5", "6", "7", "8", "9"]
    assert buffer.counters.lost == 0


def test_ssrc_change_resets_the_buffer() -> None:
    buffer = new_buffer()
    simulate(buffer, paced(list(range(5))), ticks=5)
    arrivals = [(0.1 + i * TICK, packet(40000 + i, ssrc=2)) for i in range(5)]
    out = simulate(buffer, arrivals, ticks=5, start=0.1)
    assert out == [str(40000 + i) for i in range(5)]
    assert buffer.counters.resets == 1
    assert buffer.counters.late == buffer.counters.lost == 0


def test_sequence_jump_resets_the_buffer() -> None:
    buffer = new_buffer()
    simulate(buffer, paced(list(range(5))), ticks=5)
    out = simulate(buffer, paced([20000, 20001, 20002], start=0.1), ticks=3, start=0.1)
    assert out == ["20000", "20001", "20002"]
    assert buffer.counters.resets == 1


def test_pcm16_fade_concealer_halves_each_repeat_then_goes_silent() -> None:
    conceal = pcm16_fade_concealer(320, attenuation=0.5, max_repeats=2)
    last = np.full(160, 8000, dtype="<i2").tobytes()
    assert np.all(np.frombuffer(conceal(last, 1), "<i2") == 4000)
    assert np.all(np.frombuffer(conceal(last, 2), "<i2") == 2000)
    assert conceal(last, 3) == bytes(320)
    assert conceal(None, 1) == bytes(320)


def test_repeat_then_silence_concealer() -> None:
    conceal = repeat_then_silence_concealer(SILENCE, max_repeats=1)
    assert conceal(b"\x10" * 160, 1) == b"\x10" * 160
    assert conceal(b"\x10" * 160, 2) == SILENCE
    assert conceal(None, 1) == SILENCE


def test_invalid_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="min_delay"):
        new_buffer(min_delay=0.3, max_delay=0.2)


def test_missing_packet_with_nothing_behind_it_is_given_up_after_the_target_delay() -> None:
    buffer = new_buffer(min_delay=0.06)
    for seq in (0, 1, 2):
        buffer.push(packet(seq), 0.0)
    buffer.push(packet(4), 0.0)
    out = [label(buffer.pop(i * TICK)) for i in range(14)]
    assert out[:3] == ["0", "1", "2"]
    assert "4" in out
    assert buffer.counters.lost == 1
    assert out[-1] == "-"


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.lists(st.tuples(st.booleans(), st.floats(0, 0.1), st.booleans()), min_size=1, max_size=80),
)
def test_any_arrival_pattern_plays_each_packet_at_most_once_in_order(
    first_seq: int, pattern: list[tuple[bool, float, bool]]
) -> None:
    arrivals = []
    for i, (lost, delay, duplicated) in enumerate(pattern):
        if lost:
            continue
        arrivals.append((i * TICK + delay, packet(first_seq + i)))
        if duplicated:
            arrivals.append((i * TICK + delay + 0.01, packet(first_seq + i)))
    buffer = new_buffer()
    out = simulate(buffer, arrivals, ticks=len(pattern) + 30)
    played = [int(o) for o in out if o not in ("-", "c")]
    assert played == sorted(set(played))
    counters = buffer.counters
    assert counters.received == len(arrivals)
    assert len(played) + counters.duplicates + counters.late + counters.dropped == len(arrivals)


def test_timestamp_jump_without_sequence_gap_is_not_taken_for_jitter() -> None:
    # A sender that resets its RTP clock mid-stream: sequence numbers continue.
    buffer = new_buffer()
    arrivals = [(i * TICK, packet(i, ts=i * STEP + (80_000 if i >= 10 else 0))) for i in range(20)]
    out = simulate(buffer, arrivals, ticks=20)
    assert out == [str(i) for i in range(20)]
    assert buffer.jitter < 0.001
    assert buffer.target_delay == buffer.min_delay


def test_excess_depth_is_shed_one_frame_at_a_time() -> None:
    # A 10-packet burst (a network stall clearing) leaves 200 ms queued; once
    # the jitter is calm again the buffer drops frames until it is near target.
    buffer = new_buffer(shrink_after=25)
    burst = [(0.0, packet(i)) for i in range(10)]
    steady = [(0.02 * (i - 9), packet(i)) for i in range(10, 400)]
    simulate(buffer, burst + steady, ticks=390)
    assert buffer.counters.dropped >= 5
    assert buffer.depth <= 3
    assert buffer.counters.lost == buffer.counters.late == 0
