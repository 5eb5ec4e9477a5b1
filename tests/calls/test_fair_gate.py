"""The lookup gate: a few at a time, trusted sources first, the others source by source."""

from __future__ import annotations

import asyncio

import pytest

from voicegw.calls.fair_gate import FairGate


class Work:
    """Requests that enter the gate and stay until told to finish, recording the order."""

    def __init__(self, gate: FairGate) -> None:
        self.gate = gate
        self.order: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, host: str, trusted: bool = False) -> None:
        self.finish[name] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self._run(name, host, trusted)))

    async def _run(self, name: str, host: str, trusted: bool) -> None:
        async with self.gate.turn(host, trusted):
            self.order.append(name)
            await self.finish[name].wait()

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


async def test_no_more_than_the_concurrency_run_and_the_rest_take_turns_by_source() -> None:
    work = Work(FairGate(concurrency=2))
    for i in range(2):
        work.start(f"flood-{i}", "198.51.100.7")
    await work.settle()
    # The flood source queues five more, then two other sources one each, and a phone
    # that authenticated recently.
    for i in range(2, 7):
        work.start(f"flood-{i}", "198.51.100.7")
    work.start("other-a", "198.51.100.8")
    work.start("other-b", "198.51.100.9")
    work.start("phone", "192.0.2.1", trusted=True)
    await work.settle()
    assert work.order == ["flood-0", "flood-1"]
    assert (work.gate.running, work.gate.waiting) == (2, 8)
    for name in ["flood-0", "flood-1", "phone", "flood-2", "other-a", "other-b", "flood-3"]:
        work.finish[name].set()
        await work.settle()
    assert work.order == [
        "flood-0",
        "flood-1",
        "phone",
        "flood-2",
        "other-a",
        "other-b",
        "flood-3",
        "flood-4",
        "flood-5",
    ]
    for event in work.finish.values():
        event.set()
    await asyncio.gather(*work.tasks)
    assert (work.gate.running, work.gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_gives_up_its_turn_without_losing_a_place() -> None:
    work = Work(FairGate(concurrency=1))
    work.start("first", "198.51.100.7")
    work.start("cancelled", "198.51.100.8")
    work.start("next", "198.51.100.9")
    await work.settle()
    work.tasks[1].cancel()
    await work.settle()
    assert work.gate.waiting == 1
    work.finish["first"].set()
    await work.settle()
    assert work.order == ["first", "next"]
    work.finish["next"].set()
    await asyncio.gather(work.tasks[0], work.tasks[2])
    assert (work.gate.running, work.gate.waiting) == (0, 0)


def test_the_gate_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        FairGate(0)
