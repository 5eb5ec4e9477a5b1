"""The retention sweeper and legal holds (DESIGN §4.4).

Deletes recordings and transcripts whose ``retain_until`` has passed and that
are not on legal hold. Each object goes through three steps, each its own
transaction or storage call, ordered so a crash at any point leaves a state
the next run completes:

1. mark the row ``deleting`` (committed: from now on the object is gone as
   far as anyone reading the database is concerned, and a hold can no
   longer be placed on it);
2. delete the bytes from storage (idempotent: nothing there is not an error);
3. shred the detached wrapped key, set ``deleted_at``, mark ``deleted`` and
   append the audit event, in one transaction.

A run picks up rows left in ``deleting`` whatever their retention, so a run
that died between 1 and 3 is finished by the next; a second run over the same
data deletes nothing. The clock is passed in.

Shredding: with the wrapped data key kept in the database (the recorder's
default), clearing it makes every copy of the file, backups included,
undecryptable. A file whose wrapped key sits in its own header is only gone
when its KEK version is shredded (``KeyProvider.shred``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.recording.storage import StorageBackend
from voicegw.store import audit, tenants
from voicegw.store import recordings as store

KINDS = (store.ObjectKind.RECORDING, store.ObjectKind.TRANSCRIPT)


@dataclass(frozen=True)
class SweepItem:
    """One object the sweeper deleted, or (dry run) would delete."""

    kind: store.ObjectKind
    tenant_id: str
    object_id: str
    call_id: str
    retain_until: datetime
    resumed: bool  # a previous run had begun deleting it


@dataclass(frozen=True)
class SweepFailure:
    item: SweepItem
    error: str  # exception type only: messages may name paths


@dataclass(frozen=True)
class SweepReport:
    dry_run: bool
    items: tuple[SweepItem, ...]  # deleted (or, on a dry run, due)
    failures: tuple[SweepFailure, ...] = ()


def _item(row: store.StoredObject) -> SweepItem:
    return SweepItem(
        kind=store.kind_of(row),
        tenant_id=row.tenant_id,
        object_id=row.id,
        call_id=row.call_id,
        retain_until=store.as_utc(row.retain_until),
        resumed=row.state == store.ObjectState.DELETING.value,
    )


async def _tenant_ids(session: AsyncSession, only: Iterable[str] | None) -> list[str]:
    if only is not None:
        return sorted(set(only))
    return [t.id for t in await tenants.list_tenants(session)]


async def due(
    sessions: async_sessionmaker[AsyncSession],
    *,
    now: datetime,
    tenant_ids: Iterable[str] | None = None,
) -> list[SweepItem]:
    """What a sweep at ``now`` would delete, tenant by tenant."""
    out: list[SweepItem] = []
    async with sessions() as session:
        for tenant_id in await _tenant_ids(session, tenant_ids):
            for kind in KINDS:
                rows = await store.due_for_deletion(session, kind, tenant_id, now)
                out.extend(_item(row) for row in rows)
    return out


async def _claim(
    sessions: async_sessionmaker[AsyncSession], item: SweepItem, now: datetime
) -> str | None:
    """Step 1: commit ``deleting`` if the object is still due; returns its storage key."""
    async with sessions() as session, session.begin():
        row = await store.get_object(session, item.kind, item.tenant_id, item.object_id)
        if row is None:
            return None
        state = store.ObjectState(row.state)
        if state is store.ObjectState.DELETING:
            return row.storage_key
        still_due = (
            state in (store.ObjectState.FINISHED, store.ObjectState.INCOMPLETE)
            and not row.legal_hold
            and store.as_utc(row.retain_until) < now
        )
        if not still_due:
            return None  # held, extended or deleted since it was listed
        row.state = store.ObjectState.DELETING.value
        return row.storage_key


async def _settle(
    sessions: async_sessionmaker[AsyncSession],
    item: SweepItem,
    *,
    now: datetime,
    bytes_deleted: bool,
    actor: str,
) -> None:
    """Step 3: shred the wrapped key, mark deleted and audit, in one transaction."""
    async with sessions() as session, session.begin():
        row = await store.get_object(session, item.kind, item.tenant_id, item.object_id)
        if row is None or row.state != store.ObjectState.DELETING.value:
            return
        key_shredded = row.wrapped_key is not None
        row.wrapped_key = None
        row.state = store.ObjectState.DELETED.value
        row.deleted_at = now
        await audit.append(
            session,
            actor=actor,
            tenant_id=item.tenant_id,
            action=f"retention.delete.{item.kind.value}",
            target=store.target_of(row),
            details={
                "call_id": row.call_id,
                "retain_until": store.as_utc(row.retain_until).isoformat(),
                "bytes_deleted": bytes_deleted,
                "wrapped_key_shredded": key_shredded,
                "resumed": item.resumed,
            },
        )


async def sweep(
    sessions: async_sessionmaker[AsyncSession],
    storage: StorageBackend,
    *,
    now: datetime,
    dry_run: bool = False,
    tenant_ids: Iterable[str] | None = None,
    actor: str = "retention",
) -> SweepReport:
    """Delete everything due at ``now``; on ``dry_run`` only list it.

    A storage error on one object is reported and the sweep goes on: the row
    stays ``deleting`` and the next run retries it.
    """
    now = store.as_utc(now)
    candidates = await due(sessions, now=now, tenant_ids=tenant_ids)
    if dry_run:
        return SweepReport(True, tuple(candidates))
    deleted: list[SweepItem] = []
    failures: list[SweepFailure] = []
    for item in candidates:
        key = await _claim(sessions, item, now)
        if key is None:
            continue
        try:
            removed = await asyncio.to_thread(storage.delete, key)
        except Exception as exc:  # any backend failure: the row stays 'deleting', retried
            failures.append(SweepFailure(item, type(exc).__name__))
            continue
        await _settle(sessions, item, now=now, bytes_deleted=removed, actor=actor)
        deleted.append(item)
    return SweepReport(False, tuple(deleted), tuple(failures))


# --- legal holds -------------------------------------------------------------------


async def place_legal_hold(
    sessions: async_sessionmaker[AsyncSession],
    *,
    actor: str,
    kind: store.ObjectKind,
    tenant_id: str,
    object_id: str,
    reason: str,
) -> None:
    """Exempt an object from retention until released (audited)."""
    async with sessions() as session, session.begin():
        await store.set_legal_hold(
            session,
            actor=actor,
            kind=kind,
            tenant_id=tenant_id,
            object_id=object_id,
            hold=True,
            reason=reason,
        )


async def release_legal_hold(
    sessions: async_sessionmaker[AsyncSession],
    *,
    actor: str,
    kind: store.ObjectKind,
    tenant_id: str,
    object_id: str,
) -> None:
    """Lift a hold (audited); an expired object goes on the next sweep."""
    async with sessions() as session, session.begin():
        await store.set_legal_hold(
            session,
            actor=actor,
            kind=kind,
            tenant_id=tenant_id,
            object_id=object_id,
            hold=False,
        )
