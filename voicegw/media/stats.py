"""Per-stream RTP statistics (RFC 3550 A.1, A.3, A.8) and round-trip time.

Sans-IO: arrival times are passed in. Times given to :meth:`ReceiverStats.on_packet`
only need a consistent origin (a monotonic clock is fine); times used for
LSR/DLSR and RTT must share the timebase of the NTP timestamps in our own
sender reports (Unix wall-clock seconds, see :func:`voicegw.media.rtcp.unix_to_ntp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .rtcp import ReportBlock, RtcpSenderReport, ntp_middle32, unix_to_ntp

__all__ = [
    "ReceiverStats",
    "SenderStats",
    "StreamSummary",
    "round_trip_time",
    "round_trip_time_ntp",
]

RTP_SEQ_MOD: Final = 1 << 16
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
MIN_SEQUENTIAL: Final = 2


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """Figures for one received stream, fit to store on a call record."""

    ssrc: int
    packets_received: int
    packets_expected: int
    packets_lost: int
    loss_fraction: float
    jitter_ms: float
    rtt_ms: float | None = None


class ReceiverStats:
    """What a receiver knows about one source: sequence state, loss, jitter, LSR.

    ``on_packet`` implements RFC 3550 A.1 (``update_seq``, with probation
    before a source counts as valid) and A.8 (interarrival jitter in RTP
    timestamp units); ``report_block`` implements A.3 (cumulative and
    interval loss) and fills LSR/DLSR from the last sender report received.
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_last_transit",
        "_lsr",
        "_lsr_arrival",
        "_max_seq",
        "_probation",
        "_received",
        "_received_prior",
        "_started",
        "clock_rate",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int, *, probation: int = MIN_SEQUENTIAL) -> None:
        """``probation``: sequential packets needed before a new source counts
        (RFC 3550 A.1; the probation packets themselves are not counted). Use 0
        when the source is known from signalling and every packet should count.
        """
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._started = False
        self._base_seq = 0
        self._max_seq = 0
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._probation = probation
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._lsr = 0
        self._lsr_arrival = 0.0

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0

    def on_packet(self, seq: int, timestamp: int, arrival: float) -> bool:
        """Account one received packet. False when the packet is not (yet) counted.

        Packets are not counted while the source is on probation or when the
        sequence number jumped so far that it is treated as a restart to be
        confirmed by the next packet (A.1).
        """
        if not self._started:
            self._started = True
            self._init_seq(seq)
            if self._probation == 0:
                self._received = 1
                self._update_jitter(timestamp, arrival)
                return True
            # A.1: a new source starts on probation, max_seq one behind its first packet.
            self._max_seq = (seq - 1) & 0xFFFF
        accepted = self._update_seq(seq)
        if accepted:
            self._update_jitter(timestamp, arrival)
        return accepted

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self._max_seq) & 0xFFFF
        if self._probation:
            if seq == (self._max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self._received += 1
                    return True
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self._max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += RTP_SEQ_MOD
            self._max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) & 0xFFFF
                return False
            # Two sequential packets after a big jump: the sender restarted.
            self._init_seq(seq)
            self._last_transit = None
        # else: a duplicate or a reordered packet, counted as received (A.1).
        self._received += 1
        return True

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        # A.8: transit time in timestamp units; only differences matter, so the
        # wrap of the 32-bit timestamp is taken care of by working modulo 2**32.
        transit = arrival * self.clock_rate - timestamp
        last = self._last_transit
        self._last_transit = transit
        if last is None:
            return
        d = transit - last
        d = (d + 2**31) % 2**32 - 2**31
        self._jitter += (abs(d) - self._jitter) / 16.0

    def on_sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        """Remember the SR's NTP time (as LSR) and when it arrived (for DLSR)."""
        self._lsr = ntp_middle32(ntp_timestamp)
        self._lsr_arrival = arrival

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._max_seq

    @property
    def packets_received(self) -> int:
        return self._received

    @property
    def packets_expected(self) -> int:
        if self._received == 0:
            return 0
        return self.extended_highest_sequence - self._base_seq + 1

    @property
    def packets_lost(self) -> int:
        """Cumulative loss; negative when duplicates outnumber losses (RFC 3550 A.3)."""
        return self.packets_expected - self._received

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate in RTP timestamp units."""
        return self._jitter

    def report_block(self, now: float) -> ReportBlock:
        """A reception report for this source, closing the current loss interval."""
        expected = self.packets_expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._lsr:
            dlsr = max(0, min(0xFFFFFFFF, round((now - self._lsr_arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.packets_lost,
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=int(self._jitter) & 0xFFFFFFFF,
            lsr=self._lsr,
            dlsr=dlsr,
        )

    def summary(self, rtt: float | None = None) -> StreamSummary:
        """Cumulative figures; ``rtt`` in seconds if the caller measured one."""
        expected = self.packets_expected
        lost = max(0, self.packets_lost)
        return StreamSummary(
            ssrc=self.ssrc,
            packets_received=self._received,
            packets_expected=expected,
            packets_lost=lost,
            loss_fraction=lost / expected if expected else 0.0,
            jitter_ms=1000.0 * self._jitter / self.clock_rate,
            rtt_ms=None if rtt is None else 1000.0 * rtt,
        )


class SenderStats:
    """Counts what we sent, to fill the sender info of an SR (RFC 3550 §6.4.1)."""

    __slots__ = ("clock_rate", "octet_count", "packet_count", "ssrc")

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.packet_count = 0
        self.octet_count = 0

    def on_sent(self, payload_size: int) -> None:
        self.packet_count += 1
        self.octet_count += payload_size

    def sender_report(
        self, now: float, rtp_timestamp: int, reports: tuple[ReportBlock, ...] = ()
    ) -> RtcpSenderReport:
        """An SR stamped with wall-clock ``now`` (Unix seconds) and the matching RTP time."""
        return RtcpSenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=unix_to_ntp(now),
            rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
            packet_count=self.packet_count & 0xFFFFFFFF,
            octet_count=self.octet_count & 0xFFFFFFFF,
            reports=reports,
        )


def round_trip_time_ntp(arrival_middle32: int, lsr: int, dlsr: int) -> float | None:
    """RTT in seconds = A - LSR - DLSR, all in NTP middle-32 units (RFC 3550 §6.4.1).

    None when the report carries no LSR (no SR received yet) or the result is
    negative (clock steps on either side).
    """
    if lsr == 0:
        return None
    units = (arrival_middle32 - lsr - dlsr) & 0xFFFFFFFF
    if units >= 0x80000000:
        return None
    return units / 65536.0


def round_trip_time(block: ReportBlock, arrival: float) -> float | None:
    """RTT from a report block about our stream that arrived at Unix time ``arrival``."""
    return round_trip_time_ntp(ntp_middle32(unix_to_ntp(arrival)), block.lsr, block.dlsr)
