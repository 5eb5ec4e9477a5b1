"""Admin API fixtures: two tenants, their admins, an operator, a running test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.store import tenants, tokens
from voicegw.tenant_settings import TenantSettings


@dataclass
class World:
    client: TestClient  # type: ignore[type-arg]
    operator: str
    admin_a: str
    admin_b: str
    supervisor_a: str
    number_b: int
    agent_b: int
    token_b_id: str


async def seed(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with sessions() as s, s.begin():
        for tid, region in (("tenant-a", "sg"), ("tenant-b", "eu")):
            await tenants.create_tenant(
                s,
                actor="test",
                tenant_id=tid,
                name=tid.upper(),
                settings=TenantSettings(region=region),
            )
        number = await tenants.add_number(
            s, actor="test", tenant_id="tenant-b", number="+4930123456789"
        )
        agent = await tenants.add_agent(
            s, actor="test", tenant_id="tenant-b", username="bob", display_name="Bob", skills=["de"]
        )
        _, operator = await tokens.create_token(s, role="operator", tenant_id=None)
        _, admin_a = await tokens.create_token(s, role="tenant_admin", tenant_id="tenant-a")
        token_b, admin_b = await tokens.create_token(s, role="tenant_admin", tenant_id="tenant-b")
        _, supervisor_a = await tokens.create_token(s, role="supervisor", tenant_id="tenant-a")
    return {
        "operator": operator,
        "admin_a": admin_a,
        "admin_b": admin_b,
        "supervisor_a": supervisor_a,
        "number_b": number.id,
        "agent_b": agent.id,
        "token_b_id": token_b.id,
    }


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> AsyncIterator[World]:
    data = await seed(sessions)
    client = TestClient(TestServer(create_app(sessions, tmp_path / "var")))
    await client.start_server()
    try:
        yield World(client=client, **data)
    finally:
        await client.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    world: World, method: str, path: str, token: str | None, **kw: Any
) -> tuple[int, Any]:
    headers = auth(token) if token else {}
    async with world.client.request(method, path, headers=headers, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()
