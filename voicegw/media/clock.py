"""The 20 ms media clock: one task paces every leg's playout, taps and prompts.

Tick ``n`` is due at ``start + n * period``, computed, never accumulated: a
late wake-up makes that one tick late, not every tick after it (which is what
``while True: sleep(0.02)`` does, drifting by the loop's overshoot every
time). After a stall the clock catches up by running the missed ticks back to
back, up to ``max_catchup`` of them; beyond that it skips ahead (and counts
the skipped ticks) rather than burst a second of audio at once. A skipped
tick fires nothing: a subscriber that keeps the call's timeline sees the jump
in the index (and deadline) and fills it itself (the recorder writes silence
there, see :mod:`voicegw.recording.recorder`).

:class:`TickSchedule` is that arithmetic, sans-IO. :class:`MediaClock` runs it
in one asyncio task shared by all legs; subscribers are called with the tick
index and its deadline (the media time of the frame, not the wake-up time),
so every party of a call sees the same index for the same 20 ms.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final

__all__ = ["MediaClock", "Subscription", "TickCallback", "TickSchedule"]

logger = logging.getLogger(__name__)

FRAME_PERIOD: Final = 0.02
#: A wake-up this close before a deadline counts as on time (event loop rounding).
_EARLY_TOLERANCE: Final = 0.0005

#: (tick index, tick deadline in the clock's time base) -> None. Must not block.
TickCallback = Callable[[int, float], None]


class TickSchedule:
    """Which ticks are due at ``now``, for a clock started at ``start``."""

    def __init__(self, start: float, period: float = FRAME_PERIOD, max_catchup: int = 5) -> None:
        if period <= 0 or max_catchup < 1:
            raise ValueError("need period > 0 and max_catchup >= 1")
        self.start = start
        self.period = period
        self.max_catchup = max_catchup
        self.next_tick = 0
        self.skipped = 0

    def deadline(self, tick: int) -> float:
        return self.start + tick * self.period

    @property
    def next_deadline(self) -> float:
        return self.deadline(self.next_tick)

    def due(self, now: float) -> range:
        """The ticks to run now (possibly none); advances the schedule past them."""
        last = math.floor((now + _EARLY_TOLERANCE - self.start) / self.period)
        first = self.next_tick
        if last < first:
            return range(first, first)
        if last - first + 1 > self.max_catchup:
            skip = last - first + 1 - self.max_catchup
            self.skipped += skip
            first += skip
        self.next_tick = last + 1
        return range(first, last + 1)


class Subscription:
    """A registered tick callback; :meth:`cancel` stops further calls at once."""

    __slots__ = ("_clock", "callback")

    def __init__(self, clock: MediaClock, callback: TickCallback) -> None:
        self._clock = clock
        self.callback = callback

    def cancel(self) -> None:
        self._clock._subscribers.pop(self, None)


class MediaClock:
    """One pacing task for many legs.

    ``time`` and ``sleep`` default to the running loop's clock and
    :func:`asyncio.sleep`; tests pass a controllable pair.
    """

    def __init__(
        self,
        period: float = FRAME_PERIOD,
        *,
        max_catchup: int = 5,
        time: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.period = period
        self.max_catchup = max_catchup
        self._time = time
        self._sleep = sleep
        # A dict keeps subscription order and allows removal while iterating a snapshot.
        self._subscribers: dict[Subscription, None] = {}
        self._task: asyncio.Task[None] | None = None
        self.schedule: TickSchedule | None = None
        self.failures = 0

    def now(self) -> float:
        return self._time() if self._time is not None else asyncio.get_running_loop().time()

    def unplayed_from(self) -> float:
        """The media time from which frames are still to be played: ``now``, or, while
        the clock runs late, the deadline of the next tick it has yet to fire (that tick
        will still play whatever audio arrives before it fires). What an input that stops
        recording takes effect from."""
        now = self.now()
        schedule = self.schedule
        return now if schedule is None else min(now, schedule.next_deadline)

    def subscribe(self, callback: TickCallback) -> Subscription:
        subscription = Subscription(self, callback)
        self._subscribers[subscription] = None
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="media-clock")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise

    async def run(self, ticks: int | None = None) -> None:
        """Tick until cancelled (or for ``ticks`` ticks, for tests and benchmarks)."""
        schedule = self.schedule = TickSchedule(self.now(), self.period, self.max_catchup)
        done = 0
        while ticks is None or done < ticks:
            delay = schedule.next_deadline - self.now()
            if delay > 0:
                await self._sleep(delay)
            for tick in schedule.due(self.now()):
                self._fire(tick, schedule.deadline(tick))
                done += 1

    def _fire(self, tick: int, deadline: float) -> None:
        for subscription in list(self._subscribers):
            if subscription not in self._subscribers:
                continue  # cancelled by an earlier callback of this tick
            try:
                subscription.callback(tick, deadline)
            except Exception as exc:
                # One broken consumer must not stop the clock of every other call.
                self.failures += 1
                subscription.cancel()
                logger.error("media clock subscriber failed", extra={"error": type(exc).__name__})
