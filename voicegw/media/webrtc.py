"""A WebRTC audio leg (aiortc) that speaks 8 kHz telephony PCM on our side.

The browser offers, we answer: :meth:`WebRtcLeg.accept_offer` takes the
browser's SDP and returns a complete answer (aiortc gathers every candidate
before it returns; it does not trickle). Our side of the audio is 20 ms
frames of 16-bit little-endian mono PCM at 8 kHz (:data:`FRAME_BYTES`).

aiortc does the network half (ICE, DTLS-SRTP, RTP/RTCP); the audio half is
ours, because aiortc's own adds 60-120 ms that a phone call cannot spare:

* **From the browser**, aiortc's receiver holds packets in a jitter buffer
  (4 frames by default; even with none it releases a frame only when the next
  one arrives: +20 ms), then hands them to a decoder thread that posts frames
  back to the loop. We replace that buffer (:class:`_InlineReceiver`): each
  packet is decoded to 8 kHz on arrival, on the loop, and handed to
  ``on_frame`` at once. Late and duplicate
  packets are dropped; there is no second jitter buffer here, the caller's
  phone has one. ``on_frame`` is a plain callback that must not block.
* **Towards the browser**, :class:`TelephonyTrack` returns packets already
  encoded (Opus from 8 kHz input, or G.711 µ-law), which aiortc only
  packetises: no encoder thread hop, no resampler in front of the encoder.
  A :class:`LiveSource` (a caller's frames pushed in real time) wakes the
  track when a frame is pushed, so a frame leaves as soon as it exists rather
  than at the track's next 20 ms tick; with nothing pushed the track keeps a
  20 ms pace of silence. Other sources (:class:`IterSource`) are paced.
* **Rate conversion** is libopus' own, both ways. The browser's 48 kHz Opus
  is decoded straight to 8 kHz by libopus' decoder (:mod:`voicegw.media.opus`:
  it band-limits and converts inside the decoder; no added delay, 26 µs a
  frame where decoding at 48 kHz and resampling with FFmpeg's libswresample
  took 44 µs and 2 ms of delay; soxr's streaming engines hold back far longer
  at this ratio: LQ 20 ms, HQ 70 ms, variable-rate 28 ms). libopus encodes our
  8 kHz input as narrowband, and the browser's decoder plays it at 48 kHz.
  Opus runs in libopus' ``lowdelay`` mode (2.5 ms look-ahead instead of 6.5 ms).

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
  connection, its fingerprint in the SDP); our receive path sits behind
  aiortc's SRTP check, so it only ever sees authenticated packets. Note that
  aioice 0.13 does *not* filter by address: ``StunProtocol.datagram_received``
  hands every non-STUN datagram to the connection whatever its source,
  validated pair or not. What keeps injected media out is SRTP
  authentication (without the keys from our DTLS handshake, whose peer must
  present the certificate the signalled fingerprint names, ``unprotect``
  fails and aiortc drops the packet) - see ``tests/webrtc/test_leg.py``.
  Unauthenticated DTLS records from a stranger can still disturb a handshake
  in progress (a nuisance, not an injection).
* DTMF: aiortc has no ``telephone-event`` codec, so it never negotiates
  RFC 4733 with a browser; the softphone page sends digits over signalling.

The receive hook replaces an aiortc private attribute; it is checked and
fails loudly when aiortc changes. ``benchmarks/bench_webrtc.py`` measures the
latency and the number of concurrent legs a node carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp
from av import AudioFrame, CodecContext, Packet

from .g711 import ulaw_decode, ulaw_encode
from .opus import OpusDecoder, OpusError

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

#: Where aiortc's receiver keeps the jitter buffer it hands every incoming packet to.
_JITTER_ATTR: Final = "_RTCRtpReceiver__jitter_buffer"
#: How long past its due time a live source's frame is waited for before silence goes.
_LIVE_GRACE: Final = FRAME_SECONDS
#: A paced track that fell further behind than this (a stalled loop) skips ahead.
_MAX_BEHIND: Final = 0.1
#: Opus towards the browser: narrowband from our 8 kHz frames, CELT low-delay mode.
_OPUS_BITRATE: Final = 32000
#: A sequence jump this large is a sender restart, not loss.
_MAX_SEQ_JUMP: Final = 3000
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

    def __post_init__(self) -> None:
        unknown = set(self.codecs) - set(CODEC_MIME)
        if unknown or not self.codecs:
            raise ValueError(f"codecs must be a non-empty subset of {sorted(CODEC_MIME)}")


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
    it adds stays under ``max_frames`` x 20 ms. A :class:`TelephonyTrack`
    playing it waits in :meth:`wait_frame`, so a pushed frame leaves at once.
    """

    def __init__(self, max_frames: int = 5) -> None:
        self._frames: deque[bytes] = deque(maxlen=max_frames)
        self._waiters: list[asyncio.Future[None]] = []

    def push(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"frames are {FRAME_BYTES} bytes of 8 kHz 16-bit PCM")
        self._frames.append(frame)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def next_frame(self) -> bytes | None:
        return self._frames.popleft() if self._frames else None

    async def wait_frame(self, deadline: float) -> bytes | None:
        """The next frame as soon as there is one, or None at loop time ``deadline``."""
        frame = self.next_frame()
        if frame is not None:
            return frame
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_at(deadline, _wake, waiter)
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.remove(waiter)
        return self.next_frame()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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

