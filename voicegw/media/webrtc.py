"""A WebRTC audio leg (aiortc) that speaks 8 kHz telephony PCM on our side.

The browser offers, we answer: :meth:`WebRtcLeg.accept_offer` takes the
browser's SDP and returns a complete answer (aiortc gathers every candidate
before it returns; it does not trickle). Our side of the audio is 20 ms
frames of 16-bit little-endian mono PCM at 8 kHz (:data:`FRAME_BYTES`):

* towards the browser, a :class:`TelephonyTrack` pulls one frame per 20 ms
  from a :class:`FrameSource` (silence when it has none) and resamples it
  8 kHz -> 48 kHz with one ``soxr.ResampleStream`` kept for the whole leg, so
  frame edges do not click;
* from the browser, decoded frames (Opus at 48 kHz, or PCMU) are down-mixed,
  resampled to 8 kHz by a second stream and handed to ``on_frame`` (a plain
  callback that must not block: append to a list, ``put_nowait`` on a queue).

Network settings are explicit (:class:`WebRtcConfig`):

* ICE servers: aiortc falls back to a public Google STUN server when given
  ``None``; we always pass our own list, empty by default.
* Host candidates: aioice offers every interface address except 127.0.0.1.
  ``host_addresses`` names the addresses to offer instead (loopback in tests,
  the public/private media addresses in deployments). aioice binds one socket
  per host address, so writing extra candidates into the SDP would advertise
  addresses nobody listens on; the one place that decides is aioice's
  ``get_host_addresses``, so :func:`_install_host_address_hook` wraps it once
  with a function that reads a :class:`~contextvars.ContextVar` set only while
  this leg gathers. Other aiortc users in the process keep aioice's choice.
* Security: DTLS-SRTP is aiortc's (a fresh self-signed certificate per
  connection, its fingerprint in the SDP). Note that aioice 0.13 does *not*
  filter by address: ``StunProtocol.datagram_received`` hands every non-STUN
  datagram to the connection whatever its source, validated pair or not.
  What keeps injected media out is SRTP authentication (without the keys
  from our DTLS handshake, whose peer must present the certificate the
  signalled fingerprint names, ``unprotect`` fails and aiortc drops the
  packet) - see ``tests/webrtc/test_leg.py``. Unauthenticated DTLS records
  from a stranger can still disturb a handshake in progress (a nuisance, not
  an injection); the SIP side's strict-RTP latching does not apply here.
* DTMF: aiortc has no ``telephone-event`` codec, so it never negotiates
  RFC 4733 with a browser; the softphone page sends digits over signalling.
* Latency: aiortc's audio receiver holds 4 frames in its jitter buffer
  before playing out (80 ms on top of the network). ``receive_prefetch``
  replaces that buffer after negotiation; 0 plays a frame out as soon as the
  next one starts (20 ms). It touches an aiortc private attribute, checked
  and failing loudly when aiortc changes. soxr's default engine emits audio
  in ~140 ms blocks; the variable-rate engine streams (see
  :func:`_resample_stream`). ``benchmarks/bench_webrtc.py`` measured on
  loopback, Opus: browser -> gateway 62 ms (aiortc defaults and block
  resampling: 180 ms), gateway -> browser 42 ms (was 200 ms); a 20 ms frame
  and the stand-in peer's own decoding are part of both figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aioice.ice
import numpy as np
import soxr
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "FrameSource",
    "IceServer",
    "IterSource",
    "LiveSource",
    "TelephonyTrack",
    "WebRtcConfig",
    "WebRtcLeg",
    "WebRtcLegError",
    "offered_host_addresses",
]

log = logging.getLogger(__name__)

RATE: Final = 8000
WIRE_RATE: Final = 48000
FRAME_SECONDS: Final = 0.02
FRAME_SAMPLES: Final = 160
FRAME_BYTES: Final = FRAME_SAMPLES * 2
WIRE_SAMPLES: Final = 960
SILENCE: Final = bytes(FRAME_BYTES)

#: Codecs we answer with, by aiortc MIME type; order is preference.
CODEC_MIME: Final = {"opus": "audio/opus", "PCMU": "audio/PCMU"}

_JITTER_ATTR: Final = "_RTCRtpReceiver__jitter_buffer"
#: RFC 8839 candidate-attribute value; aiortc's parser asserts instead of raising.
_CANDIDATE: Final = re.compile(
    r"\S{1,32} \d{1,3} (?i:udp|tcp) \d{1,10} [0-9A-Za-z.:%-]{1,255} \d{1,5} typ \w+(?: [ -~]*)?"
)


class WebRtcLegError(Exception):
    """The offer cannot be answered (bad SDP, no common codec) or the leg is closed."""


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, as the browser's ``RTCIceServer``."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class WebRtcConfig:
    """Network and latency settings of every WebRTC leg."""

    ice_servers: tuple[IceServer, ...] = ()
    #: Addresses offered as host candidates; None keeps aioice's discovery.
    host_addresses: tuple[str, ...] | None = None
    codecs: tuple[str, ...] = ("opus", "PCMU")
    #: Frames aiortc's receive jitter buffer holds back; aiortc's own is 4.
    receive_prefetch: int | None = 0

    def __post_init__(self) -> None:
        unknown = set(self.codecs) - set(CODEC_MIME)
        if unknown or not self.codecs:
            raise ValueError(f"codecs must be a non-empty subset of {sorted(CODEC_MIME)}")
        if self.receive_prefetch is not None and not 0 <= self.receive_prefetch <= 8:
            raise ValueError("receive_prefetch must be within 0..8")


class FrameSource(Protocol):
    """Where the audio towards the browser comes from: 20 ms of 8 kHz PCM, or None."""

    def next_frame(self) -> bytes | None: ...


class IterSource:
    """Frames from an iterable (a prompt, a test signal); silence once it is exhausted."""

    def __init__(self, frames: Iterable[bytes]) -> None:
        self._frames: Iterator[bytes] = iter(frames)

    @classmethod
    def from_pcm(cls, pcm: bytes) -> IterSource:
        padded = pcm + bytes(-len(pcm) % FRAME_BYTES)
        return cls(padded[i : i + FRAME_BYTES] for i in range(0, len(padded), FRAME_BYTES))

    def next_frame(self) -> bytes | None:
        return next(self._frames, None)


class LiveSource:
    """Frames pushed by a producer running in real time.

    Bounded: when the producer runs ahead, the oldest frames go, so the delay
    it adds stays under ``max_frames`` x 20 ms.
    """

    def __init__(self, max_frames: int = 5) -> None:
        self._frames: deque[bytes] = deque(maxlen=max_frames)

    def push(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"frames are {FRAME_BYTES} bytes of 8 kHz 16-bit PCM")
        self._frames.append(frame)

    def next_frame(self) -> bytes | None:
        return self._frames.popleft() if self._frames else None


# --- host candidates ---------------------------------------------------------------------

_HOST_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar(
    "voicegw_webrtc_host_addresses", default=None
)


@contextlib.contextmanager
def offered_host_addresses(addresses: tuple[str, ...] | None) -> Iterator[None]:
    """Within this block, aioice gathers host candidates on ``addresses`` only.

    Tasks started inside inherit the choice (asyncio copies the context), so
    it covers the gathering aiortc runs in ``setLocalDescription``.
    """
    _install_host_address_hook()
    token = _HOST_ADDRESSES.set(addresses)
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def _install_host_address_hook() -> None:
    original = aioice.ice.get_host_addresses
    if getattr(original, "voicegw_hook", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _HOST_ADDRESSES.get()
        if chosen is None:
            return list(original(use_ipv4, use_ipv6))
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    get_host_addresses.voicegw_hook = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


# --- audio conversion --------------------------------------------------------------------


def _resample_stream(in_rate: int, out_rate: int) -> Any:
    # soxr's default (fixed-rate) engine works in DFT blocks: at 8k<->48k it
    # emits nothing for 7 chunks of 20 ms, then ~140 ms at once. The
    # variable-rate engine (vr=True) streams with ~30 ms delay at the same
    # HQ response (aliases -87 dB, passband flat to 3.4 kHz; measured).
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ", vr=True)


class _Downsampler:
    """Decoded browser audio (any rate, mono or stereo) -> 20 ms frames at 8 kHz."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._stream: Any = None
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, frame: AudioFrame) -> list[bytes]:
        samples = np.asarray(frame.to_ndarray())
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            mono = samples.astype(np.float32).mean(axis=0)
        else:
            mono = samples.reshape(-1, channels).astype(np.float32).mean(axis=1)
        pcm = np.clip(mono, -32768, 32767).astype(np.int16)
        if frame.sample_rate != self._rate:
            # A codec switch (Opus <-> PCMU) changes the rate: start a new stream.
            self._rate = frame.sample_rate
            self._stream = _resample_stream(frame.sample_rate, RATE)
        out = self._stream.resample_chunk(pcm) if frame.sample_rate != RATE else pcm
        self._pending = np.concatenate([self._pending, np.asarray(out, dtype=np.int16)])
        whole = len(self._pending) // FRAME_SAMPLES * FRAME_SAMPLES
        chunks = [
            self._pending[i : i + FRAME_SAMPLES].tobytes() for i in range(0, whole, FRAME_SAMPLES)
        ]
        self._pending = self._pending[whole:]
        return chunks


