"""Taps: per-party PCM frames, aligned on the media clock, for recorders, VAD and ASR.

A :class:`CallTap` is one media-clock subscriber per call: at tick ``n`` it
takes one frame from every party's leg (decoded from the leg's jitter buffer,
or silence when nothing is due) and publishes them all with index ``n``, so a
consumer can line up caller and agent sample for sample.

Publishing never waits. Each consumer has its own bounded queue; when a
consumer falls behind, the oldest frames in *its* queue are dropped and
counted on it. The relay does not pass through here at all (it happens in the
transport as packets arrive), and a stalled consumer costs other consumers
nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .clock import MediaClock, Subscription
from .session import MediaLeg

__all__ = ["CallTap", "Tap", "TapClosed", "TapConsumer", "TapFrame"]


class TapClosed(Exception):
    """The consumer was closed and has no frames left."""


@dataclass(frozen=True, slots=True)
class TapFrame:
    """One party's 20 ms at media-clock tick ``index`` (``time``: the tick's deadline).

    ``pcm`` is 16-bit little-endian mono at ``sample_rate``. ``filled`` is True
    when no received audio was due (silence or loss concealment was put in).
    """

    party: str
    index: int
    time: float
    pcm: bytes
    sample_rate: int
    filled: bool


class TapConsumer:
    """A bounded queue of frames for one consumer; iterate it with ``async for``."""

    def __init__(self, maxsize: int = 50) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.delivered = 0
        self.dropped = 0
        self._frames: deque[TapFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def offer(self, frame: TapFrame) -> None:
        """Queue a frame without ever waiting; a full queue loses its oldest frame."""
        if self._closed:
            return
        frames = self._frames
        if len(frames) >= self.maxsize:
            frames.popleft()
            self.dropped += 1
        frames.append(frame)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> TapFrame | None:
        if not self._frames:
            return None
        self.delivered += 1
        return self._frames.popleft()

    async def get(self) -> TapFrame:
        """The next frame; raises :class:`TapClosed` once closed and drained."""
        while not self._frames:
            if self._closed:
                raise TapClosed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.delivered += 1
        return self._frames.popleft()

    def __aiter__(self) -> TapConsumer:
        return self

    async def __anext__(self) -> TapFrame:
        try:
            return await self.get()
        except TapClosed:
            raise StopAsyncIteration from None

    @property
    def pending(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        """No more frames; a waiting reader gets what is queued, then stops."""
        self._closed = True
        self._wake()


class Tap:
    """Fan-out of frames to any number of consumers."""

    def __init__(self) -> None:
        self._consumers: list[TapConsumer] = []

    def add_consumer(self, maxsize: int = 50) -> TapConsumer:
        consumer = TapConsumer(maxsize)
        self._consumers.append(consumer)
        return consumer

    def remove_consumer(self, consumer: TapConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        consumer.close()

    @property
    def consumers(self) -> int:
        return len(self._consumers)

    def publish(self, frame: TapFrame) -> None:
        for consumer in self._consumers:
            consumer.offer(frame)

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()


class CallTap:
    """Feeds a :class:`Tap` with every party's received audio on each clock tick.

    Attaching turns on PCM buffering in the legs (a leg only decodes while a
    tap needs it); detaching turns it off again and closes the consumers.
    """

    def __init__(self, parties: Mapping[str, MediaLeg], tap: Tap | None = None) -> None:
        self.parties = dict(parties)
        self.tap = tap or Tap()
        self._silence = {
            party: bytes(2 * leg.config.send_codec.samples_per_frame)
            for party, leg in self.parties.items()
        }
        self._subscription: Subscription | None = None

    def attach(self, clock: MediaClock) -> None:
        for leg in self.parties.values():
            leg.enable_pcm()
        if self._subscription is None:
            self._subscription = clock.subscribe(self.on_tick)

    def detach(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        for leg in self.parties.values():
            leg.disable_pcm()
        self.tap.close()

    def on_tick(self, index: int, now: float) -> None:
        publish = self.tap.publish
        for party, leg in self.parties.items():
            frame = leg.playout(now)
            if frame is None:
                rate = leg.config.send_codec.sample_rate
                publish(TapFrame(party, index, now, self._silence[party], rate, True))
            else:
                publish(TapFrame(party, index, now, frame.pcm, frame.sample_rate, frame.concealed))
