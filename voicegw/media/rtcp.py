"""RTCP packets (RFC 3550 §6): SR, RR, SDES, BYE, compound packets, NTP time.

Packet types we do not interpret (APP, transport/payload feedback of WebRTC
peers) are kept raw as :class:`RtcpUnknown` so a compound packet round-trips
unchanged. Bad bytes raise :class:`RtcpError` with a fixed message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "NTP_EPOCH_OFFSET",
    "ReportBlock",
    "RtcpBye",
    "RtcpError",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "SdesChunk",
    "ntp_middle32",
    "ntp_to_unix",
    "parse_compound",
    "serialize_compound",
    "unix_to_ntp",
]

#: Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch).
NTP_EPOCH_OFFSET: Final = 2_208_988_800

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203

SDES_END: Final = 0
SDES_CNAME: Final = 1

_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc + sender info (RFC 3550 §6.4.1)
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_SSRC = struct.Struct("!I")


class RtcpError(ValueError):
    """Bytes that are not a valid RTCP packet. The message names the defect only."""


def unix_to_ntp(seconds: float) -> int:
    """Unix time in seconds -> 64-bit NTP timestamp (32.32 fixed point)."""
    return round((seconds + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """64-bit NTP timestamp -> Unix time in seconds (era 0)."""
    return ntp / (1 << 32) - NTP_EPOCH_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (16.16 seconds), as used in LSR/DLSR."""
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception report about one source (RFC 3550 §6.4.1).

    ``fraction_lost`` is the 8-bit fixed-point fraction (lost/expected x 256);
    ``packets_lost`` the signed 24-bit cumulative count; ``jitter`` is in RTP
    timestamp units; ``lsr`` and ``dlsr`` are NTP middle-32 values.
    """

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        return cls(
            ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr
        )

    def __bytes__(self) -> bytes:
        # Cumulative loss saturates at the 24-bit limits (RFC 3550 A.3) instead of wrapping.
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost))
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_blocks(data: bytes, pos: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if pos + 24 * count > end:
        raise RtcpError("RTCP report block list is truncated")
    return tuple(ReportBlock.parse(data, pos + 24 * i) for i in range(count))


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP packet body is not a multiple of 4 bytes")
    if count > 31:
        raise RtcpError("RTCP packet count field exceeds 31")
    return _HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


@dataclass(frozen=True, slots=True)
class RtcpSenderReport:
    """SR: sender info plus reception reports about the sources this sender hears."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse_body(cls, count: int, data: bytes, pos: int, end: int) -> RtcpSenderReport:
        if pos + _SENDER_INFO.size > end:
            raise RtcpError("RTCP sender report is truncated")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, pos)
        reports = _parse_blocks(data, pos + _SENDER_INFO.size, count, end)
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports)

    def __bytes__(self) -> bytes:
        body = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        ) + b"".join(bytes(r) for r in self.reports)
        return _header(RTCP_SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class RtcpReceiverReport:
    """RR: reception reports from a participant that is not sending."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse_body(cls, count: int, data: bytes, pos: int, end: int) -> RtcpReceiverReport:
        if pos + 4 > end:
            raise RtcpError("RTCP receiver report is truncated")
        (ssrc,) = _SSRC.unpack_from(data, pos)
        return cls(ssrc, _parse_blocks(data, pos + 4, count, end))

    def __bytes__(self) -> bytes:
        body = _SSRC.pack(self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _header(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """Items (type, value) describing one source; type 1 is CNAME."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class RtcpSdes:
    """SDES: source descriptions (at least the CNAME of every sender)."""

    chunks: tuple[SdesChunk, ...] = ()

    @classmethod
    def cname_of(cls, ssrc: int, cname: str) -> RtcpSdes:
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname.encode()),)),))

    @classmethod
    def parse_body(cls, count: int, data: bytes, pos: int, end: int) -> RtcpSdes:
        chunks = []
        for _ in range(count):
            if pos + 4 > end:
                raise RtcpError("RTCP SDES chunk is truncated")
            (ssrc,) = _SSRC.unpack_from(data, pos)
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("RTCP SDES item list is not terminated")
                item_type = data[pos]
                if item_type == SDES_END:
                    # The null item is followed by padding to the next 32-bit boundary.
                    pos = (pos + 4) & ~3
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("RTCP SDES item is truncated")
                length = data[pos + 1]
                items.append((item_type, data[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            body += _SSRC.pack(chunk.ssrc)
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise RtcpError("RTCP SDES item is invalid")
                body += bytes((item_type, len(value))) + value
            # At least one null octet ends the list, then pad to a 32-bit boundary.
            body += bytes(4 - len(body) % 4)
        return _header(RTCP_SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True, slots=True)
class RtcpBye:
    """BYE: the listed sources are leaving, with an optional reason."""

    sources: tuple[int, ...] = ()
    reason: bytes | None = None

    @classmethod
    def parse_body(cls, count: int, data: bytes, pos: int, end: int) -> RtcpBye:
        if pos + 4 * count > end:
            raise RtcpError("RTCP BYE source list is truncated")
        sources = struct.unpack_from(f"!{count}I", data, pos)
        pos += 4 * count
        reason = None
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise RtcpError("RTCP BYE reason is truncated")
            reason = data[pos + 1 : pos + 1 + length]
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise RtcpError("RTCP BYE reason is longer than 255 bytes")
            reason = bytes((len(self.reason),)) + self.reason
            body += reason + bytes(-len(reason) % 4)
        return _header(RTCP_BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """A packet type this module does not interpret, kept verbatim (APP, RTPFB, PSFB, XR)."""

    packet_type: int
    count: int
    body: bytes = field(default=b"")

    def __bytes__(self) -> bytes:
        if len(self.body) % 4 == 0:
            return _header(self.packet_type, self.count, self.body)
        # A body that arrived padded is re-padded (P bit, last octet = pad length).
        pad = 4 - len(self.body) % 4
        packet = bytearray(_header(self.packet_type, self.count, self.body + bytes(pad)))
        packet[0] |= 0x20
        packet[-1] = pad
        return bytes(packet)


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown

_PARSERS: Final[dict[int, Callable[[int, bytes, int, int], RtcpPacket]]] = {
    RTCP_SR: RtcpSenderReport.parse_body,
    RTCP_RR: RtcpReceiverReport.parse_body,
    RTCP_SDES: RtcpSdes.parse_body,
    RTCP_BYE: RtcpBye.parse_body,
}


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet into its parts; raise :class:`RtcpError` if malformed."""
    packets: list[RtcpPacket] = []
    pos = 0
    total = len(data)
    if total < 4:
        raise RtcpError("RTCP packet length is less than 4 bytes")
    while pos < total:
        if pos + 4 > total:
            raise RtcpError("RTCP packet header is truncated")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise RtcpError("RTCP packet has invalid version")
        end = pos + 4 + 4 * words
        if end > total:
            raise RtcpError("RTCP packet length exceeds the datagram")
        body_end = end
        if first & 0x20:
            # RFC 3550 §6.4.1: only the last packet of a compound may be padded.
            if end != total:
                raise RtcpError("RTCP padding is only allowed on the last packet")
            padding = data[end - 1]
            if padding == 0 or pos + 4 + padding > end:
                raise RtcpError("RTCP packet padding length is invalid")
            body_end = end - padding
        count = first & 0x1F
        parser = _PARSERS.get(packet_type)
        if parser is not None:
            packets.append(parser(count, data, pos + 4, body_end))
        else:
            packets.append(RtcpUnknown(packet_type, count, data[pos + 4 : body_end]))
        pos = end
    return packets


def serialize_compound(packets: Sequence[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound datagram (RFC 3550 §6.1)."""
    return b"".join(bytes(p) for p in packets)
