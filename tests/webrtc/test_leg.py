"""The WebRTC leg against a plain aiortc peer standing in for the browser."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from voicegw.media.webrtc import (
    FRAME_BYTES,
    IterSource,
    LiveSource,
    WebRtcConfig,
    WebRtcLeg,
    WebRtcLegError,
)

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


async def test_answer_offers_only_the_configured_host_address_and_opus_then_pcmu(
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
    assert [n.group(1) for n in names if n] == ["opus", "PCMU"]


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
    """aioice passes any non-STUN datagram on; SRTP authentication is what drops it."""
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


async def test_browser_audio_reaches_the_gateway_within_a_few_frames(browser: Any) -> None:
    """Jitter buffer prefetch 0 and a streaming resampler: ~60 ms on loopback (was ~180)."""
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
    assert sorted(delays)[len(delays) // 2] < 0.1  # aiortc prefetch alone: 120 ms


async def test_a_malformed_trickled_candidate_is_refused_not_asserted_on() -> None:
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), lambda _frame: None)
    try:
        for bad in ("garbage", "candidate:1 1 udp x 127.0.0.1 5 typ host"):
            with pytest.raises(WebRtcLegError):
                await leg.add_remote_candidate(bad, "0")
    finally:
        await leg.close()
