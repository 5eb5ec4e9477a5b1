"""RTP packets (RFC 3550 §5.1) and sequence-number arithmetic.

A packet is a class with ``parse(data)`` and ``__bytes__``; bad bytes raise
:class:`RtpError` with a fixed message (never the packet's content, which may
be audio). Parsing is on the per-packet hot path: one ``struct`` unpack, one
slice for the payload, positional construction of a slotted dataclass.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpError",
    "RtpPacket",
    "SequenceUnwrapper",
    "is_rtcp",
    "seq_diff",
    "seq_newer",
    "timestamp_diff",
]

RTP_HEADER_SIZE = 12
RTP_VERSION = 2

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack


class RtpError(ValueError):
    """Bytes that are not a valid RTP packet. The message names the defect only."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. ``extension_profile`` is None when the X bit is clear.

    ``extension`` holds the header-extension words verbatim (a multiple of
    4 bytes); ``padding_size`` is how many padding octets were (or will be)
    present, 0 meaning the P bit is clear.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raise :class:`RtpError` on malformed input."""
        if len(data) < RTP_HEADER_SIZE:
            raise RtpError("RTP packet length is less than 12 bytes")
        first, second, seq, timestamp, ssrc = _unpack_header(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError("RTP packet has invalid version")
        pos = RTP_HEADER_SIZE
        end = len(data)
        csrc: tuple[int, ...] = ()
        cc = first & 0x0F
        if cc:
            pos += 4 * cc
            if pos > end:
                raise RtpError("RTP packet has truncated CSRC list")
            csrc = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE)
        extension_profile: int | None = None
        extension = b""
        if first & 0x10:
            if pos + 4 > end:
                raise RtpError("RTP packet has truncated extension header")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            pos += 4
            if pos + 4 * words > end:
                raise RtpError("RTP packet has truncated extension")
            extension = data[pos : pos + 4 * words]
            pos += 4 * words
        padding_size = 0
        if first & 0x20:
            padding_size = data[-1]
            if padding_size == 0 or pos + padding_size > end:
                raise RtpError("RTP packet padding length is invalid")
            end -= padding_size
        return cls(
            second & 0x7F,
            seq,
            timestamp,
            ssrc,
            data[pos:end],
            bool(second & 0x80),
            csrc,
            extension_profile,
            extension,
            padding_size,
        )

    def __bytes__(self) -> bytes:
        csrc = self.csrc
        if len(csrc) > 15:
            raise RtpError("RTP packet has more than 15 CSRCs")
        if len(self.extension) % 4:
            raise RtpError("RTP header extension is not a multiple of 4 bytes")
        if not 0 <= self.padding_size <= 255:
            raise RtpError("RTP packet padding length is invalid")
        first = (RTP_VERSION << 6) | len(csrc)
        if self.padding_size:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        if not 0 <= self.payload_type <= 127:
            raise RtpError("RTP payload type is out of range")
        second = self.payload_type | (0x80 if self.marker else 0)
        try:
            header = _pack_header(first, second, self.sequence_number, self.timestamp, self.ssrc)
        except struct.error:
            raise RtpError("RTP header field is out of range") from None
        if not csrc and self.extension_profile is None and not self.padding_size:
            return header + self.payload
        parts = [header]
        if csrc:
            parts.append(struct.pack(f"!{len(csrc)}I", *csrc))
        if self.extension_profile is not None:
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing: RTCP packet types 192-223 sit where RTP has M+PT."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic)."""
    return seq_diff(a, b) > 0


def timestamp_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class SequenceUnwrapper:
    """Turn 16-bit sequence numbers into a 64-bit-safe extended counter.

    Each number is placed at the extended value nearest to the last one seen,
    so reordering across a wrap (65535, 0, 65534, 1) maps to (65535, 65536,
    65534, 65537) instead of jumping by 2**16.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        last = self._last
        extended = seq if last is None else last + seq_diff(seq, last & 0xFFFF)
        if last is None or extended > last:
            self._last = extended
        return extended

    def reset(self) -> None:
        self._last = None
