"""Many calls decide consent at once: every decision is stored and audited on one unbroken
chain. On the embedded SQLite database the gateway's own writers queue for their turn in
arrival order instead of failing on SQLite's busy timeout, and a writer in another
process (a CLI command beside ``serve``) delays them without failing them."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from voicegw.consent import (
    CallContext,
    ConsentDecision,
    ConsentMachine,
    ConsentPolicy,
    DecisionMade,
    PartyRole,
    PromptFinished,
    PromptStarted,
    RecordingMode,
    resolve_mode,
)
from voicegw.recording.metadata import persist_consent_decision
from voicegw.store import audit, migrate, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

TENANT = "acme"
BURST = 200
#: Far below the default: an in-process writer that waited in SQLite's busy handler
#: (rather than in the gateway's queue) for longer than this would fail.
SHORT_BUSY_TIMEOUT_MS = 200
#: How long the other process keeps the write lock.
OTHER_PROCESS_HOLDS_S = 1.0


def notice_given() -> ConsentDecision:
    """A caller's decision under a notify-only policy (the notice was played)."""
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    caller.handle(PromptStarted(0.0))
    (made,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
    return made.record


async def add_tenant(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s, s.begin():
        await tenants.create_tenant(
            s, actor="test", tenant_id=TENANT, name="Acme", settings=TenantSettings()
        )


async def decide(
    sessions: async_sessionmaker[AsyncSession], call_id: str, decision: ConsentDecision
) -> int:
    """Store one call's decision the way the consent flow does; returns its audit seq."""
    async with sessions() as s, s.begin():
        row = await persist_consent_decision(
            s, actor="consent", tenant_id=TENANT, call_id=call_id, decision=decision
        )
    assert row.audit_seq is not None
    return row.audit_seq


async def burst(sessions: async_sessionmaker[AsyncSession], calls: int) -> list[int]:
    """``calls`` decisions at once, started in call order; their audit seqs in that order."""
    decision = notice_given()
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(decide(sessions, f"call-{i}", decision) for i in range(calls)),
            return_exceptions=True,
        ),
        timeout=60,
    )
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    assert not failures, f"{len(failures)} of {calls} decisions failed, first: {failures[0]}"
    return [o for o in outcomes if isinstance(o, int)]


async def verified(sessions: async_sessionmaker[AsyncSession]) -> audit.VerifyResult:
    async with sessions() as s:
        return await audit.verify(s)


async def test_a_burst_of_consent_decisions_is_all_stored_on_one_unbroken_chain(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_tenant(sessions)
    before = (await verified(sessions)).events
    seqs = await burst(sessions, BURST)
    assert sorted(seqs) == list(range(before + 1, before + BURST + 1))
    result = await verified(sessions)
    assert result.ok, result.problem
    assert result.events == before + BURST


@pytest.fixture
async def sqlite_short_busy(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The embedded database, with SQLite's busy timeout cut to 0.2 s."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")

    def shorten(dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
        # Runs after the engine's own pragmas (listeners run in order).
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute(f"PRAGMA busy_timeout={SHORT_BUSY_TIMEOUT_MS}")
        cursor.close()

    event.listen(engine.sync_engine, "connect", shorten)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def test_sqlite_writers_in_the_gateway_queue_in_arrival_order_and_never_time_out(
    sqlite_short_busy: AsyncEngine,
) -> None:
    """Each of 200 concurrent transactions would fail after 0.2 s in SQLite's busy handler;
    queued fairly in the process, all commit, each in the order it asked."""
    sessions = session_factory(sqlite_short_busy)
    await add_tenant(sessions)
    first = (await verified(sessions)).events + 1
    seqs = await burst(sessions, BURST)
    assert seqs == list(range(first, first + BURST))
    result = await verified(sessions)
    assert result.ok, result.problem


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


async def test_sqlite_writers_wait_for_another_process_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    """A CLI command writing beside ``serve`` delays the gateway's decisions, never fails them."""
    path = tmp_path / "voicegw.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        await add_tenant(sessions)
        other = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLD_WRITE_LOCK,
            str(path),
            str(OTHER_PROCESS_HOLDS_S),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert other.stdout is not None
            assert await asyncio.wait_for(other.stdout.readline(), timeout=30) == b"locked\n"
            started = time.monotonic()
            seqs = await burst(sessions, 25)
            waited = time.monotonic() - started
        finally:
            if other.returncode is None:
                other.kill()
            await other.wait()
        assert len(set(seqs)) == 25
        # Nothing could commit before the other process let go of the lock.
        assert waited >= OTHER_PROCESS_HOLDS_S / 2
        result = await verified(sessions)
        assert result.ok, result.problem
    finally:
        await engine.dispose()


async def test_a_call_gone_while_queueing_for_sqlite_leaves_the_queue_moving(
    tmp_path: Path,
) -> None:
    """A caller hanging up while its transaction waits for its turn gives up its place,
    not the connection: those behind it still get their turns, in order."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        await add_tenant(sessions)
        decision = notice_given()
        holding, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with sessions() as s, s.begin():
                await audit.append(s, actor="test", action="test.hold", target="db")
                holding.set()
                await release.wait()

        held = asyncio.create_task(holder())
        await asyncio.wait_for(holding.wait(), timeout=30)
        queued = [asyncio.create_task(decide(sessions, f"call-{i}", decision)) for i in range(3)]
        for _ in range(20):  # let each reach the queue (a handful of loop turns)
            await asyncio.sleep(0)
        queued[1].cancel()
        release.set()
        await asyncio.wait_for(held, timeout=30)
        first, third = await asyncio.wait_for(asyncio.gather(queued[0], queued[2]), timeout=30)
        assert queued[1].cancelled()
        assert third == first + 1
        late = await asyncio.wait_for(decide(sessions, "call-late", decision), timeout=30)
        assert late == third + 1
        result = await verified(sessions)
        assert result.ok, result.problem
    finally:
        await engine.dispose()


async def test_a_caller_arriving_as_the_connection_is_handed_back_queues_behind_the_waiting(
    tmp_path: Path,
) -> None:
    """A new call's transaction that arrives the instant the connection is returned (when
    the woken waiter has not run yet) does not take it ahead of those already waiting."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        await add_tenant(sessions)
        decision = notice_given()
        holding, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with sessions() as s, s.begin():
                await audit.append(s, actor="test", action="test.hold", target="db")
                holding.set()
                await release.wait()

        held = asyncio.create_task(holder())
        await asyncio.wait_for(holding.wait(), timeout=30)
        queued = [asyncio.create_task(decide(sessions, f"call-{i}", decision)) for i in range(3)]
        for _ in range(20):  # let each reach the queue (a handful of loop turns)
            await asyncio.sleep(0)
        newcomer: list[asyncio.Task[int]] = []

        def arrive(_dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
            # Fires just before the connection goes back: the new task's first step is
            # scheduled ahead of the waiter that the return is about to wake.
            if not newcomer:
                loop = asyncio.get_running_loop()
                newcomer.append(loop.create_task(decide(sessions, "call-new", decision)))

        event.listen(engine.sync_engine, "checkin", arrive)
        release.set()
        await asyncio.wait_for(held, timeout=30)
        seqs = await asyncio.wait_for(asyncio.gather(*queued), timeout=30)
        late = await asyncio.wait_for(newcomer[0], timeout=30)
        assert seqs == sorted(seqs)
        assert late > seqs[-1]
    finally:
        await engine.dispose()
