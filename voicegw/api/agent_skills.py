"""Setting an agent's skills (admin API): stored, audited, and used by the live queues at once."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from voicegw.api.admin import ADMINS, _int_param, principal, scoped_tenant
from voicegw.api.context import SESSIONS
from voicegw.api.errors import not_found, parse_body
from voicegw.api.schemas import RequestBody
from voicegw.api.softphone import AGENTS
from voicegw.api.views import agent_view
from voicegw.store import tenants

__all__ = ["AgentSkills", "set_skills"]

SKILL = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


class AgentSkills(RequestBody):
    skills: list[Annotated[str, Field(pattern=SKILL)]] = Field(
        max_length=32,
        description="The agent's skills (lower-case words); replaces the previous list",
    )


async def set_skills(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentSkills)
    skills = sorted(set(body.skills))
    agent_id = _int_param(request, "agent_id")
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        agent = await tenants.get_agent(session, tenant.id, agent_id)
        if agent is None:
            raise not_found(f"agent {agent_id}")
        row = await tenants.set_agent_skills(
            session, actor=principal(request).actor, agent=agent, skills=skills
        )
        view = agent_view(row)
    # A signed-in agent's queues see the new skills from the next routing decision on.
    request.app[AGENTS].set_skills(tenant.id, agent_id, skills)
    return web.json_response(view)
