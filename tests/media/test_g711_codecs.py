"""The codec table: lookups and per-frame figures used by SDP and the media path."""

from __future__ import annotations

from voicegw.media import g711
from voicegw.media.codecs import CODECS, codec_by_name, codec_by_payload_type


def test_rfc3551_static_payload_types() -> None:
    pcmu = codec_by_payload_type(0)
    pcma = codec_by_payload_type(8)
    assert pcmu is not None and pcmu.name == "PCMU"
    assert pcma is not None and pcma.name == "PCMA"
    assert codec_by_payload_type(101) is None


def test_lookup_by_sdp_name_is_case_insensitive() -> None:
    assert codec_by_name("pcmu") is CODECS["PCMU"]
    assert codec_by_name("PcmA") is CODECS["PCMA"]
    assert codec_by_name("opus") is None


def test_g711_frame_figures() -> None:
    for codec in CODECS.values():
        assert codec.clock_rate == codec.sample_rate == 8000
        assert codec.samples_per_frame == 160
        assert codec.timestamp_step == 160
        assert codec.payload_size == 160


def test_silence_frame_decodes_to_near_zero() -> None:
    for codec in CODECS.values():
        frame = codec.silence()
        assert len(frame) == codec.payload_size
        pcm = codec.decode(frame)
        assert len(pcm) == 2 * codec.samples_per_frame
        assert max(abs(int.from_bytes(pcm[i : i + 2], "little", signed=True)) for i in (0, 2)) <= 8


def test_codec_functions_are_the_g711_ones() -> None:
    frame = bytes(range(160))
    assert CODECS["PCMU"].decode(frame) == g711.ulaw_decode(frame)
    assert CODECS["PCMA"].encode(bytes(320)) == g711.alaw_encode(bytes(320))
