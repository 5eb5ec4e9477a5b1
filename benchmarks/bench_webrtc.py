"""One-way latency the WebRTC leg adds, measured against an aiortc peer on loopback.

A plain aiortc peer stands in for the browser. Every half second one side
plays a 20 ms 1 kHz burst into silence; the figure is the time from the burst
leaving its source (the paced track handing the frame to the encoder) to the
first frame carrying it on the other side, medians over the bursts:

* browser -> gateway: peer mic -> Opus -> SRTP -> our jitter buffer -> decode
  -> 48k->8k resampling -> ``on_frame``; with ``receive_prefetch`` 0 (ours)
  and aiortc's own 4;
* gateway -> browser: ``FrameSource`` -> 8k->48k resampling -> Opus -> SRTP
  -> the peer, whose receive buffer is set to 0 prefetch so the figure is
  ours, not the stand-in's.

The network is loopback (about 0 ms) and frames are 20 ms, so the floor is
one frame: a jitter buffer can only release a frame when the next one starts.

    .venv/bin/python benchmarks/bench_webrtc.py [--bursts 10] [--codec opus|PCMU]

Traffic goes to 127.0.0.1 only; each run stops after about ``bursts`` x 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import statistics
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voicegw.media.webrtc import FRAME_BYTES, WebRtcConfig, WebRtcLeg, offered_host_addresses

LOOPBACK = ("127.0.0.1",)
PERIOD_FRAMES = 25  # a burst every 0.5 s
LOUD = 5000


class BurstTrack(MediaStreamTrack):
    """The stand-in browser's microphone: 48 kHz silence with a burst every 0.5 s."""

    kind = "audio"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.count = 0
        self.burst_times: list[float] = []
        self.start = loop.time()

    async def recv(self) -> AudioFrame:
        await asyncio.sleep(max(0.0, self.start + self.count * 0.02 - self.loop.time()))
        burst = self.count % PERIOD_FRAMES == PERIOD_FRAMES - 1
        t = np.arange(960) / 48000
        samples = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767 * burst).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        if burst:
            self.burst_times.append(self.loop.time())
        return frame


class BurstSource:
    """Our side's source: 8 kHz silence with a burst every 0.5 s; notes when each left."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.count = 0
        self.burst_times: list[float] = []
        t = np.arange(160) / 8000
        self.burst = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16).tobytes()

    def next_frame(self) -> bytes | None:
        self.count += 1
        if self.count % PERIOD_FRAMES:
            return bytes(FRAME_BYTES)
        self.burst_times.append(self.loop.time())
        return self.burst


def onsets(times: list[float], loud: list[bool]) -> list[float]:
    return [t for i, t in enumerate(times) if loud[i] and (i == 0 or not loud[i - 1])]


def pair(sent: list[float], heard: list[float]) -> list[float]:
    """Latency of each sent burst: the first onset heard after it (and within 0.4 s)."""
    out = []
    for s in sent:
        later = [h - s for h in heard if 0 <= h - s < 0.4]
        if later:
            out.append(min(later))
    return out


async def run(bursts: int, prefetch: int | None, codec: str) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    source = BurstSource(loop)
    ours_at: list[float] = []
    ours_loud: list[bool] = []

    def on_frame(pcm: bytes) -> None:
        ours_at.append(loop.time())
        ours_loud.append(int(np.abs(np.frombuffer(pcm, dtype=np.int16)).max()) > LOUD)

    leg = WebRtcLeg(
        WebRtcConfig(host_addresses=LOOPBACK, receive_prefetch=prefetch, codecs=(codec,)),
        source,
        on_frame,
    )
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = BurstTrack(loop)
    peer.addTrack(mic)
    peer_at: list[float] = []
    peer_loud: list[bool] = []
    tasks: list[asyncio.Task[None]] = []

    async def listen(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                data = frame.to_ndarray()
                peer_at.append(loop.time())
                peer_loud.append(int(np.abs(data).max()) > LOUD)

    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(listen(track)))

    peer.on("track", on_track)
    with offered_host_addresses(LOOPBACK):
        await peer.setLocalDescription(await peer.createOffer())
    answer = await leg.accept_offer(peer.localDescription.sdp)
    await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    for transceiver in peer.getTransceivers():
        # The stand-in plays out at once, so the gateway->browser figure is the gateway's.
        receiver: Any = transceiver.receiver
        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=0)
    await asyncio.sleep(1.0 + bursts * PERIOD_FRAMES * 0.02)
    await leg.close()
    await peer.close()
    for task in tasks:
        task.cancel()
    inbound = pair(mic.burst_times, onsets(ours_at, ours_loud))
    outbound = pair(source.burst_times, onsets(peer_at, peer_loud))
    return inbound, outbound


def ms(values: list[float]) -> str:
    if not values:
        return "no bursts detected"
    return f"median {statistics.median(values) * 1000:5.1f} ms (n={len(values)})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--codec", choices=("opus", "PCMU"), default="opus")
    args = parser.parse_args()
    for label, prefetch in (("receive_prefetch=0 (voicegw)", 0), ("aiortc default (4)", None)):
        inbound, outbound = await run(args.bursts, prefetch, args.codec)
        print(f"{args.codec} {label}:")
        print(f"  browser -> gateway: {ms(inbound)}")
        print(f"  gateway -> browser: {ms(outbound)}")


if __name__ == "__main__":
    asyncio.run(main())
