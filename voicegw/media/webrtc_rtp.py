"""The RTP half of a WebRTC leg: SRTP on aiortc's keys, sent and received by us.

aiortc negotiates the connection (ICE through aioice, the DTLS handshake,
RTCP) and keeps doing so for the life of the leg. Its per-packet media path
is a chain of coroutines: aioice parses every datagram as STUN first (and
catches the failure), queues it, aiortc's DTLS task wakes to read it, builds
packet objects and statistics, and sends each packet through three more
awaits. At 50 legs that path was most of a core. So once aiortc has gathered
its sockets, RTP is ours:

* **A gate in front of every socket** aioice gathered for the leg
  (:class:`MediaPath`): STUN goes to aioice as before. Anything else from an
  address no ICE check has validated is dropped and counted: stray media and
  the "DTLS hello race" (a stranger's handshake record reaching the socket
  before the browser's) never reach aiortc. DTLS and SRTCP from the validated
  address go on to aiortc. SRTP is unprotected with the receive key aiortc's
  handshake exported, parsed, and handed to :class:`RtpReceiver` on the spot.
* **Sending** (:class:`RtpSender`): encode, packetise, protect with aiortc's
  send key, ``sendto`` on the nominated pair's socket. aiortc's own sender is
  left running for RTCP only; its sender-report fields are kept up to date
  so the browser's statistics stay right.

Nothing here raises into the socket path: a packet that cannot be used is
counted (:class:`LegCounters`) and dropped. The private aiortc and aioice
attributes this reads are checked once, when the leg is set up
(:class:`MediaPath`), and a missing one fails the set-up loudly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aioice.ice
import pylibsrtp
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import StreamStatistics
from av import AudioFrame

from .dtmf import TELEPHONE_EVENT, DtmfDigit, DtmfReceiver
from .g711 import ulaw_decode, ulaw_encode
from .opus import OpusDecoder, OpusEncoder, OpusError
from .rtp import RtpError, RtpPacket, is_rtcp

__all__ = [
    "IdleTrack",
    "LegCounters",
    "MediaPath",
    "PacketSink",
    "RtpReceiver",
    "RtpSender",
    "WebRtcPathError",
]

log = logging.getLogger(__name__)

RATE: Final = 8000
FRAME_SECONDS: Final = 0.02
FRAME_SAMPLES: Final = 160
FRAME_BYTES: Final = FRAME_SAMPLES * 2
SILENCE: Final = bytes(FRAME_BYTES)
#: RTP clock ticks per 20 ms frame, by codec (Opus' RTP clock is 48 kHz whatever it codes).
_TICKS: Final = {"opus": 960, "PCMU": 160}
#: Opus towards the browser: narrowband from our 8 kHz frames, CELT low-delay mode.
_OPUS_BITRATE: Final = 32000
#: A sequence jump this large is a sender restart, not loss.
_MAX_SEQ_JUMP: Final = 3000
_HEADER: Final = struct.Struct("!BBHII")
#: What libopus is given instead of digital silence (every sample 0): +-1 LSB, -90 dBFS.
#: On all-zero input the CELT encoder's state decays into subnormal floats and a frame
#: takes 170 µs instead of 25 (measured with PyAV's libopus); at a hundred legs whose
#: callers are silent that alone was most of a core, and stalled the loop.
_DITHER: Final = struct.pack("<160h", *(((n * 7919) % 3) - 1 for n in range(160)))
#: Seconds from the NTP epoch (1900) to the Unix epoch, for RTCP sender reports.
_NTP_OFFSET: Final = 2208988800
_SUCCEEDED: Final = aioice.ice.CandidatePair.State.SUCCEEDED


class WebRtcPathError(Exception):
    """aiortc or aioice changed under us: the media path cannot be set up."""


@dataclass
class LegCounters:
    #: Packets decoded, frames handed to ``on_frame``.
    frames_received: int = 0
    frames_delivered: int = 0
    #: Packets that never came (sequence gaps), came after a later one, or did not decode.
    lost: int = 0
    late: int = 0
    undecodable: int = 0
    #: Datagrams dropped at the gate: from an address no ICE check validated; SRTP
    #: that failed authentication or came before the keys; RTP that did not parse.
    unvalidated: int = 0
    unauthenticated: int = 0
    malformed: int = 0
    #: Key presses received (RFC 4733).
    digits: int = 0
    #: Frames whose ``on_frame`` raised (logged; the leg carries on).
    consumer_failures: int = 0
    #: Packets sent towards the browser, and frames that could not be (not connected yet).
    packets_sent: int = 0
    unsent: int = 0
    states: list[str] = field(default_factory=list)


# --- receiving ---------------------------------------------------------------------------


class PacketSink(Protocol):
    """Where :class:`MediaPath` hands each authenticated RTP packet."""

    def packet(self, packet: RtpPacket) -> None: ...


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


class _OpusFrames:
    """Opus payloads -> 20 ms frames at 8 kHz (libopus decoding to 8 kHz itself)."""

    def __init__(self) -> None:
        self._opus = OpusDecoder(RATE, 1)
        self._framer = _Framer()

    def decode(self, payload: bytes) -> list[bytes]:
        return self._framer.cut(self._opus.decode(payload))


class _PcmuFrames:
    def __init__(self) -> None:
        self._framer = _Framer()

    def decode(self, payload: bytes) -> list[bytes]:
        return self._framer.cut(ulaw_decode(payload))


_DECODERS: Final[Mapping[str, Callable[[], _OpusFrames | _PcmuFrames]]] = {
    "opus": _OpusFrames,
    "PCMU": _PcmuFrames,
}


class RtpReceiver:
    """Decodes each authenticated packet on arrival and hands its frames to ``deliver``.

    There is no jitter buffer here (aiortc's held 80 ms and more): late and
    duplicate packets are dropped, gaps counted, and the caller's phone has
    the jitter buffer that matters. Key presses (RFC 4733 ``telephone-event``,
    a browser's ``RTCDTMFSender``) go to ``on_digit``, once per press.
    """

    def __init__(
        self,
        codecs: Mapping[int, str],
        deliver: Callable[[bytes], None],
        counters: LegCounters,
        on_digit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._codecs = {pt: name for pt, name in codecs.items() if name != TELEPHONE_EVENT}
        self._events = frozenset(pt for pt, name in codecs.items() if name == TELEPHONE_EVENT)
        self._deliver = deliver
        self._counters = counters
        self._on_digit = on_digit
        self._clock = clock
        self._dtmf = DtmfReceiver()
        self._decoders: dict[int, _OpusFrames | _PcmuFrames] = {}
        self._ssrc: int | None = None
        self._last_seq: int | None = None

    def packet(self, packet: RtpPacket) -> None:
        counters = self._counters
        seq = packet.sequence_number
        if packet.ssrc != self._ssrc:
            self._ssrc, self._last_seq = packet.ssrc, None
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                counters.late += 1  # a duplicate, or older than what was already played
                return
            if ahead <= _MAX_SEQ_JUMP:
                counters.lost += ahead - 1
        self._last_seq = seq
        if packet.payload_type in self._events:
            self._digits(self._dtmf.receive(packet, self._clock()))
            return
        if self._dtmf.next_deadline() is not None:  # a press whose end packets were lost
            self._digits(self._dtmf.poll(self._clock()))
        decoder = self._decoders.get(packet.payload_type) or self._decoder(packet.payload_type)
        if decoder is None:
            return
        try:
            frames = decoder.decode(packet.payload)
        except OpusError:
            counters.undecodable += 1
            return
        counters.frames_received += 1
        for pcm in frames:
            counters.frames_delivered += 1
            try:
                self._deliver(pcm)
            except Exception as exc:
                # We run in the socket's callback: a failing consumer must not stop
                # the leg (nor the other legs on this loop).
                counters.consumer_failures += 1
                log.error("webrtc frame consumer failed", extra={"error": type(exc).__name__})

    def _digits(self, digits: list[DtmfDigit]) -> None:
        for digit in digits:
            self._counters.digits += 1
            if digit.digit is not None and self._on_digit is not None:
                try:
                    self._on_digit(digit.digit)
                except Exception as exc:
                    self._counters.consumer_failures += 1
                    log.error("webrtc digit consumer failed", extra={"error": type(exc).__name__})

    def _decoder(self, payload_type: int) -> _OpusFrames | _PcmuFrames | None:
        name = self._codecs.get(payload_type)
        if name is None:
            return None
        try:
            decoder = self._decoders[payload_type] = _DECODERS[name]()
        except OpusError as exc:
            # No libopus to load: this codec's packets are dropped from now on, and the
            # leg (DTLS, RTCP, the other codec) goes on.
            del self._codecs[payload_type]
            log.error("webrtc decoder unavailable", extra={"codec": name, "error": str(exc)})
            return None
        return decoder


# --- sending -----------------------------------------------------------------------------


class RtpSender:
    """20 ms of 8 kHz PCM -> one RTP packet of the negotiated codec, timestamped.

    The RTP timestamp follows the loop's clock across a gap (nothing to send
    for a while), and the first packet after one carries the marker bit, so
    the browser's jitter buffer sees a new talkspurt rather than a late packet.
    """

    def __init__(
        self, codec: str, payload_type: int, ssrc: int, sender_report: object | None = None
    ) -> None:
        if codec not in _TICKS:
            raise ValueError(f"no RTP sender for {codec}")
        self._encode: Callable[[bytes], bytes] = ulaw_encode
        if codec == "opus":
            opus = OpusEncoder(RATE, bitrate=_OPUS_BITRATE).encode
            self._encode = lambda pcm: opus(_DITHER if pcm == SILENCE else pcm)
        self._ticks = _TICKS[codec]
        self._payload_type = payload_type
        self._ssrc = ssrc
        self._seq = int.from_bytes(os.urandom(2), "big") & 0x7FFF
        self._timestamp = int.from_bytes(os.urandom(4), "big")
        self._last: float | None = None
        # aiortc's RTCRtpSender still sends the sender reports, from fields we keep.
        self._report: Any = sender_report
        fields = ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")
        for name in fields if sender_report is not None else ():
            if not hasattr(sender_report, f"_RTCRtpSender__{name}"):
                raise WebRtcPathError(f"aiortc changed: RTCRtpSender has no __{name}")

    def packet(self, pcm: bytes, now: float) -> bytes:
        last = self._last
        marker = 0
        if last is None:
            marker = 0x80
        elif now - last > 1.5 * FRAME_SECONDS:
            marker = 0x80
            frames = round((now - last) / FRAME_SECONDS)
            self._timestamp = (self._timestamp + (frames - 1) * self._ticks) & 0xFFFFFFFF
        self._last = now
        payload = self._encode(pcm)
        header = _HEADER.pack(
            0x80, marker | self._payload_type, self._seq, self._timestamp, self._ssrc
        )
        report = self._report
        if report is not None:
            # aiortc's RTCRtpSender fields its sender reports are made of (name-mangled).
            report._RTCRtpSender__ntp_timestamp = int((time.time() + _NTP_OFFSET) * 2**32)
            report._RTCRtpSender__rtp_timestamp = self._timestamp
            report._RTCRtpSender__octet_count += len(payload)
            report._RTCRtpSender__packet_count += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + self._ticks) & 0xFFFFFFFF
        return header + payload


class IdleTrack(MediaStreamTrack):
    """The track aiortc's sender is given when :class:`MediaPath` carries the RTP: it
    never yields a frame, and aiortc's sender is left with its RTCP (sender reports)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def recv(self) -> AudioFrame:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ended.set()


# --- the path ----------------------------------------------------------------------------


class _Gate(asyncio.DatagramProtocol):
    """Stands between one of aioice's sockets and aioice's protocol for it."""

    def __init__(self, inner: Any, path: MediaPath) -> None:
        self._inner = inner
        self._path = path
        self._validated: set[tuple[str, int]] = set()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        first = data[0] if data else 0
        if first < 4:  # STUN (RFC 7983): aioice checks it, integrity and all
            self._inner.datagram_received(data, addr)
            return
        source = (addr[0], addr[1])
        if source not in self._validated and not self._validate(source):
            self._path.counters.unvalidated += 1
            return
        if 127 < first < 192 and not is_rtcp(data):
            self._path.rtp(data)
        else:
            self._inner.datagram_received(data, addr)  # DTLS and SRTCP: aiortc's

    def _validate(self, source: tuple[str, int]) -> bool:
        for pair in self._path.connection._check_list:
            if (
                pair.protocol is self._inner
                and pair.state is _SUCCEEDED
                and pair.remote_addr == source
            ):
                self._validated.add(source)
                return True
        return False

    def error_received(self, exc: Exception) -> None:
        self._inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)


