"""Opus at telephony rates: libopus' own encoder and decoder, through ctypes.

PyAV reaches libopus only through FFmpeg's wrapper, which fixes the decoder's output
at 48 kHz: a browser's frame was decoded at 48 kHz and then resampled to 8 kHz with
libswresample (44 µs a frame on the development machine, and 2 ms of resampler
delay). libopus' decoder API takes the output rate itself (8, 12, 16, 24 or 48 kHz)
and band-limits and converts inside the decoder: 26 µs a frame, no added delay.

The encoder takes 8 kHz input the same way (narrowband; libopus converts inside), and
calling it directly spares PyAV's frame and packet objects: a WebRTC leg encodes
every 20 ms.

The library is the copy PyAV's wheel bundles (the libopus FFmpeg already uses here
for encoding), else the system's ``libopus.so.0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from pathlib import Path
from typing import Final

import av

__all__ = [
    "APPLICATION_RESTRICTED_LOWDELAY",
    "APPLICATION_VOIP",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
]

#: Decoder output rates libopus supports.
RATES: Final = frozenset({8000, 12000, 16000, 24000, 48000})
#: The longest Opus packet: 120 ms.
_MAX_SECONDS: Final = 0.12
#: opus_encoder_create's application: SILK+CELT for speech (6.5 ms look-ahead), or
#: CELT only (2.5 ms look-ahead): what a live call bridged to a phone wants.
APPLICATION_VOIP: Final = 2048
APPLICATION_RESTRICTED_LOWDELAY: Final = 2051
#: opus_encoder_ctl requests (opus_defines.h).
_SET_BITRATE: Final = 4002
_SET_COMPLEXITY: Final = 4010
#: RFC 7587 leaves the packet size to the sender; 1275 bytes is one frame's maximum.
_MAX_PACKET: Final = 1275


class OpusError(Exception):
    """libopus is missing, refused a setting, or could not decode a packet."""


@functools.cache
def _library() -> ctypes.CDLL:
    bundled = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libopus*.so*"))
    system = ctypes.util.find_library("opus")
    for candidate in [*map(str, bundled), *([system] if system else [])]:
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [
            ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
        ]  # fmt: skip
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int,
            ctypes.c_int,
        ]  # fmt: skip
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [
            ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
        ]  # fmt: skip
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32,
        ]  # fmt: skip
        # opus_encoder_ctl is variadic: its arguments are passed as c_int32 per call.
        lib.opus_encoder_ctl.restype = ctypes.c_int
        lib.opus_encoder_destroy.restype = None
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [ctypes.c_int]
        return lib
    raise OpusError("libopus not found: neither PyAV's bundled copy nor libopus.so.0 (libopus0)")


def _error(lib: ctypes.CDLL, code: int) -> str:
    return str(lib.opus_strerror(code).decode("ascii", "replace"))


class OpusDecoder:
    """One Opus stream -> 16-bit little-endian PCM at ``sample_rate``, ``channels``
    interleaved (a stereo stream decodes to mono when asked: libopus downmixes)."""

    def __init__(self, sample_rate: int = 8000, channels: int = 1) -> None:
        if sample_rate not in RATES or channels not in (1, 2):
            raise OpusError(f"libopus decodes to {sorted(RATES)} Hz, 1 or 2 channels")
        lib = self._lib = _library()
        error = ctypes.c_int()
        handle = lib.opus_decoder_create(sample_rate, channels, ctypes.byref(error))
        if not handle:
            raise OpusError(f"opus_decoder_create: {_error(lib, error.value)}")
        self._handle: int = handle
        self._channels = channels
        self._max_samples = int(sample_rate * _MAX_SECONDS)
        self._out = ctypes.create_string_buffer(2 * channels * self._max_samples)
        weakref.finalize(self, lib.opus_decoder_destroy, handle)

    def decode(self, payload: bytes) -> bytes:
        """One packet's audio; raises :class:`OpusError` for a packet libopus refuses."""
        if not payload:  # libopus would take it for a lost packet and conceal 120 ms
            raise OpusError("empty Opus packet")
        samples = self._lib.opus_decode(
            self._handle, payload, len(payload), self._out, self._max_samples, 0
        )
        if samples < 0:
            raise OpusError(f"opus_decode: {_error(self._lib, samples)}")
        return ctypes.string_at(self._out, 2 * self._channels * samples)


class OpusEncoder:
    """16-bit little-endian mono PCM at ``sample_rate`` -> one Opus packet per frame.

    ``complexity`` (0-10) trades CPU for quality; a telephony source (8 kHz,
    often G.711 before us) loses nothing audible at 3, and CELT at 3 costs
    about two thirds of 10.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        *,
        application: int = APPLICATION_RESTRICTED_LOWDELAY,
        bitrate: int = 32000,
        complexity: int = 3,
    ) -> None:
        if sample_rate not in RATES:
            raise OpusError(f"libopus encodes {sorted(RATES)} Hz")
        lib = self._lib = _library()
        error = ctypes.c_int()
        handle = lib.opus_encoder_create(sample_rate, 1, application, ctypes.byref(error))
        if not handle:
            raise OpusError(f"opus_encoder_create: {_error(lib, error.value)}")
        weakref.finalize(self, lib.opus_encoder_destroy, handle)
        self._handle: int = handle
        for request, value, name in (
            (_SET_BITRATE, bitrate, "bitrate"),
            (_SET_COMPLEXITY, complexity, "complexity"),
        ):
            code = lib.opus_encoder_ctl(
                ctypes.c_void_p(handle), ctypes.c_int(request), ctypes.c_int32(value)
            )
            if code < 0:
                raise OpusError(f"opus {name} {value}: {_error(lib, code)}")
        self._out = ctypes.create_string_buffer(_MAX_PACKET)

    def encode(self, pcm: bytes) -> bytes:
        """One frame (2.5 to 60 ms of samples) -> one packet."""
        samples = len(pcm) // 2
        size = self._lib.opus_encode(self._handle, pcm, samples, self._out, _MAX_PACKET)
        if size < 0:
            raise OpusError(f"opus_encode: {_error(self._lib, size)}")
        return ctypes.string_at(self._out, size)
