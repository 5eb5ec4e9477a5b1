"""Recording and transcript access: metadata, audited decrypting export, verification, holds.

The checks, the decryption and the audit event of an export, and verification,
live in :mod:`voicegw.recording.export` (the CLI uses them too); this module
scopes them to the token's tenant and streams: decrypted chunk by chunk in a
worker thread, never whole in memory and never to disk.

A problem found after the headers went out (the file changed between the
check and the read, or the row's digest was altered along with the file)
cannot become a JSON error any more: the connection is closed short of the
announced ``Content-Length``, so every HTTP client reports a cut body rather
than a complete-looking file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import RECORDINGS, SESSIONS, RecordingVault
from voicegw.api.errors import ApiError, not_found, parse_body
from voicegw.api.schemas import RequestBody
from voicegw.recording.errors import ContainerError
from voicegw.recording.export import (
    Export,
    ExportRefused,
    audit_export,
    check_stored,
    open_export,
    preamble_of,
)
from voicegw.store import recordings as store

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


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
            await audit_export(session, actor=principal(request).actor, row=row, export=export)
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


class HoldBody(RequestBody):
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
