"""The supervisor view over real softphone sessions in a real AgentDirectory.

Agents sign in through the directory's own API (the socket side is a plain
outbox, no browser); calls are offered the way the agent bridge offers them.
The queue part is the call layer's real (idle) AgentBridge.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agents import AgentDirectory, AgentEvent, AgentSession, CallAction
from voicegw.media.webrtc import LiveSource, WebRtcConfig
from voicegw.store import tenants, tokens
from voicegw.tenant_settings import TenantSettings

CALLER = "+6591234567"
OTHER_CALLER = "+4930123456789"
PATH = "/api/v1/tenants/{}/supervisor"


class Outbox:
    """The socket side of a signed-in softphone: keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def deliver(self, event: AgentEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


@dataclass
class World:
    client: TestClient  # type: ignore[type-arg]
    directory: AgentDirectory
    agents: dict[str, int]  # username -> id
    tokens: dict[str, str]  # who -> bearer secret
    heard: list[bytes] = field(default_factory=list)

    def sign_in(self, tenant_id: str, username: str) -> AgentSession:
        return self.directory.sign_in(tenant_id, self.agents[username], Outbox())

    async def get(self, tenant_id: str, who: str | None) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with self.client.get(PATH.format(tenant_id), headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text), text


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> AsyncIterator[World]:
    ids: dict[str, int] = {}
    secrets: dict[str, str] = {}
    async with sessions() as s, s.begin():
        for tenant_id in ("acme", "other"):
            await tenants.create_tenant(
                s,
                actor="test",
                tenant_id=tenant_id,
                name=tenant_id.upper(),
                settings=TenantSettings(region="sg"),
            )
        for tenant_id, username in (("acme", "ann"), ("acme", "bob"), ("acme", "cid"),
                                    ("acme", "dee"), ("other", "zed")):  # fmt: skip
            agent = await tenants.add_agent(
                s,
                actor="test",
                tenant_id=tenant_id,
                username=username,
                display_name=username.title(),
                skills=[],
            )
            ids[username] = agent.id
        grants: tuple[tuple[str, str, str | None], ...] = (
            ("operator", "operator", None),
            ("admin", "tenant_admin", "acme"),
            ("supervisor", "supervisor", "acme"),
            ("other_supervisor", "supervisor", "other"),
            ("other_admin", "tenant_admin", "other"),
        )
        for who, role, scope in grants:
            _, secrets[who] = await tokens.create_token(s, role=role, tenant_id=scope)
        _, secrets["agent"] = await tokens.create_token(
            s, role="agent", tenant_id="acme", agent_id=ids["ann"]
        )
    directory = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)))
    bridge = AgentBridge(directory)
    app = create_app(sessions, tmp_path / "var", agents=directory, queues=bridge)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield World(client, directory, ids, secrets)
    finally:
        await client.close()
        await bridge.close()
        await directory.close()


async def test_supervisor_sees_presence_and_current_calls_with_masked_callers_only(
    world: World,
) -> None:
    ann = world.sign_in("acme", "ann")
    world.directory.set_presence(world.sign_in("acme", "bob"), "away")
    world.sign_in("acme", "dee")
    world.sign_in("other", "zed")
    talking = world.directory.offer_call(
        tenant_id="acme",
        agent_id=world.agents["ann"],
        caller=CALLER,
        source=LiveSource(),
        sink=world.heard.append,
    )
    await world.directory.act(ann, talking.call_id, CallAction.ANSWER)
    ringing = world.directory.offer_call(
        tenant_id="acme",
        agent_id=world.agents["dee"],
        caller=OTHER_CALLER,
        source=LiveSource(),
        sink=world.heard.append,
    )

    status, body, text = await world.get("acme", "supervisor")

    assert status == 200, body
    assert CALLER not in text and CALLER[1:] not in text and OTHER_CALLER[1:] not in text
    agents = {a["username"]: a for a in body["agents"]}
    assert set(agents) == {"ann", "bob", "cid", "dee"}  # never another tenant's agents
    assert agents["ann"]["display_name"] == "Ann"
    assert agents["ann"]["presence"] == "on_call" and agents["ann"]["connected"] is True
    assert agents["ann"]["since"] is not None
    call = agents["ann"]["call"]
    assert call["call_id"] == talking.call_id
    assert call["state"] == "active"
    assert call["caller"] == "+65****4567"
    assert call["duration_seconds"] >= 0
    assert agents["bob"]["presence"] == "away" and agents["bob"]["call"] is None
    assert agents["cid"] == {
        "id": world.agents["cid"],
        "username": "cid",
        "display_name": "Cid",
        "presence": "offline",
        "since": None,
        "connected": False,
        "call": None,
    }
    # A ringing call has no talk time yet, and the agent is still "available" until answering.
    assert agents["dee"]["presence"] == "available"
    assert agents["dee"]["call"]["state"] == "ringing"
    assert agents["dee"]["call"]["caller"] == "+49****6789"
    assert agents["dee"]["call"]["duration_seconds"] is None
    assert [c["call_id"] for c in body["calls"]] == [talking.call_id, ringing.call_id]
    assert body["queue"] == {"depth": 0, "longest_wait_seconds": 0.0, "waiting": [], "by_queue": {}}


async def test_an_ended_call_leaves_the_view_and_a_detached_agent_shows_as_not_connected(
    world: World,
) -> None:
    outbox = Outbox()
    ann = world.directory.sign_in("acme", world.agents["ann"], outbox)
    call = world.directory.offer_call(
        tenant_id="acme",
        agent_id=world.agents["ann"],
        caller=CALLER,
        source=LiveSource(),
        sink=world.heard.append,
    )
    await world.directory.act(ann, call.call_id, CallAction.ANSWER)
    await world.directory.act(ann, call.call_id, CallAction.HANGUP)
    world.directory.detach(ann, outbox)

    status, body, _ = await world.get("acme", "admin")

    assert status == 200, body
    assert body["calls"] == []
    ann_view = next(a for a in body["agents"] if a["username"] == "ann")
    assert ann_view["presence"] == "wrap_up"
    assert ann_view["connected"] is False and ann_view["call"] is None


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("operator", 200),
        ("admin", 200),
        ("supervisor", 200),
        ("agent", 403),
        ("other_supervisor", 404),
        ("other_admin", 404),
        (None, 401),
    ],
)
async def test_only_the_tenants_readers_see_it_and_other_tenants_get_404(
    world: World, who: str | None, status: int
) -> None:
    got, body, _ = await world.get("acme", who)

    assert got == status, body
    if status != 200:
        assert set(body["error"]) >= {"code", "message"}


async def test_the_route_is_in_the_openapi_document(world: World) -> None:
    async with world.client.get("/api/v1/openapi.json") as resp:
        document = await resp.json()

    assert "get" in document["paths"][PATH.format("{tenant_id}")]
