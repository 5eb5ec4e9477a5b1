"""A real baresip calls the gateway's echo service: audio, hang-ups, CANCEL, hold, DTMF.

baresip 1.0 runs headless with ``aufile`` as its microphone (a WAV of
non-repeating tones and chirps made here), ``sndfile`` recording what it
sends and receives, and ``ctrl_tcp`` to dial, hang up, hold, resume and send
digits. Every wait is on an event (ctrl_tcp events from baresip, call events
from the gateway), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.echo import EchoConfig, EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallEnded,
    CallEvent,
    EndReason,
    HoldChanged,
    InboundCall,
    OutboundCall,
    SipCalls,
    SipCallsConfig,
)
from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.media.ports import PortAllocator
from voicegw.media.session import DtmfReceived
from voicegw.sip.sdp import Direction
from voicegw.sip.transport import ListenAddresses
from voicegw.sip.uri import parse_uri
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
ECHO_URI = f"sip:echo@{REALM}"
SECRET = b"e2e-nonce-secret-0123456789"
EVENT_TIMEOUT = 10.0
RATE = 8000
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than any call here


def free_port_pair() -> int:
    """A UDP port whose TCP twin and the next port (baresip's TLS listener) are free too."""
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


def tone_sequence(seconds: float, seed: int = 7) -> np.ndarray:
    """Non-repeating 100 ms tones and chirps (300-3000 Hz): one unambiguous alignment."""
    rng = np.random.default_rng(seed)
    step = RATE // 10
    t = np.arange(step) / RATE
    pieces = []
    for _ in range(int(seconds * 10)):
        f0, f1 = rng.uniform(300, 3000, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t * 5)  # linear chirp f0 -> f1 over 100 ms
        pieces.append(0.4 * np.sin(phase) * np.hanning(step) ** 0.25)
    return np.concatenate(pieces).astype(np.float32)


def aligned_correlation(sent: np.ndarray, received: np.ndarray) -> tuple[float, int]:
    """Normalised correlation of ``received`` with ``sent`` at the best lag (samples)."""
    n = len(sent) + len(received)
    spectrum = np.fft.rfft(received, n) * np.conj(np.fft.rfft(sent, n))
    xcorr = np.fft.irfft(spectrum, n)
    max_lag = RATE  # the echo comes back within a second
    lag = int(np.argmax(xcorr[:max_lag]))
    length = min(len(sent), len(received) - lag)
    a, b = sent[:length], received[lag : lag + length]
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)), lag


