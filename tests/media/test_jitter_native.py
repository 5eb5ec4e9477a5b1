"""The C JitterBuffer against ReferenceJitterBuffer, its Python specification.

Generated scenarios (reordering, duplicates, losses, bursts beyond capacity, SSRC
changes, sequence jumps and wraps, timestamp jumps and wraps, long silences, odd
parameters) run on both; after every operation the returned frame, the concealer
calls, the counters, ``jitter``, ``depth`` and ``target_delay`` must be identical
(floats compared bit for bit).
"""

from __future__ import annotations

import gc
import random
import weakref
from dataclasses import astuple, dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.media import _jitter
from voicegw.media.g711 import ALAW_DECODE_TABLE, ULAW_DECODE_TABLE, alaw_decode, ulaw_decode
from voicegw.media.jitter import (
    JitterBuffer,
    JitterFrame,
    ReferenceJitterBuffer,
    silence_concealer,
)
from voicegw.media.rtp import RtpError, RtpPacket

SILENCE = b"\xff" * 160


# -- running both -------------------------------------------------------------------


@dataclass
class RecordingConcealer:
    """Conceals with a payload naming its arguments; records every call; can fail."""

    fail_at: int | None = None
    calls: list[tuple[bytes | None, int]] = field(default_factory=list)

    def __call__(self, last: bytes | None, count: int) -> bytes:
        self.calls.append((last, count))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError(f"concealer failed at call {len(self.calls)}")
        return b"C%d:" % count + (last or b"none")[:12]


def frame_fields(frame: JitterFrame | None) -> object:
    if frame is None:
        return None
    values = astuple(frame)
    return (type(frame), values, tuple(type(v) for v in values))


def observable(buffer: JitterBuffer | ReferenceJitterBuffer) -> object:
    return (
        astuple(buffer.counters),
        buffer.jitter.hex(),
        buffer.depth,
        float(buffer.target_delay).hex(),
    )


class Pair:
    """The reference and the C buffer, driven alike and compared after each step."""

    def __init__(self, fail_at: int | None = None, **params: float) -> None:
        self.ref_conceal = RecordingConcealer(fail_at)
        self.c_conceal = RecordingConcealer(fail_at)
        self.ref = ReferenceJitterBuffer(conceal=self.ref_conceal, **params)  # type: ignore[arg-type]
        self.c = JitterBuffer(conceal=self.c_conceal, **params)  # type: ignore[arg-type]
        self.check()

    def check(self) -> None:
        assert observable(self.c) == observable(self.ref)
        assert self.c_conceal.calls == self.ref_conceal.calls

    def push(self, packet: RtpPacket, now: float, *, as_bytes: bool) -> None:
        ref_error = c_error = None
        try:
            self.ref.push(packet, now)
        except Exception as exc:
            ref_error = (type(exc), str(exc))
        try:
            if as_bytes:
                self.c.push_rtp(bytes(packet), now)
            else:
                self.c.push(packet, now)
        except Exception as exc:
            c_error = (type(exc), str(exc))
        assert c_error == ref_error
        self.check()

    def pop(self, now: float) -> JitterFrame | None:
        ref_error = c_error = None
        ref_frame = c_frame = None
        try:
            ref_frame = self.ref.pop(now)
        except Exception as exc:
            ref_error = (type(exc), str(exc))
        try:
            c_frame = self.c.pop(now)
        except Exception as exc:
            c_error = (type(exc), str(exc))
        assert c_error == ref_error
        assert frame_fields(c_frame) == frame_fields(ref_frame)
        assert c_frame == ref_frame
        self.check()
        return c_frame

    def pop_pcm(self, now: float) -> tuple[bytes, bool] | None:
        ref_error = c_error = None
        ref_out = c_out = None
        try:
            ref_out = self.ref.pop_pcm(now, ULAW_DECODE_TABLE)
        except Exception as exc:
            ref_error = (type(exc), str(exc))
        try:
            c_out = self.c.pop_pcm(now, ULAW_DECODE_TABLE)
        except Exception as exc:
            c_error = (type(exc), str(exc))
        assert (c_error, c_out) == (ref_error, ref_out)
        self.check()
        return c_out

    def pop_either(self, now: float, rng: random.Random) -> None:
        if rng.random() < 0.3:
            self.pop_pcm(now)
        else:
            self.pop(now)


# -- generated scenarios --------------------------------------------------------------

