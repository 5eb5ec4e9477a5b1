"""A real linphonec registers with SHA-256 digest against the SIP service and unregisters on quit.

linphonec 5.1 is driven through stdin (``register``, ``status register``,
``quit``) with a config bound to 127.0.0.1 (TESTING.md). Unlike baresip 1.0
it copes with the default SHA-256 + MD5 challenge and picks SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.sip.transport import ListenAddresses
from voicegw.store import sip_accounts, tenants
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("linphonec") is None, reason="linphonec is not installed"),
]

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
AOR = f"sip:alice@{REALM}"
SECRET = b"e2e-nonce-secret-0123456789"
TIMEOUT = 15.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Linphonec:
    """linphonec on 127.0.0.1, commands on stdin, answers read from stdout."""

    def __init__(self, home: Path) -> None:
        self.home = home
        (home / ".local" / "share" / "linphone").mkdir(parents=True)
        self.config = home / "linphonerc"
        port = free_udp_port()
        self.config.write_text(
            "[sip]\nuse_ipv6=0\nbind_address=127.0.0.1\n"
            f"sip_port={port}\nsip_tcp_port=0\n[rtp]\nbind_address=127.0.0.1\n"
        )
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "linphonec",
            "-c",
            str(self.config),
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def command(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        # Bounded: a linphonec that stops reading stdin must not hang the test.
        await asyncio.wait_for(self.process.stdin.drain(), TIMEOUT)

    async def wait_for_line(self, needle: str, deadline: float, poll: str | None = None) -> str:
        """Read stdout until a line contains ``needle``; send ``poll`` once a second meanwhile."""
        assert self.process is not None and self.process.stdout is not None
        next_poll = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            if poll is not None and time.monotonic() >= next_poll:
                await self.command(poll)
                next_poll = time.monotonic() + 1.0
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), min(left, 1.0))
            except TimeoutError:
                continue
            if not raw:
                break
            line = raw.decode(errors="replace")
            self.output.append(line)
            if needle in line:
                return line
        raise AssertionError(f"linphonec never said {needle!r}: {''.join(self.output)[-2000:]}")

    async def quit(self) -> None:
        """Quit as a user would: linphonec unregisters on the way out."""
        if self.process is None or self.process.returncode is not None:
            return
        await self.command("quit")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), TIMEOUT)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


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
    phone = Linphonec(tmp_path)
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
