"""Transcription across skipped media-clock ticks: an utterance is never glued over a hole.

When the media clock skips ticks after a stall, the taps publish no frame for
them and the next frame's time jumps. The VAD ends an utterance in progress at
the gap, and what the ASR is sent (whole segments, or live chunks with their
pre-roll) is always one stretch of the call's audio without a hole in it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.calls.test_transcription import (
    CALL_START,
    FRAME,
    RATE,
    KeepingAsr,
    frames,
    registry_of,
    silence,
    transcriber,
)
from voicegw.privacy.processing import ProcessingRecord

SKIPPED = range(75, 82)  # 140 ms in the middle of the speech the clock never ticked


def voiced(seconds: float) -> bytes:
    """A harmonic buzz WebRTC VAD calls speech in every frame, with a little noise so that
    no stretch of it repeats (where a piece sent to the ASR came from is unambiguous)."""
    t = np.arange(int(seconds * RATE)) / RATE
    signal = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 15))
    signal = signal * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) / np.abs(signal).max() * 8000
    noise = np.random.default_rng(3).normal(0, 40, t.size)
    pcm: bytes = (signal + noise).astype(np.int16).tobytes()
    return pcm


@pytest.mark.parametrize("live", [False, True], ids=["segments", "live"])
async def test_speech_either_side_of_skipped_ticks_reaches_the_asr_as_two_whole_pieces(
    live: bool,
) -> None:
    audio = silence(1.0) + voiced(2.0) + silence(1.5)
    pieces = frames(audio)
    asr, records = KeepingAsr(), list[ProcessingRecord]()
    target = transcriber(registry_of(asr), records, live=live)
    for i, frame in enumerate(pieces):
        if i not in SKIPPED:
            target.push("caller", frame, CALL_START + i * 0.02)
            await asyncio.sleep(0)  # the ASR worker runs between frames, as on a live call
    await target.aclose()

    assert len(asr.utterances) == 2
    before, after = asr.utterances
    # Each is one contiguous stretch of the call's audio, on its own side of the gap.
    start = audio.find(before)
    assert start >= 0 and start + len(before) <= SKIPPED.start * FRAME
    assert audio.find(after) >= SKIPPED.stop * FRAME
