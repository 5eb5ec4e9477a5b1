"""Engine and session factory for SQLite (embedded default) and PostgreSQL.

SQLite allows one writer at a time per database file. Inside the gateway process every
transaction goes through a single pooled connection that callers take in arrival order,
so in-process writers queue fairly in asyncio rather than spinning in SQLite's busy
handler (which favours the newest waiter and fails the unlucky ones after the busy
timeout). The busy timeout is left for what it is meant for: another process (a CLI
command beside ``serve``) holding the write lock.

The rule that follows for code using the sessions: a task never opens a second session
while one of its own is open. With one connection the inner session would wait for the
outer one, which waits for it, until the pool timeout fails both.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

try:
    from sqlalchemy.util import await_
except ImportError:  # SQLAlchemy 2.0 calls it await_only (deprecated from 2.2 on)
    from sqlalchemy.util import await_only as await_

#: How long a transaction waits for another process's write lock (SQLite busy handler).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: How long a task waits for its turn on the gateway's one SQLite connection: the queue
#: ahead of it plus, at worst, that turn's wait behind another process's write lock.
SQLITE_POOL_TIMEOUT_S = 60.0


def _sqlite_pragmas(dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (see _sqlite_begin).
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # SQLite ignores SELECT ... FOR UPDATE, and a deferred BEGIN lets two writers read
    # the same audit-chain head before either writes. BEGIN IMMEDIATE takes the write
    # lock up front (waiting up to busy_timeout for another process), serialising
    # writers like the row lock does on PostgreSQL. Reads take it too: a transaction
    # cannot say in advance that it will not write, and a deferred one that later
    # writes fails outright (SQLITE_BUSY_SNAPSHOT) if another process wrote meanwhile.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class _FifoQueue(AsyncAdaptedQueue[ConnectionPoolEntry]):
    """The pool's idle connections, handed to waiting tasks strictly in arrival order.

    With a bare asyncio.Queue a task arriving just after a connection is returned takes
    it ahead of the waiter that was woken for it, and that waiter goes to the back of
    the line; under a steady stream of transactions one caller can wait without bound.
    Here waiters pass one at a time through an asyncio.Lock, which is first come, first
    served, and nobody takes the fast path while anyone is waiting.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiting = 0
        # Created on first use, inside the running loop (as the queue itself is).
        self._line: asyncio.Lock | None = None

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if not block or (self._waiting == 0 and not self.empty()):
            return self.get_nowait()
        try:
            return await_(self._wait_turn(timeout))
        except TimeoutError as err:
            raise Empty() from err

    async def _wait_turn(self, seconds: float | None) -> ConnectionPoolEntry:
        if self._line is None:
            self._line = asyncio.Lock()
        self._waiting += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a result that
            # arrives with the timeout, and here that result is the only connection.
            async with asyncio.timeout(seconds), self._line:
                return await self._queue.get()
        finally:
            self._waiting -= 1


class FifoAsyncPool(AsyncAdaptedQueuePool):
    """An asyncio connection pool whose waiters are served first come, first served.

    It swaps SQLAlchemy's queue class (an internal hook): the arrival-order test in
    tests/foundation/test_db_concurrency.py fails should an upgrade stop honouring it.
    """

    _queue_class = _FifoQueue


def _is_sqlite_file(url: URL) -> bool:
    return bool(url.database) and url.database != ":memory:" and url.query.get("mode") != "memory"


def create_engine(url: str, echo: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, echo=echo, pool_pre_ping=True)
    if _is_sqlite_file(parsed):
        assert parsed.database is not None
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection, taken in turn: SQLite admits one writer at a time anyway, and
        # every transaction here is a writer (BEGIN IMMEDIATE). No pre-ping: a local
        # file does not drop connections, and a ping would cost each turn a thread hop.
        engine = create_async_engine(
            url,
            echo=echo,
            poolclass=FifoAsyncPool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_POOL_TIMEOUT_S,
        )
    else:
        engine = create_async_engine(url, echo=echo)  # in memory: one static connection
    sync: Engine = engine.sync_engine
    event.listen(sync, "connect", _sqlite_pragmas)
    event.listen(sync, "begin", _sqlite_begin)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