#: An encoded packet of no container stream (PyAV's stubs make Packet generic in its
#: stream; the runtime class is not subscriptable).
_Encoded: TypeAlias = "Packet[Any]"

_WIRE_TIME_BASE: Final = fractions.Fraction(1, WIRE_RATE)
_RATE_TIME_BASE: Final = fractions.Fraction(1, RATE)


class _OpusEncoder:
    """20 ms of 8 kHz PCM -> one Opus packet (RTP clock 48 kHz)."""

    def __init__(self) -> None:
        codec: Any = CodecContext.create("libopus", "w")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = RATE
        codec.bit_rate = _OPUS_BITRATE
        codec.time_base = _RATE_TIME_BASE
        codec.options = {"application": "lowdelay", "frame_duration": "20"}
        self._codec = codec
        # One frame, refilled each time: libopus has consumed it when encode() returns,
        # and building a frame from an array costs more than the copy.
        self._frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        self._frame.sample_rate = RATE
        self._count = 0

    def encode(self, pcm: bytes) -> _Encoded:
        frame = self._frame
        frame.planes[0].update(pcm)
        frame.pts = self._count * FRAME_SAMPLES
        # libopus codes a whole 20 ms frame per call: one frame in, one packet out.
        (packet,) = self._codec.encode(frame)
        assert isinstance(packet, Packet)
        packet.pts = self._count * WIRE_SAMPLES
        packet.time_base = _WIRE_TIME_BASE
        self._count += 1
        return packet


class _PcmuEncoder:
    def __init__(self) -> None:
        self._count = 0

    def encode(self, pcm: bytes) -> _Encoded:
        packet: _Encoded = Packet(ulaw_encode(pcm))
        packet.pts = self._count * FRAME_SAMPLES
        packet.time_base = _RATE_TIME_BASE
        self._count += 1
        return packet


