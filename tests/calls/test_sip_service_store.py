"""SIP credentials and registrar bindings in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.sip.digest import ha1
from voicegw.sip.registrar import Binding
from voicegw.sip.transaction import Destination
from voicegw.store import sip_accounts, tenants
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
NOW = 1_800_000_000.0
REALM = "acme.voice.test"
AOR = "sip:alice@acme.voice.test"


async def make_tenant(sessions: Sessions, tenant_id: str = "acme") -> None:
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id=tenant_id, name=tenant_id, settings=TenantSettings()
        )


def binding(contact: str, expires_at: float = NOW + 600, cseq: int = 1) -> Binding:
    return Binding(
        aor=AOR,
        contact=contact,
        expires_at=expires_at,
        call_id="reg@ua",
        cseq=cseq,
        source=Destination("127.0.0.1", 5062, "UDP"),
        q=0.5,
    )


async def test_a_credential_keeps_only_ha1_digests_and_is_audited(sessions: Sessions) -> None:
    await make_tenant(sessions)
    async with sessions.begin() as session:
        await sip_accounts.create_credential(
            session,
            actor="admin",
            tenant_id="acme",
            username="alice",
            realm=REALM,
            password="s3cret",
        )
    async with sessions() as session:
        row = (await session.execute(select(sip_accounts.SipCredential))).scalar_one()
        stored = [str(v) for v in vars(row).values()]
        assert not any("s3cret" in value for value in stored)
        assert row.ha1_md5 == ha1("alice", REALM, "s3cret", "MD5")
        assert row.ha1_sha256 == ha1("alice", REALM, "s3cret", "SHA-256")
        audit_rows = (await session.execute(select(AuditEvent))).scalars().all()
        assert [e.action for e in audit_rows][-1] == "sip.credential.create"
        assert "s3cret" not in audit_rows[-1].details


async def test_find_credential_gives_the_owning_tenant_and_the_ha1_per_algorithm(
    sessions: Sessions,
) -> None:
    await make_tenant(sessions)
    async with sessions.begin() as session:
        await sip_accounts.create_credential(
            session, actor="admin", tenant_id="acme", username="alice", realm=REALM, password="pw"
        )
    async with sessions() as session:
        found = await sip_accounts.find_credential(session, REALM, "alice")
        assert found is not None and found.tenant_id == "acme"
        assert found.ha1_for("SHA-256") == ha1("alice", REALM, "pw", "SHA-256")
        assert found.ha1_for("MD5-sess") == ha1("alice", REALM, "pw", "MD5")
        assert await sip_accounts.find_credential(session, REALM, "bob") is None
        assert await sip_accounts.find_credential(session, "other.voice.test", "alice") is None


async def test_a_disabled_credential_yields_no_ha1(sessions: Sessions) -> None:
    await make_tenant(sessions)
    async with sessions.begin() as session:
        await sip_accounts.create_credential(
            session, actor="admin", tenant_id="acme", username="alice", realm=REALM, password="pw"
        )
    async with sessions.begin() as session:
        assert await sip_accounts.set_credential_enabled(
            session, actor="admin", tenant_id="acme", realm=REALM, username="alice", enabled=False
        )
        # Another tenant cannot touch acme's login.
        assert not await sip_accounts.set_credential_enabled(
            session, actor="admin", tenant_id="other", realm=REALM, username="alice", enabled=True
        )
    async with sessions() as session:
        found = await sip_accounts.find_credential(session, REALM, "alice")
        assert found is not None and found.ha1_for("MD5") is None


async def test_one_realm_holds_each_username_once(sessions: Sessions) -> None:
    await make_tenant(sessions)
    async with sessions.begin() as session:
        await sip_accounts.create_credential(
            session, actor="admin", tenant_id="acme", username="alice", realm=REALM, password="a"
        )
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            await sip_accounts.create_credential(
                session,
                actor="admin",
                tenant_id="acme",
                username="alice",
                realm=REALM,
                password="b",
            )


async def test_bindings_round_trip_update_and_delete(sessions: Sessions) -> None:
    await make_tenant(sessions)
    first, second = binding("sip:alice@10.0.0.1"), binding("sip:alice@10.0.0.2")
    async with sessions.begin() as session:
        await sip_accounts.apply_binding_changes(session, "acme", [first, second], [])
    async with sessions() as session:
        assert await sip_accounts.load_bindings(session, "acme", AOR) == [first, second]
        assert await sip_accounts.load_bindings(session, "other", AOR) == []

    refreshed = binding("sip:alice@10.0.0.1", expires_at=NOW + 1200, cseq=2)
    async with sessions.begin() as session:
        await sip_accounts.apply_binding_changes(session, "acme", [refreshed], [second])
    async with sessions() as session:
        assert await sip_accounts.load_bindings(session, "acme", AOR) == [refreshed]


async def test_live_bindings_and_purge_respect_expiry(sessions: Sessions) -> None:
    await make_tenant(sessions)
    old, fresh = binding("sip:alice@10.0.0.1", NOW - 1), binding("sip:alice@10.0.0.2", NOW + 60)
    async with sessions.begin() as session:
        await sip_accounts.apply_binding_changes(session, "acme", [old, fresh], [])
    async with sessions() as session:
        assert await sip_accounts.live_bindings(session, "acme", AOR, NOW) == [fresh]
    async with sessions.begin() as session:
        assert await sip_accounts.purge_expired(session, NOW) == 1
    async with sessions() as session:
        assert await sip_accounts.load_bindings(session, "acme", AOR) == [fresh]
