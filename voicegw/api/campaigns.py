"""Outbound campaigns (admin API): create, list, change, and place a campaign's calls.

Campaigns are tenant configuration: tenant admins and the operator manage them,
and every change is audited. The campaign scheduler places calls with the same
roles (``POST …/campaigns/{campaign_id}/calls``): the call goes out through the
campaign's trunk and, once answered, takes the path of a call to the tenant's
numbers (consent flow with the campaign's recording-mode override, then the
agent queue). The answer is 202 with the call's status; how it ended (the
trunk's or the callee's final status when it was not answered) is on
``GET …/calls/{call_id}``. A disabled campaign places nothing (409), nor does a
campaign whose trunk this node cannot dial out through (409, field ``trunk``).
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from aiohttp import web
from pydantic import Field

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import SESSIONS, SIP_DOMAIN
from voicegw.api.errors import ApiError, not_found, parse_body
from voicegw.api.schemas import RequestBody
from voicegw.calls.campaign_calls import CampaignDialer, CampaignTarget, NoTrunk
from voicegw.store import campaigns as store
from voicegw.store import tenants
from voicegw.store.models import Campaign
from voicegw.tenant_settings import RecordingMode

__all__ = [
    "CAMPAIGN_DIALER",
    "CampaignCallCreate",
    "CampaignCreate",
    "CampaignPatch",
    "campaign_view",
    "create_campaign",
    "get_call",
    "list_campaigns",
    "place_call",
    "update_campaign",
]

#: The node's campaign dialer (``voicegw serve`` sets it; without a call layer: 503).
CAMPAIGN_DIALER: web.AppKey[CampaignDialer] = web.AppKey("campaign_dialer", CampaignDialer)

_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"
_TRUNK = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CampaignCreate(RequestBody):
    id: str = Field(pattern=_ID, description="The campaign's id within the tenant (slug)")
    name: str = Field(min_length=1, max_length=200)
    trunk: str = Field(pattern=_TRUNK, description="Configured trunk its calls go out through")
    recording_mode: RecordingMode | None = Field(
        default=None, description="Overrides the tenant's recording mode for its calls"
    )
    enabled: bool = True


class CampaignPatch(RequestBody):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    trunk: str | None = Field(default=None, pattern=_TRUNK)
    recording_mode: RecordingMode | None = Field(
        default=None, description="null: the tenant's default applies again"
    )
    enabled: bool | None = None


class CampaignCallCreate(RequestBody):
    to: str = Field(min_length=3, max_length=32, description="Callee, E.164 (+<country><number>)")


def campaign_view(row: Campaign) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "trunk": row.trunk,
        "recording_mode": row.recording_mode,
        "enabled": row.enabled,
        "created_at": row.created_at.isoformat(),
    }


def _campaign_id(request: web.Request) -> str:
    return request.match_info["campaign_id"]


async def list_campaigns(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        rows = await store.list_campaigns(session, tenant.id)
        return web.json_response({"campaigns": [campaign_view(r) for r in rows]})


async def create_campaign(request: web.Request) -> web.Response:
    body = await parse_body(request, CampaignCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            row = await store.create_campaign(
                session,
                actor=principal(request).actor,
                tenant_id=tenant.id,
                campaign_id=body.id,
                name=body.name,
                trunk=body.trunk,
                recording_mode=body.recording_mode,
                enabled=body.enabled,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc)) from None
        except tenants.ConflictError as exc:
            raise ApiError(409, "conflict", str(exc), "id") from None
        return web.json_response(campaign_view(row), status=201)


async def update_campaign(request: web.Request) -> web.Response:
    body = await parse_body(request, CampaignPatch)
    sent = body.model_fields_set
    for name in ("name", "trunk", "enabled"):
        if name in sent and getattr(body, name) is None:
            raise ApiError(400, "invalid_field", f"{name} may not be null", name)
    change = store.CampaignChange(
        name=body.name,
        trunk=body.trunk,
        enabled=body.enabled,
        recording_mode=body.recording_mode,
        clear_mode="recording_mode" in sent and body.recording_mode is None,
    )
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        row = await store.get_campaign(session, tenant.id, _campaign_id(request))
        if row is None:
            raise not_found(f"campaign {_campaign_id(request)}")
        row = await store.update_campaign(
            session, actor=principal(request).actor, campaign=row, change=change
        )
        return web.json_response(campaign_view(row))


def _e164(text: str) -> str:
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise ApiError(
            400, "invalid_field", "to: not a number in E.164 format (+<country><number>)", "to"
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise ApiError(400, "invalid_field", "to: not a valid number for its country", "to")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _dialer(request: web.Request) -> CampaignDialer:
    dialer = request.app.get(CAMPAIGN_DIALER)
    if dialer is None:
        raise ApiError(503, "unavailable", "this node places no calls (no SIP call layer)")
    return dialer


async def place_call(request: web.Request) -> web.Response:
    body = await parse_body(request, CampaignCallCreate)
    number = _e164(body.to)
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, ADMINS)
        row = await store.get_campaign(session, tenant.id, _campaign_id(request))
        if row is None:
            raise not_found(f"campaign {_campaign_id(request)}")
        if not row.enabled:
            raise ApiError(409, "conflict", f"campaign {row.id} is disabled", "enabled")
        numbers = await tenants.list_numbers(session, tenant.id)
    # Our caller ID: the tenant's first number (a callee may call back), else the tenant.
    user = numbers[0].e164 if numbers else tenant.id
    target = CampaignTarget(
        tenant_id=tenant.id,
        campaign_id=row.id,
        trunk=row.trunk,
        caller=f"sip:{user}@{request.app[SIP_DOMAIN]}",
    )
    try:
        status = await _dialer(request).start(target, number)
    except NoTrunk:
        raise ApiError(
            409,
            "conflict",
            f"trunk {row.trunk} is not one of the tenant's trunks that place calls on this node",
            "trunk",
        ) from None
    return web.json_response(status.as_dict(), status=202)


async def get_call(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, ADMINS)
    call_id = request.match_info["call_id"]
    found = await _dialer(request).lookup(tenant.id, call_id)
    if found is None or found.campaign_id != _campaign_id(request):
        raise not_found(f"call {call_id}")
    return web.json_response(found.as_dict())
