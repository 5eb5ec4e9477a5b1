"""Turns policy-layer values (consent decisions, gate intervals, processing records) into rows.

The store does not import the policy layer (they are siblings, DESIGN §3), so
the translation lives here, one level up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.consent.gate import SuppressedInterval
from voicegw.consent.records import ConsentDecision
from voicegw.privacy.processing import ProcessingRecord
from voicegw.recording.container import inspect
from voicegw.recording.errors import (
    ContainerError,
    RecordingError,
    TruncatedError,
    TruncatedOrTamperedError,
)
from voicegw.recording.keys import KeyUnwrapper, WrappedKey
from voicegw.recording.storage import StorageBackend
from voicegw.store import recordings as store
from voicegw.store.processing import processing_row

#: Format label of a recording: container v1 holding interleaved signed 16-bit little-endian PCM.
RECORDING_FORMAT = "vgr1/pcm_s16le"
#: Format label of a transcript: container v1 holding UTF-8 JSON lines.
TRANSCRIPT_FORMAT = "vgr1/jsonl"


def consent_record_values(call_id: str, decision: ConsentDecision) -> store.NewConsentRecord:
    """The row values of one consent decision."""
    evidence = {k: v for k, v in asdict(decision.evidence).items() if v is not None}
    policy = decision.policy
    return store.NewConsentRecord(
        call_id=call_id,
        party=decision.party,
        role=decision.role.value,
        decision=decision.decision.value,
        method=decision.method.value,
        evidence=evidence,
        prompt_sha256=decision.prompt.sha256 if decision.prompt else None,
        prompt_version=decision.prompt.version if decision.prompt else None,
        mode=policy.mode.value,
        policy_rule=policy.rule.value,
        jurisdiction=policy.jurisdiction,
        policy_version=policy.policy_version,
        prompt_started_at=decision.prompt_started_at,
        decided_at=decision.decided_at,
    )


async def persist_consent_decision(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    call_id: str,
    decision: ConsentDecision,
    now: datetime | None = None,
) -> store.ConsentRecord:
    """Store and audit a decision in the caller's transaction (commit before recording)."""
    return await store.add_consent_record(
        session,
        actor=actor,
        tenant_id=tenant_id,
        record=consent_record_values(call_id, decision),
        now=now or datetime.now(UTC),
    )


def interval_values(
    intervals: Iterable[SuppressedInterval], *, offset_samples: int = 0
) -> list[dict[str, Any]]:
    """Gate intervals as JSON, in samples of the recording (the call position minus ``offset``)."""
    out: list[dict[str, Any]] = []
    for interval in intervals:
        start = max(interval.start_sample - offset_samples, 0)
        end = interval.end_sample - offset_samples
        if end <= 0:
            continue  # entirely before the recording began
        out.append(
            {
                "party": interval.party,
                "reason": interval.reason,
                "start_sample": start,
                "end_sample": end,
            }
        )
    return out


def processing_record_row(
    record: ProcessingRecord, *, to_wall: Callable[[float], datetime]
) -> store.ProcessingRecordRow:
    """A processing record as a row; ``to_wall`` maps the record's clock onto wall time."""
    return processing_row(record, to_wall=to_wall)


def wrapped_key_of(row: store.StoredObject) -> WrappedKey | None:
    """The detached wrapped key a row holds (None: kept in the file header, or shredded)."""
    if row.wrapped_key is None:
        return None
    return WrappedKey(row.key_id, row.key_version, row.wrapped_key)


def open_stored(storage: StorageBackend, row: store.StoredObject) -> BinaryIO:
    """Open an object's ciphertext: the finished object, or what a crash left behind."""
    if row.state == store.ObjectState.INCOMPLETE.value and not storage.exists(row.storage_key):
        return storage.open_incomplete(row.storage_key)
    return storage.open_read(row.storage_key)


#: How an ``incomplete`` recording may end, by the error its scan stops with (subclass first).
EXPECTED_TAILS: tuple[tuple[type[TruncatedError], str], ...] = (
    (TruncatedOrTamperedError, "torn"),  # a chunk cut mid-write after the last whole one
    (TruncatedError, "unsealed"),  # ends on a chunk boundary, without the final chunk
)


@dataclass(frozen=True)
class Verification:
    """Whether stored bytes are what the row says and the container authenticates."""

    matches_metadata: bool  # size and ciphertext SHA-256 equal the row's
    authenticates: bool | None  # None: no key to check with (public-key mode)
    complete: bool | None
    problem: str | None  # error type only
    readable_chunks: int | None = None  # chunks that authenticate; None: not decrypted
    #: An ``incomplete`` recording's expected end (:data:`EXPECTED_TAILS`), else None.
    tail: str | None = None


def expected_tail(row: store.StoredObject, problem: ContainerError | None) -> str | None:
    """The tail a crash explains: only for a row marked ``incomplete``, only at the end.

    A scan stops at the first chunk that fails, so a truncation error means every
    chunk before it authenticated; on a ``complete`` row the same bytes are damage.
    """
    if row.state != store.ObjectState.INCOMPLETE.value or problem is None:
        return None
    return next((tail for kind, tail in EXPECTED_TAILS if isinstance(problem, kind)), None)


def verify_stored(
    storage: StorageBackend, row: store.StoredObject, keys: KeyUnwrapper | None
) -> Verification:
    """Check an object against its row and (with ``keys``) its authentication (blocking I/O)."""
    try:
        handle = open_stored(storage, row)
    except RecordingError as exc:
        return Verification(False, None, None, type(exc).__name__)
    with handle:
        sha, size = hashlib.sha256(), 0
        while block := handle.read(1 << 20):
            sha.update(block)
            size += len(block)
        matches = size == row.size_bytes and sha.hexdigest() == row.ciphertext_sha256
        if keys is None:
            return Verification(matches, None, None, None)
        handle.seek(0)
        try:
            seen = inspect(handle, keys, wrapped_key=wrapped_key_of(row))
        except RecordingError as exc:
            return Verification(matches, False, None, type(exc).__name__)
    tail = expected_tail(row, seen.problem)
    if tail is not None:
        return Verification(matches, True, False, None, seen.readable_chunks, tail)
    problem = type(seen.problem).__name__ if seen.problem is not None else None
    return Verification(matches, seen.problem is None, seen.complete, problem, seen.readable_chunks)
