"""SIP logins through the admin API: digests only, tenant-scoped, audited."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.foundation.conftest import World, call

PASSWORD = "correct horse battery"


async def test_tenant_admin_creates_a_sip_login_stored_as_digests_only(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    status, user = await call(
        world, "POST", "/api/v1/tenants/tenant-a/sip-users", world.admin_a,
        json={"username": "desk-101", "password": PASSWORD},
    )  # fmt: skip
    assert status == 201
    assert user == {
        "username": "desk-101",
        "realm": "tenant-a.voicegw.local",
        "aor": "sip:desk-101@tenant-a.voicegw.local",
        "enabled": True,
    }
    async with sessions() as s:
        rows = (await s.execute(text("SELECT * FROM sip_credentials"))).all()
        dump = repr(rows) + repr((await s.execute(text("SELECT * FROM audit_events"))).all())
    assert len(rows) == 1
    assert PASSWORD not in dump
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-a/audit", world.admin_a)
    assert events["events"][-1]["action"] == "sip.credential.create"


async def test_short_password_duplicate_and_bad_username_are_refused(world: World) -> None:
    path = "/api/v1/tenants/tenant-a/sip-users"
    status, err = await call(
        world, "POST", path, world.admin_a, json={"username": "a", "password": "short"}
    )
    assert (status, err["error"]["field"]) == (400, "password")
    ok = {"username": "desk-1", "password": PASSWORD}
    assert (await call(world, "POST", path, world.admin_a, json=ok))[0] == 201
    status, err = await call(world, "POST", path, world.admin_a, json=ok)
    assert (status, err["error"]["code"]) == (409, "conflict")
    status, err = await call(
        world, "POST", path, world.admin_a, json={"username": "no spaces", "password": PASSWORD}
    )
    assert (status, err["error"]["field"]) == (400, "username")


async def test_other_tenants_sip_logins_are_invisible_and_untouchable(world: World) -> None:
    path = "/api/v1/tenants/tenant-b/sip-users"
    await call(world, "POST", path, world.admin_b, json={"username": "bob", "password": PASSWORD})
    assert (await call(world, "GET", path, world.admin_a))[0] == 404
    assert (
        await call(
            world, "POST", path, world.admin_a, json={"username": "eve", "password": PASSWORD}
        )
    )[0] == 404
    assert (await call(world, "DELETE", f"{path}/bob", world.admin_a))[0] == 404
    _, listing = await call(world, "GET", path, world.admin_b)
    assert listing["sip_users"] == [
        {
            "username": "bob",
            "realm": "tenant-b.voicegw.local",
            "aor": "sip:bob@tenant-b.voicegw.local",
            "enabled": True,
        }
    ]


async def test_disabling_a_login(world: World) -> None:
    path = "/api/v1/tenants/tenant-a/sip-users"
    await call(
        world, "POST", path, world.admin_a, json={"username": "desk-2", "password": PASSWORD}
    )
    assert (await call(world, "DELETE", f"{path}/desk-2", world.admin_a))[0] == 200
    _, listing = await call(world, "GET", path, world.supervisor_a)
    assert listing["sip_users"][0]["enabled"] is False
    assert (await call(world, "DELETE", f"{path}/nobody", world.admin_a))[0] == 404
