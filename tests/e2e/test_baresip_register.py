"""A real baresip registers with digest against the SIP service; bindings outlive a restart.

baresip 1.0 is driven headless: a config dir per instance, ``-n 127.0.0.1``,
and its ``ctrl_tcp`` module, whose netstring-framed JSON events say whether
the registration succeeded (``REGISTER_OK``) or failed (``REGISTER_FAIL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.sip.security import SecurityEvent
from voicegw.sip.transport import ListenAddresses
from voicegw.store import sip_accounts, tenants
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
AOR = f"sip:alice@{REALM}"
SECRET = b"e2e-nonce-secret-0123456789"
EVENT_TIMEOUT = 15.0


def free_port_pair() -> int:
    """A UDP port whose TCP twin and the next port (baresip's TLS listener) are free too."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        try:
            for candidate, kind in ((port, socket.SOCK_STREAM), (port + 1, socket.SOCK_STREAM)):
                with socket.socket(socket.AF_INET, kind) as check:
                    check.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Baresip:
    """One headless baresip, driven and watched through ctrl_tcp.

    It starts with no account; :meth:`add_account` creates one over the
    control connection (``uanew``), so no registration event can slip by
    before we listen.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.sip_port = free_port_pair()
        self.ctrl_port = free_tcp_port()
        home.mkdir(parents=True)
        (home / "config").write_text(
            "\n".join(
                [
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "module_path /usr/lib/baresip/modules",
                    "module g711.so",
                    "module_app account.so",
                    "module_app menu.so",
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
                    "",
                ]
            )
        )
        (home / "accounts").write_text("")
        self.process: asyncio.subprocess.Process | None = None
        self._log = (home / "stdout.log").open("wb")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = b""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "baresip",
            "-f",
            str(self.home),
            "-n",
            "127.0.0.1",
            "-t",
            str(int(EVENT_TIMEOUT * 3)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + EVENT_TIMEOUT
        while self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self.ctrl_port
                )
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"baresip ctrl_tcp never listened: {self.log()}") from None
                await asyncio.sleep(0.05)

    async def add_account(self, user: str, password: str, gateway_port: int) -> None:
        account = (
            f"<sip:{user}@{REALM};transport=udp>;auth_user={user};auth_pass={password}"
            f';outbound="sip:127.0.0.1:{gateway_port};transport=udp";regint=60'
        )
        command = json.dumps({"command": "uanew", "params": account, "token": "uanew"}).encode()
        assert self._writer is not None
        self._writer.write(b"%d:%s," % (len(command), command))
        await self._writer.drain()

    async def registration_event(self, within: float = EVENT_TIMEOUT) -> str | None:
        """``REGISTER_OK`` or ``REGISTER_FAIL``, whichever comes first; None if neither does."""
        assert self._reader is not None
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            for event in self._events():
                if event.get("type") in ("REGISTER_OK", "REGISTER_FAIL"):
                    return str(event["type"])
            try:
                chunk = await asyncio.wait_for(self._reader.read(4096), left)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        return None

    def _events(self) -> list[dict[str, object]]:
        """Complete netstrings (``<length>:<json>,``) taken off the buffer."""
        events = []
        while (colon := self._buffer.find(b":")) > 0:
            length = int(self._buffer[:colon])
            if len(self._buffer) < colon + 2 + length:
                break
            payload = self._buffer[colon + 1 : colon + 1 + length]
            self._buffer = self._buffer[colon + 2 + length :]
            message = json.loads(payload)
            if message.get("event"):
                events.append(message)
        return events

    def log(self) -> str:
        path = self.home / "stdout.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        self._log.close()


async def start_service(
    sessions: Sessions, on_security_event: Callable[[SecurityEvent], None] | None = None
) -> SipService:
    # baresip 1.0 (libre) fails the whole REGISTER when any challenge is not MD5
    # ("Register: Function not implemented"), so this fleet is configured MD5-only.
    config = SipServiceConfig(
        domain=DOMAIN,
        nonce_secret=SECRET,
        listen=ListenAddresses(udp=("127.0.0.1", 0)),
        digest_algorithms=("MD5",),
    )
    service = SipService(config, sessions, on_security_event=on_security_event)
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
    phone = Baresip(tmp_path / "alice")
    try:
        await phone.start()
        await phone.add_account("alice", "secret", service.transports.bound.udp[1])
        assert await phone.registration_event() == "REGISTER_OK", phone.log()
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
    phone = Baresip(tmp_path / "mallory")
    try:
        await phone.start()
        await phone.add_account("alice", "not-the-secret", service.transports.bound.udp[1])
        await asyncio.wait_for(banned.wait(), EVENT_TIMEOUT)
        assert [e.source for e in service.security_events] == ["127.0.0.1"]
        # Banned: from now on its retransmissions are dropped unanswered.
        assert await phone.registration_event(within=1.0) in (None, "REGISTER_FAIL")
        assert await bindings(sessions) == []
    finally:
        await phone.stop()
        await service.stop()
