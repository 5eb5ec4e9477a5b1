"""Shared real peers for the end-to-end tests, and the in-process gateway's store and service.

baresip 1.0 runs headless with ``aufile`` as its microphone (a WAV of
non-repeating tones and chirps made here), ``sndfile`` recording what it
sends and receives, and ``ctrl_tcp`` (netstring JSON) to dial, hang up, hold,
resume and send digits; linphonec is driven on stdin and read on stdout.
Every wait is on an event or a line, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import numpy as np
import soundfile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_service import SipService, SipServiceConfig, tenant_realm
from voicegw.sip.security import SecurityEvent
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
EVENT_TIMEOUT = 10.0
RATE = 8000
#: Digest-nonce key of the in-process gateways these tests start.
SECRET = b"e2e-nonce-secret-0123456789"


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


def tone_sequence(seconds: float, seed: int = 7, *, taper: bool = True) -> np.ndarray:
    """Non-repeating 100 ms tones and chirps (300-3000 Hz): one unambiguous alignment.

    ``taper`` softens each chirp's edges; without it the chirps are butted end to end.
    """
    rng = np.random.default_rng(seed)
    step = RATE // 10
    t = np.arange(step) / RATE
    pieces = []
    for _ in range(int(seconds * 10)):
        f0, f1 = rng.uniform(300, 3000, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t * 5)  # linear chirp f0 -> f1 over 100 ms
        chirp = 0.4 * np.sin(phase)
        pieces.append(chirp * np.hanning(step) ** 0.25 if taper else chirp)
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


def aligned_correlation_signed(sent: np.ndarray, received: np.ndarray) -> tuple[float, int]:
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

    def __init__(
        self,
        home: Path,
        source_wav: Path | None = None,
        rtp_ports: str = "41000-41999",
        *,
        modules: tuple[str, ...] = (),
        event_timeout: float = EVENT_TIMEOUT,
        quit_after: int = 60,
    ) -> None:
        """``source_wav`` None: signalling only (no aufile/sndfile, nothing recorded)."""
        self.home = home
        self.sip_port = free_port_pair()
        self.ctrl_port = free_tcp_port()
        self.snd_path = home / "snd"
        self.event_timeout = event_timeout
        self.quit_after = quit_after
        audio: list[str] = []
        audio_modules: list[str] = []
        if source_wav is None:
            home.mkdir(parents=True)
        else:
            self.snd_path.mkdir(parents=True)
            audio = [
                f"audio_source aufile,{source_wav}",
                "audio_player aufile,/dev/null",
                "audio_alert aufile,/dev/null",
                f"snd_path {self.snd_path}",
                f"rtp_ports {rtp_ports}",
            ]
            audio_modules = ["module aufile.so", "module sndfile.so"]
        (home / "config").write_text(
            "\n".join(
                [
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "module_path /usr/lib/baresip/modules",
                    *audio,
                    "module g711.so",
                    *audio_modules,
                    *(f"module {name}" for name in modules),
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
            str(self.quit_after),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.event_timeout
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

    async def add_account(
        self, user: str, password: str, gateway_port: int, *, params: str = ""
    ) -> None:
        """Create an account over ctrl_tcp (``uanew``): no registration event can slip by."""
        account = (
            f"<sip:{user}@{REALM};transport=udp>;auth_user={user};auth_pass={password}"
            f';outbound="sip:127.0.0.1:{gateway_port};transport=udp";regint=60{params}'
        )
        await self.command("uanew", account)

    async def register(
        self, user: str, password: str, gateway_port: int, *, auto_answer: bool = False
    ) -> None:
        params = ";answermode=auto" if auto_answer else ""
        await self.add_account(user, password, gateway_port, params=params)
        assert await self.event("REGISTER_OK", "REGISTER_FAIL") == "REGISTER_OK", self.log()

    async def event(self, *wanted: str, within: float | None = None) -> str:
        """The type of the first of ``wanted`` event types to arrive."""
        return str((await self.event_message(*wanted, within=within))["type"])

    async def event_message(self, *wanted: str, within: float | None = None) -> dict[str, object]:
        """The first event of one of the ``wanted`` types (AssertionError if none comes).

        ``within`` defaults to the ``event_timeout`` this baresip was made with.
        """
        assert self._reader is not None
        deadline = time.monotonic() + (self.event_timeout if within is None else within)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        self._log.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Linphonec:
    """linphonec on 127.0.0.1, commands on stdin, answers read from stdout.

    ``sip_config`` and ``rtp_config`` are appended to the ``[sip]`` and ``[rtp]``
    sections (which already bind to 127.0.0.1), ``more_config`` after them.
    """

    def __init__(
        self,
        home: Path,
        *,
        sip_config: str = "",
        rtp_config: str = "",
        more_config: str = "",
        auto_answer: bool = False,
        timeout: float = 15.0,
    ) -> None:
        self.home = home
        (home / ".local" / "share" / "linphone").mkdir(parents=True)
        self.config = home / "linphonerc"
        self.sip_port = free_udp_port()
        self.auto_answer = auto_answer
        self.timeout = timeout
        self.config.write_text(
            f"[sip]\nuse_ipv6=0\nbind_address=127.0.0.1\nsip_port={self.sip_port}\n"
            f"sip_tcp_port=0\n{sip_config}[rtp]\nbind_address=127.0.0.1\n{rtp_config}" + more_config
        )
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "linphonec",
            "-c",
            str(self.config),
            *(["-a"] if self.auto_answer else []),
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def command(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        # Bounded: a linphonec that stops reading stdin must not hang the test.
        await asyncio.wait_for(self.process.stdin.drain(), self.timeout)

    async def wait_for_line(
        self, needle: str, deadline: float | None = None, poll: str | None = None
    ) -> str:
        """Read stdout until a line contains ``needle``; send ``poll`` once a second meanwhile.

        ``deadline`` (monotonic) defaults to ``timeout`` from now.
        """
        assert self.process is not None and self.process.stdout is not None
        if deadline is None:
            deadline = time.monotonic() + self.timeout
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
            await asyncio.wait_for(self.process.wait(), self.timeout)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """Quit, and kill what has not gone 5 s later."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.command("quit")
            await asyncio.wait_for(self.process.wait(), 5.0)
        await self.kill()


