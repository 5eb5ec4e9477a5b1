"""Admin API handlers: tenants, settings, numbers, agents, tokens, audit.

Authorisation order matters for isolation: a resource of another tenant is a
404 before any role check, so a token learns nothing about other tenants.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.api.context import PRINCIPAL, SESSIONS
from voicegw.api.errors import ApiError, from_validation, json_object, not_found, parse_body
from voicegw.api.schemas import AgentCreate, NumberCreate, TenantCreate, TokenCreate
from voicegw.api.views import agent_view, audit_view, number_view, tenant_view, token_view
from voicegw.store import audit, tenants, tokens
from voicegw.store.models import ApiToken, AuditEvent, Tenant
from voicegw.store.tokens import Principal

ADMINS = frozenset({"operator", "tenant_admin"})
READERS = frozenset({"operator", "tenant_admin", "supervisor"})


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def require_role(request: web.Request, allowed: frozenset[str]) -> Principal:
    who = principal(request)
    if who.role not in allowed:
        raise ApiError(403, "forbidden", f"role {who.role} may not do this")
    return who


async def scoped_tenant(
    request: web.Request, session: AsyncSession, allowed: frozenset[str]
) -> Tenant:
    who = principal(request)
    tenant_id = request.match_info["tenant_id"]
    tenant = (
        await tenants.get_tenant(session, tenant_id) if who.may_access_tenant(tenant_id) else None
    )
    if tenant is None:
        raise not_found(f"tenant {tenant_id}")
    require_role(request, allowed)
    return tenant


def _int_param(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise ApiError(400, "invalid_field", f"{name} must be an integer", name) from None


# -- tenants -----------------------------------------------------------------


async def create_tenant(request: web.Request) -> web.Response:
    who = require_role(request, frozenset({"operator"}))
    body = await parse_body(request, TenantCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        try:
            tenant = await tenants.create_tenant(
                session, actor=who.actor, tenant_id=body.id, name=body.name, settings=body.settings
            )
        except tenants.ConflictError as exc:
            raise ApiError(409, "conflict", str(exc), "id") from None
        return web.json_response(tenant_view(tenant), status=201)


async def list_tenants(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[SESSIONS]() as session:
        only = None if who.role == "operator" else who.tenant_id
        rows = await tenants.list_tenants(session, only=only)
        return web.json_response({"tenants": [tenant_view(t) for t in rows]})


async def get_tenant(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        return web.json_response(tenant_view(tenant))


async def get_settings(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        return web.json_response(tenant.settings)


async def patch_settings(request: web.Request) -> web.Response:
    patch = await json_object(request)
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            await tenants.update_settings(
                session, actor=principal(request).actor, tenant=tenant, patch=patch
            )
        except ValidationError as exc:
            raise from_validation(exc, "settings") from None
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc), "settings.region") from None
        return web.json_response(tenant.settings)


# -- numbers and agents ------------------------------------------------------


async def list_numbers(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        rows = await tenants.list_numbers(session, tenant.id)
        return web.json_response({"numbers": [number_view(n) for n in rows]})


async def add_number(request: web.Request) -> web.Response:
    body = await parse_body(request, NumberCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            row = await tenants.add_number(
                session,
                actor=principal(request).actor,
                tenant_id=tenant.id,
                number=body.number,
                label=body.label,
                recording_mode=body.recording_mode,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_field", f"number: {exc}", "number") from None
        except tenants.ConflictError as exc:
            raise ApiError(409, "conflict", str(exc), "number") from None
        return web.json_response(number_view(row), status=201)


async def remove_number(request: web.Request) -> web.Response:
    number_id = _int_param(request, "number_id")
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        if not await tenants.remove_number(
            session, actor=principal(request).actor, tenant_id=tenant.id, number_id=number_id
        ):
            raise not_found(f"number {number_id}")
        return web.json_response({}, status=200)


async def list_agents(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        rows = await tenants.list_agents(session, tenant.id)
        return web.json_response({"agents": [agent_view(a) for a in rows]})


async def add_agent(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            row = await tenants.add_agent(
                session,
                actor=principal(request).actor,
                tenant_id=tenant.id,
                username=body.username,
                display_name=body.display_name,
                skills=body.skills,
            )
        except tenants.ConflictError as exc:
            raise ApiError(409, "conflict", str(exc), "username") from None
        return web.json_response(agent_view(row), status=201)


# -- tokens ------------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    who = require_role(request, ADMINS)
    body = await parse_body(request, TokenCreate)
    if who.role == "tenant_admin":
        if body.tenant_id is None:
            body = body.model_copy(update={"tenant_id": who.tenant_id})
        if body.tenant_id != who.tenant_id:
            raise not_found(f"tenant {body.tenant_id}")
        if body.role == "operator":
            raise ApiError(403, "forbidden", "tenant admins cannot create operator tokens", "role")
    async with request.app[SESSIONS]() as session, session.begin():
        if body.tenant_id is not None and await tenants.get_tenant(session, body.tenant_id) is None:
            raise not_found(f"tenant {body.tenant_id}")
        if body.agent_id is not None and (
            body.tenant_id is None
            or await tenants.get_agent(session, body.tenant_id, body.agent_id) is None
        ):
            raise not_found(f"agent {body.agent_id}")
        try:
            row, secret = await tokens.create_token(
                session,
                role=body.role,
                tenant_id=body.tenant_id,
                agent_id=body.agent_id,
                label=body.label,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc), "role") from None
        await audit.append(
            session,
            actor=who.actor,
            tenant_id=row.tenant_id,
            action="token.create",
            target=f"token/{row.id}",
            details={"role": row.role, "agent_id": row.agent_id},
        )
        view: dict[str, Any] = token_view(row)
        view["token"] = secret
        return web.json_response(view, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    who = require_role(request, ADMINS)
    token_id = request.match_info["token_id"]
    async with request.app[SESSIONS]() as session, session.begin():
        row = await session.get(ApiToken, token_id)
        if row is None or (who.role != "operator" and row.tenant_id != who.tenant_id):
            raise not_found(f"token {token_id}")
        await tokens.revoke_token(session, token_id)
        await audit.append(
            session,
            actor=who.actor,
            tenant_id=row.tenant_id,
            action="token.revoke",
            target=f"token/{row.id}",
        )
        return web.json_response(token_view(row))


# -- audit -------------------------------------------------------------------


async def tenant_audit(request: web.Request) -> web.Response:
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise ApiError(400, "invalid_field", "limit and after must be integers", "limit") from None
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, ADMINS)
        query = (
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant.id, AuditEvent.seq > after)
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
        rows = (await session.execute(query)).scalars().all()
        return web.json_response({"events": [audit_view(e) for e in rows]})


async def verify_audit(request: web.Request) -> web.Response:
    require_role(request, frozenset({"operator"}))
    async with request.app[SESSIONS]() as session:
        result = await audit.verify(session)
        return web.json_response(
            {
                "ok": result.ok,
                "events": result.events,
                "first_bad_seq": result.first_bad_seq,
                "problem": result.problem,
            }
        )