class _Upsampler:
    """20 ms frames at 8 kHz -> exactly 960 samples at 48 kHz per frame."""

    def __init__(self) -> None:
        self._stream = _resample_stream(RATE, WIRE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)

    def convert(self, frame: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
        out = self._stream.resample_chunk(np.frombuffer(frame, dtype=np.int16))
        self._pending = np.concatenate([self._pending, np.asarray(out, dtype=np.int16)])
        if len(self._pending) < WIRE_SAMPLES:
            # Only while soxr fills its filter at the start: pad in front, once.
            pad = np.zeros(WIRE_SAMPLES - len(self._pending), dtype=np.int16)
            self._pending = np.concatenate([pad, self._pending])
        chunk, self._pending = self._pending[:WIRE_SAMPLES], self._pending[WIRE_SAMPLES:]
        return chunk


class TelephonyTrack(MediaStreamTrack):
    """An aiortc audio track paced at 20 ms that plays a :class:`FrameSource`."""

    kind = "audio"

    def __init__(self, source: FrameSource) -> None:
        super().__init__()
        self.source = source
        self.silenced = False
        self.frames_sent = 0
        self._upsampler = _Upsampler()
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, WIRE_RATE)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            due = self._start + self.frames_sent * FRAME_SECONDS
            await asyncio.sleep(max(0.0, due - loop.time()))
        pulled = self.source.next_frame()
        pcm = SILENCE if pulled is None or self.silenced else pulled
        samples = self._upsampler.convert(pcm)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WIRE_RATE
        frame.pts = self.frames_sent * WIRE_SAMPLES
        frame.time_base = self._time_base
        self.frames_sent += 1
        return frame


