"""Processing records are stored (SQLite and PostgreSQL) without ever holding up a call.

Which vendor got which party's audio, for what, where and on which rule: the
policy's basis travels from the selection into every record, a bounded writer
stores them off the media path, and tenant admins read them over the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.privacy.regions import TransferMechanism
from voicegw.privacy.selection import SelectionRequest, select_provider
from voicegw.store import tenants, tokens
from voicegw.store.processing import ProcessingRecordWriter, find_processing_records
from voicegw.tenant_settings import TenantSettings

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC).timestamp()

LOCAL = ProviderCapabilities(
    name="pocketsphinx-local",
    subprocessor_id=None,
    processing_locations=frozenset(),
    purposes=frozenset({Purpose.ASR}),
    data_types=frozenset({DataType.AUDIO}),
    languages=frozenset({"en"}),
)
AZURE_SG = ProviderCapabilities(
    name="azure-sea",
    subprocessor_id="azure",
    processing_locations=frozenset({"sg"}),
    purposes=frozenset({Purpose.ASR}),
    data_types=frozenset({DataType.AUDIO}),
    languages=frozenset({"en"}),
)


def context_for(tenant: str, call_id: str, request: SelectionRequest) -> ProcessingContext:
    selection = select_provider(request, [AZURE_SG, LOCAL])
    return ProcessingContext(call_id=call_id, tenant=tenant, bases=selection.bases)


def used(
    context: ProcessingContext,
    provider: ProviderCapabilities,
    *,
    at: float = T0,
    party: str | None = "caller",
) -> ProcessingRecord:
    return ProcessingRecord.for_provider(
        context,
        provider,
        Purpose.ASR,
        started=at,
        ended=at + 2.5,
        outcome=Outcome.OK,
        audio_seconds=2.4,
        party=party,
    )


@pytest.fixture
async def two_tenants(sessions: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    async with sessions() as s, s.begin():
        for tid, region in (("acme", "sg"), ("globex", "eu")):
            await tenants.create_tenant(
                s, actor="test", tenant_id=tid, name=tid, settings=TenantSettings(region=region)
            )
        _, acme = await tokens.create_token(s, role="tenant_admin", tenant_id="acme")
        _, globex = await tokens.create_token(s, role="tenant_admin", tenant_id="globex")
        _, supervisor = await tokens.create_token(s, role="supervisor", tenant_id="acme")
    return {"acme": acme, "globex": globex, "supervisor": supervisor}


@pytest.fixture
async def writer(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[ProcessingRecordWriter]:
    w = ProcessingRecordWriter(sessions)
    w.start()
    yield w
    await w.aclose()


SG_IN_REGION = SelectionRequest(
    tenant_region="sg",
    purpose=Purpose.ASR,
    language="en",
    approved_subprocessors=frozenset({"azure"}),
)
EU_UNDER_SCC = SelectionRequest(
    tenant_region="eu",
    purpose=Purpose.ASR,
    language="en",
    approved_subprocessors=frozenset({"azure"}),
    cross_border_allowed=True,
    transfer_mechanism=TransferMechanism.SCC,
)


async def test_each_record_stores_vendor_party_purpose_location_and_the_rule_it_went_out_on(
    sessions: async_sessionmaker[AsyncSession],
    two_tenants: dict[str, str],
    writer: ProcessingRecordWriter,
) -> None:
    acme = context_for("acme", "call-1", SG_IN_REGION)
    globex = context_for("globex", "call-9", EU_UNDER_SCC)
    writer.submit(used(acme, AZURE_SG))
    writer.submit(used(acme, LOCAL, party="agent"))
    writer.submit(used(globex, AZURE_SG))
    await writer.flush()

    async with sessions() as s:
        rows = await find_processing_records(s, "acme", call_id="call-1")
        (eu,) = await find_processing_records(s, "globex", call_id="call-9")
        assert await find_processing_records(s, "globex", call_id="call-1") == []
    assert [(r.provider, r.subprocessor, r.party, r.locations, r.basis) for r in rows] == [
        ("azure-sea", "azure", "caller", ["sg"], "in_region"),
        ("pocketsphinx-local", None, "agent", [], "on_node"),
    ]
    assert (eu.basis, eu.purpose, eu.audio_seconds, eu.outcome) == (
        "cross_border_scc",
        "asr",
        2.4,
        "ok",
    )
    assert writer.stats.written == 3 and writer.stats.lost == 0


async def test_submit_never_waits_for_a_locked_database_and_everything_lands_after(
    sessions: async_sessionmaker[AsyncSession],
    two_tenants: dict[str, str],
    writer: ProcessingRecordWriter,
) -> None:
    acme = context_for("acme", "call-locked", SG_IN_REGION)
    records = [used(acme, AZURE_SG, at=T0 + i) for i in range(500)]
    async with sessions() as blocker, blocker.begin():
        # SQLite: the first statement begins IMMEDIATE, so it holds the write lock;
        # PostgreSQL: an explicit table lock blocks every insert.
        await blocker.execute(text("SELECT 1"))
        if blocker.bind.dialect.name == "postgresql":
            await blocker.execute(text("LOCK TABLE processing_records IN EXCLUSIVE MODE"))
        started = time.perf_counter()
        for record in records:
            writer.submit(record)
        submitting = time.perf_counter() - started
        await asyncio.sleep(0.5)  # the writer is stuck behind the lock meanwhile
        assert writer.stats.written == 0
    # Queued at once (tens of microseconds each, even on a loaded machine), not after the
    # lock: a submit that touched the database would have waited the whole 0.5 s.
    assert submitting < 0.1
    await writer.flush()
    async with sessions() as s:
        rows = await find_processing_records(s, "acme", call_id="call-locked", limit=1000)
    assert len(rows) == 500 and writer.stats.lost == 0


def dropped_metric() -> float:
    value = REGISTRY.get_sample_value("voicegw_processing_records_total", {"fate": "dropped"})
    return value or 0.0


async def test_a_full_queue_counts_what_it_drops_and_keeps_the_rest(
    sessions: async_sessionmaker[AsyncSession], two_tenants: dict[str, str]
) -> None:
    writer = ProcessingRecordWriter(sessions, max_queue=3)  # not started: nothing drains
    acme = context_for("acme", "call-full", SG_IN_REGION)
    dropped_before = dropped_metric()
    for i in range(5):
        writer.submit(used(acme, AZURE_SG, at=T0 + i))
    assert (writer.pending, writer.stats.dropped) == (3, 2)
    assert dropped_metric() == dropped_before + 2  # operators see it too
    await writer.aclose()  # flushes what was queued
    async with sessions() as s:
        rows = await find_processing_records(s, "acme", call_id="call-full")
    assert [r.started_at.replace(tzinfo=UTC).timestamp() for r in rows] == [T0, T0 + 1, T0 + 2]
    assert (writer.stats.written, writer.stats.dropped, writer.stats.failed) == (3, 2, 0)
    writer.submit(used(acme, AZURE_SG))  # after close: counted, not silently lost
    assert writer.stats.dropped == 3


async def test_a_row_the_database_refuses_costs_only_itself(
    sessions: async_sessionmaker[AsyncSession],
    two_tenants: dict[str, str],
    writer: ProcessingRecordWriter,
) -> None:
    acme = context_for("acme", "call-mixed", SG_IN_REGION)
    ghost = context_for("no-such-tenant", "call-mixed", SG_IN_REGION)  # foreign key fails
    writer.submit(used(acme, AZURE_SG, at=T0))
    writer.submit(used(ghost, AZURE_SG, at=T0 + 1))
    writer.submit(used(acme, AZURE_SG, at=T0 + 2))
    await writer.flush()
    async with sessions() as s:
        rows = await find_processing_records(s, "acme", call_id="call-mixed")
    assert len(rows) == 2
    assert (writer.stats.written, writer.stats.failed) == (2, 1)


async def test_close_flushes_what_is_queued(
    sessions: async_sessionmaker[AsyncSession], two_tenants: dict[str, str]
) -> None:
    writer = ProcessingRecordWriter(sessions, batch=7)
    writer.start()
    acme = context_for("acme", "call-close", SG_IN_REGION)
    for i in range(50):
        writer.submit(used(acme, LOCAL, at=T0 + i))
    await writer.aclose()
    async with sessions() as s:
        assert len(await find_processing_records(s, "acme", call_id="call-close")) == 50
    assert writer.stats.lost == 0


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
async def client(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    c = TestClient(TestServer(create_app(sessions, tmp_path / "var")))
    await c.start_server()
    yield c
    await c.close()


async def get(client: Any, token: str, **query: str) -> tuple[int, Any]:
    path = "/api/v1/tenants/acme/processing-records"
    headers = {"Authorization": f"Bearer {token}"}
    async with client.get(path, params=query, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_tenant_admin_lists_a_calls_records_and_a_time_range_page_by_page(
    client: Any, two_tenants: dict[str, str], writer: ProcessingRecordWriter
) -> None:
    first = context_for("acme", "call-a", SG_IN_REGION)
    second = context_for("acme", "call-b", SG_IN_REGION)
    writer.submit(used(first, AZURE_SG, at=T0))
    writer.submit(used(first, LOCAL, at=T0 + 60, party="agent"))
    writer.submit(used(second, AZURE_SG, at=T0 + 3600))
    await writer.flush()
    token = two_tenants["acme"]

    status, body = await get(client, token, call_id="call-a")
    assert status == 200
    assert [(r["provider"], r["party"], r["basis"]) for r in body["processing_records"]] == [
        ("azure-sea", "caller", "in_region"),
        ("pocketsphinx-local", "agent", "on_node"),
    ]
    record = body["processing_records"][0]
    assert record["locations"] == ["sg"] and record["purpose"] == "asr"
    assert record["started_at"] == datetime.fromtimestamp(T0, UTC).isoformat()

    since = datetime.fromtimestamp(T0 + 30, UTC)
    status, body = await get(
        client, token, since=since.isoformat(), until=(since + timedelta(hours=2)).isoformat()
    )
    assert [r["call_id"] for r in body["processing_records"]] == ["call-a", "call-b"]

    status, page = await get(client, token, since=since.isoformat(), limit="1")
    assert len(page["processing_records"]) == 1 and page["next"] is not None
    status, rest = await get(
        client, token, since=since.isoformat(), limit="1", after=str(page["next"])
    )
    assert [r["call_id"] for r in rest["processing_records"]] == ["call-b"]
    assert rest["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "call_id"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-23T09:00:00"}, "since"),  # no offset: ambiguous
        ({"since": "2026-11-23T10:00:00Z", "until": "2026-11-23T09:00:00Z"}, "until"),
        ({"call_id": "c", "limit": "0"}, "limit"),
        ({"call_id": "c", "after": "x"}, "after"),
    ],
)
async def test_bad_queries_get_400_naming_the_field(
    client: Any, two_tenants: dict[str, str], query: dict[str, str], field: str
) -> None:
    status, body = await get(client, two_tenants["acme"], **query)
    assert status == 400
    assert body["error"]["field"] == field and body["error"]["message"]


async def test_another_tenants_admin_and_a_supervisor_see_nothing(
    client: Any, two_tenants: dict[str, str], writer: ProcessingRecordWriter
) -> None:
    writer.submit(used(context_for("acme", "call-a", SG_IN_REGION), AZURE_SG))
    await writer.flush()
    for token in (two_tenants["globex"], two_tenants["supervisor"]):
        status, body = await get(client, token, call_id="call-a")
        assert status in (403, 404) and "processing_records" not in body