OPS = [
    "next",
    "next",
    "next",
    "pop",
    "pop",
    "pop",
    "pop",
    "next_pop",
    "next_pop",
    "next_pop",
    "lose",
    "reorder",
    "duplicate",
    "late",
    "burst",
    "silence",
    "wait",
    "ssrc",
    "seq_jump",
    "ts_jump",
    "target",
]


@dataclass
class Sender:
    """One sender's stream: packet ``k`` of the current SSRC, its seq and timestamp."""

    seq0: int
    ts0: int
    step: int
    ssrc: int = 1
    k: int = 0
    ts_offset: int = 0
    nonce: int = 0

    def packet(self, k: int, rng: random.Random) -> RtpPacket:
        self.nonce += 1
        extras: dict[str, object] = {}
        shape = rng.randrange(8)
        if shape == 1:
            extras["csrc"] = (7, 8)
        elif shape == 2:
            extras["extension_profile"] = 0xBEDE
            extras["extension"] = b"\x10\x01\x00\x00"
        elif shape == 3:
            extras["padding_size"] = rng.randint(1, 8)
        return RtpPacket(
            0,
            (self.seq0 + k) & 0xFFFF,
            (self.ts0 + k * self.step + self.ts_offset) & 0xFFFFFFFF,
            self.ssrc,
            b"%d/%d/%d" % (self.ssrc, k, self.nonce),
            rng.random() < 0.1,
            **extras,  # type: ignore[arg-type]
        )


params_strategy = st.fixed_dictionaries(
    {
        "clock_rate": st.sampled_from([8000, 16000, 48000, 20, 28]),
        "frame_duration": st.sampled_from([0.02, 0.01, 0.03, 0.06, 0.125]),
        "min_delay": st.sampled_from([0.02, 0.04, 0.06, 0.005, 0.1]),
        "max_delay": st.sampled_from([0.2, 0.1, 0.06, 0.5]),
        "capacity": st.sampled_from([50, 20, 5, 1, 0, 8]),
        "max_stall": st.integers(0, 8),
        "decay": st.sampled_from([0.01, 0.0, 0.05, 0.002]),
        "shrink_after": st.sampled_from([50, 1, 3, 10]),
    }
)


def run_scenario(
    params: dict[str, float],
    seq0: int,
    ts0: int,
    ops: list[str],
    seed: int,
    fail_at: int | None = None,
) -> Pair:
    rng = random.Random(seed)
    params = dict(params)
    if params["max_delay"] < params["min_delay"]:
        params["max_delay"] = params["min_delay"]
    pair = Pair(fail_at, **params)
    step = round(params["clock_rate"] * params["frame_duration"])
    sender = Sender(seq0, ts0, step)
    now = rng.uniform(0, 1000)
    tick = params["frame_duration"]

    def send(k: int) -> None:
        pair.push(sender.packet(k, rng), now, as_bytes=rng.random() < 0.5)

    for op in ops:
        if op in ("next", "next_pop"):
            now += rng.choice([0.0, tick, tick, rng.uniform(0, 3 * tick)])
            send(sender.k)
            sender.k += 1
            if op == "next_pop":
                pair.pop_either(now, rng)
        elif op == "pop":
            now += rng.choice([tick, tick, 0.0, rng.uniform(0, 2 * tick)])
            pair.pop_either(now, rng)
        elif op == "lose":
            sender.k += rng.randint(1, 4)
        elif op == "reorder":
            ahead = rng.randint(1, 4)
            send(sender.k + ahead)  # sent again when the sender gets there: a duplicate
            send(sender.k)
            sender.k += 1
        elif op == "duplicate":
            send(sender.k - rng.randint(1, 3))
        elif op == "late":
            send(sender.k - rng.randint(4, 60))
        elif op == "burst":
            for _ in range(rng.randint(2, 70)):
                send(sender.k)
                sender.k += 1
        elif op == "silence":
            now += rng.uniform(0.2, 3.0)
            for _ in range(rng.randint(1, 10)):
                now += tick
                pair.pop_either(now, rng)
            sender.k += rng.choice([0, 1, 40])
            sender.ts_offset += rng.choice([0, 16000])
        elif op == "wait":
            now += rng.uniform(0, 0.5)
        elif op == "ssrc":
            sender.ssrc += 1
            if rng.random() < 0.5:
                sender.seq0 = rng.randrange(0x10000)
        elif op == "seq_jump":
            sender.k += rng.choice([3001, 3000, 5000, 30000, -3001, -2999, -20000])
        elif op == "ts_jump":
            sender.ts_offset += rng.choice([80_000, 2**31, -5000, 2**32 - 160])
        elif op == "target":
            value = rng.uniform(0.0, 0.3)
            pair.ref.target_delay = value
            pair.c.target_delay = value
            pair.check()
    return pair