# --- the leg -----------------------------------------------------------------------------


@dataclass
class LegCounters:
    frames_received: int = 0
    frames_delivered: int = 0
    states: list[str] = field(default_factory=list)


class WebRtcLeg:
    """One browser peer connection carrying one call's audio both ways."""

    def __init__(
        self,
        config: WebRtcConfig,
        source: FrameSource,
        on_frame: Callable[[bytes], None],
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.track = TelephonyTrack(source)
        self.counters = LegCounters()
        self.muted = False
        self._on_frame = on_frame
        self._on_state = on_state
        self._pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                    for s in config.ice_servers
                ]
            )
        )
        self._pc.on("connectionstatechange", self._state_changed)
        self._pc.on("track", self._track_arrived)
        self._pumps: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState)

    @property
    def held(self) -> bool:
        return self.track.silenced

    def hold(self, on: bool) -> None:
        """On hold neither side hears the other; frames keep flowing as silence."""
        self.track.silenced = on

    def mute(self, on: bool) -> None:
        """A muted agent is delivered as silence; the caller still talks to them."""
        self.muted = on

    async def accept_offer(self, sdp: str) -> str:
        """Answer the browser's offer; returns our SDP with all candidates in it."""
        if self._closed:
            raise WebRtcLegError("leg is closed")
        transceiver = self._pc.addTransceiver(self.track, direction="sendrecv")
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        wanted = [CODEC_MIME[name].lower() for name in self.config.codecs]
        transceiver.setCodecPreferences(
            sorted(
                (c for c in capabilities if c.mimeType.lower() in wanted),
                key=lambda c: wanted.index(c.mimeType.lower()),
            )
        )
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, InvalidStateError, OperationError) as exc:
            raise WebRtcLegError(f"offer rejected: {exc}") from exc
        self._tune_receive(transceiver.receiver)
        answer = await self._pc.createAnswer()
        with offered_host_addresses(self.config.host_addresses):
            await self._pc.setLocalDescription(answer)
        return str(self._pc.localDescription.sdp)

    async def add_remote_candidate(self, candidate: str, sdp_mid: str | None) -> None:
        """A trickled browser candidate (``candidate:...`` line); empty means end."""
        if not candidate:
            await self._pc.addIceCandidate(None)
            return
        line = candidate.removeprefix("candidate:")
        if not _CANDIDATE.fullmatch(line):
            raise WebRtcLegError("malformed ICE candidate")
        parsed = candidate_from_sdp(line)
        parsed.sdpMid = sdp_mid
        await self._pc.addIceCandidate(parsed)

    def _tune_receive(self, receiver: Any) -> None:
        prefetch = self.config.receive_prefetch
        if prefetch is None:
            return
        if not hasattr(receiver, _JITTER_ATTR):
            raise WebRtcLegError("aiortc changed: cannot tune its receive jitter buffer")
        setattr(receiver, _JITTER_ATTR, JitterBuffer(capacity=16, prefetch=prefetch))

    def _state_changed(self) -> None:
        state = self.connection_state
        self.counters.states.append(state)
        log.info("webrtc leg connection %s", state)
        if self._on_state is not None:
            self._on_state(state)

    def _track_arrived(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        task = asyncio.get_running_loop().create_task(self._pump(track))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _pump(self, track: MediaStreamTrack) -> None:
        downsampler = _Downsampler()
        # Ends when the track ends (the peer connection closes): MediaStreamError.
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, AudioFrame):
                    continue
                self.counters.frames_received += 1
                for pcm in downsampler.push(frame):
                    self.counters.frames_delivered += 1
                    self._on_frame(SILENCE if self.muted or self.held else pcm)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.track.stop()
        await self._pc.close()
        for task in list(self._pumps):
            task.cancel()
        for task in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError):
                await task
