"""An agent's endpoint (a SIP phone or the softphone) and presence, set by the admin API.

``PUT .../agents/{id}/endpoint`` links the agent to one of the tenant's SIP
logins (``{"sip_user": "alice"}``): queued calls then ring that login's
registered phone, and the agent is available while it is registered.
``{"sip_user": null}`` returns the agent to the softphone. Stored, audited,
and used by the live queues at once.

``PUT .../agents/{id}/presence`` lets a supervisor set an agent available or
away (the softphone's ``presence.set`` does the same from the agent's page);
a phone-only agent has no page, so this is how it is set away.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field

from voicegw.api.admin import ADMINS, READERS, _int_param, principal, scoped_tenant
from voicegw.api.context import SESSIONS
from voicegw.api.errors import ApiError, not_found, parse_body
from voicegw.api.schemas import RequestBody
from voicegw.api.softphone import AGENTS
from voicegw.api.views import agent_view
from voicegw.calls.agents import SoftphoneError
from voicegw.store import tenants
from voicegw.store.audit import append as audit_append

__all__ = ["AgentEndpoint", "AgentPresence", "set_endpoint", "set_presence"]


class AgentEndpoint(RequestBody):
    sip_user: str | None = Field(
        min_length=1,
        max_length=64,
        description="The tenant SIP login whose registered phone rings for the agent; "
        "null: the softphone",
    )


class AgentPresence(RequestBody):
    presence: Literal["available", "away"] = Field(description="What the agent is set to")


async def set_endpoint(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentEndpoint)
    agent_id = _int_param(request, "agent_id")
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        agent = await tenants.get_agent(session, tenant.id, agent_id)
        if agent is None:
            raise not_found(f"agent {agent_id}")
        try:
            row = await tenants.set_agent_sip_user(
                session, actor=principal(request).actor, agent=agent, sip_user=body.sip_user
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc), "sip_user") from None
        except tenants.ConflictError as exc:
            raise ApiError(409, "conflict", str(exc), "sip_user") from None
        view = agent_view(row)
        skills = list(row.skills)
    request.app[AGENTS].link_phone(tenant.id, agent_id, body.sip_user, skills)
    return web.json_response(view)


async def set_presence(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentPresence)
    agent_id = _int_param(request, "agent_id")
    directory = request.app[AGENTS]
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, READERS)
        if await tenants.get_agent(session, tenant.id, agent_id) is None:
            raise not_found(f"agent {agent_id}")
        live = directory.session(agent_id)
        if live is None or live.tenant_id != tenant.id:
            raise ApiError(409, "agent_offline", "the agent is not signed in nor on a phone")
        try:
            directory.set_presence(live, body.presence)
        except SoftphoneError as exc:
            raise ApiError(409, exc.code, exc.message, "presence") from None
        await audit_append(
            session,
            actor=principal(request).actor,
            tenant_id=tenant.id,
            action="tenant.agent.presence",
            target=f"tenant/{tenant.id}/agents/{agent_id}",
            details={"presence": body.presence},
        )
        presence = live.presence.value
    return web.json_response({"id": agent_id, "presence": presence})
