"""Audio codec table: what SDP negotiation and the media path need to know.

One row per codec; lookups by SDP encoding name or static payload type. The
encode/decode functions convert between the codec payload and 16-bit
little-endian PCM at ``sample_rate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from . import g711

__all__ = ["CODECS", "Codec", "codec_by_name", "codec_by_payload_type"]


@dataclass(frozen=True, slots=True)
class Codec:
    """A narrowband/wideband audio codec as negotiated in SDP (RFC 3551 §6)."""

    name: str
    payload_type: int | None
    clock_rate: int
    sample_rate: int
    channels: int
    frame_ms: int
    bytes_per_sample: int
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]
    silence_byte: int
    #: For a table codec (G.711): the PCM of each of the 256 codes, little-endian int16,
    #: with which the jitter buffer decodes a frame in C as it pops it.
    decode_table: bytes | None = None

    @property
    def samples_per_frame(self) -> int:
        """PCM samples per frame at ``sample_rate`` (160 for G.711 at 20 ms)."""
        return self.sample_rate * self.frame_ms // 1000

    @property
    def timestamp_step(self) -> int:
        """RTP timestamp increment per frame (clock rate, not sample rate)."""
        return self.clock_rate * self.frame_ms // 1000

    @property
    def payload_size(self) -> int:
        """Payload bytes per frame."""
        return self.samples_per_frame * self.bytes_per_sample * self.channels

    def silence(self) -> bytes:
        """One frame of encoded silence."""
        return bytes((self.silence_byte,)) * self.payload_size


PCMU: Final = Codec(
    name="PCMU",
    payload_type=0,
    clock_rate=8000,
    sample_rate=8000,
    channels=1,
    frame_ms=20,
    bytes_per_sample=1,
    encode=g711.ulaw_encode,
    decode=g711.ulaw_decode,
    silence_byte=g711.ULAW_SILENCE,
    decode_table=g711.ULAW_DECODE_TABLE,
)
PCMA: Final = Codec(
    name="PCMA",
    payload_type=8,
    clock_rate=8000,
    sample_rate=8000,
    channels=1,
    frame_ms=20,
    bytes_per_sample=1,
    encode=g711.alaw_encode,
    decode=g711.alaw_decode,
    silence_byte=g711.ALAW_SILENCE,
    decode_table=g711.ALAW_DECODE_TABLE,
)

CODECS: Final[Mapping[str, Codec]] = MappingProxyType({c.name: c for c in (PCMU, PCMA)})
_BY_PAYLOAD_TYPE: Final = MappingProxyType(
    {c.payload_type: c for c in CODECS.values() if c.payload_type is not None}
)


def codec_by_name(name: str) -> Codec | None:
    """Look a codec up by SDP encoding name, case-insensitively (``pcmu`` -> PCMU)."""
    return CODECS.get(name.upper())


def codec_by_payload_type(payload_type: int) -> Codec | None:
    """Look a codec up by its static RTP payload type (RFC 3551 Table 4)."""
    return _BY_PAYLOAD_TYPE.get(payload_type)
