"""The Opus decoder that outputs telephony rates: what a browser sends, heard at 8 kHz."""

from __future__ import annotations

import av
import numpy as np
import pytest

from voicegw.media.opus import OpusDecoder, OpusEncoder, OpusError

BROWSER_RATE = 48000


def browser_packets(tone_hz: float, seconds: float, channels: int = 1) -> list[bytes]:
    """A tone as a browser sends it: 20 ms Opus packets of 48 kHz audio (libopus via PyAV)."""
    layout = "mono" if channels == 1 else "stereo"
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.format, codec.layout, codec.bit_rate = (
        BROWSER_RATE, "s16", layout, 32000 * channels,
    )  # fmt: skip
    t = np.arange(int(BROWSER_RATE * seconds)) / BROWSER_RATE
    tone = (8000 * np.sin(2 * np.pi * tone_hz * t)).astype("<i2")
    packets: list[bytes] = []
    for start in range(0, len(tone) - 959, 960):
        block = np.repeat(tone[start : start + 960], channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout=layout)
        frame.sample_rate, frame.pts = BROWSER_RATE, start
        packets += [bytes(p) for p in codec.encode(frame)]  # type: ignore[attr-defined]
    return packets


@pytest.mark.parametrize("channels", [1, 2])
def test_a_browsers_tone_decodes_to_20_ms_frames_of_the_same_tone_at_8_khz(channels: int) -> None:
    decoder = OpusDecoder(8000, 1)
    frames = [decoder.decode(p) for p in browser_packets(1000.0, 1.0, channels)]
    assert {len(f) for f in frames} == {320}  # 160 samples, one frame per packet
    heard = np.frombuffer(b"".join(frames[10:]), "<i2").astype(np.float64)  # past the start
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(len(heard))))
    peak_hz = np.argmax(spectrum) * 8000 / len(heard)
    assert abs(peak_hz - 1000.0) < 10
    rms_db = 20 * np.log10(np.sqrt(np.mean(heard**2)) / (8000 / np.sqrt(2)))
    assert abs(rms_db) < 1.5


def test_a_tone_above_telephone_band_is_filtered_not_folded_into_it() -> None:
    # 6 kHz at 48 kHz would alias to 2 kHz if the decoder merely dropped samples.
    packets = browser_packets(6000.0, 0.5)
    full = np.frombuffer(b"".join(OpusDecoder(48000).decode(p) for p in packets[5:]), "<i2")
    assert np.sqrt(np.mean(full.astype(np.float64) ** 2)) > 8000 / np.sqrt(2) * 0.5  # it is sent
    decoder = OpusDecoder(8000)
    frames = [decoder.decode(p) for p in packets]
    heard = np.frombuffer(b"".join(frames[5:]), "<i2").astype(np.float64)
    assert np.sqrt(np.mean(heard**2)) < 8000 / np.sqrt(2) * 0.03  # below -30 dB


def test_bad_packets_and_settings_are_refused_with_a_reason() -> None:
    decoder = OpusDecoder(8000)
    with pytest.raises(OpusError, match="empty"):
        decoder.decode(b"")
    with pytest.raises(OpusError, match="opus_decode"):
        decoder.decode(b"\xff\xff\xff")  # a code-3 packet whose frame count is impossible
    with pytest.raises(OpusError, match="Hz"):
        OpusDecoder(44100)
    assert len(decoder.decode(browser_packets(440.0, 0.04)[0])) == 320  # still usable


def test_our_8_khz_frames_encode_to_one_packet_each_and_decode_to_the_same_tone() -> None:
    encoder, decoder = OpusEncoder(8000), OpusDecoder(8000)
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    packets = [encoder.encode(tone[i : i + 320]) for i in range(0, len(tone), 320)]
    assert len(packets) == 50 and all(0 < len(p) <= 1275 for p in packets)
    heard = np.frombuffer(b"".join(decoder.decode(p) for p in packets[5:]), "<i2")
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(len(heard))))
    assert abs(np.argmax(spectrum) * 8000 / len(heard) - 1000.0) < 10
    rms_db = 20 * np.log10(np.sqrt(np.mean(heard.astype(np.float64) ** 2)) / (8000 / np.sqrt(2)))
    assert abs(rms_db) < 1.5


def test_bad_encoder_settings_and_frames_are_refused_with_a_reason() -> None:
    with pytest.raises(OpusError, match="Hz"):
        OpusEncoder(44100)
    with pytest.raises(OpusError, match="complexity 11"):
        OpusEncoder(8000, complexity=11)
    encoder = OpusEncoder(8000)
    with pytest.raises(OpusError, match="opus_encode"):
        encoder.encode(bytes(2 * 100))  # 12.5 ms is not an Opus frame size
    assert len(encoder.encode(bytes(320))) > 0  # still usable
