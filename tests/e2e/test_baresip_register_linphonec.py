"""A real linphonec registers with SHA-256 digest against the SIP service and unregisters on quit.

linphonec 5.1 is driven through stdin (``register``, ``status register``,
``quit``) with a config bound to 127.0.0.1 (TESTING.md). Unlike baresip 1.0
it copes with the default SHA-256 + MD5 challenge and picks SHA-256.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.peers import DOMAIN, REALM, SECRET, Linphonec, Sessions
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.sip.transport import ListenAddresses
from voicegw.store import sip_accounts, tenants
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("linphonec") is None, reason="linphonec is not installed"),
]

AOR = f"sip:alice@{REALM}"
TIMEOUT = 15.0


async def live_contacts(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        found = await sip_accounts.live_bindings(session, "acme", AOR, time.time())
        return [b.contact for b in found]


async def test_linphonec_registers_with_sha256_and_unregisters_on_quit(
    sessions: Sessions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        await sip_accounts.create_credential(
            session, actor="test", tenant_id="acme", username="alice", realm=REALM, password="pw1"
        )
    config = SipServiceConfig(
        domain=DOMAIN, nonce_secret=SECRET, listen=ListenAddresses(udp=("127.0.0.1", 0))
    )
    service = SipService(config, sessions)
    bound = await service.start()
    assert bound.udp is not None
    phone = Linphonec(tmp_path, timeout=TIMEOUT)
    try:
        with caplog.at_level(logging.INFO, logger="voicegw.calls.sip"):
            await phone.start()
            await phone.command(f"register {AOR} sip:127.0.0.1:{bound.udp[1]} pw1")
            deadline = time.monotonic() + TIMEOUT
            await phone.wait_for_line("registered, identity=", deadline, poll="status register")
            assert len(await live_contacts(sessions)) == 1
            registers = [r for r in caplog.records if r.getMessage() == "sip.register"]
            assert [(r.__dict__["status"], r.__dict__["algorithm"]) for r in registers] == [
                (200, "SHA-256")
            ]
            await phone.quit()
        assert phone.process is not None and phone.process.returncode is not None
        assert await live_contacts(sessions) == []
    finally:
        await phone.kill()
        await service.stop()
