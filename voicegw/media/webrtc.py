"""A WebRTC audio leg (aiortc) that speaks 8 kHz telephony PCM on our side.

The browser offers, we answer: :meth:`WebRtcLeg.accept_offer` takes the
browser's SDP and returns a complete answer (aiortc gathers every candidate
before it returns; it does not trickle). Our side of the audio is 20 ms
frames of 16-bit little-endian mono PCM at 8 kHz (:data:`FRAME_BYTES`).

aiortc does the connection: ICE, the DTLS handshake that keys SRTP, RTCP. The
RTP itself is ours (:mod:`voicegw.media.webrtc_rtp`), because aiortc's media
path adds 60-120 ms that a phone call cannot spare (a jitter buffer, a decoder
thread) and costs, per packet, most of what a hundred legs can spend:

* **From the browser**, each packet is authenticated, decoded to 8 kHz and
  handed to ``on_frame`` as it arrives. Late and duplicate packets are
  dropped; there is no second jitter buffer here, the caller's phone has one.
  ``on_frame`` is a plain callback that must not block.
* **Towards the browser**, a :class:`PushSource` (:class:`LiveSource`: a
  caller's frames pushed in real time) has each frame encoded and sent the
  moment it is pushed; with nothing pushed, silence keeps a 20 ms pace. Other
  sources (:class:`IterSource`) are pulled every 20 ms. One loop timer per
  leg (:class:`_Outbound`), no task.
* **Rate conversion** is libopus' own, both ways (:mod:`voicegw.media.opus`):
  the browser's 48 kHz Opus is decoded straight to 8 kHz (it band-limits and
  converts inside the decoder; no added delay, where FFmpeg's libswresample
  took 2 ms and soxr's streaming engines hold back 20-70 ms at this ratio),
  and our 8 kHz frames are encoded as narrowband in libopus' restricted
  low-delay mode (2.5 ms look-ahead instead of 6.5 ms).

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
  connection, its fingerprint in the SDP). aioice 0.13 does not filter by
  address (``StunProtocol.datagram_received`` hands every non-STUN datagram
  on, whatever its source), so our gate in front of each socket does: a
  datagram other than STUN from an address no ICE check has validated is
  dropped before DTLS or SRTP sees it. Media from the validated address must
  then pass SRTP authentication with the keys of our DTLS handshake, whose
  peer must present the certificate the signalled fingerprint names - see
  ``tests/webrtc/test_leg.py``.
* DTMF: aiortc has no ``telephone-event`` codec; we add it to aiortc's audio
  codecs (:func:`_install_telephone_event`, at both clock rates browsers
  offer) so that answers negotiate RFC 4733, and the browser's
  ``RTCDTMFSender`` key presses reach ``on_dtmf``. aiortc never handles those
  packets: the RTP path is ours.

The media path reads aiortc and aioice private attributes; they are checked
when a leg is set up, which fails loudly when aiortc changes.
``benchmarks/bench_webrtc.py`` measures the latency and the number of
concurrent legs a node carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import aioice.ice
import aiortc.codecs
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from .dtmf import TELEPHONE_EVENT
from .opus import OpusError
from .webrtc_rtp import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    FRAME_SECONDS,
    SILENCE,
    IdleTrack,
    LegCounters,
    MediaPath,
    RtpReceiver,
    RtpSender,
    WebRtcPathError,
)

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "FrameSource",
    "IceServer",
    "IterSource",
    "LegCounters",
    "LiveSource",
    "PushSource",
    "WebRtcConfig",
    "WebRtcLeg",
    "WebRtcLegError",
    "offered_host_addresses",
]

log = logging.getLogger(__name__)


#: Codecs we answer with, by aiortc MIME type; order is preference.
CODEC_MIME: Final = {"opus": "audio/opus", "PCMU": "audio/PCMU"}
_EVENTS_MIME: Final = "audio/telephone-event"
#: RFC 4733 key presses, at the clock rates browsers offer them (Opus' and 8 kHz); the
#: payload types only matter in an offer of ours (an answer takes the offer's).
_TELEPHONE_EVENT_CODECS: Final = (
    RTCRtpCodecParameters(mimeType=_EVENTS_MIME, clockRate=48000, payloadType=110),
    RTCRtpCodecParameters(mimeType=_EVENTS_MIME, clockRate=8000, payloadType=126),
)

#: How long past its due time a live source's frame is waited for before silence goes.
_LIVE_GRACE: Final = FRAME_SECONDS
#: A paced source that fell further behind than this (a stalled loop) skips ahead.
_MAX_BEHIND: Final = 0.1
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


class PushSource(FrameSource, Protocol):
    """A source whose producer runs in real time and can hand each frame over as it is made."""

    @property
    def listener(self) -> Callable[[bytes], None] | None: ...

    def listen(self, on_frame: Callable[[bytes], None] | None) -> None: ...


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

    A WebRTC leg playing it listens (:meth:`listen`): each pushed frame is
    handed to it at once, not queued. Otherwise frames queue for
    :meth:`next_frame` and :meth:`wait_frame`, bounded: when the producer runs
    ahead, the oldest frames go, so the delay it adds stays under
    ``max_frames`` x 20 ms.
    """

    def __init__(self, max_frames: int = 5) -> None:
        self._frames: deque[bytes] = deque(maxlen=max_frames)
        self._waiters: list[asyncio.Future[None]] = []
        self.listener: Callable[[bytes], None] | None = None

    def listen(self, on_frame: Callable[[bytes], None] | None) -> None:
        """Hand every pushed frame to ``on_frame`` from now on (None: queue them again)."""
        self.listener = on_frame
        self._frames.clear()

    def push(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"frames are {FRAME_BYTES} bytes of 8 kHz 16-bit PCM")
        if self.listener is not None:
            self.listener(frame)
            return
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