@settings(max_examples=250, deadline=None)
@given(
    params_strategy,
    st.sampled_from([0, 100, 65535, 65500, 32768]) | st.integers(0, 0xFFFF),
    st.sampled_from([0, 2**32 - 1, 2**32 - 800, 2**31]) | st.integers(0, 2**32 - 1),
    st.lists(st.sampled_from(OPS), max_size=120),
    st.integers(0, 2**32),
)
def test_generated_scenarios_match_the_reference(
    params: dict[str, float], seq0: int, ts0: int, ops: list[str], seed: int
) -> None:
    run_scenario(params, seq0, ts0, ops, seed)


@settings(max_examples=60, deadline=None)
@given(
    params_strategy,
    st.integers(0, 0xFFFF),
    st.lists(st.sampled_from(OPS), max_size=80),
    st.integers(0, 2**32),
    st.integers(1, 6),
)
def test_a_failing_concealer_leaves_both_in_the_same_state(
    params: dict[str, float], seq0: int, ops: list[str], seed: int, fail_at: int
) -> None:
    run_scenario(params, seq0, 0, ops, seed, fail_at=fail_at)


@pytest.mark.parametrize("seed", range(6))
def test_long_random_streams_match_the_reference(seed: int) -> None:
    # Long runs reach what short generated ones seldom do: shrinking after
    # shrink_after ticks, the decay of a grown target, many wraps.
    rng = random.Random(seed)
    params = {
        "clock_rate": 8000,
        "frame_duration": 0.02,
        "min_delay": rng.choice([0.02, 0.04]),
        "max_delay": 0.2,
        "capacity": rng.choice([50, 12]),
        "max_stall": 5,
        "decay": 0.01,
        "shrink_after": rng.choice([50, 10]),
    }
    weights = {op: 1 for op in OPS} | {"next_pop": 40, "reorder": 3, "lose": 2}
    ops = rng.choices(list(weights), weights=list(weights.values()), k=3000)
    pair = run_scenario(params, rng.randrange(0x10000), rng.randrange(2**32), ops, seed)
    assert pair.c.counters.received > 1000


def test_jittered_arrivals_grow_decay_and_shrink_alike() -> None:
    rng = random.Random(99)
    pair = Pair(shrink_after=20)
    sender = Sender(65000, 2**32 - 4000, 160)
    arrivals = [(k * 0.02 + rng.uniform(0, 0.09), k) for k in range(600)]
    arrivals += [(12.0 + k * 0.02, 600 + k) for k in range(600)]
    arrivals.sort()
    for tick in range(1250):
        now = tick * 0.02
        while arrivals and arrivals[0][0] <= now:
            at, k = arrivals.pop(0)
            pair.push(sender.packet(k, rng), at, as_bytes=bool(k % 2))
        pair.pop(now)
    counters = pair.c.counters
    assert counters.dropped > 0
    assert counters.concealed > 0
    assert pair.c.jitter > 0


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"min_delay": 0.3, "max_delay": 0.2},
        {"min_delay": 0.0},
        {"min_delay": -0.1},
        {"min_delay": float("nan")},
        {"capacity": -1},
        {"capacity": 2.5},
        {"frame_duration": float("inf")},
        {"frame_duration": float("nan")},
    ],
)
def test_invalid_parameters_are_refused_alike(params: dict[str, float]) -> None:
    with pytest.raises(Exception) as ref_error:  # noqa: PT011 - the types are compared
        ReferenceJitterBuffer(conceal=silence_concealer(SILENCE), **params)  # type: ignore[arg-type]
    with pytest.raises(ref_error.type, match=str(ref_error.value)):
        JitterBuffer(conceal=silence_concealer(SILENCE), **params)  # type: ignore[arg-type]


def test_arguments_are_keyword_only_and_conceal_is_required() -> None:
    with pytest.raises(TypeError):
        JitterBuffer(silence_concealer(SILENCE))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="conceal"):
        JitterBuffer()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        JitterBuffer(conceal=silence_concealer(SILENCE), window=3)  # type: ignore[call-arg]


