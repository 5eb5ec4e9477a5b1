"""Admin API: roles, tenant isolation, audited changes, JSON errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.foundation.conftest import World, call
from voicegw.store import audit

# -- public endpoints ---------------------------------------------------------


async def test_healthz_and_metrics_need_no_token(world: World) -> None:
    status, body = await call(world, "GET", "/healthz", None)
    assert (status, body["status"]) == (200, "ok")
    async with world.client.get("/metrics") as resp:
        assert resp.status == 200
        assert "voicegw_http_requests_total" in await resp.text()


async def test_openapi_document_lists_every_route(world: World) -> None:
    status, doc = await call(world, "GET", "/api/v1/openapi.json", None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert "patch" in doc["paths"]["/api/v1/tenants/{tenant_id}/settings"]
    assert "TenantCreate" in doc["components"]["schemas"]


# -- authentication -----------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer vgw_not-a-token"])
async def test_missing_or_bad_token_is_401(world: World, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with world.client.get("/api/v1/tenants", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_revoked_token_stops_working(world: World) -> None:
    status, _ = await call(world, "DELETE", f"/api/v1/tokens/{world.token_b_id}", world.operator)
    assert status == 200
    status, _ = await call(world, "GET", "/api/v1/tenants", world.admin_b)
    assert status == 401


# -- tenant isolation ---------------------------------------------------------

B_RESOURCES = [
    ("GET", "/api/v1/tenants/tenant-b", None),
    ("GET", "/api/v1/tenants/tenant-b/settings", None),
    ("PATCH", "/api/v1/tenants/tenant-b/settings", {"recording_mode": "notify"}),
    ("GET", "/api/v1/tenants/tenant-b/numbers", None),
    ("POST", "/api/v1/tenants/tenant-b/numbers", {"number": "+4930123456780"}),
    ("DELETE", "/api/v1/tenants/tenant-b/numbers/{number_b}", None),
    ("GET", "/api/v1/tenants/tenant-b/agents", None),
    ("POST", "/api/v1/tenants/tenant-b/agents", {"username": "eve", "display_name": "Eve"}),
    ("GET", "/api/v1/tenants/tenant-b/audit", None),
    ("DELETE", "/api/v1/tokens/{token_b_id}", None),
    ("POST", "/api/v1/tokens", {"role": "tenant_admin", "tenant_id": "tenant-b"}),
    ("POST", "/api/v1/tokens", {"role": "agent", "tenant_id": "tenant-b", "agent_id": "{agent_b}"}),
]


@pytest.mark.parametrize(("method", "path", "body"), B_RESOURCES)
async def test_tenant_a_admin_gets_404_for_every_tenant_b_resource(
    world: World, method: str, path: str, body: dict[str, Any] | None
) -> None:
    ids = {"number_b": world.number_b, "token_b_id": world.token_b_id, "agent_b": world.agent_b}
    path = path.format(**ids)
    if body is not None:
        body = {
            k: int(v.format(**ids)) if isinstance(v, str) and v.startswith("{") else v
            for k, v in body.items()
        }
    status, err = await call(world, method, path, world.admin_a, json=body)
    assert status == 404
    assert err["error"]["code"] == "not_found"


async def test_tenant_b_is_unchanged_after_tenant_a_attempts(world: World) -> None:
    for method, path, body in B_RESOURCES:
        ids = {"number_b": world.number_b, "token_b_id": world.token_b_id, "agent_b": world.agent_b}
        await call(world, method, path.format(**ids), world.admin_a, json=body)
    _, settings = await call(world, "GET", "/api/v1/tenants/tenant-b/settings", world.admin_b)
    assert settings["recording_mode"] == "off"
    _, numbers = await call(world, "GET", "/api/v1/tenants/tenant-b/numbers", world.admin_b)
    assert [n["number"] for n in numbers["numbers"]] == ["+4930123456789"]
    _, agents = await call(world, "GET", "/api/v1/tenants/tenant-b/agents", world.admin_b)
    assert [a["username"] for a in agents["agents"]] == ["bob"]
    status, _ = await call(world, "GET", "/api/v1/tenants", world.admin_b)
    assert status == 200


async def test_tenant_list_shows_only_own_tenant(world: World) -> None:
    _, body = await call(world, "GET", "/api/v1/tenants", world.admin_a)
    assert [t["id"] for t in body["tenants"]] == ["tenant-a"]
    _, body = await call(world, "GET", "/api/v1/tenants", world.operator)
    assert [t["id"] for t in body["tenants"]] == ["tenant-a", "tenant-b"]


async def test_tenant_admin_cannot_create_tenants_or_operator_tokens(world: World) -> None:
    status, _ = await call(
        world, "POST", "/api/v1/tenants", world.admin_a, json={"id": "x1", "name": "X"}
    )
    assert status == 403
    status, _ = await call(
        world, "POST", "/api/v1/tokens", world.admin_a, json={"role": "operator"}
    )
    assert status == 403


async def test_supervisor_reads_but_cannot_change_settings(world: World) -> None:
    status, _ = await call(world, "GET", "/api/v1/tenants/tenant-a/settings", world.supervisor_a)
    assert status == 200
    status, err = await call(
        world,
        "PATCH",
        "/api/v1/tenants/tenant-a/settings",
        world.supervisor_a,
        json={"recording_mode": "notify"},
    )
    assert (status, err["error"]["code"]) == (403, "forbidden")


# -- changes are audited ------------------------------------------------------


async def test_settings_change_is_applied_and_audited(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    status, body = await call(
        world,
        "PATCH",
        "/api/v1/tenants/tenant-a/settings",
        world.admin_a,
        json={"recording_mode": "opt_in", "retention": {"recordings_days": 30}},
    )
    assert status == 200
    assert body["recording_mode"] == "opt_in"
    assert body["retention"] == {"recordings_days": 30, "transcripts_days": 90}
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-a/audit", world.admin_a)
    change = events["events"][-1]
    assert change["action"] == "tenant.settings.update"
    assert change["actor"].startswith("token:")
    assert "recording_mode" in change["details"]
    async with sessions() as s:
        assert (await audit.verify(s)).ok


async def test_operator_creates_tenant_and_token_both_audited(world: World) -> None:
    status, tenant = await call(
        world,
        "POST",
        "/api/v1/tenants",
        world.operator,
        json={
            "id": "tenant-c",
            "name": "C",
            "settings": {"region": "us", "recording_mode": "notify"},
        },
    )
    assert status == 201
    assert tenant["region"] == "us"
    status, tok = await call(
        world,
        "POST",
        "/api/v1/tokens",
        world.operator,
        json={"role": "tenant_admin", "tenant_id": "tenant-c"},
    )
    assert status == 201
    status, _ = await call(world, "GET", "/api/v1/tenants/tenant-c", tok["token"])
    assert status == 200
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-c/audit", tok["token"])
    assert [e["action"] for e in events["events"]] == ["tenant.create", "token.create"]
    assert tok["token"] not in str(events)
    _, verdict = await call(world, "GET", "/api/v1/audit/verify", world.operator)
    assert verdict["ok"] is True


async def test_duplicate_tenant_is_409(world: World) -> None:
    status, err = await call(
        world, "POST", "/api/v1/tenants", world.operator, json={"id": "tenant-a", "name": "A"}
    )
    assert (status, err["error"]["field"]) == (409, "id")


# -- bad input ----------------------------------------------------------------


async def test_malformed_json_is_400(world: World) -> None:
    status, err = await call(
        world,
        "PATCH",
        "/api/v1/tenants/tenant-a/settings",
        world.admin_a,
        data=b'{"recording_mode": ',
    )
    assert (status, err["error"]["code"]) == (400, "malformed_json")


async def test_non_object_json_is_400(world: World) -> None:
    status, err = await call(world, "POST", "/api/v1/tenants", world.operator, json=["a"])
    assert (status, err["error"]["code"]) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "field"),
    [
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"recording_mod": "opt_in"},
            "unknown_field",
            "settings.recording_mod",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"retention": {"keep": 1}},
            "unknown_field",
            "settings.retention.keep",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"transcription_enabled": "sometimes"},
            "invalid_field",
            "settings.transcription_enabled",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"retention": {"recordings_days": "ninety"}},
            "invalid_field",
            "settings.retention.recordings_days",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"retention": {"recordings_days": 100000}},
            "invalid_field",
            "settings.retention.recordings_days",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"recording_mode": "always"},
            "invalid_field",
            "settings.recording_mode",
        ),
        (
            "PATCH",
            "/api/v1/tenants/tenant-a/settings",
            {"region": "eu"},
            "invalid_field",
            "settings.region",
        ),
        (
            "POST",
            "/api/v1/tenants",
            {"id": "x2", "name": "X", "colour": "red"},
            "unknown_field",
            "colour",
        ),
        ("POST", "/api/v1/tenants", {"id": "Bad Id", "name": "X"}, "invalid_field", "id"),
        ("POST", "/api/v1/tenants", {"name": "X"}, "missing_field", "id"),
        ("POST", "/api/v1/tenants/tenant-a/numbers", {"number": "12"}, "invalid_field", "number"),
        (
            "POST",
            "/api/v1/tenants/tenant-a/numbers",
            {"number": "+65 1"},
            "invalid_field",
            "number",
        ),
        (
            "POST",
            "/api/v1/tenants/tenant-a/agents",
            {"username": "a", "display_name": "A", "skills": "x"},
            "invalid_field",
            "skills",
        ),
        (
            "POST",
            "/api/v1/tokens",
            {"role": "king", "tenant_id": "tenant-a"},
            "invalid_field",
            "role",
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    world: World, method: str, path: str, body: dict[str, Any], code: str, field: str
) -> None:
    token = world.operator if path in ("/api/v1/tenants", "/api/v1/tokens") else world.admin_a
    status, err = await call(world, method, path, token, json=body)
    assert status == 400, err
    assert err["error"]["code"] == code
    assert err["error"]["field"] == field


async def test_unknown_route_and_method_are_json(world: World) -> None:
    status, err = await call(world, "GET", "/api/v1/nothing", world.operator)
    assert (status, err["error"]["code"]) == (404, "not_found")
    status, err = await call(world, "PUT", "/api/v1/tenants", world.operator)
    assert (status, err["error"]["code"]) == (405, "method_not_allowed")


async def test_number_path_parameter_must_be_integer(world: World) -> None:
    status, err = await call(world, "DELETE", "/api/v1/tenants/tenant-b/numbers/abc", world.admin_b)
    assert (status, err["error"]["field"]) == (400, "number_id")
