"""Barge-in: the caller starts speaking while a prompt plays, and the prompt stops.

:class:`BargeInDetector` is the sans-IO part: armed while a prompt plays, it runs
its own :class:`~voicegw.media.vad.VadSegmenter` over the caller's frames and
reports the first speech start. It has VAD settings of its own
(:data:`BARGE_IN_VAD`) because the transcription VAD waits 200 ms before it
believes an utterance, which is right for not sending coughs to an ASR but far
too slow to stop a prompt: here speech is believed after 60 ms, and WebRTC's
most aggressive mode keeps line noise from interrupting prompts. Nothing of the
caller's audio leaves the node or is kept here, so the consent gate is not asked.

:class:`BargeInController` joins it to a playback: it cancels the playback in the
same call that delivered the confirming frame and records the latency from the
speech onset (``SpeechStart.t``) to the cancellation on the controller's clock
(the media clock in a call, a controllable one in tests).

:func:`play_with_barge_in` is the live wiring: it plays a source to a call's caller
and feeds the caller's tapped frames to a controller until the prompt has ended
or been interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from voicegw.calls.call_media import CallMedia
from voicegw.media.playback import Playback, PlaybackResult, PlaybackSource
from voicegw.media.taps import TapConsumer, TapFrame
from voicegw.media.vad import SpeechStart, VadSegmenter, VadSettings

__all__ = [
    "BARGE_IN_VAD",
    "BargeIn",
    "BargeInController",
    "BargeInDetector",
    "BargeInRecord",
    "Interruptible",
    "play_with_barge_in",
]

#: Fast detection: 60 ms of voice starts a barge-in; no pre-roll is needed (no ASR
#: reads these segments) and a short hang-over re-arms quickly between words.
BARGE_IN_VAD = VadSettings(
    aggressiveness=3, pre_roll_ms=0, hangover_ms=200, min_utterance_ms=60, max_utterance_ms=15_000
)


@dataclass(frozen=True)
class BargeIn:
    """Caller speech confirmed while armed: ``onset`` of the voice, ``detected`` at frame end."""

    party: str
    onset: float
    detected: float


class BargeInDetector:
    """Sans-IO: ``arm()`` while a prompt plays, ``push(frame, t)`` the caller's frames."""

    def __init__(
        self, party: str, sample_rate: int = 8000, settings: VadSettings = BARGE_IN_VAD
    ) -> None:
        self.party = party
        self.sample_rate = sample_rate
        self.settings = settings
        self._segmenter: VadSegmenter | None = None

    @property
    def armed(self) -> bool:
        return self._segmenter is not None

    def arm(self) -> None:
        # A fresh segmenter: speech already under way when the prompt starts counts
        # as a new onset, and state from an earlier prompt cannot leak in.
        self._segmenter = VadSegmenter(self.party, self.sample_rate, self.settings)

    def disarm(self) -> None:
        self._segmenter = None

    def push(self, frame: bytes, t: float) -> BargeIn | None:
        """Classify one caller frame; a barge-in disarms the detector."""
        segmenter = self._segmenter
        if segmenter is None:
            return None  # no prompt playing: no VAD work at all
        for event in segmenter.push(frame, t):
            if isinstance(event, SpeechStart):
                self.disarm()
                detected = t + len(frame) / 2 / self.sample_rate
                return BargeIn(self.party, event.t, detected)
        return None


class Interruptible(Protocol):
    """Something playing that stops at once when cancelled (:class:`Playback`)."""

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class BargeInRecord:
    party: str
    onset: float
    detected: float
    cancelled: float

    @property
    def latency(self) -> float:
        """Seconds from the voice onset to the playback's cancellation."""
        return self.cancelled - self.onset


class BargeInController:
    """Cancels the watched playback when the caller starts speaking over it."""

    def __init__(
        self,
        party: str = "caller",
        sample_rate: int = 8000,
        *,
        clock: Callable[[], float],
        settings: VadSettings = BARGE_IN_VAD,
        on_barge_in: Callable[[BargeInRecord], None] | None = None,
    ) -> None:
        self.detector = BargeInDetector(party, sample_rate, settings)
        self.records: list[BargeInRecord] = []
        self._clock = clock
        self._on_barge_in = on_barge_in
        self._playing: Interruptible | None = None

    @property
    def watching(self) -> bool:
        return self._playing is not None

    def watch(self, playback: Interruptible) -> None:
        """A prompt starts: cancel it on caller speech from now on."""
        self._playing = playback
        self.detector.arm()

    def release(self) -> None:
        """The prompt ended by itself: stop listening for barge-in."""
        self._playing = None
        self.detector.disarm()

    async def guard(self, playback: Playback) -> PlaybackResult:
        """Watch a started playback until it completes or is barged in on."""
        self.watch(playback)
        try:
            return await playback.wait()
        finally:
            if self._playing is playback:
                self.release()

    def push(self, frame: bytes, t: float) -> BargeInRecord | None:
        """One caller frame starting at ``t``; cancels the playback before returning."""
        playing = self._playing
        if playing is None:
            return None
        barge_in = self.detector.push(frame, t)
        if barge_in is None:
            return None
        playing.cancel()
        self._playing = None
        record = BargeInRecord(barge_in.party, barge_in.onset, barge_in.detected, self._clock())
        self.records.append(record)
        if self._on_barge_in is not None:
            self._on_barge_in(record)
        return record

    def push_frame(self, frame: TapFrame) -> BargeInRecord | None:
        if frame.party != self.detector.party:
            return None
        return self.push(frame.pcm, frame.time)


async def play_with_barge_in(
    media: CallMedia, source: PlaybackSource, controller: BargeInController
) -> PlaybackResult:
    """Play ``source`` to the caller; the caller's speech over it cancels it.

    The caller's frames reach the controller straight from the media tap, so the
    cancellation lands on the tick that confirmed the speech and no prompt frame
    follows it. Returns how the playback ended (``CANCELLED`` on barge-in).
    """
    frames = media.frames()
    listening = asyncio.create_task(_feed(frames, controller), name="barge-in")
    try:
        return await controller.guard(media.play(source))
    finally:
        frames.close()
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def _feed(frames: TapConsumer, controller: BargeInController) -> None:
    async for frame in frames:  # ends when the call (or the prompt) does
        controller.push_frame(frame)
