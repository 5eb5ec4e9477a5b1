"""VadSegmenter: speech segments with pre-roll, hang-over and length bounds."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from voicegw.media.vad import Segment, SpeechEnd, SpeechStart, VadEvent, VadSegmenter, VadSettings

WEBRTC_HANG = 0.16  # WebRTC VAD's own smoothing keeps a few frames voiced after the voice stops


def run(segmenter: VadSegmenter, audio: Any, pcm: bytes, rate: int, ms: int = 20) -> list[VadEvent]:
    events: list[VadEvent] = []
    t = 0.0
    for frame in audio.frames(pcm, rate, ms):
        events += segmenter.push(frame, t)
        t += ms / 1000
    return events + segmenter.finish(t)


def segments(events: list[VadEvent]) -> list[Segment]:
    return [e for e in events if isinstance(e, Segment)]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_espeak_sentence_between_silences_is_one_segment(
    speech: Any, audio: Any, rate: int
) -> None:
    spoken = speech("Please hold while we connect your call.", rate)
    pcm = audio.silence(1.0, rate) + spoken + audio.silence(1.0, rate)
    events = run(VadSegmenter("caller", rate), audio, pcm, rate)

    assert [type(e) for e in events] == [SpeechStart, SpeechEnd, Segment]
    start, end, segment = events
    assert isinstance(segment, Segment)
    spoken_seconds = len(spoken) / 2 / rate
    assert 0.9 <= start.t <= 1.2  # type: ignore[union-attr]
    assert end.t == segment.end  # type: ignore[union-attr]
    # WebRTC VAD smooths its decisions, so the end lands a few frames after the voice.
    assert 0.8 * spoken_seconds <= segment.end - start.t <= spoken_seconds + WEBRTC_HANG  # type: ignore[union-attr]
    assert segment.party == "caller"
    assert len(segment.pcm) == round((segment.end - segment.start) * rate) * 2


def test_two_utterances_far_apart_are_two_segments(speech: Any, audio: Any) -> None:
    rate = 16000
    pcm = (
        audio.silence(0.5, rate) + speech("yes i agree", rate) + audio.silence(1.5, rate)
        + speech("no thanks", rate) + audio.silence(0.5, rate)
    )  # fmt: skip
    found = segments(run(VadSegmenter("agent", rate), audio, pcm, rate))
    assert len(found) == 2
    assert found[0].end < found[1].start
    assert all(s.party == "agent" for s in found)


@pytest.mark.parametrize("ms", [10, 20, 30])
def test_digital_silence_and_low_white_noise_give_no_events(audio: Any, ms: int) -> None:
    rate = 8000
    noise = audio.white_noise(3.0, rate, sigma=30)  # about -60 dBFS
    pcm = audio.silence(1.0, rate) + noise + audio.silence(1.0, rate)
    assert run(VadSegmenter("caller", rate), audio, pcm, rate, ms) == []


def test_pre_roll_prepends_audio_before_the_onset(audio: Any) -> None:
    rate = 16000
    pcm = audio.silence(1.0, rate) + audio.voiced_tone(0.6, rate) + audio.silence(1.0, rate)
    settings = VadSettings(pre_roll_ms=200, hangover_ms=300, min_utterance_ms=100)
    events = run(VadSegmenter("caller", rate, settings), audio, pcm, rate)
    start = next(e for e in events if isinstance(e, SpeechStart))
    (segment,) = segments(events)
    assert start.t == pytest.approx(1.0, abs=0.021)
    assert segment.start == pytest.approx(start.t - 0.2, abs=0.021)
    assert segment.pcm[: int(0.18 * rate) * 2] == bytes(int(0.18 * rate) * 2)  # the silence before
    assert 1.6 <= segment.end <= 1.6 + WEBRTC_HANG


def test_pause_shorter_than_hang_over_keeps_one_segment(audio: Any) -> None:
    rate = 8000
    burst = audio.voiced_tone(0.4, rate)
    pause = audio.silence(0.25, rate)
    pcm = audio.silence(0.5, rate) + burst + pause + burst + audio.silence(1, rate)
    long_hang = VadSettings(hangover_ms=400, min_utterance_ms=100)
    short_hang = VadSettings(hangover_ms=100, min_utterance_ms=100)
    assert len(segments(run(VadSegmenter("c", rate, long_hang), audio, pcm, rate))) == 1
    assert len(segments(run(VadSegmenter("c", rate, short_hang), audio, pcm, rate))) == 2


def test_speech_end_waits_for_the_hang_over(audio: Any) -> None:
    rate = 16000
    segmenter = VadSegmenter("c", rate, VadSettings(hangover_ms=300, min_utterance_ms=100))
    tone = audio.frames(audio.voiced_tone(0.4, rate), rate)
    quiet = audio.frames(audio.silence(1.0, rate), rate)
    t, ended = 0.0, []
    for frame in tone + quiet:
        t += 0.02
        ended += [(t, e) for e in segmenter.push(frame, t - 0.02) if isinstance(e, SpeechEnd)]
    ((pushed_until, end),) = ended
    assert 0.4 <= end.t <= 0.4 + WEBRTC_HANG
    assert pushed_until - end.t == pytest.approx(0.3, abs=0.001)


def test_burst_shorter_than_min_utterance_is_dropped_silently(audio: Any) -> None:
    rate = 16000
    pcm = audio.silence(0.5, rate) + audio.voiced_tone(0.1, rate) + audio.silence(1.0, rate)
    settings = VadSettings(min_utterance_ms=250)
    assert run(VadSegmenter("caller", rate, settings), audio, pcm, rate) == []


def test_speech_start_is_emitted_after_min_utterance_but_carries_the_onset(audio: Any) -> None:
    rate = 16000
    segmenter = VadSegmenter("c", rate, VadSettings(min_utterance_ms=200))
    t, emitted = 0.0, []
    for frame in audio.frames(audio.silence(0.2, rate) + audio.voiced_tone(0.5, rate), rate):
        emitted += [(t, e) for e in segmenter.push(frame, t)]
        t += 0.02
    ((pushed_at, event),) = emitted
    assert isinstance(event, SpeechStart)
    assert event.t == pytest.approx(0.2, abs=0.001)
    assert pushed_at == pytest.approx(0.2 + 0.2 - 0.02, abs=0.001)


def test_long_speech_is_cut_at_max_utterance_into_contiguous_segments(audio: Any) -> None:
    rate = 8000
    pcm = audio.silence(0.3, rate) + audio.voiced_tone(2.5, rate) + audio.silence(1.0, rate)
    settings = VadSettings(pre_roll_ms=0, min_utterance_ms=100, max_utterance_ms=1000)
    events = run(VadSegmenter("caller", rate, settings), audio, pcm, rate)
    found = segments(events)
    assert [round(s.duration, 2) for s in found[:2]] == [1.0, 1.0]
    assert 0.5 <= found[2].duration <= 0.5 + WEBRTC_HANG
    assert all(a.end == pytest.approx(b.start) for a, b in itertools.pairwise(found))
    starts = [e for e in events if isinstance(e, SpeechStart)]
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert len(starts) == len(ends) == 3


@pytest.mark.parametrize(
    ("rate", "size"), [(8000, 100), (8000, 320 * 2), (16000, 160 * 3), (11025, 220)]
)
def test_frames_that_are_not_10_20_or_30_ms_are_rejected(rate: int, size: int) -> None:
    with pytest.raises(ValueError, match=r"sample rate|not 10, 20 or 30 ms"):
        VadSegmenter("c", rate).push(bytes(size), 0.0)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VadSettings(aggressiveness=4)
    with pytest.raises(ValueError, match="max_utterance_ms"):
        VadSettings(min_utterance_ms=500, max_utterance_ms=400)


def test_segmentation_does_not_depend_on_where_the_clock_starts() -> None:
    """Float time sums must not move a hang-over boundary (400 ms vs 399.99999 ms)."""
    rate = 8000
    frame = rate // 50
    rng = np.random.default_rng(7)
    burst = (rng.standard_normal(frame * 25) * 6000).astype(np.int16)
    gap = np.zeros(frame * 20, dtype=np.int16)  # exactly the 400 ms hang-over
    audio = np.concatenate([gap, burst, gap, burst, gap, gap])

    def segments(start: float) -> list[tuple[float, float]]:
        seg = VadSegmenter("caller", rate, VadSettings(aggressiveness=0, hangover_ms=400))
        out = []
        for i in range(0, len(audio), frame):
            for ev in seg.push(audio[i : i + frame].tobytes(), start + i / rate):
                if isinstance(ev, Segment):
                    out.append((round(ev.start - start, 6), round(ev.end - start, 6)))
        return out

    assert segments(0.0) == segments(100.0) == segments(12345.678)
