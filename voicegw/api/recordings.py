"""Recording and transcript access: metadata, audited decrypting export, verification, holds.

An export is checked before its first byte leaves: the row's state, the key
(public-key mode cannot decrypt here), the header's authentication and the
stored ciphertext against the size and SHA-256 the recorder wrote. Only then
is it audited (``recording.export``, committed) and streamed: decrypted chunk
by chunk in a worker thread, never whole in memory and never to disk.

A problem found after the headers went out (the file changed between the
check and the read, or the row's digest was altered along with the file)
cannot become a JSON error any more: the connection is closed short of the
announced ``Content-Length``, so every HTTP client reports a cut body rather
than a complete-looking file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

from aiohttp import web
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import RECORDINGS, SESSIONS, RecordingVault
from voicegw.api.errors import ApiError, not_found, parse_body
from voicegw.api.schemas import _Body
from voicegw.recording.container import TAG_BYTES, ContainerReader, inspect, read_header
from voicegw.recording.errors import (
    ContainerError,
    KeyProviderError,
    KeyShreddedError,
    ObjectNotFoundError,
    RecordingError,
    TamperedError,
    TruncatedError,
    TruncatedOrTamperedError,
    UnknownKeyError,
    UnwrapNotPermittedError,
)
from voicegw.recording.keys import KeyUnwrapper
from voicegw.recording.metadata import (
    RECORDING_FORMAT,
    TRANSCRIPT_FORMAT,
    Verification,
    open_stored,
    verify_stored,
    wrapped_key_of,
)
from voicegw.recording.storage import StorageBackend
from voicegw.store import audit
from voicegw.store import recordings as store

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SAMPLE_BYTES = 2  # RECORDING_FORMAT is signed 16-bit PCM
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_MAX_WAV_DATA = 0xFFFFFFFF - (_WAV_HEADER.size - 8)  # RIFF sizes are 32-bit


# --- refusals ------------------------------------------------------------------------


class ExportRefused(Exception):
    """An object cannot be exported; ``problem`` names the underlying error type, if any."""

    def __init__(self, status: int, code: str, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problem = problem


#: Why reading failed -> (status, code, message). First match wins: subclasses come first.
REFUSALS: tuple[tuple[type[RecordingError], int, str, str], ...] = (
    (
        UnwrapNotPermittedError,
        409,
        "public_key_mode",
        "this tenant's {kind}s are encrypted to the tenant's own public key; the gateway "
        "holds no private key and cannot decrypt them: fetch the ciphertext and decrypt "
        "it offline with the tenant's private key",
    ),
    (KeyShreddedError, 410, "key_shredded", "the key of this {kind} was shredded: it is gone"),
    (UnknownKeyError, 409, "key_unavailable", "the key this {kind} was encrypted with is unknown"),
    (KeyProviderError, 409, "key_unavailable", "the key of this {kind} cannot be unwrapped"),
    (ObjectNotFoundError, 409, "object_missing", "storage holds no bytes for this {kind}"),
    (
        TruncatedOrTamperedError,
        422,
        "damaged",
        "the stored {kind} is cut short or modified",
    ),
    (TruncatedError, 422, "truncated", "the stored {kind} is cut short"),
    (TamperedError, 422, "tampered", "the stored {kind} was modified"),
    (ContainerError, 422, "damaged", "the stored {kind} is not a readable container"),
)

#: Row states an export cannot start from -> (status, code, message).
STATE_REFUSALS: dict[store.ObjectState, tuple[int, str, str]] = {
    store.ObjectState.WRITING: (409, "in_progress", "the {kind} is still being written"),
    store.ObjectState.DELETING: (410, "deleted", "the {kind} is being deleted by retention"),
    store.ObjectState.DELETED: (410, "deleted", "the {kind} was deleted by retention"),
}

#: Stored format of each kind: an object in any other format is not exported by this code.
FORMATS: dict[store.ObjectKind, str] = {
    store.ObjectKind.RECORDING: RECORDING_FORMAT,
    store.ObjectKind.TRANSCRIPT: TRANSCRIPT_FORMAT,
}


def refusal(exc: RecordingError, kind: store.ObjectKind) -> ExportRefused:
    """The refusal for a recording-layer error (its message names no key or plaintext)."""
    problem = type(exc).__name__
    for error_type, status, code, message in REFUSALS:
        if isinstance(exc, error_type):
            detail = f" ({problem}: {exc})" if isinstance(exc, ContainerError) else f" ({problem})"
            return ExportRefused(status, code, message.format(kind=kind.value) + detail, problem)
    return ExportRefused(409, "unreadable", f"the {kind.value} cannot be read ({problem})", problem)


def _check_state(row: store.StoredObject) -> None:
    kind = store.kind_of(row)
    rule = STATE_REFUSALS.get(store.ObjectState(row.state))
    if rule is not None:
        status, code, message = rule
        raise ExportRefused(status, code, message.format(kind=kind.value))
    if row.format != FORMATS[kind]:
        raise ExportRefused(409, "unsupported_format", f"{kind.value} format {row.format!r}")


# --- export core (blocking: run in a worker thread) ------------------------------------


def _digest(handle: BinaryIO) -> tuple[int, str]:
    handle.seek(0)
    sha, size = hashlib.sha256(), 0
    while block := handle.read(1 << 20):
        sha.update(block)
        size += len(block)
    return size, sha.hexdigest()


def plaintext_length(size: int, header_length: int, chunk_size: int) -> int:
    """Plaintext bytes of a complete container of ``size`` bytes (the final chunk may be empty)."""
    body = size - header_length
    chunks = max(1, math.ceil(body / (chunk_size + TAG_BYTES)))
    return body - chunks * TAG_BYTES


class Export:
    """A checked, decrypting reader over one stored object; :meth:`close` when done."""

    def __init__(
        self, handle: BinaryIO, reader: ContainerReader, plaintext_bytes: int, complete: bool
    ) -> None:
        self._handle = handle
        self._reader = reader
        self.plaintext_bytes = plaintext_bytes
        #: False: an incomplete (crash-recovered) object; its readable prefix is exported.
        self.complete = complete

    def __repr__(self) -> str:
        return f"Export(plaintext_bytes={self.plaintext_bytes}, complete={self.complete})"

    def chunks(self) -> Generator[bytes]:
        """Authenticated plaintext blocks totalling :attr:`plaintext_bytes`; raises on damage."""
        remaining = self.plaintext_bytes
        for chunk in self._reader.chunks():
            if len(chunk.plaintext) > remaining:
                raise TamperedError(
                    "more plaintext than the stored size implies", chunk=chunk.index
                )
            remaining -= len(chunk.plaintext)
            if chunk.plaintext:
                yield chunk.plaintext
            # An incomplete object has no final chunk: stop at the last readable byte.
            if remaining == 0 and not self.complete:
                return
        if remaining:
            raise TruncatedError("file ends before the stored size implies", chunk=None)

    def close(self) -> None:
        self._handle.close()


def open_export(storage: StorageBackend, keys: KeyUnwrapper, row: store.StoredObject) -> Export:
    """Check an object and open it for decryption (blocking I/O); raises ExportRefused."""
    _check_state(row)
    kind = store.kind_of(row)
    try:
        handle = open_stored(storage, row)
    except RecordingError as exc:
        raise refusal(exc, kind) from None
    try:
        wrapped = wrapped_key_of(row)
        reader = ContainerReader(handle, keys, wrapped_key=wrapped)
        size, sha = _digest(handle)
        complete = row.state == store.ObjectState.FINISHED.value
        if (size, sha) != (row.size_bytes, row.ciphertext_sha256) or not complete:
            # Name the damage (a digest mismatch alone says nothing about what changed);
            # an incomplete object needs the scan anyway for its readable length.
            handle.seek(0)
            seen = inspect(handle, keys, wrapped_key=wrapped)
            if seen.problem is not None and (
                complete or not isinstance(seen.problem, TruncatedError)
            ):
                raise seen.problem
            if (size, sha) != (row.size_bytes, row.ciphertext_sha256):
                raise ExportRefused(
                    422,
                    "metadata_mismatch",
                    f"the stored {kind.value} authenticates but differs from the size and "
                    "SHA-256 recorded when it was written",
                )
            length = seen.plaintext_bytes
        else:
            length = plaintext_length(size, reader.header.length, reader.header.chunk_size)
        handle.seek(reader.header.length)
    except RecordingError as exc:
        handle.close()
        raise refusal(exc, kind) from None
    except BaseException:
        handle.close()
        raise
    return Export(handle, reader, length, complete)


def wav_header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    """A 44-byte PCM WAV header for ``data_bytes`` of signed 16-bit interleaved samples."""
    if data_bytes > _MAX_WAV_DATA:
        raise ExportRefused(422, "too_long", "recording exceeds the 4 GiB WAV size limit")
    block = channels * SAMPLE_BYTES
    return _WAV_HEADER.pack(
        b"RIFF",
        _WAV_HEADER.size - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        SAMPLE_BYTES * 8,
        b"data",
        data_bytes,
    )


def preamble_of(row: store.StoredObject, export: Export) -> tuple[bytes, str]:
    """What precedes the plaintext, and the content type of the whole."""
    if isinstance(row, store.Recording):
        return wav_header(row.channels, row.sample_rate, export.plaintext_bytes), "audio/wav"
    return b"", "application/x-ndjson"


@dataclass(frozen=True)
class CheckResult:
    """An integrity check of one stored object, as the API and CLI report it."""

    ok: bool
    matches_metadata: bool
    authenticates: bool | None  # None: public-key mode, the gateway cannot decrypt
    complete: bool | None
    chunks: int | None  # chunks stored (from the header's chunk size); None: unreadable header
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "matches_metadata": self.matches_metadata,
            "authenticates": self.authenticates,
            "complete": self.complete,
            "chunks": self.chunks,
            "problem": self.problem,
        }


def _stored_chunks(storage: StorageBackend, row: store.StoredObject) -> int | None:
    try:
        with open_stored(storage, row) as handle:
            header = read_header(handle)
            handle.seek(0, 2)
            body = handle.tell() - header.length
    except RecordingError:
        return None
    return math.ceil(body / (header.chunk_size + TAG_BYTES)) if body > 0 else 0


def check_stored(
    storage: StorageBackend, keys: KeyUnwrapper, row: store.StoredObject
) -> CheckResult:
    """Verify an object against its row and its authentication (blocking I/O)."""
    seen: Verification = verify_stored(storage, row, keys)
    if seen.problem == UnwrapNotPermittedError.__name__:
        # Public-key mode: only the digest against the row can be checked here.
        seen = verify_stored(storage, row, None)
    ok = seen.matches_metadata and seen.authenticates is not False and seen.problem is None
    return CheckResult(
        ok=ok,
        matches_metadata=seen.matches_metadata,
        authenticates=seen.authenticates,
        complete=seen.complete,
        chunks=_stored_chunks(storage, row),
        problem=seen.problem,
    )


# --- views -------------------------------------------------------------------------


def _when(value: Any) -> str | None:
    return store.as_utc(value).isoformat() if value is not None else None


def consent_view(record: store.ConsentRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "id": record.id,
        "party": record.party,
        "decision": record.decision,
        "method": record.method,
        "audit_seq": record.audit_seq,
        "audit_hash": record.audit_hash,
    }


def object_view(row: store.StoredObject, consent: store.ConsentRecord | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "call_id": row.call_id,
        "region": row.region,
        "format": row.format,
        "state": row.state,
        "complete": row.complete,
        "size_bytes": row.size_bytes,
        "ciphertext_sha256": row.ciphertext_sha256,
        "key_id": row.key_id,
        "key_version": row.key_version,
        "created_at": _when(row.created_at),
        "finished_at": _when(row.finished_at),
        "retain_until": _when(row.retain_until),
        "legal_hold": row.legal_hold,
        "legal_hold_reason": row.legal_hold_reason,
        "deleted_at": _when(row.deleted_at),
        "intervals": row.intervals,
        "consent": consent_view(consent),
    }
    if isinstance(row, store.Recording):
        view |= {
            "channels": row.channels,
            "sample_rate": row.sample_rate,
            "duration_seconds": row.duration_seconds,
            "dropped_frames": row.dropped_frames,
        }
    else:
        view |= {"party": row.party, "language": row.language, "segments": row.segments}
    return view


async def consent_records(
    session: AsyncSession, tenant_id: str, rows: list[store.StoredObject]
) -> dict[int, store.ConsentRecord]:
    """The consent records the rows point at, in one query (tenant-filtered)."""
    ids = {row.consent_record_id for row in rows}
    if not ids:
        return {}
    query = select(store.ConsentRecord).where(
        store.ConsentRecord.tenant_id == tenant_id, store.ConsentRecord.id.in_(ids)
    )
    return {record.id: record for record in (await session.execute(query)).scalars()}


# --- handlers ----------------------------------------------------------------------


def _page_params(request: web.Request) -> tuple[int, str | None]:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_field", "limit must be an integer", "limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid_field", f"limit must be 1..{MAX_LIMIT}", "limit")
    return limit, request.query.get("after")


def _page(
    rows: list[store.StoredObject], limit: int, after: str | None
) -> list[store.StoredObject]:
    if after is not None:
        ids = [row.id for row in rows]
        if after not in ids:
            raise ApiError(400, "invalid_field", "after names no listed item", "after")
        rows = rows[ids.index(after) + 1 :]
    return rows[:limit]


async def _rows(
    session: AsyncSession, kind: store.ObjectKind, tenant_id: str, call_id: str | None
) -> list[store.StoredObject]:
    if kind is store.ObjectKind.RECORDING:
        return list(await store.list_recordings(session, tenant_id, call_id=call_id))
    return list(await store.list_transcripts(session, tenant_id, call_id=call_id))


async def _list(request: web.Request, kind: store.ObjectKind) -> web.Response:
    limit, after = _page_params(request)
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        found = await _rows(session, kind, tenant.id, request.query.get("call_id"))
        rows = _page(found, limit, after)
        consents = await consent_records(session, tenant.id, rows)
    more = bool(rows) and rows[-1].id != found[-1].id
    return web.json_response(
        {
            f"{kind.value}s": [object_view(r, consents.get(r.consent_record_id)) for r in rows],
            "next": rows[-1].id if more else None,
        }
    )


async def _row(
    request: web.Request, session: AsyncSession, kind: store.ObjectKind, roles: frozenset[str]
) -> store.StoredObject:
    tenant = await scoped_tenant(request, session, roles)
    object_id = request.match_info["object_id"]
    row = await store.get_object(session, kind, tenant.id, object_id)
    if row is None:
        raise not_found(f"{kind.value} {object_id}")
    return row


async def _show(request: web.Request, kind: store.ObjectKind) -> web.Response:
    async with request.app[SESSIONS]() as session:
        row = await _row(request, session, kind, READERS)
        consent = await store.get_consent_record(session, row.tenant_id, row.consent_record_id)
    return web.json_response(object_view(row, consent))


async def _open(vault: RecordingVault, row: store.StoredObject) -> Export:
    try:
        return await asyncio.to_thread(open_export, vault.storage, vault.keys, row)
    except ExportRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


async def _stream(
    request: web.Request, row: store.StoredObject, export: Export
) -> web.StreamResponse:
    """Send the preamble, then decrypted blocks as they come off the worker thread."""
    preamble, content_type = preamble_of(row, export)  # checked in _export: cannot refuse now
    extension = "wav" if isinstance(row, store.Recording) else "jsonl"
    response = web.StreamResponse(
        headers={
            "Content-Disposition": f'attachment; filename="{row.id}.{extension}"',
            "Cache-Control": "no-store",
            "X-Recording-Complete": "true" if export.complete else "false",
        }
    )
    response.content_type = content_type
    response.content_length = len(preamble) + export.plaintext_bytes
    blocks = export.chunks()
    try:
        await response.prepare(request)
        await response.write(preamble)
        while (block := await asyncio.to_thread(next, blocks, None)) is not None:
            await response.write(block)
    except ContainerError as exc:
        log.warning(
            "recording.export_aborted",
            extra={"tenant_id": row.tenant_id, "object_id": row.id, "problem": type(exc).__name__},
        )
        # Headers are gone: close short of Content-Length so the client sees a cut body.
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionResetError:
        # The client went away mid-download: nothing to answer, and not a server error.
        log.info("recording.export_disconnected", extra={"object_id": row.id})
        return response
    finally:
        # Closed without an await: a handler cancelled here (client gone, server stopping)
        # must not leak the handle. Closing a read-only file does not block.
        with contextlib.suppress(ValueError):  # still running in a worker if cancelled
            blocks.close()
        export.close()
    await response.write_eof()
    return response


async def _export(request: web.Request, kind: store.ObjectKind) -> web.StreamResponse:
    async with request.app[SESSIONS]() as session:
        row = await _row(request, session, kind, ADMINS)
    export = await _open(request.app[RECORDINGS], row)
    try:
        preamble_of(row, export)  # an export the format cannot carry is refused, not audited
        async with request.app[SESSIONS]() as session, session.begin():
            await audit.append(
                session,
                actor=principal(request).actor,
                tenant_id=row.tenant_id,
                action=f"{kind.value}.export",
                target=store.target_of(row),
                details={
                    "plaintext_bytes": export.plaintext_bytes,
                    "complete": export.complete,
                    "ciphertext_sha256": row.ciphertext_sha256,
                },
            )
    except ExportRefused as exc:
        export.close()
        raise ApiError(exc.status, exc.code, exc.message) from None
    except BaseException:
        export.close()
        raise
    return await _stream(request, row, export)


async def list_recordings(request: web.Request) -> web.Response:
    return await _list(request, store.ObjectKind.RECORDING)


async def get_recording(request: web.Request) -> web.Response:
    return await _show(request, store.ObjectKind.RECORDING)


async def recording_audio(request: web.Request) -> web.StreamResponse:
    return await _export(request, store.ObjectKind.RECORDING)


async def verify_recording(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        row = await _row(request, session, store.ObjectKind.RECORDING, ADMINS)
    vault = request.app[RECORDINGS]
    if store.ObjectState(row.state) not in store.LIVE_STATES:
        raise ApiError(410, "deleted", f"the recording is {row.state}: nothing left to verify")
    result = await asyncio.to_thread(check_stored, vault.storage, vault.keys, row)
    return web.json_response({"id": row.id, **result.to_json()})


class HoldBody(_Body):
    reason: str = Field(min_length=1, max_length=200, description="Why it must be kept")


async def _hold(request: web.Request, hold: bool) -> web.Response:
    reason = (await parse_body(request, HoldBody)).reason if hold else None
    async with request.app[SESSIONS]() as session, session.begin():
        row = await _row(request, session, store.ObjectKind.RECORDING, ADMINS)
        try:
            await store.set_legal_hold(
                session,
                actor=principal(request).actor,
                kind=store.ObjectKind.RECORDING,
                tenant_id=row.tenant_id,
                object_id=row.id,
                hold=hold,
                reason=reason,
            )
        except store.StateError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        consent = await store.get_consent_record(session, row.tenant_id, row.consent_record_id)
        return web.json_response(object_view(row, consent))


async def place_hold(request: web.Request) -> web.Response:
    return await _hold(request, True)


async def release_hold(request: web.Request) -> web.Response:
    return await _hold(request, False)


async def list_transcripts(request: web.Request) -> web.Response:
    return await _list(request, store.ObjectKind.TRANSCRIPT)


async def transcript_text(request: web.Request) -> web.StreamResponse:
    return await _export(request, store.ObjectKind.TRANSCRIPT)
