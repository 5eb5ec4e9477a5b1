"""SIP logins for a tenant's phones: created with a password, stored as digests only."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field
from sqlalchemy.exc import IntegrityError

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import SESSIONS, SIP_DOMAIN
from voicegw.api.errors import ApiError, not_found, parse_body
from voicegw.api.schemas import RequestBody
from voicegw.calls.sip_service import tenant_realm
from voicegw.store import sip_accounts
from voicegw.store.sip_accounts import CredentialRecord

#: Internet-facing SIP logins are brute-forced constantly; short passwords do not survive.
MIN_PASSWORD = 12


class SipUserCreate(RequestBody):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD, max_length=128)


def _view(record: CredentialRecord) -> dict[str, object]:
    return {
        "username": record.username,
        "realm": record.realm,
        "aor": f"sip:{record.username}@{record.realm}",
        "enabled": record.enabled,
    }


async def create_sip_user(request: web.Request) -> web.Response:
    body = await parse_body(request, SipUserCreate)
    async with request.app[SESSIONS]() as session:
        try:
            async with session.begin():
                tenant = await scoped_tenant(request, session, ADMINS)
                record = await sip_accounts.create_credential(
                    session,
                    actor=principal(request).actor,
                    tenant_id=tenant.id,
                    username=body.username,
                    realm=tenant_realm(tenant.id, request.app[SIP_DOMAIN]),
                    password=body.password,
                )
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc), "username") from None
        except IntegrityError:
            raise ApiError(409, "conflict", "that SIP username exists", "username") from None
    return web.json_response(_view(record), status=201)


async def list_sip_users(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        records = await sip_accounts.list_credentials(session, tenant.id)
    return web.json_response({"sip_users": [_view(r) for r in records]})


async def disable_sip_user(request: web.Request) -> web.Response:
    username = request.match_info["username"]
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        found = await sip_accounts.set_credential_enabled(
            session,
            actor=principal(request).actor,
            tenant_id=tenant.id,
            realm=tenant_realm(tenant.id, request.app[SIP_DOMAIN]),
            username=username,
            enabled=False,
        )
        if not found:
            raise not_found(f"SIP user {username}")
    return web.json_response({})
