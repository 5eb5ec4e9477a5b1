"""The hash-chained, append-only audit log.

Each event's hash is SHA-256 over the previous event's hash and a canonical
JSON encoding of the event (sequence number included, so a reordering breaks
the chain). Appends lock the single ``audit_head`` row, which serialises
writers across processes on PostgreSQL and records the newest link, so a
deleted tail is caught as well as an edited, deleted or swapped middle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def event_hash(
    prev_hash: str,
    seq: int,
    created_at: str,
    actor: str,
    tenant_id: str | None,
    action: str,
    target: str,
    details: str,
) -> str:
    body = json.dumps(
        [seq, created_at, actor, tenant_id, action, target, details],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


async def _locked_head(session: AsyncSession) -> AuditHead | None:
    query = select(AuditHead).where(AuditHead.id == 1).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def append(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (committed with the change it records)."""
    head = await _locked_head(session)
    if head is None:
        # First event ever: create the head row so concurrent first appends queue on it
        # (ON CONFLICT DO NOTHING waits for the other inserter, then the lock orders us).
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        await session.execute(
            insert(AuditHead).values(id=1, seq=0, hash=GENESIS).on_conflict_do_nothing()
        )
        head = await _locked_head(session)
        assert head is not None
    seq = head.seq + 1
    created = _now_iso()
    detail_text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str)
    digest = event_hash(head.hash, seq, created, actor, tenant_id, action, target, detail_text)
    event = AuditEvent(
        seq=seq,
        created_at=created,
        actor=actor,
        tenant_id=tenant_id,
        action=action,
        target=target,
        details=detail_text,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(event)
    head.seq = seq
    head.hash = digest
    await session.flush()
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    #: Sequence number of the first bad event (or where one is missing).
    first_bad_seq: int | None = None
    problem: str | None = None


async def verify(session: AsyncSession, batch: int = 1000) -> VerifyResult:
    """Walk the whole chain and report the first altered, deleted or reordered event."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    last_seq = 0
    while True:
        rows = (
            (
                await session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.seq > last_seq)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected_seq:
                return VerifyResult(
                    False,
                    count,
                    expected_seq,
                    f"event {expected_seq} is missing (next is {ev.seq})",
                )
            if ev.prev_hash != prev:
                return VerifyResult(
                    False,
                    count,
                    ev.seq,
                    f"event {ev.seq} does not follow event {ev.seq - 1} (deleted or reordered)",
                )
            digest = event_hash(
                ev.prev_hash,
                ev.seq,
                ev.created_at,
                ev.actor,
                ev.tenant_id,
                ev.action,
                ev.target,
                ev.details,
            )
            if digest != ev.hash:
                return VerifyResult(
                    False, count, ev.seq, f"event {ev.seq} was altered (hash mismatch)"
                )
            prev = ev.hash
            expected_seq += 1
            count += 1
            last_seq = ev.seq
    head = (await session.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one_or_none()
    if head is not None and (head.seq != count or head.hash != prev):
        return VerifyResult(
            False,
            count,
            count + 1,
            f"the chain ends at event {count} but the head records event {head.seq}",
        )
    if head is None and count:
        return VerifyResult(False, count, None, "the audit head row is missing")
    return VerifyResult(True, count)
