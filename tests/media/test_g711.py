"""G.711 against the ITU-T G.191 reference algorithm and CPython's audioop.

audioop (Sun's g711.c, deprecated, gone in 3.13) is a test oracle only. It
agrees with G.191 everywhere except µ-law encoding of negative samples, where
the two references round a decision level differently; that difference is
pinned exactly below.
"""

from __future__ import annotations

import struct
import sys
import warnings

import numpy as np
import pytest

from voicegw.media import g711

if sys.version_info >= (3, 13):  # pragma: no cover - audioop left the stdlib
    pytest.skip("audioop oracle not available", allow_module_level=True)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_SAMPLES = struct.pack("<65536h", *range(-32768, 32768))


def g191_ulaw_compress(x: int) -> int:
    """Transcription of G.191 g711.c ulaw_compress for one sample (the oracle)."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i:
        segno += 1
        i >>= 1
    code = ((8 - segno) << 4) | (0xF - ((absno >> segno) & 0xF))
    return code | 0x80 if x >= 0 else code


def g191_alaw_compress(x: int) -> int:
    """Transcription of G.191 g711.c alaw_compress for one sample (the oracle)."""
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def test_ulaw_decode_all_256_codes_match_audioop() -> None:
    assert g711.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_all_256_codes_match_audioop() -> None:
    assert g711.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_ulaw_encode_all_65536_values_match_g191() -> None:
    expected = bytes(g191_ulaw_compress(x) for x in range(-32768, 32768))
    assert g711.ulaw_encode(ALL_SAMPLES) == expected


def test_alaw_encode_all_65536_values_match_g191_and_audioop() -> None:
    expected = bytes(g191_alaw_compress(x) for x in range(-32768, 32768))
    assert g711.alaw_encode(ALL_SAMPLES) == expected
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)


def test_ulaw_encode_matches_audioop_except_sun_rounding_of_negatives() -> None:
    ours = g711.ulaw_encode(ALL_SAMPLES)
    sun = audioop.lin2ulaw(ALL_SAMPLES, 2)
    samples = range(-32768, 32768)
    # Non-negative samples: identical.
    assert ours[32768:] == sun[32768:]
    # Negative samples: Sun negates x >> 2 where G.191 takes ~x >> 2, i.e. Sun
    # encodes x exactly as G.191 encodes x - 4 (clamped at the bottom).
    shifted = struct.pack("<32768h", *(max(x - 4, -32768) for x in samples[:32768]))
    assert sun[:32768] == g711.ulaw_encode(shifted)
    differing = [x for x, a, b in zip(samples, ours, sun, strict=True) if a != b]
    assert len(differing) == 508
    assert all(x < 0 for x in differing)


def test_encode_random_pcm_matches_oracles() -> None:
    rng = np.random.default_rng(20261123)
    pcm = rng.integers(-32768, 32768, 16000, dtype=np.int16).astype("<i2").tobytes()
    assert g711.alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)
    values = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert g711.ulaw_encode(pcm) == bytes(g191_ulaw_compress(x) for x in values)


def test_decode_then_encode_is_identity_on_every_code() -> None:
    # Every code decodes to the centre of its own interval, except the
    # µ-law negative zero (0x7F), which decodes to 0 and re-encodes as +0 (0xFF).
    assert g711.alaw_encode(g711.alaw_decode(ALL_CODES)) == ALL_CODES
    round_trip = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    assert [i for i in range(256) if round_trip[i] != i] == [0x7F]
    assert round_trip[0x7F] == 0xFF


def test_transcoding_equals_decode_then_encode() -> None:
    assert g711.ulaw_to_alaw(ALL_CODES) == audioop.lin2alaw(audioop.ulaw2lin(ALL_CODES, 2), 2)
    assert g711.alaw_to_ulaw(ALL_CODES) == audioop.lin2ulaw(audioop.alaw2lin(ALL_CODES, 2), 2)


def test_array_api_matches_bytes_api_for_batches() -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(-32768, 32768, (50, 160), dtype=np.int16)
    codes = g711.ulaw_encode_array(samples)
    assert codes.shape == (50, 160)
    assert codes.tobytes() == g711.ulaw_encode(samples.astype("<i2").tobytes())
    assert g711.alaw_encode_array(samples).tobytes() == audioop.lin2alaw(
        samples.astype("<i2").tobytes(), 2
    )
    assert g711.ulaw_decode_array(codes).tobytes() == g711.ulaw_decode(codes.tobytes())
    assert g711.alaw_decode_array(codes).tobytes() == g711.alaw_decode(codes.tobytes())


def test_silence_codes_decode_to_zero() -> None:
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE])) == b"\x00\x00"
    assert g711.alaw_decode(bytes([g711.ALAW_SILENCE])) == struct.pack("<h", 8)


def test_encode_rejects_odd_length_pcm() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.ulaw_encode(b"\x00\x00\x00")


def test_empty_input_gives_empty_output() -> None:
    for op in (g711.ulaw_encode, g711.alaw_encode, g711.ulaw_decode, g711.alaw_decode):
        assert op(b"") == b""
