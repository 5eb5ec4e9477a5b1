"""A real baresip registers with digest against the SIP service; bindings outlive a restart.

baresip 1.0 is driven headless: a config dir per instance, ``-n 127.0.0.1``,
and its ``ctrl_tcp`` module, whose netstring-framed JSON events say whether
the registration succeeded (``REGISTER_OK``) or failed (``REGISTER_FAIL``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.peers import REALM, SECRET, Baresip, Sessions, loopback_sip_service
from voicegw.calls.sip_service import SipService
from voicegw.sip.security import SecurityEvent
from voicegw.store import sip_accounts, tenants
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

AOR = f"sip:alice@{REALM}"
EVENT_TIMEOUT = 15.0


async def registration_event(phone: Baresip, within: float = EVENT_TIMEOUT) -> str | None:
    """``REGISTER_OK`` or ``REGISTER_FAIL``, whichever comes first; None if neither does."""
    try:
        return await phone.event("REGISTER_OK", "REGISTER_FAIL", within=within)
    except AssertionError:  # no event in time, or baresip closed ctrl_tcp
        return None


def signalling_phone(home: Path) -> Baresip:
    """A baresip without audio: registrations only."""
    return Baresip(home, event_timeout=EVENT_TIMEOUT, quit_after=int(EVENT_TIMEOUT * 3))


async def start_service(
    sessions: Sessions, on_security_event: Callable[[SecurityEvent], None] | None = None
) -> SipService:
    service = loopback_sip_service(sessions, SECRET, on_security_event=on_security_event)
    await service.start()
    return service


@pytest.fixture
async def sessions_with_alice(sessions: Sessions) -> Sessions:
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        await sip_accounts.create_credential(
            session,
            actor="test",
            tenant_id="acme",
            username="alice",
            realm=REALM,
            password="secret",
        )
    return sessions


async def bindings(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        found = await sip_accounts.live_bindings(session, "acme", AOR, time.time())
        return [b.contact for b in found]


async def test_baresip_registers_with_digest_and_the_binding_survives_a_restart(
    sessions_with_alice: Sessions, tmp_path: Path
) -> None:
    sessions = sessions_with_alice
    service = await start_service(sessions)
    assert service.transports.bound.udp is not None
    phone = signalling_phone(tmp_path / "alice")
    try:
        await phone.start()
        await phone.add_account("alice", "secret", service.transports.bound.udp[1])
        assert await registration_event(phone) == "REGISTER_OK", phone.log()
        contacts = await bindings(sessions)
        assert len(contacts) == 1
        assert f"@127.0.0.1:{phone.sip_port}" in contacts[0]
    finally:
        await phone.stop()
        await service.stop()

    restarted = await start_service(sessions)
    try:
        assert await bindings(sessions) == contacts
    finally:
        await restarted.stop()


async def test_baresip_with_a_wrong_password_is_refused_banned_and_never_bound(
    sessions_with_alice: Sessions, tmp_path: Path
) -> None:
    """baresip 1.0 answers every fresh nonce again, so a wrong password loops until the ban."""
    sessions = sessions_with_alice
    banned = asyncio.Event()
    service = await start_service(sessions, on_security_event=lambda _: banned.set())
    assert service.transports.bound.udp is not None
    phone = signalling_phone(tmp_path / "mallory")
    try:
        await phone.start()
        await phone.add_account("alice", "not-the-secret", service.transports.bound.udp[1])
        await asyncio.wait_for(banned.wait(), EVENT_TIMEOUT)
        assert [e.source for e in service.security_events] == ["127.0.0.1"]
        # Banned: from now on its retransmissions are dropped unanswered.
        assert await registration_event(phone, within=1.0) in (None, "REGISTER_FAIL")
        assert await bindings(sessions) == []
    finally:
        await phone.stop()
        await service.stop()
