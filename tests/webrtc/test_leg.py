"""The WebRTC leg against a plain aiortc peer standing in for the browser."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import pytest

from voicegw.media import webrtc_rtp
from voicegw.media.g711 import ulaw_encode
from voicegw.media.opus import OpusError
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import (
    FRAME_BYTES,
    IterSource,
    LegCounters,
    LiveSource,
    WebRtcConfig,
    WebRtcLeg,
    WebRtcLegError,
)
from voicegw.media.webrtc_rtp import RtpReceiver

LOOPBACK_ONLY = WebRtcConfig(host_addresses=("127.0.0.1",))


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def tone_8k(freq: float, seconds: float) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return (0.4 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16).tobytes()


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def connect(browser: Any, leg: WebRtcLeg) -> str:
    answer = await leg.accept_offer(await browser.offer())
    await browser.answered(answer)
    return answer


async def test_audio_flows_both_ways_resampled_to_and_from_8khz(browser: Any) -> None:
    received: list[bytes] = []
    leg = WebRtcLeg(LOOPBACK_ONLY, IterSource.from_pcm(tone_8k(1000, 3.0)), received.append)
    try:
        await connect(browser, leg)
        await wait_until(lambda: len(received) >= 40 and len(browser.heard) >= 40)
    finally:
        await leg.close()

    assert {len(f) for f in received} == {FRAME_BYTES}
    from_browser = np.frombuffer(b"".join(received[10:40]), dtype=np.int16) / 32768
    assert dominant_frequency(from_browser, 8000) == pytest.approx(440, abs=10)
    to_browser = np.concatenate(browser.heard[10:40])
    assert browser.rates == {48000}
    assert dominant_frequency(to_browser, 48000) == pytest.approx(1000, abs=10)


async def test_answer_offers_only_the_configured_host_address_opus_pcmu_and_dtmf_events(
    browser: Any,
) -> None:
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), lambda _frame: None)
    try:
        answer = await connect(browser, leg)
    finally:
        await leg.close()
    candidates = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ (\w+)", answer)
    assert candidates and all(c == ("127.0.0.1", "host") for c in candidates)
    audio = re.search(r"m=audio \d+ \S+ ([\d ]+)", answer)
    assert audio is not None
    names = [re.search(rf"a=rtpmap:{pt} ([^/]+)/", answer) for pt in audio.group(1).split()]
    assert [n.group(1) for n in names if n] == [
        "opus",
        "PCMU",
        "telephone-event",  # RFC 4733 at 48 kHz (with Opus, as Chromium sends it) and 8 kHz
        "telephone-event",
    ]


async def test_hold_and_mute_deliver_silence_while_frames_keep_their_pace(browser: Any) -> None:
    received: list[bytes] = []
    leg = WebRtcLeg(LOOPBACK_ONLY, IterSource.from_pcm(tone_8k(1000, 5.0)), received.append)
    try:
        await connect(browser, leg)
        await wait_until(lambda: len(received) >= 20)
        leg.mute(True)
        await asyncio.sleep(0.1)
        muted_from = len(received)
        await wait_until(lambda: len(received) >= muted_from + 10)
        assert not any(any(f) for f in received[muted_from : muted_from + 10])
        leg.mute(False)
        leg.hold(True)
        held_from = len(browser.heard)

        def browser_hears_silence() -> bool:
            recent = browser.heard[held_from:][-10:]
            return len(recent) == 10 and float(np.abs(np.concatenate(recent)).max()) < 0.01

        await wait_until(browser_hears_silence, within=2.0)
    finally:
        await leg.close()


async def test_unauthenticated_rtp_from_a_stranger_is_never_delivered(browser: Any) -> None:
    """aioice passes any non-STUN datagram on; our gate drops what no ICE check validated."""
    received: list[bytes] = []
    silent = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), received.append)
    browser.mic.signal = lambda t: np.zeros_like(t)
    try:
        answer = await connect(browser, silent)
        await wait_until(lambda: silent.connection_state == "connected")
        port = int(
            re.findall(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", answer)[0]
        )
        loud = np.full(160, 20000, dtype=">i2").tobytes()
        header = (
            bytes([0x80, 0x00]) + (1).to_bytes(2, "big") + bytes(4) + (0x1234).to_bytes(4, "big")
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(50):
                stranger.sendto(header + loud, ("127.0.0.1", port))
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert silent.connection_state == "connected"
        loudest = max(int(np.abs(np.frombuffer(f, dtype=np.int16)).max()) for f in received)
        assert loudest < 100  # the injected frames are 20000; Opus leaves a 1-bit hiss
    finally:
        await silent.close()


async def test_an_offer_without_a_common_codec_is_rejected(browser: Any) -> None:
    offer = await browser.offer()
    only_g722 = re.sub(r"m=audio (\d+) (\S+) [\d ]+", r"m=audio \1 \2 9", offer)
    # aiortc reads every rtpmap, listed on the m= line or not: drop the others too.
    only_g722 = re.sub(r"a=(rtpmap|fmtp|rtcp-fb):(?!9 )\d+ [^\r\n]*\r\n", "", only_g722)
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), lambda _frame: None)
    try:
        with pytest.raises(WebRtcLegError):
            await leg.accept_offer(only_g722)
    finally:
        await leg.close()


def test_a_live_source_drops_the_oldest_frames_to_bound_delay() -> None:
    source = LiveSource(max_frames=2)
    for n in range(4):
        source.push(bytes([n]) * FRAME_BYTES)
    assert [source.next_frame(), source.next_frame(), source.next_frame()] == [
        bytes([2]) * FRAME_BYTES,
        bytes([3]) * FRAME_BYTES,
        None,
    ]


async def test_browser_audio_reaches_the_gateway_within_a_frame(browser: Any) -> None:
    """Each packet is decoded as it arrives: no jitter buffer (aiortc's held 80 ms)."""
    browser.mic.signal = lambda t: 0.5 * np.sin(2 * np.pi * 1000 * t) * ((t % 0.5) < 0.02)
    loop = asyncio.get_running_loop()
    heard_at: list[float] = []

    def on_frame(pcm: bytes) -> None:
        if int(np.abs(np.frombuffer(pcm, dtype=np.int16)).max()) > 5000:
            heard_at.append(loop.time())

    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), on_frame)
    try:
        await connect(browser, leg)
        await asyncio.sleep(3.2)
    finally:
        await leg.close()
    bursts = browser.mic.sent_at[::25]
    delays = [min((h - s for h in heard_at if 0 <= h - s < 0.5), default=1.0) for s in bursts]
    assert len(delays) >= 5
    # The stand-in encodes in aiortc's thread pool; aiortc's own receive path: 120 ms.
    assert sorted(delays)[len(delays) // 2] < 0.02


class OpusProbe:
    """Takes the place of the stand-in browser's jitter buffer: when loud audio arrived."""

    def __init__(self) -> None:
        self.decoder: Any = av.CodecContext.create("libopus", "r")
        self.decoder.format, self.decoder.layout, self.decoder.sample_rate = "s16", "mono", 48000
        self.loud_at: list[float] = []
        self.packets = 0
        self.packet = asyncio.Event()

    def add(self, packet: Any) -> tuple[bool, None]:
        now = asyncio.get_running_loop().time()
        frames = self.decoder.decode(av.Packet(packet.payload))
        if any(np.abs(f.to_ndarray()).max() > 5000 for f in frames):
            self.loud_at.append(now)
        self.packets += 1
        self.packet.set()
        return False, None


async def test_a_live_source_frame_leaves_at_once_and_silence_keeps_a_20_ms_pace(
    browser: Any,
) -> None:
    source = LiveSource()
    leg = WebRtcLeg(LOOPBACK_ONLY, source, lambda _frame: None)
    probe = OpusProbe()
    loud = tone_8k(1000, 0.02)
    loop = asyncio.get_running_loop()
    delays = []
    try:
        await connect(browser, leg)
        (transceiver,) = browser.pc.getTransceivers()
        transceiver.receiver._RTCRtpReceiver__jitter_buffer = probe
        await wait_until(lambda: leg.connection_state == "connected")
        for _ in range(6):
            await asyncio.sleep(0.2)
            # Just after an idle (silent) frame left: a paced track would wait ~20 ms now.
            probe.packet.clear()
            await asyncio.wait_for(probe.packet.wait(), 2.0)
            pushed, heard = loop.time(), len(probe.loud_at)
            source.push(loud)
            await wait_until(lambda h=heard: len(probe.loud_at) > h, within=2.0)
            delays.append(probe.loud_at[heard] - pushed)
        idle_from = probe.packets
        await asyncio.sleep(1.0)
        idle = probe.packets - idle_from
    finally:
        await leg.close()
    assert sorted(delays)[len(delays) // 2] < 0.01, delays  # a paced track: ~20 ms here
    assert 40 <= idle <= 55  # nothing pushed: silence, 50 frames a second


def pcmu_packet(seq: int, ssrc: int = 7, level: int = 0) -> RtpPacket:
    pcm = np.full(160, level, dtype=np.int16).tobytes()
    return RtpPacket(0, seq, seq * 160, ssrc, ulaw_encode(pcm))


def test_packets_are_delivered_on_arrival_and_late_ones_dropped_and_gaps_counted() -> None:
    counters = LegCounters()
    delivered: list[bytes] = []
    receiver = RtpReceiver({0: "PCMU"}, delivered.append, counters)
    for seq in (65534, 65535, 0, 0, 65535, 3, 4):  # wraps; a duplicate, a late one, a gap
        receiver.packet(pcmu_packet(seq))
    assert len(delivered) == 5 and {len(f) for f in delivered} == {FRAME_BYTES}
    assert (counters.late, counters.lost) == (2, 2)
    receiver.packet(pcmu_packet(100, ssrc=8, level=1000))  # a new sender starts afresh
    assert counters.lost == 2 and len(delivered) == 6
    assert np.abs(np.frombuffer(delivered[-1], dtype=np.int16) - 1000).max() < 40
    receiver.packet(pcmu_packet(101, ssrc=8))
    receiver.packet(RtpPacket(96, 102, 0, 8, b"x"))  # not negotiated
    assert len(delivered) == 7


def test_a_failing_frame_consumer_is_counted_and_does_not_stop_receiving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = LegCounters()

    def broken(_pcm: bytes) -> None:
        raise RuntimeError("consumer bug")

    receiver = RtpReceiver({0: "PCMU"}, broken, counters)
    for seq in range(3):
        receiver.packet(pcmu_packet(seq))
    assert counters.consumer_failures == 3 and counters.frames_received == 3
    assert "webrtc frame consumer failed" in caplog.text


def test_undecodable_opus_is_counted_and_a_missing_libopus_drops_only_that_codec(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counters = LegCounters()
    delivered: list[bytes] = []
    receiver = RtpReceiver({111: "opus", 0: "PCMU"}, delivered.append, counters)
    garbage = RtpPacket(111, 1, 0, 7, b"\xff\xff\xff")  # code 3, an impossible frame count
    receiver.packet(garbage)
    assert counters.undecodable == 1 and not delivered

    def no_libopus(*args: object) -> None:
        raise OpusError("libopus not found")

    monkeypatch.setattr(webrtc_rtp, "OpusDecoder", no_libopus)
    receiver = RtpReceiver({111: "opus", 0: "PCMU"}, delivered.append, counters)
    for seq in (1, 2):
        receiver.packet(RtpPacket(111, seq, 0, 7, b"\xf8\xff\xfe"))
    assert caplog.text.count("webrtc decoder unavailable") == 1  # said once, not per packet
    receiver.packet(pcmu_packet(3))
    assert len(delivered) == 1


async def test_a_malformed_trickled_candidate_is_refused_not_asserted_on() -> None:
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), lambda _frame: None)
    try:
        for bad in ("garbage", "candidate:1 1 udp x 127.0.0.1 5 typ host"):
            with pytest.raises(WebRtcLegError):
                await leg.add_remote_candidate(bad, "0")
    finally:
        await leg.close()
