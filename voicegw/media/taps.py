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

A party need not have an RTP leg: a :class:`FrameFeed` takes 20 ms PCM frames
pushed from elsewhere (a WebRTC agent's decoded audio) and the tap plays out
one of them per tick, beside the legs. A tick with nothing pushed is silence
(``filled``) at that tick's index: a gap stays a gap and never moves the
audio after it. The feed holds at most ``max_frames`` (a burst after a stall
loses its oldest frames), so what it adds in delay stays bounded.

A tick the media clock skipped (a stall beyond its catch-up) publishes no
frame at all: the next frame's ``index`` and ``time`` jump, and a consumer that
keeps the call's timeline (the recorder, the VAD) sees the gap from them.

All call taps on one clock share a single subscriber (:class:`TapHub`), which
at each tick plays out every tapped leg, 64 calls at a time: between two such
slices the event loop runs, so a tick of many calls never holds up the relay for
more than a slice. A G.711 frame is decoded as the leg's jitter buffer pops it,
by table in C (:meth:`~voicegw.media.session.MediaLeg.playout_pcm`): about
0.3 µs a frame more than the pop alone, against 0.5 µs a frame for a numpy batch
of a slice's frames (joined, decoded and split again) and 2.5 µs for one frame's
``ulaw_decode``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .clock import MediaClock, Subscription
from .session import MediaLeg

__all__ = ["CallTap", "FrameFeed", "Tap", "TapClosed", "TapConsumer", "TapFrame", "TapHub"]

#: Calls whose frames one turn of the event loop plays out (about 0.15 ms of work).
_SLICE: Final = 64


class TapClosed(Exception):
    """The consumer was closed and has no frames left."""


# Not frozen: one is built per party per tick (a frozen dataclass takes four times as
# long). Every consumer gets the same object: treat it as read-only all the same.
@dataclass(slots=True)
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
        waiter = self._waiter  # _wake, inlined: this runs per frame and consumer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> TapFrame | None:
        if not self._frames:
            return None
        self.delivered += 1
        return self._frames.popleft()

    def drain(self) -> list[TapFrame]:
        """Every queued frame at once: a consumer that wakes up every so often (a
        recorder writing 100 ms at a time) costs one task switch per batch, not per tick."""
        frames = list(self._frames)
        self._frames.clear()
        self.delivered += len(frames)
        return frames

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


class FrameFeed:
    """A party's 20 ms PCM frames pushed in from outside RTP, one played out per tick.

    ``push`` is called as frames arrive (on the loop); the tap takes the oldest
    at each tick. Frames of the wrong size are refused and counted, never
    padded or split: the feed only carries whole frames of its own format.
    ``max_frames`` (3: 60 ms) rides out arrival jitter of a WebRTC leg, which
    hands frames over as packets arrive, with no jitter buffer of its own.
    """

    def __init__(
        self, sample_rate: int = 8000, frame_samples: int = 160, max_frames: int = 3
    ) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.sample_rate = sample_rate
        self.frame_bytes = 2 * frame_samples
        self.max_frames = max_frames
        self.pushed = 0
        #: Frames lost because more than ``max_frames`` were waiting (a burst).
        self.dropped = 0
        #: Frames refused for their size.
        self.refused = 0
        self._frames: deque[bytes] = deque()

    def push(self, pcm: bytes) -> None:
        if len(pcm) != self.frame_bytes:
            self.refused += 1
            return
        frames = self._frames
        if len(frames) >= self.max_frames:
            frames.popleft()
            self.dropped += 1
        frames.append(pcm)
        self.pushed += 1

    def take(self) -> bytes | None:
        """The frame for this tick, or None when nothing was pushed in time."""
        return self._frames.popleft() if self._frames else None

    @property
    def pending(self) -> int:
        return len(self._frames)


class CallTap:
    """Feeds a :class:`Tap` with every party's received audio on each clock tick.

    A party is an RTP leg or a :class:`FrameFeed`. Attaching turns on PCM
    buffering in the legs (a leg only decodes while a tap needs it) and joins
    the clock's :class:`TapHub`; detaching turns it off again and closes the
    consumers.
    """

    def __init__(self, parties: Mapping[str, MediaLeg | FrameFeed], tap: Tap | None = None) -> None:
        self.parties = dict(parties)
        self.tap = tap or Tap()
        # (party, leg or feed, silence, sample rate of the silence): read per tick.
        self._rows = [_row(party, source) for party, source in self.parties.items()]
        self._hub: TapHub | None = None

    def _legs(self) -> list[MediaLeg]:
        return [leg for leg in self.parties.values() if isinstance(leg, MediaLeg)]

    def attach(self, clock: MediaClock) -> None:
        for leg in self._legs():
            leg.enable_pcm()
        if self._hub is None:
            self._hub = TapHub.of(clock)
            self._hub.add(self)

    def detach(self) -> None:
        if self._hub is not None:
            self._hub.remove(self)
            self._hub = None
        for leg in self._legs():
            leg.disable_pcm()
        self.tap.close()

    def on_tick(self, index: int, now: float) -> None:
        """This call's frames of tick ``index`` (the hub does this for all calls at once)."""
        TapHub.tick((self,), index, now)


class TapHub:
    """The one clock subscriber of every :class:`CallTap` on a clock (see the module doc)."""

    def __init__(self, clock: MediaClock) -> None:
        self.clock = clock
        # A dict: insertion order (a call's frames keep their place) and O(1) removal.
        self._taps: dict[CallTap, None] = {}
        self._subscription: Subscription | None = None

    @staticmethod
    def of(clock: MediaClock) -> TapHub:
        """The clock's hub (made on first use; it goes with the clock)."""
        hub = _HUBS.get(clock)
        if hub is None:
            hub = _HUBS[clock] = TapHub(clock)
        return hub

    @property
    def taps(self) -> int:
        return len(self._taps)

    def add(self, tap: CallTap) -> None:
        self._taps[tap] = None
        if self._subscription is None:
            self._subscription = self.clock.subscribe(self._on_tick)

    def remove(self, tap: CallTap) -> None:
        self._taps.pop(tap, None)
        if not self._taps and self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def _on_tick(self, index: int, now: float) -> None:
        # A snapshot: a consumer woken below may detach its call before the next tick.
        self._run_slice(tuple(self._taps), 0, index, now)

    def _run_slice(self, taps: tuple[CallTap, ...], start: int, index: int, now: float) -> None:
        # Hundreds of calls' frames take milliseconds: do them a slice at a time and let
        # the loop relay the packets that came in meanwhile. Each slice queues the next
        # (call_soon is FIFO), so a call's frames stay in tick order even in a catch-up.
        end = start + _SLICE
        self.tick(taps[start:end], index, now)
        if end < len(taps):
            asyncio.get_running_loop().call_soon(self._run_slice, taps, end, index, now)

    @staticmethod
    def tick(taps: tuple[CallTap, ...], index: int, now: float) -> None:
        """Play out every party of ``taps`` at tick ``index``, in call and party order
        (consumers see a call's parties together)."""
        for call_tap in taps:
            publish = call_tap.tap.publish
            for party, source, silence, silence_rate in call_tap._rows:
                if isinstance(source, FrameFeed):
                    pushed = source.take()
                    if pushed is None:
                        publish(TapFrame(party, index, now, silence, silence_rate, True))
                    else:
                        publish(TapFrame(party, index, now, pushed, silence_rate, False))
                    continue
                played = source.playout_pcm(now)
                if played is None:
                    publish(TapFrame(party, index, now, silence, silence_rate, True))
                else:
                    rate = source.receive_codec.sample_rate
                    publish(TapFrame(party, index, now, played[0], rate, played[1]))


def _row(party: str, source: MediaLeg | FrameFeed) -> tuple[str, MediaLeg | FrameFeed, bytes, int]:
    if isinstance(source, FrameFeed):
        return party, source, bytes(source.frame_bytes), source.sample_rate
    codec = source.config.send_codec
    return party, source, bytes(2 * codec.samples_per_frame), codec.sample_rate


_HUBS: weakref.WeakKeyDictionary[MediaClock, TapHub] = weakref.WeakKeyDictionary()
