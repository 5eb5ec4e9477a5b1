"""Opus decoding straight to telephony rates: libopus' own decoder, through ctypes.

PyAV reaches libopus only through FFmpeg's wrapper, which fixes the decoder's output
at 48 kHz: a browser's frame was decoded at 48 kHz and then resampled to 8 kHz with
libswresample (44 µs a frame on the development machine, and 2 ms of resampler
delay). libopus' decoder API takes the output rate itself (8, 12, 16, 24 or 48 kHz)
and band-limits and converts inside the decoder: 26 µs a frame, no added delay.

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

__all__ = ["OpusDecoder", "OpusError"]

#: Decoder output rates libopus supports.
RATES: Final = frozenset({8000, 12000, 16000, 24000, 48000})
#: The longest Opus packet: 120 ms.
_MAX_SECONDS: Final = 0.12


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
