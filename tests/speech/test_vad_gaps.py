"""VadSegmenter across skipped media-clock ticks: a segment never glues audio over a hole."""

from __future__ import annotations

from typing import Any

import pytest

from voicegw.media.vad import Segment, SpeechStart, VadEvent, VadSegmenter

RATE = 8000
FRAME = 0.02


def test_speech_either_side_of_skipped_ticks_is_two_segments_each_without_a_hole(
    audio: Any,
) -> None:
    pcm = audio.silence(0.5, RATE) + audio.voiced_tone(2.0, RATE) + audio.silence(1.0, RATE)
    frames = audio.frames(pcm, RATE)
    skipped = range(75, 82)  # 140 ms in the middle of the speech the clock never ticked
    segmenter = VadSegmenter("caller", RATE)
    events: list[VadEvent] = []
    for n, frame in enumerate(frames):
        if n not in skipped:
            events += segmenter.push(frame, n * FRAME)
    events += segmenter.finish(len(frames) * FRAME)

    found = [e for e in events if isinstance(e, Segment)]
    assert len(found) == 2
    before, after = found
    # the voice before the gap ends where the gap begins, the one after starts where it ends
    assert before.end == pytest.approx(75 * FRAME)
    assert [e.t for e in events if isinstance(e, SpeechStart)][1] == after.start == 82 * FRAME
    for segment in found:  # the audio of each runs from its start to its end, no hole in it
        assert len(segment.pcm) == round((segment.end - segment.start) * RATE) * 2


def test_a_gap_in_silence_changes_nothing_about_the_speech_after_it(audio: Any) -> None:
    pcm = audio.silence(1.0, RATE) + audio.voiced_tone(1.0, RATE) + audio.silence(1.0, RATE)
    frames = audio.frames(pcm, RATE)
    events: dict[bool, list[VadEvent]] = {}
    for gap in (False, True):
        segmenter = VadSegmenter("caller", RATE)
        events[gap] = []
        for n, frame in enumerate(frames):
            if not (gap and 20 <= n < 27):
                events[gap] += segmenter.push(frame, n * FRAME)
        events[gap] += segmenter.finish(len(frames) * FRAME)
    assert events[True] == events[False]