# --- the in-process gateway's pieces -------------------------------------------------------------


@contextlib.asynccontextmanager
async def acme_store(db: Path, credentials: Mapping[str, str]) -> AsyncIterator[Sessions]:
    """A migrated SQLite store (the store has its own suite) with tenant ``acme`` and the
    SIP ``credentials`` (user -> password) in :data:`REALM`."""
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        for user, password in credentials.items():
            await sip_accounts.create_credential(
                session, actor="test", tenant_id="acme", username=user, realm=REALM,
                password=password,
            )  # fmt: skip
    try:
        yield sessions
    finally:
        await engine.dispose()


def loopback_sip_service(
    sessions: Sessions,
    nonce_secret: bytes,
    *,
    md5_only: bool = True,
    on_security_event: Callable[[SecurityEvent], None] | None = None,
) -> SipService:
    """The SIP service for :data:`DOMAIN` on an ephemeral UDP port of 127.0.0.1 (not started).

    baresip 1.0 (libre) fails the whole REGISTER when any challenge is not MD5
    ("Register: Function not implemented"), so its peers get an MD5-only service.
    """
    config = SipServiceConfig(
        domain=DOMAIN,
        nonce_secret=nonce_secret,
        listen=ListenAddresses(udp=("127.0.0.1", 0)),
    )
    if md5_only:
        config = dataclasses.replace(config, digest_algorithms=("MD5",))
    return SipService(config, sessions, on_security_event=on_security_event)
