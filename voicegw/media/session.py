"""One RTP media leg, sans-IO: who may send to us, what we accept, what we send.

A :class:`MediaLeg` takes datagrams with their source address and ``now``
(a monotonic time) and returns events; it builds the RTP packets we send and
the RTCP reports that are due, and says when it next needs to be woken
(:meth:`MediaLeg.next_deadline`). It never reads a clock or touches a socket.

Who may send to us (the "strict RTP" rules that stop RTP bleed):

* before the remote source is known, packets from the address signalled in
  SDP are accepted and latch the leg onto it at once;
* symmetric RTP (RFC 4961): a caller behind NAT sends from an address its SDP
  does not know. Within ``latch_window`` seconds of the call start, another
  source is learnt once it sent ``latch_packets`` packets in sequence with a
  negotiated payload type; its packets are dropped while it is on probation;
* once latched, every packet from any other address is dropped and counted
  (:attr:`DropReason.UNEXPECTED_SOURCE`); :meth:`MediaLeg.relearn` opens a
  new window (re-INVITE, or a NAT rebinding reported by signalling).

Drops never raise; each has a reason and a counter (:attr:`MediaLeg.dropped`).

Received audio goes out as :class:`RtpReceived` for same-codec relay,
untouched, and, only while PCM is wanted (:meth:`MediaLeg.enable_pcm`), into a
jitter buffer that :meth:`MediaLeg.playout` drains once per 20 ms tick.
RFC 4733 telephone events go to a :class:`DtmfReceiver` and come out as
:class:`DtmfReceived`; they are not relayed.

Time bases: ``now`` is monotonic seconds; RTCP NTP timestamps and RTT use
``now + wallclock_offset`` (Unix seconds), as :mod:`voicegw.media.stats` requires.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Final

from .codecs import Codec
from .dtmf import DtmfDigit, DtmfReceiver
from .jitter import JitterBuffer, JitterFrame, repeat_then_silence_concealer
from .rtcp import (
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    parse_compound,
    serialize_compound,
)
from .rtp import RtpError, RtpPacket, is_rtcp, seq_diff
from .stats import ReceiverStats, SenderStats, StreamSummary, round_trip_time

__all__ = [
    "Address",
    "Datagram",
    "DropReason",
    "DtmfReceived",
    "LegConfig",
    "LegSummary",
    "MediaEvent",
    "MediaLeg",
    "RemoteBye",
    "RtpReceived",
    "RtpSender",
    "SourceLatched",
    "SsrcChanged",
    "static_codecs",
]

Address = tuple[str, int]

#: Past receive streams kept for the call record when the remote SSRC changes.
_SSRC_HISTORY: Final = 4

# What we send never has CSRCs, an extension or padding: the fixed header, packed in
# one call (``bytes(RtpPacket(...))`` costs an object and its checks per packet).
_pack_rtp_header = struct.Struct("!BBHII").pack
_RTP_V2: Final = 0x80


class DropReason(Enum):
    MALFORMED = "malformed"
    MALFORMED_RTCP = "malformed_rtcp"
    #: from an address other than the latched (or signalled) one: RTP bleed.
    UNEXPECTED_SOURCE = "unexpected_source"
    #: from a candidate NAT source still on probation.
    LEARNING = "learning"
    #: a payload type the SDP did not negotiate.
    PAYLOAD_TYPE = "payload_type"


@dataclass(frozen=True, slots=True)
class Datagram:
    """Bytes to send; ``rtcp`` says which socket (the same one under rtcp-mux)."""

    data: bytes
    addr: Address
    rtcp: bool


# Not frozen: one is built per relayed packet, and a frozen dataclass takes about
# twice as long to construct. Treat it as read-only all the same.
@dataclass(slots=True)
class RtpReceived:
    """An accepted audio packet, untouched, for relay; ``codec`` from its payload type."""

    packet: RtpPacket
    codec: Codec


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: DtmfDigit


@dataclass(frozen=True, slots=True)
class SourceLatched:
    """The leg now takes media only from ``address``."""

    address: Address
    signalled: bool


@dataclass(frozen=True, slots=True)
class SsrcChanged:
    old: int | None
    new: int


@dataclass(frozen=True, slots=True)
class RemoteBye:
    sources: tuple[int, ...]


MediaEvent = RtpReceived | DtmfReceived | SourceLatched | SsrcChanged | RemoteBye


@dataclass(frozen=True, slots=True)
class LegSummary:
    """What to store on the call: reception of the current remote stream, sending, drops."""

    received: StreamSummary | None
    previous: tuple[StreamSummary, ...]
    packets_sent: int
    octets_sent: int
    rtt_ms: float | None
    dropped: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class LegConfig:
    """What SDP negotiated for this leg, plus the media policy.

    ``codecs`` maps each negotiated audio payload type to its codec;
    ``send_payload_type`` is the one we send. ``remote_rtp``/``remote_rtcp``
    come from the remote SDP (``remote_rtcp`` None means RTP port + 1, or the
    RTP address under ``rtcp_mux``).
    """

    codecs: Mapping[int, Codec]
    send_payload_type: int
    telephone_event_payload_type: int | None = None
    remote_rtp: Address | None = None
    remote_rtcp: Address | None = None
    rtcp_mux: bool = False
    symmetric: bool = True
    latch_window: float = 10.0
    latch_packets: int = 3
    rtcp_interval: float = 5.0
    cname: str = "voicegw"
    wallclock_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.send_payload_type not in self.codecs:
            raise ValueError("send_payload_type is not among the negotiated codecs")
        if not all(0 <= pt <= 127 for pt in self.codecs):
            raise ValueError("RTP payload types are 0..127")
        if self.latch_packets < 1:
            raise ValueError("latch_packets must be at least 1")

    @property
    def send_codec(self) -> Codec:
        return self.codecs[self.send_payload_type]


class RtpSender:
    """Our outgoing RTP stream: SSRC, sequence numbers and timestamps that stay continuous
    whether the frames are relayed from another leg or generated here (prompts).

    A relayed stream keeps its own sequence/timestamp deltas (so the far end
    still sees upstream loss and silence gaps) but is rebased onto ours when
    its source changes; each switch of source, and each restart after a pause,
    is a new talkspurt and carries the marker bit.
    """

    __slots__ = (
        "_last_send",
        "_relay_ssrc",
        "_sent_since_report",
        "_seq",
        "_seq_offset",
        "_ts",
        "_ts_offset",
        "clock_rate",
        "frame_duration",
        "ssrc",
        "stats",
        "step",
    )

    def __init__(self, ssrc: int, seq: int, timestamp: int, codec: Codec) -> None:
        self.ssrc = ssrc
        self.clock_rate = codec.clock_rate
        self.step = codec.timestamp_step
        self.frame_duration = codec.frame_ms / 1000.0
        self.stats = SenderStats(ssrc, codec.clock_rate)
        self._seq = (seq - 1) & 0xFFFF  # last sequence number sent
        self._ts = (timestamp - self.step) & 0xFFFFFFFF  # last timestamp sent
        self._last_send: float | None = None
        self._relay_ssrc: int | None = None  # None: frames are generated locally
        self._seq_offset = 0
        self._ts_offset = 0
        self._sent_since_report = False

    def _advance(self, now: float) -> tuple[int, bool]:
        """Next timestamp after a source switch or a pause, and whether it starts a talkspurt."""
        if self._last_send is None:
            return (self._ts + self.step) & 0xFFFFFFFF, True
        frames = max(1, round((now - self._last_send) / self.frame_duration))
        return (self._ts + frames * self.step) & 0xFFFFFFFF, frames > 1

    def frame(self, payload_type: int, payload: bytes, now: float) -> bytes:
        """A locally generated frame (prompt, hold music, transcoded audio)."""
        if not 0 <= payload_type <= 127:
            raise RtpError("RTP payload type is out of range")
        timestamp, pause = self._advance(now)
        marker = pause or self._relay_ssrc is not None or self._last_send is None
        self._relay_ssrc = None
        seq = (self._seq + 1) & 0xFFFF
        return self._emit(payload_type, seq, timestamp, payload, marker, now)

    def relay(self, packet: RtpPacket, payload_type: int, payload: bytes, now: float) -> bytes:
        """``packet`` from another leg, renumbered onto our stream."""
        marker = packet.marker
        if packet.ssrc != self._relay_ssrc:
            timestamp, _ = self._advance(now)
            self._seq_offset = (self._seq + 1 - packet.sequence_number) & 0xFFFF
            self._ts_offset = (timestamp - packet.timestamp) & 0xFFFFFFFF
            self._relay_ssrc = packet.ssrc
            marker = True
        seq = (packet.sequence_number + self._seq_offset) & 0xFFFF
        timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        return self._emit(payload_type, seq, timestamp, payload, marker, now)

    def _emit(
        self, payload_type: int, seq: int, timestamp: int, payload: bytes, marker: bool, now: float
    ) -> bytes:
        # seq_newer(seq, self._seq), inlined: this runs for every packet sent.
        if self._last_send is None or 0 < ((seq - self._seq) & 0xFFFF) < 0x8000:
            # A reordered relayed packet goes out with its own numbers but does
            # not move the stream back.
            self._seq = seq
            self._ts = timestamp
            self._last_send = now
        stats = self.stats
        stats.packet_count += 1  # SenderStats.on_sent, inlined
        stats.octet_count += len(payload)
        self._sent_since_report = True
        second = payload_type | 0x80 if marker else payload_type
        return _pack_rtp_header(_RTP_V2, second, seq, timestamp, self.ssrc) + payload

    def rtp_timestamp_at(self, now: float) -> int:
        """The RTP time that corresponds to ``now`` (for the SR's sender info)."""
        if self._last_send is None:
            return self._ts
        return (self._ts + round((now - self._last_send) * self.clock_rate)) & 0xFFFFFFFF

    def take_sent_flag(self) -> bool:
        """Whether we sent since the last report (SR vs RR, RFC 3550 §6.4)."""
        sent, self._sent_since_report = self._sent_since_report, False
        return sent


class MediaLeg:
    """The RTP/RTCP state of one call leg (see the module docstring)."""

    def __init__(self, config: LegConfig, now: float, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        codec = config.send_codec
        self.sender = RtpSender(
            self._rng.getrandbits(32),
            self._rng.getrandbits(16),
            self._rng.getrandbits(32),
            codec,
        )
        self.dropped: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.dtmf = DtmfReceiver()
        self._codecs = dict(config.codecs)  # a plain dict: looked up per packet
        self._event_pt = config.telephone_event_payload_type
        self._send_pt = config.send_payload_type
        self._send_codec = codec
        self._send_pt_by_codec = {c.name: pt for pt, c in config.codecs.items()}
        self._source: Address | None = None
        self._rtcp_source: Address | None = None
        self._latch_until = now + config.latch_window
        self._candidate: Address | None = None
        self._candidate_seq = 0
        self._candidate_count = 0
        self._receiver: ReceiverStats | None = None
        self._previous: deque[StreamSummary] = deque(maxlen=_SSRC_HISTORY)
        self._rx_codec = codec
        self._jitter: JitterBuffer | None = None
        self._relay = True
        self._rtt: float | None = None
        self._out: list[Datagram] = []
        self.last_received: float | None = None
        #: Set by :meth:`receive` when :meth:`next_deadline` may have moved (a DTMF
        #: packet); the I/O layer re-arms its timer and clears it. Audio never sets it,
        #: so the relay path does not recompute the deadline per packet.
        self.deadline_moved = False
        # RFC 3550 §6.2: the first report goes out after half the interval.
        self._rtcp_at = now + self._rtcp_delay() / 2

    # -- addresses -------------------------------------------------------

    @property
    def remote_rtp(self) -> Address | None:
        """Where our RTP goes: the latched source, else what SDP said."""
        return self._source or self.config.remote_rtp

    @property
    def remote_rtcp(self) -> Address | None:
        config = self.config
        if config.rtcp_mux:
            return self.remote_rtp
        if self._rtcp_source is not None:
            return self._rtcp_source
        source = self._source
        if config.remote_rtcp is not None and (source is None or source == config.remote_rtp):
            return config.remote_rtcp  # SDP a=rtcp (RFC 3605), still valid: no NAT in between
        rtp = self.remote_rtp
        return None if rtp is None else (rtp[0], rtp[1] + 1)

    @property
    def latched(self) -> Address | None:
        return self._source

    def relearn(self, now: float, remote_rtp: Address | None = None) -> None:
        """Forget the latched source and open a new latching window (re-INVITE)."""
        if remote_rtp is not None:
            self.config = replace(self.config, remote_rtp=remote_rtp, remote_rtcp=None)
        self._source = None
        self._rtcp_source = None
        self._candidate = None
        self._latch_until = now + self.config.latch_window

    # -- receiving -------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> list[MediaEvent]:
        """One datagram from ``addr`` (RTP, or RTCP under rtcp-mux or on the RTCP port)."""
        if is_rtcp(data):
            return self._receive_rtcp(data, addr, now)
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.dropped[DropReason.MALFORMED] += 1
            return []
        pt = packet.payload_type
        codec = self._codecs.get(pt)
        if codec is None and pt != self._event_pt:
            reason = DropReason.PAYLOAD_TYPE
            if self._source is not None and addr != self._source:
                reason = DropReason.UNEXPECTED_SOURCE
            self.dropped[reason] += 1
            return []
        events: list[MediaEvent] = []
        if addr != self._source and not self._admit(packet, addr, now, events):
            return []
        receiver = self._receiver
        if receiver is None or packet.ssrc != receiver.ssrc:
            receiver = self._new_remote_ssrc(packet.ssrc, events)
        receiver.on_packet(packet.sequence_number, packet.timestamp, now)
        self.last_received = now  # for the call's media-inactivity timeout
        if codec is None:
            events.extend(DtmfReceived(d) for d in self.dtmf.receive(packet, now))
            self.deadline_moved = True
            return events
        self._rx_codec = codec
        if self._jitter is not None:
            self._jitter.push(packet, now)
        if self._relay:
            events.append(RtpReceived(packet, codec))
        return events

    def _admit(
        self, packet: RtpPacket, addr: Address, now: float, events: list[MediaEvent]
    ) -> bool:
        """Strict-RTP and latching rules for a packet not from the latched source."""
        if self._source is not None:
            self.dropped[DropReason.UNEXPECTED_SOURCE] += 1
            return False
        config = self.config
        if addr == config.remote_rtp:
            self._latch(addr, signalled=True, events=events)
            return True
        if not config.symmetric or now > self._latch_until:
            self.dropped[DropReason.UNEXPECTED_SOURCE] += 1
            return False
        seq = packet.sequence_number
        if addr == self._candidate and seq_diff(seq, self._candidate_seq) == 1:
            self._candidate_count += 1
        else:
            self._candidate = addr
            self._candidate_count = 1
        self._candidate_seq = seq
        if self._candidate_count >= config.latch_packets:
            self._latch(addr, signalled=False, events=events)
            return True
        self.dropped[DropReason.LEARNING] += 1
        return False

    def _latch(self, addr: Address, *, signalled: bool, events: list[MediaEvent]) -> None:
        self._source = addr
        self._candidate = None
        events.append(SourceLatched(addr, signalled))

    def _new_remote_ssrc(self, ssrc: int, events: list[MediaEvent]) -> ReceiverStats:
        old = self._receiver
        if old is not None:
            self._previous.append(old.summary())
        # The source is already vetted by address and payload type: count from its first packet.
        receiver = self._receiver = ReceiverStats(ssrc, self._rx_codec.clock_rate, probation=0)
        events.append(SsrcChanged(None if old is None else old.ssrc, ssrc))
        return receiver

    def _receive_rtcp(self, data: bytes, addr: Address, now: float) -> list[MediaEvent]:
        if not self._rtcp_allowed(addr):
            self.dropped[DropReason.UNEXPECTED_SOURCE] += 1
            return []
        try:
            packets = parse_compound(data)
        except RtcpError:
            self.dropped[DropReason.MALFORMED_RTCP] += 1
            return []
        if self.config.symmetric and not self.config.rtcp_mux:
            self._rtcp_source = addr
        wall = now + self.config.wallclock_offset
        events: list[MediaEvent] = []
        for packet in packets:
            self._on_rtcp(packet, wall, events)
        return events

    def _rtcp_allowed(self, addr: Address) -> bool:
        # NAT maps the RTCP port independently: the host must match, the port need not.
        source = self._source
        if source is not None:
            return addr[0] == source[0]
        signalled = self.config.remote_rtcp or self.config.remote_rtp
        return signalled is not None and addr[0] == signalled[0]

    def _on_rtcp(self, packet: RtcpPacket, wall: float, events: list[MediaEvent]) -> None:
        if isinstance(packet, RtcpSenderReport):
            receiver = self._receiver
            if receiver is not None and receiver.ssrc == packet.ssrc:
                receiver.on_sender_report(packet.ntp_timestamp, wall)
        if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
            for block in packet.reports:
                if block.ssrc == self.sender.ssrc:
                    rtt = round_trip_time(block, wall)
                    if rtt is not None:
                        self._rtt = rtt
        elif isinstance(packet, RtcpBye):
            events.append(RemoteBye(packet.sources))

    # -- PCM for taps, playout ---------------------------------------------

    def enable_pcm(self, jitter: JitterBuffer | None = None) -> None:
        """Start buffering received audio for :meth:`playout` (a tap or mixer wants PCM)."""
        if self._jitter is None:
            codec = self._rx_codec
            self._jitter = jitter or JitterBuffer(
                conceal=repeat_then_silence_concealer(codec.silence()),
                clock_rate=codec.clock_rate,
                frame_duration=codec.frame_ms / 1000.0,
            )

    def disable_pcm(self) -> None:
        self._jitter = None

    @property
    def pcm_enabled(self) -> bool:
        return self._jitter is not None

    def set_relay(self, enabled: bool) -> None:
        """Whether accepted audio is handed out as :class:`RtpReceived` (off: PCM only)."""
        self._relay = enabled

    @property
    def receive_codec(self) -> Codec:
        """The codec of the audio last received (what :meth:`playout_encoded` frames are in)."""
        return self._rx_codec

    def playout_encoded(self, now: float) -> JitterFrame | None:
        """The received frame due at this 20 ms tick, still encoded with
        :attr:`receive_codec`; None while buffering or idle."""
        if self._jitter is None:
            return None
        return self._jitter.pop(now)

    def playout_pcm(self, now: float) -> tuple[bytes, bool] | None:
        """The received frame due at this tick as 16-bit PCM at the receive codec's
        sample rate, and whether it was concealed; None while buffering or idle. What
        taps take: a G.711 frame is decoded in the jitter buffer's pop, in C."""
        jitter = self._jitter
        if jitter is None:
            return None
        codec = self._rx_codec
        if codec.decode_table is not None:
            return jitter.pop_pcm(now, codec.decode_table)
        frame = jitter.pop(now)
        return None if frame is None else (codec.decode(frame.payload), frame.concealed)

    # -- sending -----------------------------------------------------------

    def send_payload(self, payload: bytes, now: float) -> bytes:
        """One locally generated frame already encoded with the send codec."""
        return self.sender.frame(self._send_pt, payload, now)

    def send_pcm(self, pcm: bytes, now: float) -> bytes:
        """One frame of 16-bit PCM at the send codec's rate, encoded here."""
        return self.sender.frame(self._send_pt, self._send_codec.encode(pcm), now)

    def relay(self, received: RtpReceived, now: float) -> bytes:
        """A packet another leg received, as this leg sends it: untouched payload when the
        codec is negotiated here too, transcoded through PCM otherwise."""
        pt = self._send_pt_by_codec.get(received.codec.name)
        payload = received.packet.payload
        if pt is None:
            pt = self._send_pt
            payload = self._send_codec.encode(received.codec.decode(payload))
        return self.sender.relay(received.packet, pt, payload, now)

    # -- timers and RTCP ---------------------------------------------------

    def next_deadline(self) -> float:
        dtmf = self.dtmf.next_deadline()
        return self._rtcp_at if dtmf is None else min(dtmf, self._rtcp_at)

    def handle_timer(self, now: float) -> list[MediaEvent]:
        """Run what is due: DTMF digits whose end packets were lost, the RTCP report."""
        events: list[MediaEvent] = [DtmfReceived(d) for d in self.dtmf.poll(now)]
        if now >= self._rtcp_at:
            self._rtcp_at = now + self._rtcp_delay()
            self._queue_rtcp(self._report(now))
        return events

    def datagrams_to_send(self) -> list[Datagram]:
        """RTCP queued by :meth:`handle_timer` or :meth:`close`."""
        out, self._out = self._out, []
        return out

    def close(self, now: float, reason: bytes = b"") -> None:
        """Queue a final report with BYE (RFC 3550 §6.6)."""
        self._queue_rtcp([*self._report(now), RtcpBye((self.sender.ssrc,), reason or None)])

    def _rtcp_delay(self) -> float:
        # RFC 3550 §6.3.1: randomise by [0.5, 1.5] so reports of many legs do not synchronise.
        return self.config.rtcp_interval * self._rng.uniform(0.5, 1.5)

    def _report(self, now: float) -> list[RtcpPacket]:
        wall = now + self.config.wallclock_offset
        sender = self.sender
        receiver = self._receiver
        blocks: tuple[ReportBlock, ...] = ()
        if receiver is not None and receiver.packets_received:
            blocks = (receiver.report_block(wall),)
        head: RtcpPacket
        if sender.take_sent_flag():
            head = sender.stats.sender_report(wall, sender.rtp_timestamp_at(now), blocks)
        else:
            head = RtcpReceiverReport(sender.ssrc, blocks)
        return [head, RtcpSdes.cname_of(sender.ssrc, self.config.cname)]

    def _queue_rtcp(self, packets: list[RtcpPacket]) -> None:
        addr = self.remote_rtcp
        if addr is not None:
            self._out.append(Datagram(serialize_compound(packets), addr, True))

    # -- figures -------------------------------------------------------------

    @property
    def rtt(self) -> float | None:
        """Last round-trip time measured from a report about our stream, in seconds."""
        return self._rtt

    def summary(self) -> LegSummary:
        receiver = self._receiver
        return LegSummary(
            received=None if receiver is None else receiver.summary(self._rtt),
            previous=tuple(self._previous),
            packets_sent=self.sender.stats.packet_count,
            octets_sent=self.sender.stats.octet_count,
            rtt_ms=None if self._rtt is None else 1000.0 * self._rtt,
            dropped=MappingProxyType({r.value: n for r, n in self.dropped.items()}),
        )


def static_codecs(*codecs: Codec) -> Mapping[int, Codec]:
    """``LegConfig.codecs`` for codecs with a static payload type (PCMU, PCMA)."""
    table = {}
    for codec in codecs:
        if codec.payload_type is None:
            raise ValueError("codec has no static payload type")
        table[codec.payload_type] = codec
    return MappingProxyType(table)