class _Framer:
    """Cuts a stream of 8 kHz PCM bytes into 20 ms frames, aligned on the packets.

    A browser may send 10 ms packets (or 40 or 60): when the first packet yields
    less than a frame, carrying that remainder would hold every later frame
    back until the next packet; padding the first chunk in front, once, keeps
    one packet in, one frame out.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._primed = False

    def cut(self, pcm: bytes) -> list[bytes]:
        if not self._primed and pcm:
            self._primed = True
            pcm = bytes(-len(pcm) % FRAME_BYTES) + pcm
        data = self._pending + pcm if self._pending else pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        return [data[i : i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES)]


class _OpusDecoder:
    """Opus payloads -> 20 ms frames at 8 kHz (libopus decoding to 8 kHz itself)."""

    def __init__(self) -> None:
        self._opus = OpusDecoder(RATE, 1)
        self._framer = _Framer()

    def decode(self, payload: bytes) -> list[bytes]:
        return self._framer.cut(self._opus.decode(payload))


class _PcmuDecoder:
    def __init__(self) -> None:
        self._framer = _Framer()

    def decode(self, payload: bytes) -> list[bytes]:
        return self._framer.cut(ulaw_decode(payload))


_ENCODERS: Final[Mapping[str, Callable[[], _OpusEncoder | _PcmuEncoder]]] = {
    "opus": _OpusEncoder,
    "PCMU": _PcmuEncoder,
}
_DECODERS: Final[Mapping[str, Callable[[], _OpusDecoder | _PcmuDecoder]]] = {
    "opus": _OpusDecoder,
    "PCMU": _PcmuDecoder,
}


class TelephonyTrack(MediaStreamTrack):
    """An aiortc audio track that plays a :class:`FrameSource` as encoded packets.

    aiortc only packetises what :meth:`recv` returns. A :class:`LiveSource`'s
    frames leave as soon as they are pushed (silence when none came within a
    frame of when one was due); any other source is paced at 20 ms.
    """

    kind = "audio"

    def __init__(self, source: FrameSource) -> None:
        super().__init__()
        self.source = source
        self.silenced = False
        self.frames_sent = 0
        #: The negotiated codec we send ("opus" or "PCMU"); set by the leg.
        self.codec = "opus"
        self._encoder: _OpusEncoder | _PcmuEncoder | None = None
        self._due: float | None = None

    async def recv(self) -> _Encoded:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        source = self.source
        if isinstance(source, LiveSource):
            if self._due is None:
                self._due = loop.time() + FRAME_SECONDS + _LIVE_GRACE
            pulled = await source.wait_frame(self._due)
            now = loop.time()
            if pulled is None:
                self._due = max(self._due + FRAME_SECONDS, now - _MAX_BEHIND)
            else:
                # The producer sets the pace; silence only if it misses a frame.
                self._due = now + FRAME_SECONDS + _LIVE_GRACE
        else:
            now = loop.time()
            if self._due is None:
                self._due = now
            await asyncio.sleep(max(0.0, self._due - now))
            self._due = max(self._due + FRAME_SECONDS, loop.time() - _MAX_BEHIND)
            pulled = source.next_frame()
        if self._encoder is None:
            self._encoder = _ENCODERS[self.codec]()
        pcm = SILENCE if pulled is None or self.silenced else pulled
        self.frames_sent += 1
        return self._encoder.encode(pcm)


# --- receiving ---------------------------------------------------------------------------


@dataclass
class LegCounters:
    #: Packets decoded, frames handed to ``on_frame``.
    frames_received: int = 0
    frames_delivered: int = 0
    #: Packets that never came (sequence gaps), came after a later one, or did not decode.
    lost: int = 0
    late: int = 0
    undecodable: int = 0
    #: Frames whose ``on_frame`` raised (logged; the leg carries on).
    consumer_failures: int = 0
    states: list[str] = field(default_factory=list)


class _InlineReceiver:
    """Takes the place of aiortc's receive jitter buffer: decodes each packet on arrival.

    aiortc calls ``add(packet)`` on the loop for every authenticated RTP packet
    and would queue what it returns for its decoder thread; we return nothing
    and hand the decoded frames to ``deliver`` ourselves.
    """

    def __init__(
        self,
        codecs: Mapping[int, str],
        deliver: Callable[[bytes], None],
        counters: LegCounters,
    ) -> None:
        self._codecs = dict(codecs)
        self._deliver = deliver
        self._counters = counters
        self._decoders: dict[int, _OpusDecoder | _PcmuDecoder] = {}
        self._ssrc: int | None = None
        self._last_seq: int | None = None

    def add(self, packet: Any) -> tuple[bool, None]:
        counters = self._counters
        seq = int(packet.sequence_number)
        if packet.ssrc != self._ssrc:
            self._ssrc, self._last_seq = packet.ssrc, None
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                counters.late += 1  # a duplicate, or older than what was already played
                return False, None
            if ahead <= _MAX_SEQ_JUMP:
                counters.lost += ahead - 1
        self._last_seq = seq
        decoder = self._decoder(packet.payload_type)
        if decoder is None:
            return False, None
        try:
            frames = decoder.decode(packet.payload)
        except OpusError:
            counters.undecodable += 1
            return False, None
        counters.frames_received += 1
        for pcm in frames:
            counters.frames_delivered += 1
            try:
                self._deliver(pcm)
            except Exception as exc:
                # We run inside aiortc's receive loop: a failing consumer must not stop
                # DTLS and RTCP for the whole connection.
                counters.consumer_failures += 1
                log.error("webrtc frame consumer failed", extra={"error": type(exc).__name__})
        return False, None

    def _decoder(self, payload_type: int) -> _OpusDecoder | _PcmuDecoder | None:
        decoder = self._decoders.get(payload_type)
        if decoder is None:
            name = self._codecs.get(payload_type)
            if name is None:
                return None
            try:
                decoder = self._decoders[payload_type] = _DECODERS[name]()
            except OpusError as exc:
                # No libopus to load: this codec's packets are dropped from now on, and
                # aiortc's receive loop (DTLS, RTCP, the other codec) goes on.
                del self._codecs[payload_type]
                log.error("webrtc decoder unavailable", extra={"codec": name, "error": str(exc)})
                return None
        return decoder


def _negotiated(sdp: str) -> list[tuple[int, str]]:
    """(payload type, our codec name) of the audio codecs in ``sdp``, in its order."""
    names = {mime.lower(): name for name, mime in CODEC_MIME.items()}
    media = SessionDescription.parse(sdp).media
    return [
        (codec.payloadType, names[codec.mimeType.lower()])
        for m in media
        if m.kind == "audio"
        for codec in m.rtp.codecs
        if codec.payloadType is not None and codec.mimeType.lower() in names
    ]


# --- the leg -----------------------------------------------------------------------------


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
        if not hasattr(transceiver.receiver, _JITTER_ATTR):
            raise WebRtcLegError("aiortc changed: cannot take over its receive path")
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
        answer = await self._pc.createAnswer()
        with offered_host_addresses(self.config.host_addresses):
            await self._pc.setLocalDescription(answer)
        local = str(self._pc.localDescription.sdp)
        codecs = _negotiated(local)
        if not codecs:
            raise WebRtcLegError("offer rejected: no common audio codec")
        # aiortc sends with the first negotiated codec. Nothing can arrive before this
        # runs: the browser cannot complete ICE until it has our answer.
        self.track.codec = codecs[0][1]
        setattr(
            transceiver.receiver,
            _JITTER_ATTR,
            _InlineReceiver(dict(codecs), self._deliver, self.counters),
        )
        return local

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

    def _deliver(self, pcm: bytes) -> None:
        self._on_frame(SILENCE if self.muted or self.held else pcm)

    def _state_changed(self) -> None:
        state = self.connection_state
        self.counters.states.append(state)
        log.info("webrtc leg connection %s", state)
        if self._on_state is not None:
            self._on_state(state)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.track.stop()
        await self._pc.close()
