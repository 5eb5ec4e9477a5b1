"""The softphone signalling socket (protocol v2, v1 pages too) through aiohttp, real tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.api.softphone import CLOSE_AUTH, CLOSE_REPLACED, WS_PATH
from voicegw.calls.agents import AgentCall, AgentDirectory, CallState, ConsentView
from voicegw.media.webrtc import LiveSource, WebRtcConfig
from voicegw.store import tenants, tokens
from voicegw.tenant_settings import TenantSettings


@dataclass
class World:
    client: TestClient  # type: ignore[type-arg]
    agents: AgentDirectory
    agent_token: str
    admin_token: str
    agent_id: int


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> AsyncIterator[World]:
    async with sessions() as s, s.begin():
        await tenants.create_tenant(
            s, actor="test", tenant_id="acme", name="ACME", settings=TenantSettings(region="sg")
        )
        agent = await tenants.add_agent(
            s, actor="test", tenant_id="acme", username="ann", display_name="Ann", skills=[]
        )
        _, agent_token = await tokens.create_token(
            s, role="agent", tenant_id="acme", agent_id=agent.id
        )
        _, admin_token = await tokens.create_token(s, role="tenant_admin", tenant_id="acme")
    agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)))
    client = TestClient(TestServer(create_app(sessions, tmp_path, agents=agents)))
    await client.start_server()
    try:
        yield World(client, agents, agent_token, admin_token, agent.id)
    finally:
        await client.close()


async def send(ws: aiohttp.ClientWebSocketResponse, kind: str, **body: Any) -> None:
    await ws.send_str(json.dumps({"v": 1, "type": kind, **body}))


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


async def signed_in(world: World) -> aiohttp.ClientWebSocketResponse:
    ws = await world.client.ws_connect(WS_PATH)
    await send(ws, "hello", token=world.agent_token)
    welcome = await receive(ws)
    assert welcome["type"] == "welcome", welcome
    return ws


async def test_hello_with_an_agent_token_is_welcomed_with_presence_and_ice_servers(
    world: World,
) -> None:
    ws = await world.client.ws_connect(WS_PATH)
    await send(ws, "hello", token=world.agent_token)
    assert await receive(ws) == {
        "v": 1,
        "type": "welcome",
        "agent": {"id": world.agent_id, "tenant_id": "acme"},
        "presence": "available",
        "call": None,
        "ice_servers": [],
    }
    await ws.close()


@pytest.mark.parametrize("token", ["vgw_unknown", "admin"])
async def test_hello_without_a_valid_agent_token_is_refused_and_closed(
    world: World, token: str
) -> None:
    ws = await world.client.ws_connect(WS_PATH)
    await send(ws, "hello", token=world.admin_token if token == "admin" else token)
    error = await receive(ws)
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    closing = await ws.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == CLOSE_AUTH


async def test_the_first_message_must_be_hello(world: World) -> None:
    ws = await world.client.ws_connect(WS_PATH)
    await send(ws, "presence.set", presence="away")
    assert (await receive(ws))["code"] == "not_signed_in"


BAD_MESSAGES = [
    ("not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('{"v": 3, "type": "ping"}', "unsupported_version"),
    ('{"v": 1, "type": "call.teleport"}', "unknown_type"),
    ('{"v": 1, "type": "call.hold", "call_id": "x", "on": "yes"}', "bad_field"),
    ('{"v": 1, "type": "presence.set", "presence": "on_call", "id": 9}', "invalid_presence"),
    ('{"v": 1, "type": "call.answer", "call_id": "nope"}', "no_such_call"),
    ('{"v": 1, "type": "hello", "token": "again"}', "already_signed_in"),
]


async def test_bad_messages_get_error_messages_and_the_socket_stays_open(world: World) -> None:
    ws = await signed_in(world)
    for raw, code in BAD_MESSAGES:
        await ws.send_str(raw)
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", code), raw
        assert error["re"] == (9 if '"id": 9' in raw else None)
    await send(ws, "ping", id="p1")
    assert await receive(ws) == {"v": 1, "type": "pong", "re": "p1"}
    await ws.close()


async def test_an_offered_call_rings_with_a_masked_number_and_is_answered(world: World) -> None:
    ws = await signed_in(world)
    call = world.agents.offer_call(
        tenant_id="acme",
        agent_id=world.agent_id,
        caller="+6591234567",
        source=LiveSource(),
        sink=lambda _f: None,
    )
    raw = await ws.receive_str(timeout=5)
    assert "91234567" not in raw
    offered = json.loads(raw)
    assert offered["type"] == "call.offered"
    assert offered["call"]["caller"] == "+65****4567"
    assert offered["call"]["consent"] == {"state": "unknown", "mode": None}
    await send(ws, "call.answer", call_id=call.call_id)
    messages = [await receive(ws), await receive(ws)]
    assert {"type": "presence.changed", "v": 1, "presence": "on_call"} in messages
    assert [m["call"]["state"] for m in messages if m["type"] == "call.state"] == ["active"]
    await ws.close()


async def test_a_new_socket_resumes_the_call_and_a_second_sign_in_replaces_the_first(
    world: World,
) -> None:
    first = await signed_in(world)
    call = world.agents.offer_call(
        tenant_id="acme",
        agent_id=world.agent_id,
        caller="+6591234567",
        source=LiveSource(),
        sink=lambda _f: None,
    )
    await receive(first)
    await send(first, "call.answer", call_id=call.call_id)
    await receive(first)
    await receive(first)

    second = await world.client.ws_connect(WS_PATH)
    await send(second, "hello", token=world.agent_token)
    welcome = await receive(second)
    assert welcome["presence"] == "on_call"
    assert welcome["call"]["call_id"] == call.call_id
    assert welcome["call"]["state"] == "active"

    told = await receive(first)
    assert told["type"] == "session.replaced"
    closing = await first.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == CLOSE_REPLACED
    assert call.state is CallState.ACTIVE

    await send(second, "call.hangup", call_id=call.call_id)
    ended = await receive(second)
    assert (ended["call"]["state"], ended["call"]["ended_reason"]) == ("ended", "agent_hangup")
    await second.close()


async def test_the_page_and_its_script_are_served_without_a_token_with_a_strict_csp(
    world: World,
) -> None:
    for path in ("/softphone", "/softphone/softphone.js", "/softphone/softphone.css"):
        async with world.client.get(path) as resp:
            assert resp.status == 200
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_a_v2_page_gets_v2_replies_and_transfer_requests_are_checked(world: World) -> None:
    ws = await world.client.ws_connect(WS_PATH)
    await ws.send_str(json.dumps({"v": 2, "type": "hello", "token": world.agent_token}))
    assert (await receive(ws))["v"] == 2
    # A call from the caller-side API alone has no owner that could move the caller.
    call = world.agents.offer_call(
        tenant_id="acme",
        agent_id=world.agent_id,
        caller="+6591234567",
        source=LiveSource(),
        sink=lambda _f: None,
    )
    offered = await receive(ws)
    assert (offered["call"]["from_agent"], offered["call"]["transfer"]) == (None, None)
    start = {"call_id": call.call_id, "mode": "warm", "target_kind": "agent", "target": "2"}
    await ws.send_str(json.dumps({"v": 2, "type": "transfer.start", "id": 1, **start}))
    assert (await receive(ws))["code"] == "invalid_state"  # still ringing
    await ws.send_str(json.dumps({"v": 2, "type": "call.answer", "call_id": call.call_id}))
    await receive(ws)
    await receive(ws)
    await ws.send_str(json.dumps({"v": 2, "type": "transfer.start", "id": 2, **start}))
    refused = await receive(ws)
    assert (refused["code"], refused["re"], refused["v"]) == ("transfer_unavailable", 2, 2)
    await ws.send_str(json.dumps({"v": 2, "type": "transfer.start", "call_id": call.call_id}))
    assert (await receive(ws))["code"] == "bad_field"
    await ws.send_str(json.dumps({"v": 2, "type": "transfer.cancel", "call_id": call.call_id}))
    assert (await receive(ws))["code"] == "invalid_transfer_state"
    await ws.close()


async def test_consent_state_reaches_the_page_and_its_secure_pause_reaches_the_consent_layer(
    world: World,
) -> None:
    pauses: list[tuple[str, bool]] = []

    async def consent_layer(call: AgentCall, on: bool) -> None:
        pauses.append((call.call_id, on))

    world.agents.on_secure_pause = consent_layer
    ws = await signed_in(world)
    call = world.agents.offer_call(
        tenant_id="acme",
        agent_id=world.agent_id,
        caller="+6591234567",
        source=LiveSource(),
        sink=lambda _f: None,
    )
    await receive(ws)
    world.agents.show_consent(call, ConsentView("granted", "opt_in"), recording="recording")
    shown = (await receive(ws))["call"]
    assert shown["consent"] == {"state": "granted", "mode": "opt_in"}
    assert shown["recording"] == {"state": "recording", "secure_pause": False}
    await send(ws, "call.answer", call_id=call.call_id)
    await receive(ws)
    await receive(ws)
    await send(ws, "recording.secure_pause", call_id=call.call_id, on=True)
    paused = await receive(ws)
    assert paused["call"]["recording"]["secure_pause"] is True
    assert pauses == [(call.call_id, True)]
    world.agents.push_transcript(call.call_id, speaker="caller", text="hello", final=True)
    assert await receive(ws) == {
        "v": 1,
        "type": "transcript",
        "call_id": call.call_id,
        "speaker": "caller",
        "text": "hello",
        "final": True,
    }
    await ws.close()


async def test_an_admin_sets_an_agents_skills_which_the_live_session_uses_at_once(
    world: World,
) -> None:
    ws = await signed_in(world)
    url = f"/api/v1/tenants/acme/agents/{world.agent_id}/skills"
    auth = {"Authorization": f"Bearer {world.admin_token}"}
    async with world.client.put(url, json={"skills": ["es", "billing", "es"]}, headers=auth) as r:
        assert r.status == 200
        assert (await r.json())["skills"] == ["billing", "es"]
    session = world.agents.session(world.agent_id)
    assert session is not None and session.skills == {"billing", "es"}
    assert world.agents.available_agents("acme", frozenset({"es"})) == [world.agent_id]
    assert world.agents.available_agents("acme", frozenset({"fr"})) == []

    async with world.client.put(url, json={"skills": ["Not A Skill"]}, headers=auth) as r:
        assert r.status == 400 and (await r.json())["error"]["code"]
    async with world.client.put(
        "/api/v1/tenants/acme/agents/999/skills", json={"skills": []}, headers=auth
    ) as r:
        assert r.status == 404
    agent_auth = {"Authorization": f"Bearer {world.agent_token}"}
    async with world.client.put(url, json={"skills": []}, headers=agent_auth) as r:
        assert r.status == 403
    async with world.client.get("/api/v1/tenants/acme/audit", headers=auth) as r:
        actions = [e["action"] for e in (await r.json())["events"]]
    assert "tenant.agent.skills" in actions

    # A later sign-in loads the stored skills.
    await ws.close()
    again = await signed_in(world)
    session = world.agents.session(world.agent_id)
    assert session is not None and session.skills == {"billing", "es"}
    await again.close()
