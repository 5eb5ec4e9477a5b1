"""The audit log is a hash chain: edits, deletions and reorderings made directly in the
database are found, and the first broken event is named."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.store import audit


async def write_events(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    for i in range(n):
        async with sessions() as s, s.begin():
            await audit.append(
                s,
                actor="token:abc",
                tenant_id="acme",
                action="tenant.settings.update",
                target="tenant/acme/settings",
                details={"i": i},
            )


async def verify(sessions: async_sessionmaker[AsyncSession]) -> audit.VerifyResult:
    async with sessions() as s:
        return await audit.verify(s)


async def run_sql(sessions: async_sessionmaker[AsyncSession], sql: str) -> None:
    async with sessions() as s, s.begin():
        await s.execute(text(sql))


async def test_intact_chain_verifies(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_events(sessions, 5)
    result = await verify(sessions)
    assert result.ok
    assert result.events == 5


async def test_events_link_to_their_predecessor(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_events(sessions, 3)
    async with sessions() as s:
        rows = (
            await s.execute(text("SELECT seq, prev_hash, hash FROM audit_events ORDER BY seq"))
        ).all()
    assert rows[0].prev_hash == audit.GENESIS
    assert rows[1].prev_hash == rows[0].hash
    assert rows[2].prev_hash == rows[1].hash


async def test_empty_log_verifies(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert (await verify(sessions)).ok


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("UPDATE audit_events SET details = 'tampered' WHERE seq = 3", 3),
        ("UPDATE audit_events SET actor = 'token:evil' WHERE seq = 2", 2),
        ("UPDATE audit_events SET tenant_id = 'other' WHERE seq = 4", 4),
        ("DELETE FROM audit_events WHERE seq = 2", 2),
        ("DELETE FROM audit_events WHERE seq = 5", 5),
    ],
    ids=["edit-details", "edit-actor", "edit-tenant", "delete-middle", "delete-tail"],
)
async def test_tampering_is_detected(
    sessions: async_sessionmaker[AsyncSession], tamper: str, first_bad: int
) -> None:
    await write_events(sessions, 5)
    await run_sql(sessions, tamper)
    result = await verify(sessions)
    assert not result.ok
    assert result.first_bad_seq == first_bad


async def test_reordering_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_events(sessions, 5)
    # Swap events 2 and 3 (renumber through a free value).
    await run_sql(sessions, "UPDATE audit_events SET seq = 1000 WHERE seq = 2")
    await run_sql(sessions, "UPDATE audit_events SET seq = 2 WHERE seq = 3")
    await run_sql(sessions, "UPDATE audit_events SET seq = 3 WHERE seq = 1000")
    result = await verify(sessions)
    assert not result.ok
    assert result.first_bad_seq == 2
    assert "deleted or reordered" in (result.problem or "")


async def test_rehashing_an_edit_still_breaks_the_next_link(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """An attacker who recomputes the edited event's hash is caught at the next event."""
    await write_events(sessions, 4)
    async with sessions() as s, s.begin():
        row = (await s.execute(text("SELECT * FROM audit_events WHERE seq = 2"))).one()
        forged = audit.event_hash(
            row.prev_hash,
            2,
            row.created_at,
            "token:evil",
            row.tenant_id,
            row.action,
            row.target,
            row.details,
        )
        await s.execute(
            text("UPDATE audit_events SET actor = 'token:evil', hash = :h WHERE seq = 2"),
            {"h": forged},
        )
    result = await verify(sessions)
    assert result.first_bad_seq == 3


async def test_concurrent_appends_keep_one_unbroken_chain(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Many calls audit at once (consent decisions, pauses): no lost or forked links."""

    async def one(i: int) -> None:
        async with sessions() as s, s.begin():
            await audit.append(s, actor="call", action="consent.decision", target=f"call/{i}")

    await asyncio.gather(*(one(i) for i in range(25)))
    result = await verify(sessions)
    assert result.ok
    assert result.events == 25
