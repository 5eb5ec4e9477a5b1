"""Barge-in: caller speech over a prompt stops the prompt within 100 ms of its onset.

A real :class:`~voicegw.media.playback.Playback` of an eSpeak NG prompt runs on a
:class:`~voicegw.media.clock.MediaClock` driven by virtual time, so timing is exact
and the test takes milliseconds. The caller's audio (eSpeak speech after digital
silence) arrives one tick late, as a real 20 ms frame is only complete at its end.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest

from voicegw.calls.bargein import BARGE_IN_VAD, BargeInController, BargeInDetector
from voicegw.media.clock import MediaClock
from voicegw.media.playback import BufferSource, Playback, PlaybackOutcome
from voicegw.media.taps import TapFrame
from voicegw.media.vad import VadSettings
from voicegw.tts.espeak_local import EspeakTts

RATE = 8000
FRAME = RATE * 20 // 1000 * 2
PROMPT = "This call may be recorded for quality and training. Do you agree?"


@cache
def espeak(text: str) -> bytes:
    async def synthesize() -> bytes:
        return await EspeakTts().synthesize(text, sample_rate=RATE).read_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, synthesize()).result()


def frames(pcm: bytes) -> list[bytes]:
    padded = pcm + bytes(-len(pcm) % FRAME)
    return [padded[i : i + FRAME] for i in range(0, len(padded), FRAME)]


class VirtualTime:
    """A controllable clock: sleeping advances it instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay
        await asyncio.sleep(0)


async def play_prompt_against_caller(caller: bytes, ticks: int) -> tuple[
    BargeInController, Playback, list[float], float
]:  # fmt: skip
    """Play the prompt while the caller's audio arrives; returns what was sent and when."""
    vt = VirtualTime()
    clock = MediaClock(time=vt.time, sleep=vt.sleep)
    controller = BargeInController("caller", RATE, clock=vt.time)
    sent: list[float] = []
    prompt = np.frombuffer(espeak(PROMPT), dtype="<i2")
    playback = Playback(BufferSource(prompt), lambda frame, now: sent.append(now))
    incoming = frames(caller)
    start: list[float] = []

    def deliver(index: int, now: float) -> None:
        if not start:
            start.append(now)
        if 1 <= index <= len(incoming):  # frame n-1 covers [now - 20 ms, now)
            controller.push_frame(
                TapFrame("caller", index - 1, now - 0.02, incoming[index - 1], RATE, False)
            )

    clock.subscribe(deliver)
    playback.start(clock)
    guard = asyncio.ensure_future(controller.guard(playback))
    await asyncio.sleep(0)
    assert controller.watching
    await clock.run(ticks=ticks)
    await asyncio.wait_for(guard, 1)
    return controller, playback, sent, start[0]


@pytest.mark.parametrize("words", ["stop", "no thanks", "agent please"])
async def test_caller_speech_cancels_the_prompt_within_100_ms_of_its_onset(words: str) -> None:
    quiet = 1.5
    caller = bytes(int(quiet * RATE) * 2) + espeak(words) + bytes(RATE)
    controller, playback, sent, start = await play_prompt_against_caller(caller, ticks=150)

    (record,) = controller.records
    assert record.latency <= 0.100
    voice_onset = start + quiet  # eSpeak's audio starts within a millisecond of its buffer
    assert voice_onset - 0.02 <= record.onset <= voice_onset + 0.04
    assert record.cancelled - voice_onset <= 0.120
    result = await playback.wait()
    assert result.outcome is PlaybackOutcome.CANCELLED
    assert sent and max(sent) <= record.cancelled  # not one prompt frame after cancellation
    assert not controller.watching


async def test_silent_caller_lets_the_prompt_play_to_the_end() -> None:
    prompt_seconds = len(espeak(PROMPT)) / 2 / RATE
    ticks = int(prompt_seconds / 0.02) + 10
    caller = bytes(int(ticks * 0.02 * RATE) * 2)
    controller, playback, sent, _ = await play_prompt_against_caller(caller, ticks=ticks)
    assert controller.records == []
    assert (await playback.wait()).outcome is PlaybackOutcome.COMPLETED
    assert len(sent) == len(frames(espeak(PROMPT)))


def test_detector_does_no_work_unless_a_prompt_is_playing() -> None:
    detector = BargeInDetector("caller", RATE)
    speech = frames(bytes(RATE // 2 * 2) + espeak("stop"))
    assert all(detector.push(frame, i * 0.02) is None for i, frame in enumerate(speech))
    detector.arm()
    hits = [detector.push(frame, i * 0.02) for i, frame in enumerate(speech)]
    (barge_in,) = [hit for hit in hits if hit is not None]
    assert barge_in.detected - barge_in.onset == pytest.approx(
        BARGE_IN_VAD.min_utterance_ms / 1000, abs=0.021
    )
    assert not detector.armed  # one barge-in per prompt


def test_the_transcription_vad_would_be_too_slow_for_barge_in() -> None:
    # Why barge-in runs a VAD of its own: the default settings believe speech only
    # after 200 ms, twice the budget.
    slow = BargeInDetector("caller", RATE, VadSettings())
    slow.arm()
    speech = frames(bytes(RATE // 2 * 2) + espeak("stop"))
    (hit,) = [h for i, f in enumerate(speech) if (h := slow.push(f, i * 0.02)) is not None]
    assert hit.detected - hit.onset >= 0.2
