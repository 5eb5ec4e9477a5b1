"""A browser stand-in: a plain aiortc peer that offers, plays a tone and records."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voicegw.media.webrtc import offered_host_addresses

LOOPBACK = ("127.0.0.1",)


class ToneTrack(MediaStreamTrack):
    """48 kHz mono frames of ``signal(t)``, paced at 20 ms like a microphone."""

    kind = "audio"

    def __init__(self, signal: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.signal = signal
        self.sent = 0
        self.sent_at: list[float] = []
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self.sent * 0.02 - loop.time()))
        t = (np.arange(960) + self.sent * 960) / 48000
        samples = np.clip(self.signal(t) * 32767, -32768, 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.sent * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.sent += 1
        self.sent_at.append(loop.time())
        return frame


@dataclass
class Browser:
    pc: RTCPeerConnection
    mic: ToneTrack
    heard: list[np.ndarray] = field(default_factory=list)
    heard_at: list[float] = field(default_factory=list)
    rates: set[int] = field(default_factory=set)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answered(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


def mono(frame: AudioFrame) -> np.ndarray:
    data = frame.to_ndarray().astype(np.float32)
    channels = len(frame.layout.channels)
    return data.reshape(-1, channels).mean(axis=1) / 32768


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = ToneTrack(lambda t: 0.5 * np.sin(2 * np.pi * 440 * t))
    pc.addTrack(mic)
    peer = Browser(pc=pc, mic=mic)
    tasks: list[asyncio.Task[None]] = []

    async def listen(track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                peer.rates.add(frame.sample_rate)
                peer.heard.append(mono(frame))
                peer.heard_at.append(loop.time())

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(listen(track))))
    with offered_host_addresses(LOOPBACK):
        yield peer
    await pc.close()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
