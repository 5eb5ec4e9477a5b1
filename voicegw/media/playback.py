"""Playing audio into a leg: prompts, announcements, hold music, streamed speech.

A source yields 20 ms frames of 16-bit PCM at the leg's codec rate (8 kHz for
G.711); :class:`Playback` subscribes to the media clock and sends one frame per
tick through a callback that encodes with the leg's codec (normally
``LegTransport.send_pcm``). Pacing is therefore the clock's: no drift, and
frames go out with the same tick as every other leg.

:meth:`Playback.cancel` (barge-in) unsubscribes at once: no frame is sent after
it returns, so speech stops within the frame already on the wire.

Files are read whole with soundfile (a blocking call: run :func:`load_wav` in
``asyncio.to_thread``) and resampled once with soxr; streamed PCM (a TTS
engine's output at 16/22.05/24 kHz) goes through one ``soxr.ResampleStream``
per stream, which keeps its filter state across chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from os import PathLike
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from .clock import MediaClock, Subscription

__all__ = [
    "BufferSource",
    "Playback",
    "PlaybackOutcome",
    "PlaybackResult",
    "PlaybackSource",
    "StreamSource",
    "load_wav",
    "resample",
    "tone",
]

Samples = npt.NDArray[np.int16]

#: (16-bit PCM frame, tick time) -> None; encodes and sends (``LegTransport.send_pcm``).
FrameSink = Callable[[bytes, float], None]


class PlaybackSource(Protocol):
    def next_frame(self) -> bytes | None:
        """The next frame of ``frame_samples`` samples, or None when the source is finished."""
        ...


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """Resample a whole buffer (a file, a generated prompt) in one call."""
    if rate_in == rate_out:
        return samples
    out = soxr.resample(samples, rate_in, rate_out)
    return np.asarray(out, dtype=np.int16)


def load_wav(path: str | PathLike[str], sample_rate: int = 8000) -> Samples:
    """A WAV (or any soundfile format) as mono 16-bit samples at ``sample_rate``. Blocking."""
    data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    channels = np.asarray(data, dtype=np.int16)
    if channels.shape[1] == 1:
        mono = channels[:, 0]
    else:
        mono = channels.mean(axis=1).round().astype(np.int16)
    return resample(np.ascontiguousarray(mono), int(rate), sample_rate)


def tone(
    frequency: float, duration: float, sample_rate: int = 8000, amplitude: float = 0.3
) -> Samples:
    """A sine tone (test signals, beeps, the "recording starts" cue)."""
    t = np.arange(round(duration * sample_rate)) / sample_rate
    wave = amplitude * 32767.0 * np.sin(2.0 * np.pi * frequency * t)
    return wave.round().astype(np.int16)


class BufferSource:
    """Frames from samples in memory; with ``loop`` it starts over (hold music)."""

    def __init__(self, samples: Samples, frame_samples: int = 160, *, loop: bool = False) -> None:
        if len(samples) == 0:
            raise ValueError("nothing to play")
        tail = -len(samples) % frame_samples
        # Pad the last frame with silence so every frame is whole.
        padded = np.concatenate([samples.astype("<i2"), np.zeros(tail, dtype="<i2")])
        self._data = padded.tobytes()
        self._frame_bytes = 2 * frame_samples
        self._pos = 0
        self.loop = loop

    def next_frame(self) -> bytes | None:
        if self._pos >= len(self._data):
            if not self.loop:
                return None
            self._pos = 0
        frame = self._data[self._pos : self._pos + self._frame_bytes]
        self._pos += self._frame_bytes
        return frame


class StreamSource:
    """PCM arriving in chunks (streamed TTS), resampled with state kept across chunks.

    An underrun plays silence rather than ending the prompt; the source ends
    after :meth:`finish` once everything fed has been played.
    """

    def __init__(self, rate_in: int, sample_rate: int = 8000, frame_samples: int = 160) -> None:
        self._stream = None
        if rate_in != sample_rate:
            self._stream = soxr.ResampleStream(rate_in, sample_rate, 1, "int16")
        self._buffer = bytearray()
        self._frame_bytes = 2 * frame_samples
        self._finished = False
        self.underruns = 0

    def feed(self, pcm: bytes) -> None:
        """16-bit little-endian mono at ``rate_in``."""
        self._push(np.frombuffer(pcm, dtype="<i2"), last=False)

    def finish(self) -> None:
        self._push(np.zeros(0, dtype="<i2"), last=True)
        self._finished = True

    def _push(self, samples: npt.NDArray[np.int16], *, last: bool) -> None:
        if self._stream is not None:
            samples = np.asarray(self._stream.resample_chunk(samples, last=last), dtype="<i2")
        self._buffer += samples.tobytes()
        if last and len(self._buffer) % self._frame_bytes:
            self._buffer += bytes(-len(self._buffer) % self._frame_bytes)

    def next_frame(self) -> bytes | None:
        size = self._frame_bytes
        if len(self._buffer) >= size:
            frame = bytes(self._buffer[:size])
            del self._buffer[:size]
            return frame
        if self._finished:
            return None
        self.underruns += 1
        return bytes(size)


class PlaybackOutcome(Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class PlaybackResult:
    outcome: PlaybackOutcome
    frames: int


class Playback:
    """One source played into one leg, paced by the media clock."""

    def __init__(self, source: PlaybackSource, sink: FrameSink) -> None:
        self.source = source
        self._sink = sink
        self.frames = 0
        self._subscription: Subscription | None = None
        self._done: asyncio.Future[PlaybackResult] | None = None

    def start(self, clock: MediaClock) -> None:
        if self._done is not None:
            raise RuntimeError("playback already started")
        self._done = asyncio.get_running_loop().create_future()
        self._subscription = clock.subscribe(self._on_tick)

    def _on_tick(self, index: int, now: float) -> None:
        frame = self.source.next_frame()
        if frame is None:
            self._finish(PlaybackOutcome.COMPLETED)
            return
        self.frames += 1
        self._sink(frame, now)

    def cancel(self) -> None:
        """Stop now (barge-in, hangup): no frame is sent after this returns."""
        self._finish(PlaybackOutcome.CANCELLED)

    def _finish(self, outcome: PlaybackOutcome) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._done is not None and not self._done.done():
            self._done.set_result(PlaybackResult(outcome, self.frames))

    @property
    def playing(self) -> bool:
        return self._subscription is not None

    async def wait(self) -> PlaybackResult:
        if self._done is None:
            raise RuntimeError("playback not started")
        return await asyncio.shield(self._done)
