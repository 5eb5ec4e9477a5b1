"""Recordings, transcripts, consent records and processing records: tables and queries.

Large blobs live in storage backends; these rows are what retention, legal
hold, exports and subject requests work from (DESIGN §4.4, §7). Every query
takes ``tenant_id`` and filters by it, so no function here reaches another
tenant's row by a bare primary key.

A stored object moves through :class:`ObjectState`; the sweeper's crash
safety rests on ``deleting`` being committed *before* any byte is removed, so
a run that dies half-way leaves rows the next run finishes (see
``voicegw.recording.retention``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from voicegw.store import audit
from voicegw.store.models import AuditEvent, Base

_SEQ = BigInteger().with_variant(Integer, "sqlite")


class ObjectState(enum.StrEnum):
    """Life of a stored recording or transcript."""

    WRITING = "writing"  # row made, bytes being written; a crash leaves this behind
    FINISHED = "finished"  # final chunk written and metadata stored
    INCOMPLETE = "incomplete"  # recovered after a crash: readable up to the last whole chunk
    DELETING = "deleting"  # the sweeper committed to deleting it; bytes may be gone
    DELETED = "deleted"  # bytes and wrapped key gone; the row stays as the record of it


LIVE_STATES = frozenset({ObjectState.WRITING, ObjectState.FINISHED, ObjectState.INCOMPLETE})


class ObjectKind(enum.StrEnum):
    RECORDING = "recording"
    TRANSCRIPT = "transcript"


class NotFoundError(LookupError):
    """No such row for this tenant (another tenant's row looks the same: absent)."""


class StateError(ValueError):
    """The operation does not apply to the object in its current state."""


# --- tables ------------------------------------------------------------------


class ConsentRecord(Base):
    """One consent decision about one party of one call, with the audit link that proves it."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_tenant_call", "tenant_id", "call_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    call_id: Mapped[str] = mapped_column(String(64))
    party: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    #: Reason, key pressed, recognised words and confidence: never audio.
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    policy_rule: Mapped[str] = mapped_column(String(32))
    jurisdiction: Mapped[str | None] = mapped_column(String(16))
    policy_version: Mapped[str] = mapped_column(String(32))
    #: Seconds on the call's clock (the consent machine's time base).
    prompt_started_at: Mapped[float | None] = mapped_column(Float)
    decided_at: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    audit_seq: Mapped[int | None] = mapped_column(_SEQ)
    audit_hash: Mapped[str | None] = mapped_column(String(64))


class _StoredObject:
    """Columns shared by recordings and transcripts: where, how encrypted, how long kept."""

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    call_id: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(256), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    ciphertext_sha256: Mapped[str | None] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer)
    #: The wrapped data key when it is kept out of the file; NULL once shredded.
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    consent_record_id: Mapped[int] = mapped_column(ForeignKey("consent_records.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retain_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    legal_hold_reason: Mapped[str | None] = mapped_column(String(200))
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Stretches replaced by silence (paused, unconsented, dropped), per party.
    intervals: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The gateway node that wrote it (``node_name``): start-up recovery settles only its
    #: own node's ``writing`` rows, never another live node's. NULL: written before 0005.
    node: Mapped[str | None] = mapped_column(String(64))


class Recording(_StoredObject, Base):
    """A two-channel call recording in an encrypted container."""

    __tablename__ = "recordings"
    __table_args__ = (
        Index("ix_recordings_tenant_call", "tenant_id", "call_id"),
        Index("ix_recordings_tenant_retain", "tenant_id", "retain_until"),
    )

    channels: Mapped[int] = mapped_column(Integer)
    sample_rate: Mapped[int] = mapped_column(Integer)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    dropped_frames: Mapped[int] = mapped_column(Integer, default=0)


class Transcript(_StoredObject, Base):
    """One party's transcript of a call in an encrypted container."""

    __tablename__ = "transcripts"
    __table_args__ = (
        Index("ix_transcripts_tenant_call", "tenant_id", "call_id"),
        Index("ix_transcripts_tenant_retain", "tenant_id", "retain_until"),
    )

    party: Mapped[str] = mapped_column(String(32))
    language: Mapped[str | None] = mapped_column(String(16))
    segments: Mapped[int | None] = mapped_column(Integer)


class ProcessingRecordRow(Base):
    """One use of a speech provider: who processed what, where, for what (DESIGN §4.2)."""

    __tablename__ = "processing_records"
    __table_args__ = (
        Index("ix_processing_records_tenant_call", "tenant_id", "call_id"),
        Index("ix_processing_records_tenant_started", "tenant_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    call_id: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    subprocessor: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    locations: Mapped[list[str]] = mapped_column(JSON)
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    characters: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16))
    error_status: Mapped[int | None] = mapped_column(Integer)
    # Added by 0004 (voicegw.store.processing): whose audio, and the rule it went out on.
    party: Mapped[str | None] = mapped_column(String(32))
    basis: Mapped[str | None] = mapped_column(String(48))


StoredObject = Recording | Transcript
_MODELS: dict[ObjectKind, type[Recording] | type[Transcript]] = {
    ObjectKind.RECORDING: Recording,
    ObjectKind.TRANSCRIPT: Transcript,
}


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime: SQLite hands timestamps back naive (they are stored as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def kind_of(row: StoredObject) -> ObjectKind:
    return ObjectKind.RECORDING if isinstance(row, Recording) else ObjectKind.TRANSCRIPT


def target_of(row: StoredObject) -> str:
    """Audit target naming a stored object."""
    return f"tenant/{row.tenant_id}/{kind_of(row).value}s/{row.id}"


# --- consent records -----------------------------------------------------------


@dataclass(frozen=True)
class NewConsentRecord:
    """A consent decision in plain values (the store does not import the policy layer)."""

    call_id: str
    party: str
    role: str
    decision: str
    method: str
    evidence: dict[str, Any]
    prompt_sha256: str | None
    prompt_version: str | None
    mode: str
    policy_rule: str
    jurisdiction: str | None
    policy_version: str
    prompt_started_at: float | None
    decided_at: float


async def add_consent_record(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    record: NewConsentRecord,
    now: datetime,
) -> ConsentRecord:
    """Store a decision and audit it in the caller's transaction; the row keeps the audit link."""
    row = ConsentRecord(
        tenant_id=tenant_id,
        call_id=record.call_id,
        party=record.party,
        role=record.role,
        decision=record.decision,
        method=record.method,
        evidence=dict(record.evidence),
        prompt_sha256=record.prompt_sha256,
        prompt_version=record.prompt_version,
        mode=record.mode,
        policy_rule=record.policy_rule,
        jurisdiction=record.jurisdiction,
        policy_version=record.policy_version,
        prompt_started_at=record.prompt_started_at,
        decided_at=record.decided_at,
        recorded_at=now,
    )
    session.add(row)
    await session.flush()
    event = await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="consent.decision",
        target=f"tenant/{tenant_id}/calls/{record.call_id}/consent/{row.id}",
        details={
            "party": record.party,
            "role": record.role,
            "decision": record.decision,
            "method": record.method,
            "evidence": record.evidence,
            "prompt_sha256": record.prompt_sha256,
            "prompt_version": record.prompt_version,
            "mode": record.mode,
            "rule": record.policy_rule,
            "jurisdiction": record.jurisdiction,
            "policy_version": record.policy_version,
        },
    )
    row.audit_seq = event.seq
    row.audit_hash = event.hash
    await session.flush()
    return row


async def get_consent_record(
    session: AsyncSession, tenant_id: str, record_id: int
) -> ConsentRecord | None:
    query = select(ConsentRecord).where(
        ConsentRecord.tenant_id == tenant_id, ConsentRecord.id == record_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def audited_consent_record(
    session: AsyncSession, tenant_id: str, record_id: int
) -> ConsentRecord | None:
    """The record only if its audit event exists in the chain with the hash the row names."""
    row = await get_consent_record(session, tenant_id, record_id)
    if row is None or row.audit_seq is None or row.audit_hash is None:
        return None
    event = await session.get(AuditEvent, row.audit_seq)
    if event is None or event.hash != row.audit_hash or event.tenant_id != tenant_id:
        return None
    if event.action != "consent.decision" or not event.target.endswith(f"/consent/{row.id}"):
        return None
    return row


async def list_consent_records(
    session: AsyncSession, tenant_id: str, call_id: str
) -> list[ConsentRecord]:
    query = (
        select(ConsentRecord)
        .where(ConsentRecord.tenant_id == tenant_id, ConsentRecord.call_id == call_id)
        .order_by(ConsentRecord.id)
    )
    return list((await session.execute(query)).scalars())


# --- recordings and transcripts --------------------------------------------------


async def add_recording(session: AsyncSession, row: Recording) -> Recording:
    """Insert a recording row (state ``writing``) before its first byte is stored."""
    session.add(row)
    await session.flush()
    return row


async def add_transcript(session: AsyncSession, row: Transcript) -> Transcript:
    session.add(row)
    await session.flush()
    return row


async def get_object(
    session: AsyncSession, kind: ObjectKind, tenant_id: str, object_id: str
) -> StoredObject | None:
    model = _MODELS[kind]
    query = select(model).where(model.tenant_id == tenant_id, model.id == object_id)
    return cast(StoredObject | None, (await session.execute(query)).scalar_one_or_none())


async def get_recording(
    session: AsyncSession, tenant_id: str, recording_id: str
) -> Recording | None:
    query = select(Recording).where(Recording.tenant_id == tenant_id, Recording.id == recording_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_recordings(
    session: AsyncSession,
    tenant_id: str,
    *,
    call_id: str | None = None,
    include_deleted: bool = False,
) -> list[Recording]:
    query = select(Recording).where(Recording.tenant_id == tenant_id)
    if call_id is not None:
        query = query.where(Recording.call_id == call_id)
    if not include_deleted:
        query = query.where(Recording.state != ObjectState.DELETED.value)
    return list(
        (await session.execute(query.order_by(Recording.created_at, Recording.id))).scalars()
    )


async def list_transcripts(
    session: AsyncSession,
    tenant_id: str,
    *,
    call_id: str | None = None,
    include_deleted: bool = False,
) -> list[Transcript]:
    query = select(Transcript).where(Transcript.tenant_id == tenant_id)
    if call_id is not None:
        query = query.where(Transcript.call_id == call_id)
    if not include_deleted:
        query = query.where(Transcript.state != ObjectState.DELETED.value)
    return list(
        (await session.execute(query.order_by(Transcript.created_at, Transcript.id))).scalars()
    )


async def writing_objects(
    session: AsyncSession, kind: ObjectKind, tenant_id: str, *, node: str
) -> list[StoredObject]:
    """``node``'s objects still marked ``writing``: at its start-up, the ones a crash
    interrupted (another node's are its own business: they may be live)."""
    model = _MODELS[kind]
    query = (
        select(model)
        .where(
            model.tenant_id == tenant_id,
            model.state == ObjectState.WRITING.value,
            model.node == node,
        )
        .order_by(model.id)
    )
    return cast(list[StoredObject], list((await session.execute(query)).scalars()))


async def due_for_deletion(
    session: AsyncSession, kind: ObjectKind, tenant_id: str, now: datetime
) -> list[StoredObject]:
    """Expired and not on hold, plus deletions a previous run began but did not finish.

    Objects still being written are left alone even when expired: their
    writer (or crash recovery) settles them first.
    """
    model = _MODELS[kind]
    now = as_utc(now)  # SQLite compares the stored text: both sides must be UTC
    expired = (
        (model.retain_until < now)
        & (model.legal_hold.is_(False))
        & model.state.in_([ObjectState.FINISHED.value, ObjectState.INCOMPLETE.value])
    )
    unfinished = model.state == ObjectState.DELETING.value
    query = (
        select(model)
        .where(model.tenant_id == tenant_id, expired | unfinished)
        .order_by(model.retain_until, model.id)
    )
    return cast(list[StoredObject], list((await session.execute(query)).scalars()))


async def set_legal_hold(
    session: AsyncSession,
    *,
    actor: str,
    kind: ObjectKind,
    tenant_id: str,
    object_id: str,
    hold: bool,
    reason: str | None = None,
) -> StoredObject:
    """Place or release a legal hold (audited). Objects being deleted cannot be held."""
    row = await get_object(session, kind, tenant_id, object_id)
    if row is None:
        raise NotFoundError(f"no {kind.value} {object_id}")
    if ObjectState(row.state) not in LIVE_STATES:
        raise StateError(f"{kind.value} is {row.state}: nothing left to hold")
    row.legal_hold = hold
    row.legal_hold_reason = reason if hold else None
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="legal_hold.set" if hold else "legal_hold.release",
        target=target_of(row),
        details={"reason": reason},
    )
    await session.flush()
    return row


# --- processing records --------------------------------------------------------------


async def add_processing_record(
    session: AsyncSession, tenant_id: str, row: ProcessingRecordRow
) -> ProcessingRecordRow:
    if row.tenant_id != tenant_id:
        raise ValueError("processing record belongs to another tenant")
    session.add(row)
    await session.flush()
    return row


async def list_processing_records(
    session: AsyncSession, tenant_id: str, call_id: str | None = None
) -> list[ProcessingRecordRow]:
    query = select(ProcessingRecordRow).where(ProcessingRecordRow.tenant_id == tenant_id)
    if call_id is not None:
        query = query.where(ProcessingRecordRow.call_id == call_id)
    return list((await session.execute(query.order_by(ProcessingRecordRow.id))).scalars())
