"""The supervisor view: a tenant's agents, their presence and calls, and the queue, right now.

Everything comes from this process's :class:`~voicegw.calls.agents.AgentDirectory`
and the call layer's queue view, joined with the tenant's agents in the database.
An agent call keeps the raw caller number (the bridge needs it), so it is
masked here with :func:`voicegw.logs.mask_number`; queued callers arrive
masked already (:class:`~voicegw.calls.agent_bridge.WaitingCaller`) and are
not masked twice (masking is not idempotent: it would hide the country too).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voicegw.api.admin import READERS, scoped_tenant
from voicegw.api.context import QUEUES, SESSIONS
from voicegw.api.softphone import AGENTS
from voicegw.calls.agent_bridge import WaitingCaller
from voicegw.calls.agents import AgentCall, AgentSession
from voicegw.logs import mask_number
from voicegw.store import tenants
from voicegw.store.models import Agent

#: Presence shown for an agent with no softphone session in this process.
OFFLINE = "offline"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _seconds(since: float | None, now: float) -> float | None:
    return None if since is None else round(max(0.0, now - since), 1)


def call_view(call: AgentCall, now: float) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "agent_id": call.agent_id,
        "state": call.state.value,
        "caller": mask_number(call.caller),
        "held": call.held,
        "muted": call.muted,
        "offered_at": _iso(call.offered_at),
        # Talk time: counted from the answer (None while the call rings).
        "duration_seconds": _seconds(call.answered_at, now),
    }


def agent_view(agent: Agent, session: AgentSession | None, now: float) -> dict[str, Any]:
    call = session.call if session is not None else None
    return {
        "id": agent.id,
        "username": agent.username,
        "display_name": agent.display_name,
        "presence": session.presence.value if session is not None else OFFLINE,
        "since": _iso(session.presence_since) if session is not None else None,
        # A session without a socket keeps presence and call for a reconnect.
        "connected": session is not None and session.outbox is not None,
        "call": call_view(call, now) if call is not None else None,
    }


def waiting_view(caller: WaitingCaller) -> dict[str, Any]:
    return {
        "call_id": caller.call_id,
        "caller": caller.caller,
        "wait_seconds": round(caller.waited, 1),
        "ringing_agent": caller.ringing_agent,
        "queue": caller.queue,
    }


async def supervisor_view(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
        agents = await tenants.list_agents(session, tenant.id)
    directory = request.app[AGENTS]
    sessions = {s.agent_id: s for s in directory.sessions(tenant.id)}
    waiting = list(request.app[QUEUES].waiting(tenant.id))
    now = time.time()
    calls = sorted(directory.calls(tenant.id), key=lambda c: c.offered_at)
    return web.json_response(
        {
            "tenant_id": tenant.id,
            "agents": [agent_view(a, sessions.get(a.id), now) for a in agents],
            "queue": {
                "depth": len(waiting),
                "longest_wait_seconds": round(max((w.waited for w in waiting), default=0.0), 1),
                "waiting": [waiting_view(w) for w in waiting],
                # Per queue (skills queues of the tenant): depth and longest wait.
                "by_queue": {
                    name: {
                        "depth": sum(1 for w in waiting if w.queue == name),
                        "longest_wait_seconds": round(
                            max((w.waited for w in waiting if w.queue == name), default=0.0), 1
                        ),
                    }
                    for name in sorted({w.queue for w in waiting})
                },
            },
            "calls": [call_view(c, now) for c in calls],
        }
    )
