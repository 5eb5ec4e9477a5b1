"""The shared 20 ms media clock: deadlines computed (no drift), catch-up, skips, subscribers."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from voicegw.media.clock import MediaClock, TickSchedule

PERIOD = 0.02


class ControlledTime:
    """A clock the test drives: every sleep overshoots by a random 0-4 ms, as loops do."""

    def __init__(self, seed: int = 1, overshoot: float = 0.004) -> None:
        self.now = 1000.0
        self.slept = 0
        self._rng = random.Random(seed)
        self._overshoot = overshoot

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept += 1
        self.now += delay + self._rng.uniform(0.0, self._overshoot)
        await asyncio.sleep(0)


def test_deadlines_are_start_plus_n_periods_whatever_the_wakeups() -> None:
    schedule = TickSchedule(start=5.0, period=PERIOD)
    ran = []
    for wake in (5.0, 5.023, 5.041, 5.0605, 5.0801):
        ran += list(schedule.due(wake))
    assert ran == [0, 1, 2, 3, 4]
    assert schedule.next_deadline == pytest.approx(5.0 + 5 * PERIOD)


def test_a_stall_is_caught_up_back_to_back() -> None:
    schedule = TickSchedule(start=0.0, period=PERIOD, max_catchup=5)
    assert list(schedule.due(0.0)) == [0]
    assert list(schedule.due(0.085)) == [1, 2, 3, 4]
    assert schedule.skipped == 0


def test_a_long_stall_skips_ahead_instead_of_bursting() -> None:
    schedule = TickSchedule(start=0.0, period=PERIOD, max_catchup=3)
    assert list(schedule.due(0.0)) == [0]
    # One second frozen: 50 ticks missed; play the last 3, skip the rest.
    assert list(schedule.due(1.0)) == [48, 49, 50]
    assert schedule.skipped == 47
    assert list(schedule.due(1.02)) == [51]


def test_early_wakeup_runs_nothing() -> None:
    schedule = TickSchedule(start=0.0, period=PERIOD)
    schedule.due(0.0)
    assert list(schedule.due(0.015)) == []


async def test_clock_does_not_drift_with_overshooting_sleeps() -> None:
    fake = ControlledTime()
    clock = MediaClock(PERIOD, time=fake.time, sleep=fake.sleep)
    seen: list[tuple[int, float]] = []
    clock.subscribe(lambda tick, t: seen.append((tick, t)))
    await clock.run(ticks=1000)
    assert [tick for tick, _ in seen] == list(range(len(seen)))
    assert len(seen) >= 1000
    # Tick n is due at start + n x 20 ms exactly; after 20 s of sleeps that each
    # overshot by ~2 ms, the clock is where it should be, not ~2 s behind.
    start = seen[0][1]
    assert all(t == pytest.approx(start + tick * PERIOD, abs=1e-9) for tick, t in seen)
    assert fake.now - (start + (len(seen) - 1) * PERIOD) < 0.005
    assert fake.slept <= 1000


async def test_every_subscriber_sees_the_same_tick_and_can_leave_at_once() -> None:
    fake = ControlledTime()
    clock = MediaClock(PERIOD, time=fake.time, sleep=fake.sleep)
    caller: list[int] = []
    agent: list[int] = []
    clock.subscribe(lambda tick, _: caller.append(tick))
    sub = clock.subscribe(lambda tick, _: agent.append(tick))
    await clock.run(ticks=5)
    sub.cancel()
    await clock.run(ticks=3)
    assert caller[:5] == agent == [0, 1, 2, 3, 4]
    assert len(caller) == 8
    assert clock.subscribers == 1


async def test_a_failing_subscriber_is_removed_and_the_others_keep_ticking() -> None:
    fake = ControlledTime()
    clock = MediaClock(PERIOD, time=fake.time, sleep=fake.sleep)
    good: list[int] = []

    def broken(tick: int, _: float) -> None:
        raise RuntimeError("consumer bug")

    clock.subscribe(broken)
    clock.subscribe(lambda tick, _: good.append(tick))
    await clock.run(ticks=4)
    assert good == [0, 1, 2, 3]
    assert clock.failures == 1
    assert clock.subscribers == 1


async def test_on_the_real_loop_no_tick_fires_before_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock(PERIOD, max_catchup=1000)  # a loaded CI machine may stall us
    fired: list[tuple[float, float]] = []
    clock.subscribe(lambda tick, deadline: fired.append((loop.time(), deadline)))
    clock.start()
    for _ in range(200):  # bounded: at most 2 s
        if len(fired) >= 10:
            break
        await asyncio.sleep(0.01)
    await clock.stop()
    assert len(fired) >= 10
    assert all(at >= deadline - 0.001 for at, deadline in fired)
    deadlines = [deadline for _, deadline in fired]
    assert all(b - a == pytest.approx(PERIOD, abs=1e-9) for a, b in itertools.pairwise(deadlines))


async def test_an_input_that_stops_recording_takes_effect_from_the_first_unplayed_frame() -> None:
    fake = ControlledTime(overshoot=0.0)
    clock = MediaClock(PERIOD, time=fake.time, sleep=fake.sleep)
    assert clock.unplayed_from() == fake.now  # not running: now
    await clock.run(ticks=3)  # ticks 0, 1, 2 fired; tick 3 is next
    assert clock.schedule is not None
    next_deadline = clock.schedule.next_deadline
    fake.now = next_deadline - 0.005  # on time: the next frame is yet to come
    assert clock.unplayed_from() == fake.now
    # The loop stalled: tick 3 is 30 ms late and will still play what arrives before
    # it fires, so a pause pressed now must cover it.
    fake.now = next_deadline + 0.03
    assert clock.unplayed_from() == next_deadline