def test_attributes_are_the_given_parameters() -> None:
    params = {
        "clock_rate": 16000,
        "frame_duration": 0.03,
        "min_delay": 0.04,
        "max_delay": 0.3,
        "capacity": 30,
        "max_stall": 7,
        "decay": 0.02,
        "shrink_after": 40,
    }
    ref = ReferenceJitterBuffer(conceal=silence_concealer(SILENCE), **params)  # type: ignore[arg-type]
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE), **params)  # type: ignore[arg-type]
    for name, value in params.items():
        assert getattr(buffer, name) == getattr(ref, name) == value
    assert buffer.target_delay == 0.04
    assert (buffer.jitter, buffer.depth) == (0.0, 0)
    buffer.target_delay = 0.1
    assert buffer.target_delay == 0.1


@pytest.mark.parametrize(("clock_rate", "step"), [(20, 2), (28, 4), (36, 4), (8000, 1000)])
def test_frame_step_rounds_half_to_even_like_python(clock_rate: int, step: int) -> None:
    # clock_rate x 0.125 is exactly 2.5, 3.5, 4.5, 1000: concealment advances the
    # timestamp by round() of it.
    pair = Pair(clock_rate=clock_rate, frame_duration=0.125, min_delay=0.125, max_delay=0.5)
    pair.push(RtpPacket(0, 10, 1000, 1, b"x"), 0.0, as_bytes=True)
    assert pair.pop(0.0) is not None
    frame = pair.pop(0.125)
    assert frame is not None and frame.concealed
    assert frame.timestamp == 1000 + step


def test_concealment_across_the_timestamp_wrap_matches() -> None:
    pair = Pair(max_stall=8)
    sender = Sender(65534, 2**32 - 2 * 160, 160)
    rng = random.Random(5)
    for k in range(2):
        pair.push(sender.packet(k, rng), k * 0.02, as_bytes=True)
        pair.pop(k * 0.02)
    timestamps = [frame.timestamp for k in range(2, 6) if (frame := pair.pop(k * 0.02))]
    assert timestamps == [0, 160, 320, 480]


# -- behaviour, as examples -------------------------------------------------------------


def rtp(seq: int, *, ssrc: int = 1, marker: bool = False) -> bytes:
    return bytes(RtpPacket(0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, b"p%d" % seq, marker))


def played(frame: JitterFrame | None) -> str:
    if frame is None:
        return "-"
    return "c" if frame.concealed else frame.payload.decode()


def test_reordered_packets_are_played_in_sequence_order() -> None:
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE), min_delay=0.06)
    for at, seq in [(0.0, 0), (0.02, 2), (0.025, 1), (0.04, 3), (0.06, 4), (0.08, 5)]:
        buffer.push_rtp(rtp(seq), at)
    out = [played(buffer.pop(0.06 + i * 0.02)) for i in range(6)]
    assert out == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert buffer.counters.lost == buffer.counters.concealed == 0


def test_a_duplicate_is_counted_and_played_once() -> None:
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE))
    out = []
    for tick, seqs in enumerate([[0], [1, 1], [2, 1]]):  # 1 twice more: once queued, once played
        for seq in seqs:
            buffer.push_rtp(rtp(seq), tick * 0.02)
        out.append(played(buffer.pop(tick * 0.02)))
    buffer.push_rtp(rtp(0), 0.08)  # long played: still a duplicate, not late
    assert out == ["p0", "p1", "p2"]
    assert (buffer.counters.received, buffer.counters.duplicates) == (6, 3)
    assert buffer.counters.late == 0


def test_a_lost_packet_is_concealed_with_its_sequence_number_and_timestamp() -> None:
    conceal = RecordingConcealer()
    buffer = JitterBuffer(conceal=conceal)
    frames = []
    for tick, seq in enumerate([0, 1, None, 3, 4]):
        if seq is not None:
            buffer.push_rtp(rtp(seq, marker=seq == 3), tick * 0.02)
        frames.append(buffer.pop(tick * 0.02))
    assert [played(f) for f in frames] == ["p0", "p1", "c", "p3", "p4"]
    assert frames[2] == JitterFrame(b"C1:p1", 2, 320, True, False)
    assert frames[3] == JitterFrame(b"p3", 3, 480, False, True)
    assert conceal.calls == [(b"p1", 1)]
    assert (buffer.counters.lost, buffer.counters.concealed) == (1, 1)