class Baresip:
    """One headless baresip, driven and watched through ctrl_tcp."""

    def __init__(self, home: Path, source_wav: Path) -> None:
        self.home = home
        self.sip_port = free_port_pair()
        self.ctrl_port = free_tcp_port()
        self.snd_path = home / "snd"
        self.snd_path.mkdir(parents=True)
        (home / "config").write_text(
            "\n".join(
                [
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "module_path /usr/lib/baresip/modules",
                    f"audio_source aufile,{source_wav}",
                    "audio_player aufile,/dev/null",
                    "audio_alert aufile,/dev/null",
                    f"snd_path {self.snd_path}",
                    "rtp_ports 41000-41999",
                    "module g711.so",
                    "module aufile.so",
                    "module sndfile.so",
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
        self.seen: list[dict[str, object]] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "baresip",
            "-f",
            str(self.home),
            "-n",
            "127.0.0.1",
            "-t",
            "60",
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

    async def command(self, command: str, params: str = "") -> None:
        payload = json.dumps({"command": command, "params": params, "token": command}).encode()
        assert self._writer is not None
        self._writer.write(b"%d:%s," % (len(payload), payload))
        await self._writer.drain()

    async def register(
        self, user: str, password: str, gateway_port: int, *, auto_answer: bool = False
    ) -> None:
        account = (
            f"<sip:{user}@{REALM};transport=udp>;auth_user={user};auth_pass={password}"
            f';outbound="sip:127.0.0.1:{gateway_port};transport=udp";regint=60'
            + (";answermode=auto" if auto_answer else "")
        )
        await self.command("uanew", account)
        assert await self.event("REGISTER_OK", "REGISTER_FAIL") == "REGISTER_OK", self.log()

    async def event(self, *wanted: str, within: float = EVENT_TIMEOUT) -> str:
        """The first of ``wanted`` event types to arrive (AssertionError if none does)."""
        assert self._reader is not None
        deadline = time.monotonic() + within
        while True:
            for event in self._events():
                self.seen.append(event)
                if event.get("type") in wanted:
                    return str(event["type"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"none of {wanted} from baresip: {self.log()[-3000:]}")
            try:
                chunk = await asyncio.wait_for(self._reader.read(4096), left)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"baresip closed ctrl_tcp: {self.log()[-3000:]}")
            self._buffer += chunk

    def _events(self) -> list[dict[str, object]]:
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


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    """SQLite only: these tests are about SIP and RTP, the store has its own suite."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
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
    yield sessions
    await engine.dispose()


GatewayFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Gateway]"]


@pytest.fixture
def gateway(sessions: Sessions) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def start(echo: EchoConfig | None = None) -> AsyncIterator[Gateway]:
        config = SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=SECRET,
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
            digest_algorithms=("MD5",),  # baresip 1.0 gives up on SHA-256 challenges
        )
        service = SipService(config, sessions)

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 42000, 42999),
            {Service.ECHO: EchoService(echo)},
            SipCallsConfig(),
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        try:
            yield Gateway(service, calls, offered)
        finally:
            await calls.close()
            await service.stop()

    return start


@pytest.fixture
def source_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    soundfile.write(path, tone_sequence(INPUT_SECONDS), RATE, subtype="PCM_16")
    return path


@pytest.fixture
async def phone(tmp_path: Path, source_wav: Path) -> AsyncIterator[Baresip]:
    baresip = Baresip(tmp_path / "alice", source_wav)
    await baresip.start()
    yield baresip
    await baresip.stop()


async def next_call(gateway: Gateway) -> InboundCall:
    return await asyncio.wait_for(gateway.offered.get(), EVENT_TIMEOUT)


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll a gateway-side condition that has no event of its own (packet counters)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def watch(call: InboundCall) -> asyncio.Queue[CallEvent]:
    queue: asyncio.Queue[CallEvent] = asyncio.Queue()
    for event in call.events:
        queue.put_nowait(event)
    call.on_event = queue.put_nowait
    return queue


async def next_of(events: asyncio.Queue[CallEvent], kind: type) -> CallEvent:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event


async def test_baresip_hears_its_own_audio_from_echo_and_hangs_up_with_bye(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert call.offer.caller.tenant_id == "acme"
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        # 3 s of audio echoed back (150 packets of 20 ms), then baresip hangs up.
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert call.end_reason is EndReason.REMOTE_BYE
        assert gw.calls.calls == {}
        assert gw.calls.ports.in_use == 0

    sent, received = phone.recording("enc"), phone.recording("dec")
    assert len(received) >= 2 * RATE
    correlation, lag = aligned_correlation(sent, received)
    assert correlation > 0.9, (correlation, lag)


async def test_gateway_hangs_up_with_bye_and_baresip_closes_the_call(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        call.hang_up()
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert call.end_reason is EndReason.LOCAL_HANGUP
        assert gw.calls.calls == {}


async def test_baresip_cancels_while_ringing_and_gets_487(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(EchoConfig(ring_delay=EVENT_TIMEOUT)) as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert await phone.event("CALL_RINGING") == "CALL_RINGING"
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert call.end_reason is EndReason.CANCELLED
        assert call.dialog is None
        assert gw.calls.ports.in_use == 0


async def test_baresip_hold_and_resume_reinvites_are_answered_with_the_right_direction(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        events = watch(call)
        sent_at: list[int] = []  # packets we had sent when each hold change took effect

        def on_event(event: CallEvent) -> None:
            if isinstance(event, HoldChanged):
                sent_at.append(call.transport.leg.summary().packets_sent)
            events.put_nowait(event)

        call.on_event = on_event
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        await until(lambda: call.transport.leg.summary().packets_sent >= 25)

        await phone.command("hold")
        assert await next_of(events, HoldChanged) == HoldChanged(True, Direction.RECVONLY)
        assert call.held

        await phone.command("resume")
        assert await next_of(events, HoldChanged) == HoldChanged(False, Direction.SENDRECV)
        # Nothing went out between the two re-INVITEs; echo resumes after the second.
        assert sent_at[0] == sent_at[1]
        await until(lambda: call.transport.leg.summary().packets_sent > sent_at[1] + 25)
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert isinstance(await next_of(events, CallEnded), CallEnded)


async def test_baresip_rfc4733_digits_are_reported_once_each(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        events = watch(call)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        digits: list[str] = []
        for key in "19#":
            await phone.command("sndcode", key)
            event = await next_of(events, DtmfReceived)
            assert isinstance(event, DtmfReceived)
            digits.append(event.digit.digit or "?")
        assert digits == ["1", "9", "#"]
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert [e.digit.digit for e in call.events if isinstance(e, DtmfReceived)] == digits


async def test_gateway_calls_registered_baresip_which_hears_its_audio_echoed(
    gateway: GatewayFactory, phone: Baresip, sessions: Sessions
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port, auto_answer=True)
        async with sessions() as session:
            found = await sip_accounts.live_bindings(
                session, "acme", f"sip:alice@{REALM}", time.time()
            )
        assert len(found) == 1
        binding = found[0]
        call = await gw.calls.place_call(
            parse_uri(binding.contact.strip("<>")),
            binding.source,
            caller=ECHO_URI,
            tenant_id="acme",
            answer_timeout=EVENT_TIMEOUT,
        )
        assert isinstance(call, OutboundCall), call
        call.transport.peer = call.transport  # the gateway side echoes
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)
        call.hang_up()
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert call.end_reason is EndReason.LOCAL_HANGUP
        assert gw.calls.calls == {} and gw.calls.ports.in_use == 0

    correlation, lag = aligned_correlation(phone.recording("enc"), phone.recording("dec"))
    assert correlation > 0.9, (correlation, lag)
