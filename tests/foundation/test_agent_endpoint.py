"""An agent's SIP endpoint and presence through the admin API: stored, audited, live at once."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.foundation.conftest import World, call
from voicegw.api.softphone import AGENTS
from voicegw.calls.agents import AgentDirectory, Presence
from voicegw.store import tenants

PASSWORD = "correct horse battery"


def endpoint(tenant: str, agent: int) -> str:
    return f"/api/v1/tenants/{tenant}/agents/{agent}/endpoint"


def directory(world: World) -> AgentDirectory:
    app = world.client.app
    assert app is not None
    found: AgentDirectory = app[AGENTS]
    return found


def phone_of(world: World, agent: int) -> str | None:
    live = directory(world).session(agent)
    return None if live is None else live.phone


async def sip_user(world: World, tenant: str, token: str, username: str) -> None:
    status, _ = await call(
        world, "POST", f"/api/v1/tenants/{tenant}/sip-users", token,
        json={"username": username, "password": PASSWORD},
    )  # fmt: skip
    assert status == 201


async def test_linking_an_agent_to_a_sip_user_is_stored_audited_and_live(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await sip_user(world, "tenant-b", world.admin_b, "desk-7")
    status, agent = await call(
        world, "PUT", endpoint("tenant-b", world.agent_b), world.admin_b,
        json={"sip_user": "desk-7"},
    )  # fmt: skip
    assert status == 200
    assert (agent["id"], agent["sip_user"], agent["skills"]) == (world.agent_b, "desk-7", ["de"])
    async with sessions() as s:
        rows = await tenants.agents_with_sip_user(s)
    assert [(r.id, r.sip_user) for r in rows] == [(world.agent_b, "desk-7")]
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-b/audit", world.admin_b)
    assert events["events"][-1]["action"] == "tenant.agent.endpoint"
    live = directory(world).session(world.agent_b)
    assert live is not None and live.phone == "desk-7" and live.skills == {"de"}
    # Not registered yet: the queue cannot ring this agent.
    assert not live.reachable
    assert directory(world).available_agents("tenant-b") == []

    status, agent = await call(
        world, "PUT", endpoint("tenant-b", world.agent_b), world.admin_b, json={"sip_user": None}
    )
    assert (status, agent["sip_user"]) == (200, None)
    assert phone_of(world, world.agent_b) is None
    _, listed = await call(world, "GET", "/api/v1/tenants/tenant-b/agents", world.admin_b)
    assert listed["agents"][0]["sip_user"] is None


async def test_unknown_other_tenants_and_taken_sip_users_are_refused_naming_the_field(
    world: World,
) -> None:
    path = endpoint("tenant-b", world.agent_b)
    status, err = await call(world, "PUT", path, world.admin_b, json={"sip_user": "nobody"})
    assert (status, err["error"]["field"]) == (400, "sip_user")
    # Another tenant's login of the same name is not this tenant's.
    await sip_user(world, "tenant-a", world.admin_a, "shared")
    status, err = await call(world, "PUT", path, world.admin_b, json={"sip_user": "shared"})
    assert (status, err["error"]["field"]) == (400, "sip_user")
    status, err = await call(world, "PUT", path, world.admin_b, json={})
    assert status == 400 and err["error"]["field"] == "sip_user"
    status, err = await call(world, "PUT", path, world.admin_b, json={"sip_user": 5})
    assert status == 400 and err["error"]["field"] == "sip_user"

    await sip_user(world, "tenant-b", world.admin_b, "desk-1")
    status, other = await call(
        world, "POST", "/api/v1/tenants/tenant-b/agents", world.admin_b,
        json={"username": "carol", "display_name": "Carol"},
    )  # fmt: skip
    assert status == 201
    status, _ = await call(world, "PUT", path, world.admin_b, json={"sip_user": "desk-1"})
    assert status == 200
    status, err = await call(
        world, "PUT", endpoint("tenant-b", other["id"]), world.admin_b, json={"sip_user": "desk-1"}
    )
    assert (status, err["error"]["code"], err["error"]["field"]) == (409, "conflict", "sip_user")


async def test_another_tenants_agent_is_not_found_and_a_supervisor_may_not_link(
    world: World,
) -> None:
    status, _ = await call(
        world, "PUT", endpoint("tenant-b", world.agent_b), world.admin_a, json={"sip_user": "x"}
    )
    assert status == 404
    status, _ = await call(
        world, "PUT", endpoint("tenant-a", world.agent_b), world.admin_a, json={"sip_user": "x"}
    )
    assert status == 404
    status, _ = await call(
        world, "PUT", endpoint("tenant-a", 1), world.supervisor_a, json={"sip_user": "x"}
    )
    assert status == 403


async def test_presence_of_a_phone_agent_is_set_away_and_back(world: World) -> None:
    path = f"/api/v1/tenants/tenant-b/agents/{world.agent_b}/presence"
    status, err = await call(world, "PUT", path, world.admin_b, json={"presence": "away"})
    assert (status, err["error"]["code"]) == (409, "agent_offline")
    await sip_user(world, "tenant-b", world.admin_b, "desk-7")
    await call(
        world, "PUT", endpoint("tenant-b", world.agent_b), world.admin_b,
        json={"sip_user": "desk-7"},
    )  # fmt: skip
    live = directory(world).session(world.agent_b)
    assert live is not None
    live.registered = True  # what the registrations poll reports for a registered phone
    assert directory(world).available_agents("tenant-b") == [world.agent_b]

    status, body = await call(world, "PUT", path, world.admin_b, json={"presence": "away"})
    assert (status, body["presence"]) == (200, "away")
    assert live.presence is Presence.AWAY
    assert directory(world).available_agents("tenant-b") == []
    status, body = await call(world, "PUT", path, world.admin_b, json={"presence": "available"})
    assert (status, body["presence"]) == (200, "available")
    assert directory(world).available_agents("tenant-b") == [world.agent_b]

    status, err = await call(world, "PUT", path, world.admin_b, json={"presence": "on_call"})
    assert (status, err["error"]["field"]) == (400, "presence")
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-b/audit", world.admin_b)
    assert events["events"][-1]["action"] == "tenant.agent.presence"