def test_frames_are_real_jitter_frames() -> None:
    assert _jitter._fast_frames()  # built by filling the slots: JitterFrame is still plain
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE))
    buffer.push_rtp(rtp(7), 0.0)
    frame = buffer.pop(0.0)
    assert type(frame) is JitterFrame
    assert frame == JitterFrame(b"p7", 7, 1120, False, False)
    assert hash(frame) == hash(JitterFrame(b"p7", 7, 1120, False, False))
    with pytest.raises(AttributeError):
        frame.payload = b""  # type: ignore[misc]


@pytest.mark.parametrize("table", [ULAW_DECODE_TABLE, ALAW_DECODE_TABLE])
@pytest.mark.parametrize("kind", [JitterBuffer, ReferenceJitterBuffer])
def test_pop_pcm_decodes_every_code_as_the_codec_does(
    kind: type[JitterBuffer], table: bytes
) -> None:
    decode = ulaw_decode if table == ULAW_DECODE_TABLE else alaw_decode
    buffer = kind(conceal=silence_concealer(bytes(256)))
    payloads = [bytes(range(256)), bytes(range(255, -1, -1))]
    for seq, payload in enumerate(payloads):
        buffer.push(RtpPacket(0, seq, seq * 256, 1, payload), 0.0)
    assert buffer.pop_pcm(0.0, table) == (decode(payloads[0]), False)
    assert buffer.pop_pcm(0.02, table) == (decode(payloads[1]), False)
    assert buffer.pop_pcm(0.04, table) == (decode(bytes(256)), True)  # concealed, decoded too
    with pytest.raises(ValueError, match="512 bytes"):
        buffer.pop_pcm(0.06, table[:-2])


def test_counters_are_a_snapshot() -> None:
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE))
    before = buffer.counters
    buffer.push_rtp(rtp(1), 0.0)
    assert (before.received, buffer.counters.received) == (0, 1)


# -- push_rtp is push(RtpPacket.parse(data)) ------------------------------------------------


def valid_packets() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda seq, ts, ssrc, payload, marker, csrc, ext, pad: bytes(
            RtpPacket(
                96,
                seq,
                ts,
                ssrc,
                payload,
                marker,
                tuple(csrc),
                None if ext is None else 0x1000,
                ext or b"",
                pad,
            )
        ),
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=40),
        st.booleans(),
        st.lists(st.integers(0, 2**32 - 1), max_size=15),
        st.none() | st.binary(min_size=4, max_size=4) | st.just(b""),
        st.integers(0, 20),
    )


def mangled(data: bytes, cuts: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(0, len(data) - cuts)])
    for index, value in flips:
        if out:
            out[index % len(out)] = value
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            valid_packets() | st.binary(max_size=30),
            st.integers(0, 8),
            st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=2),
            st.floats(0, 0.05),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_push_rtp_is_push_of_the_parsed_packet(
    datagrams: list[tuple[bytes, int, list[tuple[int, int]], float]],
) -> None:
    by_packet = JitterBuffer(conceal=RecordingConcealer())
    by_bytes = JitterBuffer(conceal=RecordingConcealer())
    now = 0.0
    for data, cuts, flips, dt in datagrams:
        data = mangled(data, cuts, flips)
        now += dt
        packet: RtpPacket | None = None
        message = ""
        try:
            packet = RtpPacket.parse(data)
        except RtpError as exc:
            message = str(exc)
        if packet is None:
            with pytest.raises(RtpError) as c_error:
                by_bytes.push_rtp(data, now)
            assert str(c_error.value) == message
        else:
            by_packet.push(packet, now)
            by_bytes.push_rtp(data, now)
        assert observable(by_bytes) == observable(by_packet)
        assert frame_fields(by_bytes.pop(now)) == frame_fields(by_packet.pop(now))


def test_push_rtp_wants_bytes() -> None:
    buffer = JitterBuffer(conceal=silence_concealer(SILENCE))
    with pytest.raises(TypeError):
        buffer.push_rtp(bytearray(rtp(1)), 0.0)  # type: ignore[arg-type]
    assert buffer.counters.received == 0


# -- memory ----------------------------------------------------------------------------


def test_a_buffer_in_a_reference_cycle_is_collected() -> None:
    def cycle() -> weakref.ref[JitterBuffer]:
        holder: list[JitterBuffer] = []

        def conceal(last: bytes | None, count: int) -> bytes:
            return holder[0].counters.received.to_bytes(2, "big")

        buffer = JitterBuffer(conceal=conceal)
        holder.append(buffer)
        buffer.push_rtp(rtp(1), 0.0)
        buffer.push_rtp(rtp(3), 0.0)
        return weakref.ref(buffer)

    ref = cycle()
    gc.collect()
    assert ref() is None
