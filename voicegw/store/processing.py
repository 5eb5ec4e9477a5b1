"""Processing records on disk: a bounded, non-blocking writer and tenant-scoped queries.

Every provider use ends in a :class:`~voicegw.privacy.processing.ProcessingRecord`,
emitted from the speech adapters on the event loop, often while a call's media is
flowing. :meth:`ProcessingRecordWriter.submit` is the :data:`RecordSink` they call:
it only appends to a bounded queue (no I/O, no await), so a slow or unreachable
database never stalls a call. A background task writes the queue in batches.

Nothing is lost silently: a record that finds the queue full is counted in
``stats.dropped`` (and logged, with the running count); a batch the database
refuses is retried row by row, so one bad row (a tenant deleted meanwhile) costs
only itself, counted in ``stats.failed``; both also feed the
``voicegw_processing_records_total`` metric. :meth:`~ProcessingRecordWriter.aclose`
writes what is queued before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.metrics import PROCESSING_RECORDS
from voicegw.privacy.processing import ProcessingRecord
from voicegw.store.recordings import ProcessingRecordRow

__all__ = [
    "ProcessingRecordWriter",
    "WriterStats",
    "epoch_to_utc",
    "find_processing_records",
    "processing_row",
]

log = logging.getLogger("voicegw.store.processing")

DEFAULT_QUEUE: Final = 10_000
DEFAULT_BATCH: Final = 200


def epoch_to_utc(seconds: float) -> datetime:
    """The failover adapters time records with ``time.time``: seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC)


def processing_row(
    record: ProcessingRecord, *, to_wall: Callable[[float], datetime] = epoch_to_utc
) -> ProcessingRecordRow:
    """A processing record as a row; ``to_wall`` maps the record's clock onto wall time."""
    return ProcessingRecordRow(
        tenant_id=record.tenant,
        call_id=record.call_id,
        provider=record.provider,
        subprocessor=record.subprocessor,
        purpose=record.purpose.value,
        locations=list(record.locations),
        audio_seconds=record.audio_seconds,
        characters=record.characters,
        started_at=to_wall(record.started),
        ended_at=to_wall(record.ended),
        outcome=record.outcome.value,
        error_status=record.error_status,
        party=record.party,
        basis=record.basis,
    )


async def find_processing_records(
    session: AsyncSession,
    tenant_id: str,
    *,
    call_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[ProcessingRecordRow]:
    """The tenant's records, oldest first: of one call, and/or started in [since, until)."""
    query = select(ProcessingRecordRow).where(ProcessingRecordRow.tenant_id == tenant_id)
    if call_id is not None:
        query = query.where(ProcessingRecordRow.call_id == call_id)
    if since is not None:
        query = query.where(ProcessingRecordRow.started_at >= since)
    if until is not None:
        query = query.where(ProcessingRecordRow.started_at < until)
    if after is not None:
        query = query.where(ProcessingRecordRow.id > after)
    query = query.order_by(ProcessingRecordRow.id).limit(limit)
    return list((await session.execute(query)).scalars())


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0  # the queue was full: never queued
    failed: int = 0  # the database refused the row

    @property
    def lost(self) -> int:
        return self.dropped + self.failed


class ProcessingRecordWriter:
    """Queues records from the loop without blocking; a task stores them in batches."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_queue: int = DEFAULT_QUEUE,
        batch: int = DEFAULT_BATCH,
        to_wall: Callable[[float], datetime] = epoch_to_utc,
        close_timeout: float = 10.0,
    ) -> None:
        if max_queue < 1 or batch < 1:
            raise ValueError("max_queue and batch must be >= 1")
        self.stats = WriterStats()
        self._sessions = sessions
        self._max_queue = max_queue
        self._batch = batch
        self._to_wall = to_wall
        self._close_timeout = close_timeout
        self._queue: deque[ProcessingRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="processing-records"
            )

    def submit(self, record: ProcessingRecord) -> None:
        """The :data:`RecordSink`: O(1), never awaits, never raises for a full queue."""
        if self._closing or len(self._queue) >= self._max_queue:
            self.stats.dropped += 1
            PROCESSING_RECORDS.labels("dropped").inc()
            log.warning(
                "processing_record.dropped",
                extra={
                    "tenant_id": record.tenant,
                    "call_id": record.call_id,
                    "dropped_total": self.stats.dropped,
                    "closing": self._closing,
                },
            )
            return
        self._queue.append(record)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything submitted so far is stored (or counted as failed)."""
        if self._task is None:
            await self._drain()
            return
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop taking records, store the queued ones, stop the task.

        Records still queued after ``close_timeout`` (a database that never answers) are
        counted as dropped, and the count is logged.
        """
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), self._close_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            self.stats.dropped += len(self._queue)
            PROCESSING_RECORDS.labels("dropped").inc(len(self._queue))
            self._queue.clear()
        if self.stats.lost:
            log.error(
                "processing_record.lost",
                extra={"dropped": self.stats.dropped, "failed": self.stats.failed},
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self.stats.dropped += len(batch)  # aclose gave up on a database that hangs
                PROCESSING_RECORDS.labels("dropped").inc(len(batch))
                raise
        self._idle.set()

    async def _write(self, batch: Sequence[ProcessingRecord]) -> None:
        try:
            await self._store(batch)
        except SQLAlchemyError:
            # Find the bad row(s): write the rest one by one.
            for record in batch:
                try:
                    await self._store((record,))
                except SQLAlchemyError as exc:
                    self.stats.failed += 1
                    PROCESSING_RECORDS.labels("failed").inc()
                    log.error(
                        "processing_record.write_failed",
                        extra={
                            "tenant_id": record.tenant,
                            "call_id": record.call_id,
                            "error": type(exc).__name__,
                            "failed_total": self.stats.failed,
                        },
                    )

    async def _store(self, records: Sequence[ProcessingRecord]) -> None:
        async with self._sessions() as session, session.begin():
            session.add_all(processing_row(r, to_wall=self._to_wall) for r in records)
        self.stats.written += len(records)
        PROCESSING_RECORDS.labels("written").inc(len(records))
