"""Processing records over the admin API: which vendor got which party's data, where, why.

The tenant's own evidence of invariant 2 (DESIGN §4): one row per provider use,
of one call or of a time range, paged by id. Amounts only — never audio or text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from voicegw.api.admin import ADMINS, scoped_tenant
from voicegw.api.context import SESSIONS
from voicegw.api.errors import ApiError
from voicegw.store.processing import find_processing_records
from voicegw.store.recordings import ProcessingRecordRow, as_utc

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_field", f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_field", f"{name} must be {low}..{high}", name)
    return value


def _instant(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ApiError(
            400,
            "invalid_field",
            f"{name} must be an ISO 8601 time with a UTC offset, e.g. 2026-11-23T19:00:00Z",
            name,
        )
    return value.astimezone(UTC)  # stored as UTC: compare like with like


def record_view(row: ProcessingRecordRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "call_id": row.call_id,
        "provider": row.provider,
        "subprocessor": row.subprocessor,
        "purpose": row.purpose,
        "party": row.party,
        "locations": list(row.locations),
        "basis": row.basis,
        "audio_seconds": row.audio_seconds,
        "characters": row.characters,
        "started_at": as_utc(row.started_at).isoformat(),
        "ended_at": as_utc(row.ended_at).isoformat(),
        "outcome": row.outcome,
        "error_status": row.error_status,
    }


async def list_processing_records(request: web.Request) -> web.Response:
    call_id = request.query.get("call_id")
    since, until = _instant(request, "since"), _instant(request, "until")
    if call_id is None and since is None:
        raise ApiError(
            400, "missing_field", "give call_id, or since (and optionally until)", "call_id"
        )
    if since is not None and until is not None and until <= since:
        raise ApiError(400, "invalid_field", "until must be later than since", "until")
    limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    assert limit is not None
    after = _int(request, "after", None, 0, 2**63 - 1)
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, ADMINS)
        rows = await find_processing_records(
            session,
            tenant.id,
            call_id=call_id,
            since=since,
            until=until,
            after=after,
            limit=limit + 1,  # one more tells whether there is a next page
        )
    page = rows[:limit]
    more = len(rows) > limit
    return web.json_response(
        {
            "processing_records": [record_view(r) for r in page],
            "next": page[-1].id if more else None,
        }
    )