def _install_telephone_event() -> None:
    audio = aiortc.codecs.CODECS["audio"]
    if not any(c.mimeType.lower() == _EVENTS_MIME for c in audio):
        audio.extend(_TELEPHONE_EVENT_CODECS)


# --- towards the browser -----------------------------------------------------------------


class _Outbound:
    """Plays a :class:`FrameSource` towards the browser through ``send(pcm, now)``.

    A source that can push (:class:`PushSource`) has each frame sent the
    moment it is pushed; if none comes within a frame of when one was due,
    silence goes at a 20 ms pace until one does. Any other source is pulled
    every 20 ms. One loop timer per leg, no task: at a hundred legs a task
    switch per frame costs more than the frame's encoding.
    """

    def __init__(self, source: FrameSource, send: Callable[[bytes, float], None]) -> None:
        self.source = source
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is not None:
            return
        now = self._loop.time()
        listen = getattr(self.source, "listen", None)
        if listen is not None:
            listen(self._pushed)
            self._due = now + FRAME_SECONDS + _LIVE_GRACE
            self._timer = self._loop.call_at(self._due, self._idle)
        else:
            self._due = now
            self._timer = self._loop.call_at(now, self._pull)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # Ours only: a later leg (a page reload) may listen to the same call by now.
        if getattr(self.source, "listener", None) == self._pushed:
            cast(PushSource, self.source).listen(None)

    def _pushed(self, pcm: bytes) -> None:
        now = self._loop.time()
        self._due = now + FRAME_SECONDS + _LIVE_GRACE  # the producer sets the pace
        self._send(pcm, now)

    def _idle(self) -> None:
        now = self._loop.time()
        if now < self._due:  # pushed since this timer was set: wait for the new due time
            self._timer = self._loop.call_at(self._due, self._idle)
            return
        self._send(SILENCE, now)
        self._due = max(self._due + FRAME_SECONDS, now - _MAX_BEHIND)
        self._timer = self._loop.call_at(self._due, self._idle)

    def _pull(self) -> None:
        now = self._loop.time()
        self._send(self.source.next_frame() or SILENCE, now)
        self._due = max(self._due + FRAME_SECONDS, now - _MAX_BEHIND)
        self._timer = self._loop.call_at(self._due, self._pull)


def _negotiated(sdp: str) -> list[tuple[int, str, int]]:
    """(payload type, our codec name, RTP clock rate) of the audio codecs in ``sdp``, in
    its order (``telephone-event`` included)."""
    names = {mime.lower(): name for name, mime in CODEC_MIME.items()}
    names[_EVENTS_MIME] = TELEPHONE_EVENT
    media = SessionDescription.parse(sdp).media
    return [
        (codec.payloadType, names[codec.mimeType.lower()], codec.clockRate)
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
        on_dtmf: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.counters = LegCounters()
        self.muted = False
        self.held = False
        self._on_frame = on_frame
        self._on_state = on_state
        self._on_dtmf = on_dtmf
        self._track = IdleTrack()
        self._outbound = _Outbound(source, self._send)
        self._sender: RtpSender | None = None
        self._path: MediaPath | None = None
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

    def hold(self, on: bool) -> None:
        """On hold neither side hears the other; frames keep flowing as silence."""
        self.held = on

    def mute(self, on: bool) -> None:
        """A muted agent is delivered as silence; the caller still talks to them."""
        self.muted = on

    async def accept_offer(self, sdp: str) -> str:
        """Answer the browser's offer; returns our SDP with all candidates in it."""
        if self._closed:
            raise WebRtcLegError("leg is closed")
        transceiver = self._pc.addTransceiver(self._track, direction="sendrecv")
        _install_telephone_event()
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        wanted = [CODEC_MIME[name].lower() for name in self.config.codecs] + [_EVENTS_MIME]
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
        negotiated = _negotiated(local)
        codecs = [(pt, name) for pt, name, _rate in negotiated if name != TELEPHONE_EVENT]
        if not codecs:
            raise WebRtcLegError("offer rejected: no common audio codec")
        sender = transceiver.sender
        # Nothing can arrive before this runs: the browser cannot complete ICE until it
        # has our answer. The browser's audio comes in any negotiated codec; ours goes
        # out in the first (what aiortc would have sent).
        receiver = RtpReceiver(
            {pt: name for pt, name, _rate in negotiated},
            self._deliver,
            self.counters,
            self._on_dtmf,
        )
        payload_type, codec = codecs[0]
        try:
            self._sender = RtpSender(codec, payload_type, sender._ssrc, sender_report=sender)
            self._path = MediaPath(
                sender.transport,
                receiver,
                self.counters,
                clock_rates={pt: rate for pt, _name, rate in negotiated},
            )
        except (WebRtcPathError, OpusError) as exc:
            raise WebRtcLegError(f"cannot carry this leg's media: {exc}") from exc
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

    def _send(self, pcm: bytes, now: float) -> None:
        # Runs in the producer's push and in timers: it must not raise into either.
        assert self._sender is not None and self._path is not None
        try:
            packet = self._sender.packet(SILENCE if self.held else pcm, now)
        except OpusError:
            self.counters.unsent += 1
            return
        self._path.send(packet)

    def _state_changed(self) -> None:
        state = self.connection_state
        self.counters.states.append(state)
        log.info("webrtc leg connection %s", state)
        if self._path is not None:
            self._path.update()
            if state == "connected":
                self._outbound.start()
            elif state in ("failed", "closed"):
                self._outbound.stop()
        if self._on_state is not None:
            self._on_state(state)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._outbound.stop()
        self._track.stop()
        await self._pc.close()
