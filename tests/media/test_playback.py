"""Playback into a leg: sources, resampling, clock pacing, barge-in, loop, timing on loopback."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile

from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.playback import (
    BufferSource,
    Playback,
    PlaybackOutcome,
    StreamSource,
    load_wav,
    tone,
)
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import LegConfig, MediaLeg, static_codecs
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"


def dominant_frequency(pcm: bytes, rate: int = 8000) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay
        await asyncio.sleep(0)


# -- sources ----------------------------------------------------------------------------


def test_buffer_source_pads_the_last_frame_and_ends() -> None:
    source = BufferSource(np.arange(400, dtype=np.int16))
    frames = [source.next_frame() for _ in range(4)]
    assert [len(f) for f in frames[:3] if f is not None] == [320, 320, 320]
    assert frames[2] is not None and frames[2][160:] == bytes(160)  # 80 samples, then silence
    assert frames[3] is None


def test_looping_source_starts_over_for_hold_music() -> None:
    source = BufferSource(np.arange(320, dtype=np.int16), loop=True)
    frames = [source.next_frame() for _ in range(5)]
    assert frames[0] == frames[2] == frames[4] != frames[1]


def test_wav_at_16khz_stereo_is_read_as_8khz_mono(tmp_path: Path) -> None:
    path = tmp_path / "prompt.wav"
    left = tone(440, 1.0, sample_rate=16000)
    soundfile.write(path, np.stack([left, left], axis=1), 16000, subtype="PCM_16")
    samples = load_wav(path)
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert abs(len(samples) - 8000) <= 2
    assert dominant_frequency(samples.astype("<i2").tobytes()) == pytest.approx(440, abs=10)


def test_streamed_pcm_is_resampled_across_chunks_without_loss() -> None:
    source = StreamSource(rate_in=16000)
    pcm = tone(300, 1.0, sample_rate=16000).astype("<i2").tobytes()
    for i in range(0, len(pcm), 640):  # 20 ms chunks, as a TTS stream delivers them
        source.feed(pcm[i : i + 640])
    source.finish()
    frames = []
    while (frame := source.next_frame()) is not None:
        frames.append(frame)
    assert 49 <= len(frames) <= 51
    assert dominant_frequency(b"".join(frames)) == pytest.approx(300, abs=10)
    assert source.underruns == 0


def test_stream_underrun_plays_silence_until_finished() -> None:
    source = StreamSource(rate_in=8000)
    assert source.next_frame() == bytes(320)
    assert source.underruns == 1
    source.finish()
    assert source.next_frame() is None


# -- pacing and barge-in on a controlled clock ------------------------------------------


async def test_one_frame_per_tick_then_completed() -> None:
    fake = FakeTime()
    clock = MediaClock(time=fake.time, sleep=fake.sleep)
    sent: list[float] = []
    playback = Playback(BufferSource(tone(440, 0.1)), lambda pcm, t: sent.append(t))
    playback.start(clock)
    await clock.run(ticks=10)
    result = await playback.wait()
    assert result.outcome is PlaybackOutcome.COMPLETED and result.frames == 5
    assert [round(t - sent[0], 6) for t in sent] == [0.0, 0.02, 0.04, 0.06, 0.08]
    assert clock.subscribers == 0


async def test_barge_in_stops_playback_within_one_frame() -> None:
    fake = FakeTime()
    clock = MediaClock(time=fake.time, sleep=fake.sleep)
    sent: list[int] = []
    hold = Playback(BufferSource(tone(440, 0.5), loop=True), lambda pcm, t: sent.append(1))

    def caller_speaks(tick: int, _: float) -> None:
        if tick == 30:
            hold.cancel()

    hold.start(clock)
    clock.subscribe(caller_speaks)
    await clock.run(ticks=60)
    result = await hold.wait()
    assert result.outcome is PlaybackOutcome.CANCELLED
    # Ticks 0-30 played (tick 30's frame went out before the caller's voice was seen).
    assert len(sent) == result.frames == 31


# -- on loopback --------------------------------------------------------------------------


class Phone(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[RtpPacket, float]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not 192 <= data[1] <= 223:
            self.received.append((RtpPacket.parse(data), asyncio.get_running_loop().time()))


async def test_generated_tone_arrives_complete_in_order_and_on_time() -> None:
    loop = asyncio.get_running_loop()
    _, phone = await loop.create_datagram_endpoint(Phone, local_addr=(HOST, 0))
    assert phone.transport is not None
    address = phone.transport.get_extra_info("sockname")[:2]
    config = LegConfig(
        static_codecs(PCMU), 0, remote_rtp=address, wallclock_offset=wallclock_offset(loop)
    )
    allocator = PortAllocator(HOST, 20000, 30000, rng=random.Random())
    leg = await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate())
    clock = MediaClock()
    try:
        sends: list[tuple[float, float]] = []  # (loop time of the send, tick deadline)

        def send(pcm: bytes, deadline: float) -> None:
            sends.append((loop.time(), deadline))
            leg.send_pcm(pcm, deadline)

        playback = Playback(BufferSource(tone(1000, 0.3)), send)
        playback.start(clock)
        clock.start()
        result = await asyncio.wait_for(playback.wait(), 5.0)
        for _ in range(100):  # bounded wait for the last datagram
            if len(phone.received) >= 15:
                break
            await asyncio.sleep(0.01)
    finally:
        await clock.stop()
        leg.close()
        phone.transport.close()
    assert result.frames == 15
    packets = [p for p, _ in phone.received]
    assert len(packets) == 15
    assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == list(
        range(15)
    )
    assert [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets] == [
        160 * i for i in range(15)
    ]
    assert [p.marker for p in packets] == [True] + [False] * 14
    pcm = b"".join(PCMU.decode(p.payload) for p in packets)
    assert dominant_frequency(pcm) == pytest.approx(1000, abs=15)
    # Paced by the clock: frame n leaves at start + n x 20 ms, never before. (When
    # the phone's side of the loop runs is up to the machine's load, so arrival
    # times are not asserted.)
    start = sends[0][1]
    offsets = [round(deadline - start, 6) for _, deadline in sends]
    assert offsets == [round(0.02 * i, 6) for i in range(15)]
    assert all(sent >= deadline - 0.001 for sent, deadline in sends)
