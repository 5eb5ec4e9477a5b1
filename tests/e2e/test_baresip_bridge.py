"""Two real baresips of one tenant call each other through the gateway's B2BUA.

Alice (``aufile`` microphone, ``sndfile`` recording) dials ``sip:bob@<realm>``;
Bob is registered with ``answermode=auto`` (or answers/declines by command).
Each plays its own non-repeating tone sequence, so what one records as
received must correlate with what the other sent, not with its own. Every
wait is on a baresip ctrl_tcp event or a gateway call event, bounded.
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

from voicegw.calls.bridge import BridgeConfig, BridgeService, store_contacts, store_tenant_users
from voicegw.calls.echo import EchoService
from voicegw.calls.records import CallRecords
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallEvent,
    EndReason,
    HoldChanged,
    InboundCall,
    SipCalls,
    SipCallsConfig,
)
from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.media.ports import PortAllocator
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.store.models import Call
from voicegw.tenant_settings import TenantSettings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
BOB_URI = f"sip:bob@{REALM}"
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


def tone_sequence(seconds: float, seed: int) -> np.ndarray:
    """Non-repeating 100 ms chirps (300-3000 Hz): one unambiguous alignment per seed."""
    rng = np.random.default_rng(seed)
    step = RATE // 10
    t = np.arange(step) / RATE
    pieces = []
    for _ in range(int(seconds * 10)):
        f0, f1 = rng.uniform(300, 3000, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t * 5)
        pieces.append(0.4 * np.sin(phase) * np.hanning(step) ** 0.25)
    return np.concatenate(pieces).astype(np.float32)


def aligned_correlation(sent: np.ndarray, received: np.ndarray) -> tuple[float, int]:
    """Normalised correlation at the best lag within +-1 s (received relative to sent).

    The lag can be negative: the callee's first packets, sent before the caller
    leg was answered, are never relayed.
    """
    n = len(sent) + len(received)
    xcorr = np.fft.irfft(np.fft.rfft(received, n) * np.conj(np.fft.rfft(sent, n)), n)
    lags = np.r_[np.arange(0, RATE), np.arange(-RATE, 0)]
    window = np.r_[xcorr[:RATE], xcorr[n - RATE :]]
    lag = int(lags[int(np.argmax(window))])
    if lag >= 0:
        a, b = sent, received[lag:]
    else:
        a, b = sent[-lag:], received
    length = min(len(a), len(b))
    a, b = a[:length], b[:length]
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)), lag


class Baresip:
    """One headless baresip, driven and watched through ctrl_tcp."""

    def __init__(self, home: Path, source_wav: Path, rtp_ports: str) -> None:
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
                    f"rtp_ports {rtp_ports}",
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
        assert await self.event_type("REGISTER_OK", "REGISTER_FAIL") == "REGISTER_OK", self.log()

    async def event(self, *wanted: str, within: float = EVENT_TIMEOUT) -> dict[str, object]:
        """The first event of one of the ``wanted`` types (AssertionError if none comes)."""
        assert self._reader is not None
        deadline = time.monotonic() + within
        while True:
            for event in self._events():
                self.seen.append(event)
                if event.get("type") in wanted:
                    return event
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

    async def event_type(self, *wanted: str) -> str:
        return str((await self.event(*wanted))["type"])

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
    bridge: BridgeService
    records: CallRecords
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        for user in ("alice", "bob"):
            await sip_accounts.create_credential(
                session, actor="test", tenant_id="acme", username=user, realm=REALM,
                password=f"{user}-secret",
            )  # fmt: skip
    yield sessions
    await engine.dispose()


@pytest.fixture
async def gateway(sessions: Sessions) -> AsyncIterator[Gateway]:
    config = SipServiceConfig(
        domain=DOMAIN,
        nonce_secret=SECRET,
        listen=ListenAddresses(udp=("127.0.0.1", 0)),
        digest_algorithms=("MD5",),  # baresip 1.0 gives up on SHA-256 challenges
    )
    service = SipService(config, sessions)

    async def owner(number: str) -> str | None:
        return None

    records = CallRecords(sessions, node="e2e")
    bridge = BridgeService(
        store_contacts(sessions), records=records, config=BridgeConfig(answer_timeout=3.0)
    )
    calls = SipCalls(
        service,
        Router(owner, tenant_user=store_tenant_users(sessions)),
        PortAllocator("127.0.0.1", 43000, 43999),
        {Service.ECHO: EchoService(), Service.BRIDGE_USER: bridge},
        SipCallsConfig(),
    )
    bridge.bind(calls)
    offered: asyncio.Queue[InboundCall] = asyncio.Queue()

    def on_call(call: InboundCall) -> None:
        records.track(call)
        offered.put_nowait(call)

    calls.on_call = on_call
    calls.attach()
    await service.start()
    try:
        yield Gateway(service, calls, bridge, records, offered)
    finally:
        await calls.close()
        await records.wait_written()
        await service.stop()


async def phone(tmp_path: Path, name: str, seed: int, rtp_ports: str) -> Baresip:
    wav = tmp_path / f"{name}.wav"
    soundfile.write(wav, tone_sequence(INPUT_SECONDS, seed), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / name, wav, rtp_ports)
    await baresip.start()
    return baresip


@pytest.fixture
async def alice(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "alice", 7, "41000-41499")
    yield baresip
    await baresip.stop()


@pytest.fixture
async def bob(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "bob", 11, "41500-41999")
    yield baresip
    await baresip.stop()


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll a gateway-side condition that has no event of its own (packet counters)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def stored_call(gw: Gateway, sessions: Sessions) -> Call:
    await gw.records.wait_written()
    async with sessions() as session:
        rows = list((await session.execute(Call.__table__.select())).all())
        assert len(rows) == 1, rows
        found = await session.get(Call, rows[0].id)
    assert found is not None
    return found


async def connect(gw: Gateway, alice: Baresip, bob: Baresip) -> InboundCall:
    await bob.register("bob", "bob-secret", gw.port, auto_answer=True)
    await alice.register("alice", "alice-secret", gw.port)
    await alice.command("dial", BOB_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    assert await bob.event_type("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event_type("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
    return call


async def test_bridged_audio_flows_both_ways_and_caller_bye_ends_the_callee(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gw = gateway
    call = await connect(gw, alice, bob)
    bridge = gw.bridge.bridges[call.id]
    callee = bridge.callee
    # 3 s each way (150 packets of 20 ms relayed into each leg).
    await until(lambda: call.transport.leg.summary().packets_sent >= 150)
    await until(lambda: callee.transport.leg.summary().packets_sent >= 150)
    await alice.command("hangup")
    assert await alice.event_type("CALL_CLOSED") == "CALL_CLOSED"
    assert await bob.event_type("CALL_CLOSED") == "CALL_CLOSED"
    await asyncio.wait_for(callee.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.REMOTE_BYE
    assert callee.end_reason is EndReason.LOCAL_HANGUP
    await until(lambda: gw.calls.calls == {} and gw.calls.ports.in_use == 0)

    row = await stored_call(gw, sessions)
    assert (row.tenant_id, row.direction, row.state) == ("acme", "inbound", "ended")
    assert (row.caller_masked, row.callee_masked) == ("alice", "bob")
    assert row.end_reason == "caller-hangup"
    assert row.answered_at is not None and row.ended_at is not None
    assert row.media_stats is not None and set(row.media_stats) == {"caller", "callee"}
    for leg in ("caller", "callee"):
        stats = row.media_stats[leg]
        assert isinstance(stats, dict)
        assert stats["packets_sent"] >= 150
        assert stats["received"]["packets_received"] >= 150
        assert 0 <= stats["received"]["jitter_ms"] < 100

    for sender, receiver in ((alice, bob), (bob, alice)):
        correlation, lag = aligned_correlation(sender.recording("enc"), receiver.recording("dec"))
        assert correlation > 0.9, (correlation, lag)
    # Nobody hears themselves: the bridge is not an echo.
    own, _ = aligned_correlation(alice.recording("enc"), alice.recording("dec"))
    assert own < 0.3


async def test_bridged_dtmf_reaches_the_callee_and_callee_bye_ends_the_caller(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gw = gateway
    call = await connect(gw, alice, bob)
    bridge = gw.bridge.bridges[call.id]
    received = []
    for key in "4#":
        await alice.command("sndcode", key)
        event = await bob.event("CALL_DTMF_START")
        received.append(event.get("param"))
    assert received == ["4", "#"]
    assert bridge.to_callee.sent == ["4", "#"]
    await bob.command("hangup")
    assert await bob.event_type("CALL_CLOSED") == "CALL_CLOSED"
    assert await alice.event_type("CALL_CLOSED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.LOCAL_HANGUP
    row = await stored_call(gw, sessions)
    assert row.end_reason == "callee-hangup"
    assert row.media_stats is not None and set(row.media_stats) == {"caller", "callee"}
    # Each key press arrived exactly once.
    starts = [e.get("param") for e in bob.seen if e.get("type") == "CALL_DTMF_START"]
    assert starts == ["4", "#"]


async def ring_bob(gw: Gateway, alice: Baresip, bob: Baresip) -> InboundCall:
    await bob.register("bob", "bob-secret", gw.port)
    await alice.register("alice", "alice-secret", gw.port)
    await alice.command("dial", BOB_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    await bob.event("CALL_INCOMING")
    assert await alice.event_type("CALL_RINGING", "CALL_CLOSED") == "CALL_RINGING"
    return call


async def test_callee_declining_gives_the_caller_486_busy(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    call = await ring_bob(gateway, alice, bob)
    await bob.command("hangup")  # baresip declines a ringing call with 486
    assert (await alice.event("CALL_CLOSED"))["param"] == "486 Busy Here"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.REJECTED
    row = await stored_call(gateway, sessions)
    assert (row.state, row.end_reason, row.answered_at) == ("ended", "callee-busy", None)
    assert row.media_stats is not None and set(row.media_stats) == {"caller"}


async def test_caller_cancelling_cancels_the_ringing_callee(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    call = await ring_bob(gateway, alice, bob)
    await alice.command("hangup")
    assert await bob.event_type("CALL_CLOSED", "CALL_ESTABLISHED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.CANCELLED
    await until(lambda: gateway.calls.calls == {} and gateway.calls.ports.in_use == 0)
    row = await stored_call(gateway, sessions)
    assert (row.end_reason, row.answered_at) == ("cancelled", None)


async def test_unanswered_callee_is_cancelled_and_the_caller_gets_480(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gateway.bridge.config = BridgeConfig(answer_timeout=1.0)
    call = await ring_bob(gateway, alice, bob)
    assert (await alice.event("CALL_CLOSED"))["param"] == "480 No Answer"
    assert await bob.event_type("CALL_CLOSED", "CALL_ESTABLISHED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    row = await stored_call(gateway, sessions)
    assert row.end_reason == "callee-no-answer"


async def test_unregistered_callee_gives_the_caller_480_at_once(
    gateway: Gateway, alice: Baresip, sessions: Sessions
) -> None:
    await alice.register("alice", "alice-secret", gateway.port)
    await alice.command("dial", BOB_URI)
    assert (await alice.event("CALL_CLOSED"))["param"] == "480 Temporarily Unavailable"
    row = await stored_call(gateway, sessions)
    assert row.end_reason == "callee-not-registered"


async def test_caller_hold_stops_the_relay_both_ways_until_resumed(
    gateway: Gateway, alice: Baresip, bob: Baresip
) -> None:
    call = await connect(gateway, alice, bob)
    callee = gateway.bridge.bridges[call.id].callee
    held: asyncio.Queue[bool] = asyncio.Queue()
    watched = call.on_event
    assert watched is not None

    def on_event(event: CallEvent) -> None:
        watched(event)  # the bridge's own handler first: it re-decides the relay
        if isinstance(event, HoldChanged):
            held.put_nowait(event.held)

    call.on_event = on_event

    def sent_to_callee() -> int:
        return callee.transport.leg.summary().packets_sent

    await until(lambda: sent_to_callee() >= 25)
    await alice.command("hold")
    assert await asyncio.wait_for(held.get(), EVENT_TIMEOUT) is True
    assert call.transport.peer is None and callee.transport.peer is None
    at_hold = sent_to_callee()
    await asyncio.sleep(0.3)  # 15 packets' worth: none may be relayed to Bob meanwhile
    assert sent_to_callee() == at_hold
    await alice.command("resume")
    assert await asyncio.wait_for(held.get(), EVENT_TIMEOUT) is False
    await until(lambda: sent_to_callee() >= at_hold + 25)
    await alice.command("hangup")
    assert await bob.event_type("CALL_CLOSED") == "CALL_CLOSED"
