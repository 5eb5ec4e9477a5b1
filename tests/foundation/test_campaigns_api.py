"""Outbound campaigns through the admin API: stored per tenant, audited, validated.

Placing calls needs a SIP call layer (``tests/calls/test_campaign_calls.py``);
here the app has none, so what can be decided before dialling is checked: the
callee's number, a disabled campaign, and a node that places no calls.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.foundation.conftest import World, call
from voicegw.store import audit
from voicegw.store import campaigns as store
from voicegw.store.models import AuditEvent

CAMPAIGNS = "/api/v1/tenants/tenant-b/campaigns"
RENEWALS: dict[str, Any] = {
    "id": "renewals",
    "name": "Contract renewals",
    "trunk": "carrier-b",
    "recording_mode": "opt_in",
}


async def test_an_admin_creates_lists_and_changes_a_campaign(
    world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    status, created = await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS)
    assert status == 201, created
    assert created["recording_mode"] == "opt_in" and created["enabled"] is True
    status, listed = await call(world, "GET", CAMPAIGNS, world.admin_b)
    assert status == 200
    assert [c["id"] for c in listed["campaigns"]] == ["renewals"]

    path = f"{CAMPAIGNS}/renewals"
    status, changed = await call(
        world, "PATCH", path, world.admin_b, json={"enabled": False, "recording_mode": None}
    )
    assert status == 200, changed
    assert changed["enabled"] is False and changed["recording_mode"] is None
    assert changed["name"] == RENEWALS["name"] and changed["trunk"] == "carrier-b"

    async with sessions() as session:
        row = await store.get_campaign(session, "tenant-b", "renewals")
        query = select(AuditEvent).where(AuditEvent.tenant_id == "tenant-b")
        events = list((await session.execute(query.order_by(AuditEvent.seq))).scalars())
        chain = await audit.verify(session)
    assert row is not None and row.enabled is False and row.recording_mode is None
    assert chain.ok, chain
    campaign_events = [e for e in events if e.action.startswith("tenant.campaign.")]
    assert [e.action for e in campaign_events] == [
        "tenant.campaign.create",
        "tenant.campaign.update",
    ]
    assert all(e.target == "tenant/tenant-b/campaigns/renewals" for e in campaign_events)
    assert json.loads(campaign_events[1].details) == {
        "enabled": {"from": True, "to": False},
        "recording_mode": {"from": "opt_in", "to": None},
    }


async def test_campaigns_of_one_tenant_are_invisible_to_another(world: World) -> None:
    assert (await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS))[0] == 201
    # Tenant A may use the same id for its own campaign.
    own = "/api/v1/tenants/tenant-a/campaigns"
    assert (await call(world, "POST", own, world.admin_a, json=RENEWALS))[0] == 201

    # Another tenant's campaigns are a 404, as its other resources are.
    assert (await call(world, "GET", CAMPAIGNS, world.admin_a))[0] == 404
    patch = {"enabled": False}
    status, _ = await call(world, "PATCH", f"{CAMPAIGNS}/renewals", world.admin_a, json=patch)
    assert status == 404
    dial = {"to": "+4930123456700"}
    status, _ = await call(world, "POST", f"{CAMPAIGNS}/renewals/calls", world.admin_a, json=dial)
    assert status == 404
    _, mine = await call(world, "GET", own, world.admin_a)
    assert [c["id"] for c in mine["campaigns"]] == ["renewals"]
    _, theirs = await call(world, "GET", CAMPAIGNS, world.operator)
    assert len(theirs["campaigns"]) == 1


async def test_a_supervisor_reads_campaigns_but_cannot_change_or_dial(world: World) -> None:
    path = "/api/v1/tenants/tenant-a/campaigns"
    assert (await call(world, "POST", path, world.admin_a, json=RENEWALS))[0] == 201
    assert (await call(world, "GET", path, world.supervisor_a))[0] == 200
    status, _ = await call(world, "POST", path, world.supervisor_a, json={**RENEWALS, "id": "x2"})
    assert status == 403
    dial = {"to": "+4930123456700"}
    status, _ = await call(world, "POST", f"{path}/renewals/calls", world.supervisor_a, json=dial)
    assert status == 403


async def test_bad_campaign_input_is_a_400_naming_the_field(world: World) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**RENEWALS, "id": "Not A Slug"}, "id"),
        ({**RENEWALS, "recording_mode": "always"}, "recording_mode"),
        ({**RENEWALS, "trunk": ""}, "trunk"),
        ({k: v for k, v in RENEWALS.items() if k != "trunk"}, "trunk"),
        ({**RENEWALS, "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        status, answer = await call(world, "POST", CAMPAIGNS, world.admin_b, json=body)
        assert status == 400, (body, answer)
        assert answer["error"]["field"] == field, (body, answer)
    status, answer = await call(
        world, "PATCH", f"{CAMPAIGNS}/nope", world.admin_b, json={"enabled": True}
    )
    assert status == 404 and answer["error"]["code"] == "not_found"


async def test_a_duplicate_campaign_id_is_a_409(world: World) -> None:
    assert (await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS))[0] == 201
    status, answer = await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS)
    assert status == 409 and answer["error"]["field"] == "id"


async def test_a_campaign_call_needs_a_valid_e164_number(world: World) -> None:
    assert (await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS))[0] == 201
    path = f"{CAMPAIGNS}/renewals/calls"
    for to in ("0301234567", "+49", "+999123456789", "call me"):
        status, answer = await call(world, "POST", path, world.admin_b, json={"to": to})
        assert status == 400, (to, answer)
        assert answer["error"]["field"] == "to"
    status, answer = await call(world, "POST", path, world.admin_b, json={})
    assert status == 400 and answer["error"]["field"] == "to"


async def test_a_disabled_campaign_places_no_call(world: World) -> None:
    body = {**RENEWALS, "enabled": False}
    assert (await call(world, "POST", CAMPAIGNS, world.admin_b, json=body))[0] == 201
    path = f"{CAMPAIGNS}/renewals/calls"
    status, answer = await call(world, "POST", path, world.admin_b, json={"to": "+4930123456700"})
    assert status == 409, answer
    assert "disabled" in answer["error"]["message"]


async def test_a_node_without_a_call_layer_answers_503(world: World) -> None:
    assert (await call(world, "POST", CAMPAIGNS, world.admin_b, json=RENEWALS))[0] == 201
    path = f"{CAMPAIGNS}/renewals/calls"
    status, answer = await call(world, "POST", path, world.admin_b, json={"to": "+4930123456700"})
    assert status == 503, answer
