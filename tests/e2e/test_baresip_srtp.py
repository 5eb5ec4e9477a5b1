"""A real baresip with mandatory SDES-SRTP (RTP/SAVP, ``mediaenc=srtp-mand``) calls echo.

baresip only plays what authenticates under the key we answered with, so
hearing its own audio back proves both directions are SRTP end to end. The
gateway's leg gets a recording SRTP context (a real one that also keeps each
datagram it hands to the socket) to show that no plain G.711 went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import EndReason, InboundCall, SipCalls, SipCallsConfig
from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.media.ports import PortAllocator
from voicegw.media.srtp import SrtpContext
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
    pytest.mark.skipif(
        not Path("/usr/lib/baresip/modules/srtp.so").exists(), reason="no baresip srtp module"
    ),
]

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
ECHO_URI = f"sip:echo@{REALM}"
TIMEOUT = 10.0
RATE = 8000
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than the call


def free_udp_port_pair() -> int:
    """A port whose TCP twin and the next port (baresip's TLS listener) are free too."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        try:
            for candidate in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as check:
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


def tone_sequence(seconds: float, seed: int = 4568) -> np.ndarray:
    """Non-repeating 100 ms chirps (300-3000 Hz): one unambiguous alignment."""
    rng = np.random.default_rng(seed)
    step = RATE // 10
    t = np.arange(step) / RATE
    pieces = []
    for _ in range(int(seconds * 10)):
        f0, f1 = rng.uniform(300, 3000, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t * 5)
        pieces.append(0.4 * np.sin(phase) * np.hanning(step) ** 0.25)
    return np.concatenate(pieces).astype(np.float32)


def aligned_correlation(sent: np.ndarray, received: np.ndarray) -> float:
    """Normalised correlation of ``received`` with ``sent`` at the best lag under a second."""
    n = len(sent) + len(received)
    xcorr = np.fft.irfft(np.fft.rfft(received, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(xcorr[:RATE]))
    length = min(len(sent), len(received) - lag)
    a, b = sent[:length], received[lag : lag + length]
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class RecordingSrtp(SrtpContext):
    """A real SDES context that also keeps (plain, protected) for every RTP packet sent."""

    def __init__(self, suite: str, local: bytes, remote: bytes) -> None:
        super().__init__(suite, local, remote)
        self.sent: list[tuple[bytes, bytes]] = []

    def protect_rtp(self, packet: bytes) -> bytes | None:
        protected = super().protect_rtp(packet)
        if protected is not None and len(self.sent) < 1000:
            self.sent.append((packet, protected))
        return protected


class Baresip:
    """One headless baresip with the srtp module, driven through ctrl_tcp."""

    def __init__(self, home: Path, source_wav: Path) -> None:
        self.home = home
        self.ctrl_port = free_tcp_port()
        self.snd_path = home / "snd"
        self.snd_path.mkdir(parents=True)
        lines = [
            f"sip_listen 127.0.0.1:{free_udp_port_pair()}",
            "module_path /usr/lib/baresip/modules",
            f"audio_source aufile,{source_wav}",
            "audio_player aufile,/dev/null",
            "audio_alert aufile,/dev/null",
            f"snd_path {self.snd_path}",
            "rtp_ports 41000-41999",
            "module g711.so",
            "module aufile.so",
            "module sndfile.so",
            "module srtp.so",
            "module_app account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "",
        ]
        (home / "config").write_text("\n".join(lines))
        (home / "accounts").write_text("")
        self.process: asyncio.subprocess.Process | None = None
        self._log = (home / "stdout.log").open("wb")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = b""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *("baresip", "-f", str(self.home), "-n", "127.0.0.1", "-t", "60"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + TIMEOUT
        while self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self.ctrl_port
                )
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"baresip ctrl_tcp never listened: {self.log()}") from None
                await asyncio.sleep(0.05)

    async def command(self, command: str, params: str = "") -> None:
        payload = json.dumps({"command": command, "params": params, "token": command}).encode()
        assert self._writer is not None
        self._writer.write(b"%d:%s," % (len(payload), payload))
        await self._writer.drain()

    async def event(self, *wanted: str) -> str:
        """The first of ``wanted`` event types to arrive (AssertionError if none does in time)."""
        assert self._reader is not None
        deadline = time.monotonic() + TIMEOUT
        while True:
            while (colon := self._buffer.find(b":")) > 0:
                length = int(self._buffer[:colon])
                if len(self._buffer) < colon + 2 + length:
                    break
                message = json.loads(self._buffer[colon + 1 : colon + 1 + length])
                self._buffer = self._buffer[colon + 2 + length :]
                if message.get("event") and message.get("type") in wanted:
                    return str(message["type"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"none of {wanted} from baresip: {self.log()[-3000:]}")
            with contextlib.suppress(TimeoutError):
                chunk = await asyncio.wait_for(self._reader.read(4096), left)
                if not chunk:
                    raise AssertionError(f"baresip closed ctrl_tcp: {self.log()[-3000:]}")
                self._buffer += chunk

    def recording(self, kind: str) -> np.ndarray:
        """What sndfile wrote: ``enc`` (sent) or ``dec`` (received)."""
        found = sorted(self.snd_path.glob(f"dump-*-{kind}.wav"))
        assert found, f"no {kind} recording in {list(self.snd_path.iterdir())}"
        data, rate = soundfile.read(found[-1], dtype="float32")
        assert rate == RATE
        return np.asarray(data if data.ndim == 1 else data[:, 0])

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
            await asyncio.wait_for(self.process.wait(), 5)
        self._log.close()


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        await sip_accounts.create_credential(
            session, actor="test", tenant_id="acme", username="alice", realm=REALM, password="pw"
        )
    yield sessions
    await engine.dispose()


@pytest.fixture
async def phone(tmp_path: Path) -> AsyncIterator[Baresip]:
    source = tmp_path / "in.wav"
    soundfile.write(source, tone_sequence(INPUT_SECONDS), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / "alice", source)
    await baresip.start()
    yield baresip
    await baresip.stop()


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_baresip_with_mandatory_srtp_hears_its_audio_echoed_and_the_wire_is_encrypted(
    sessions: Sessions, phone: Baresip
) -> None:
    service = SipService(
        SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=b"e2e-srtp-nonce-secret-0123",
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
            digest_algorithms=("MD5",),  # baresip 1.0 gives up on SHA-256 challenges
        ),
        sessions,
    )

    async def owner(number: str) -> str | None:
        return None

    calls = SipCalls(
        service,
        Router(owner),
        PortAllocator("127.0.0.1", 42000, 42999),
        {Service.ECHO: EchoService()},
        SipCallsConfig(),  # the default answering policy takes SRTP offers
    )
    calls.attach()
    offered: asyncio.Queue[InboundCall] = asyncio.Queue()
    recorders: list[RecordingSrtp] = []

    def on_call(call: InboundCall) -> None:
        # Swapped in before the call is answered, so no packet was protected under the old one.
        local, remote = call.audio.local_crypto, call.audio.remote_crypto
        if local is not None and remote is not None:
            recorder = RecordingSrtp(local.suite, local.key_salt, remote.key_salt)
            recorders.append(recorder)
            call.transport.srtp = recorder
        offered.put_nowait(call)

    calls.on_call = on_call
    await service.start()
    try:
        assert service.transports.bound.udp is not None
        port = service.transports.bound.udp[1]
        account = (
            f"<sip:alice@{REALM};transport=udp>;auth_user=alice;auth_pass=pw"
            f';outbound="sip:127.0.0.1:{port};transport=udp";regint=60;mediaenc=srtp-mand'
        )
        await phone.command("uanew", account)
        assert await phone.event("REGISTER_OK", "REGISTER_FAIL") == "REGISTER_OK", phone.log()
        await phone.command("dial", ECHO_URI)
        call = await asyncio.wait_for(offered.get(), TIMEOUT)
        media = call.offer.remote_sdp.media[0]
        assert media.proto == "RTP/SAVP" and media.crypto, str(call.offer.remote_sdp)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
        [recorder] = recorders
        assert call.transport.srtp is recorder
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)  # 3 s echoed
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), TIMEOUT)
        assert call.end_reason is EndReason.REMOTE_BYE
        # baresip's plain 16-byte RTCP APP "PING" keep-alive is the only thing dropped (malformed).
        assert recorder.stats.auth_failures == recorder.stats.replays == 0
    finally:
        await calls.close()
        await service.stop()

    sent, received = phone.recording("enc"), phone.recording("dec")
    assert len(received) >= 2 * RATE
    correlation = aligned_correlation(sent, received)
    assert correlation > 0.9, correlation

    # What went to the socket: the SRTP header is the RTP header, the payload is not the G.711.
    assert len(recorder.sent) >= 150
    for plain, protected in recorder.sent:
        assert protected[:12] == plain[:12]
        assert len(protected) == len(plain) + 10  # AES_CM_128_HMAC_SHA1_80 tag (baresip default)
        assert protected[12 : len(plain)] != plain[12:]
        assert plain[12:44] not in protected