class MediaPath:
    """One leg's SRTP both ways, on the keys and the candidate pair aiortc negotiated."""

    def __init__(
        self,
        dtls: Any,
        receiver: PacketSink,
        counters: LegCounters,
        *,
        clock_rates: Mapping[int, int] | None = None,
    ) -> None:
        """Gate the sockets aiortc gathered: call once gathering is done.

        With ``clock_rates`` (payload type -> RTP clock rate), aiortc's receiver is
        given each incoming stream's reception statistics, as its own packet path
        would, so its RTCP receiver reports carry loss and jitter: what the browser
        adapts its Opus encoder to (in-band FEC, bitrate) and shows in its statistics.
        """
        for name in ("_rx_srtp", "_tx_srtp", "transport", "_rtp_router"):
            if not hasattr(dtls, name):
                raise WebRtcPathError(f"aiortc changed: RTCDtlsTransport has no {name}")
        self.counters = counters
        self._dtls = dtls
        self._receiver = receiver
        self._rx: Any = None
        self._tx: Any = None
        self._pair: Any = None
        self._remote: tuple[str, int] | None = None
        self._clock_rates = dict(clock_rates or {})
        #: SSRC -> aiortc's StreamStatistics for it (None: no report for that stream).
        self._reports: dict[int, Any] = {}
        try:
            self.connection = dtls.transport._connection
            protocols = list(self.connection._protocols)
            self.connection._check_list  # noqa: B018 - probed: _Gate reads it
            self.connection._nominated  # noqa: B018
        except AttributeError as exc:
            raise WebRtcPathError(f"aioice changed: {exc}") from exc
        for protocol in protocols:
            _interpose(protocol, _Gate(protocol, self))

    def update(self) -> None:
        """Take the keys when the connection is up, drop them when it goes (the leg calls
        this on each connection state change, which follows each DTLS state change)."""
        if self._dtls.state == "connected":
            self._rx, self._tx = self._dtls._rx_srtp, self._dtls._tx_srtp
        else:
            self._rx = self._tx = None

    def rtp(self, data: bytes) -> None:
        srtp = self._rx
        if srtp is None:
            self.counters.unauthenticated += 1
            return
        try:
            packet = RtpPacket.parse(srtp.unprotect(data))
        except pylibsrtp.Error:
            self.counters.unauthenticated += 1
            return
        except (RtpError, ValueError):
            self.counters.malformed += 1
            return
        try:
            reception = self._reports[packet.ssrc]
        except KeyError:
            reception = self._reports[packet.ssrc] = self._reception(packet)
        if reception is not None:
            reception.add(packet)
        self._receiver.packet(packet)

    def _reception(self, packet: RtpPacket) -> Any:
        """aiortc's statistics of a new incoming stream, registered where its receiver
        reports from (what ``RTCRtpReceiver._handle_rtp_packet`` does on a first packet)."""
        rate = self._clock_rates.get(packet.payload_type)
        if rate is None:
            return None
        receiver = self._dtls._rtp_router.route_rtp(packet)
        streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
        if streams is None:
            return None
        reception = streams[packet.ssrc] = StreamStatistics(rate)
        return reception

    def send(self, packet: bytes) -> bool:
        """Protect and send one RTP packet on the nominated pair; False if not connected."""
        srtp = self._tx
        pair = self.connection._nominated.get(1)
        if srtp is None or pair is None:
            self.counters.unsent += 1
            return False
        if pair is not self._pair:  # remote_addr builds a tuple per call: once per pair
            self._pair, self._remote = pair, pair.remote_addr
        try:
            pair.protocol.transport.sendto(srtp.protect(packet), self._remote)
        except (pylibsrtp.Error, ValueError, OSError):
            self.counters.unsent += 1
            return False
        self.counters.packets_sent += 1
        return True


def _interpose(protocol: Any, gate: _Gate) -> None:
    """Put ``gate`` between ``protocol``'s transport and ``protocol``."""
    transport = protocol.transport
    turn_client = getattr(transport, "_TurnTransport__inner_protocol", None)
    if turn_client is not None:
        turn_client.receiver = gate  # a relayed candidate: TURN unwraps, then the gate
    elif hasattr(transport, "set_protocol"):
        transport.set_protocol(gate)
    else:
        raise WebRtcPathError(f"cannot gate a {type(transport).__name__}")
