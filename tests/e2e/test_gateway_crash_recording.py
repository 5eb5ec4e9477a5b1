"""``voicegw serve`` is SIGKILLed mid-recording: nothing plaintext is left, the rest decrypts.

The gateway runs as a real process on a temporary data dir, provisioned through
its admin API with the operator token: a tenant in ``notify`` mode, a number and
a SIP user. A registered baresip calls the number; the caller hears the notice,
then waits in the agent queue (no agent is signed in) while the call is recorded.
Once the recording holds a few whole chunks on disk the gateway is killed with
SIGKILL, so no ``finally`` of the gateway runs. Then:

* every file under the recordings root is a voicegw container (its magic first),
  and no file anywhere under the data dir is a WAV, a raw-PCM or a temp file;
* a restart on the same data dir settles the recording as ``incomplete`` at
  start-up, and its whole chunks authenticate and decrypt to the caller's audio.

Every wait is bounded and on a condition (a banner line, a baresip event, the
container's size on disk), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile

from tests.conftest import free_port
from tests.e2e.peers import DOMAIN, Baresip, tone_sequence
from voicegw.config import default_node_name
from voicegw.recording.container import DEFAULT_CHUNK_SIZE, MAGIC, TAG_BYTES, recover
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

TENANT = "acme"  # with DOMAIN, the realm peers.Baresip registers in
NUMBER = "+4930901820"
PASSWORD = "alice-secret-0123"
RATE = 8000
START_TIMEOUT = 30.0
RECORD_TIMEOUT = 15.0
#: Whole chunks on disk before the kill (32 KiB of stereo 8 kHz each: about a second).
CHUNKS_BEFORE_KILL = 3
#: How a container whose last chunk a crash tore or never sealed as final reads back.
TORN_TAIL = ("TruncatedError", "TruncatedOrTamperedError")
#: How verify reports that tail on a recording marked incomplete.
EXPECTED_TAILS = ("torn", "unsealed")
#: Files the gateway itself may keep beside recordings (nothing holds audio in the clear).
AUDIO_SUFFIXES = (".wav", ".pcm", ".raw", ".tmp", ".temp", ".au", ".ulaw", ".alaw")


@dataclass
class Gateway:
    """One ``voicegw serve`` process and where it listens."""

    data_dir: Path
    env: dict[str, str]
    http_port: int
    sip_port: int
    process: asyncio.subprocess.Process | None = None
    runs: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1"

    @property
    def recordings(self) -> Path:
        return self.data_dir / "recordings"

    def out(self) -> Path:
        return self.data_dir.parent / f"serve-{self.runs}.out"

    async def start(self) -> None:
        self.runs += 1
        with self.out().open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "voicegw.cli",
                "serve",
                cwd=self.data_dir.parent,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        # The banner is printed once SIP and HTTP listen (after start-up recovery).
        await until(
            lambda: b"Admin page" in self.out().read_bytes() or self.exited(),
            START_TIMEOUT,
            "the gateway never came up",
        )
        assert not self.exited(), self.output()

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def output(self) -> str:
        return self.out().read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: nothing of the gateway's own clean-up runs
        await asyncio.wait_for(self.process.wait(), 10)

    async def stop(self) -> int | None:
        """SIGTERM and the exit status (None: it had to be killed, or never ran)."""
        if self.process is None or self.process.returncode is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            return None


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    data_dir = tmp_path / "var"
    http_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGW_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "VOICEGW_HTTP__HOST": "127.0.0.1",
        "VOICEGW_HTTP__PORT": str(http_port),
        "VOICEGW_SIP__HOST": "127.0.0.1",
        "VOICEGW_SIP__UDP_PORT": str(sip_port),
        "VOICEGW_SIP__TCP_PORT": str(free_port()),
        "VOICEGW_SIP__DOMAIN": DOMAIN,
        "VOICEGW_SIP__DIGEST_ALGORITHMS": '["MD5"]',  # baresip 1.0 gives up on SHA-256
        "VOICEGW_MEDIA__RTP_PORT_MIN": "46000",  # clear of baresip's 41000-41999
        "VOICEGW_MEDIA__RTP_PORT_MAX": "46999",
        "VOICEGW_STORAGE__DATA_DIR": str(data_dir),
    }
    gw = Gateway(data_dir, env, http_port, sip_port)
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def phone(tmp_path: Path) -> AsyncIterator[Baresip]:
    wav = tmp_path / "in.wav"
    soundfile.write(wav, tone_sequence(30), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / "alice", wav)
    await baresip.start()
    try:
        yield baresip
    finally:
        await baresip.stop()


async def api(
    http: aiohttp.ClientSession, method: str, url: str, status: int, body: Any = None
) -> Any:
    async with http.request(method, url, json=body) as resp:
        payload = await resp.json()
        assert resp.status == status, payload
        return payload


async def provision(gw: Gateway, http: aiohttp.ClientSession) -> None:
    settings = {
        "recording_mode": "notify",
        "consent_prompt": {"text": "This call is recorded.", "version": 1},
    }
    await api(
        http,
        "POST",
        f"{gw.base}/tenants",
        201,
        {"id": TENANT, "name": "Acme", "settings": settings},
    )
    await api(http, "POST", f"{gw.base}/tenants/{TENANT}/numbers", 201, {"number": NUMBER})
    await api(
        http,
        "POST",
        f"{gw.base}/tenants/{TENANT}/sip-users",
        201,
        {"username": "alice", "password": PASSWORD},
    )


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def container_bytes(gw: Gateway) -> int:
    return sum(p.stat().st_size for p in files_under(gw.recordings))


async def test_sigkill_mid_recording_leaves_only_ciphertext_and_restart_marks_it_incomplete(
    gateway: Gateway, phone: Baresip
) -> None:
    await gateway.start()
    token = (gateway.data_dir / "operator-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        await provision(gateway, http)

    await phone.register("alice", PASSWORD, gateway.sip_port)
    await phone.command("dial", f"sip:{NUMBER}@{TENANT}.{DOMAIN}")
    assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    # The notice, then hold music while queued: the recording grows by ~32 KiB a second.
    await until(
        lambda: container_bytes(gateway) > CHUNKS_BEFORE_KILL * (DEFAULT_CHUNK_SIZE + TAG_BYTES),
        RECORD_TIMEOUT,
        f"the recording never grew: {gateway.output()}",
    )
    await gateway.kill()

    # Nothing in the clear: recordings are containers, nothing anywhere is audio.
    recorded = files_under(gateway.recordings)
    assert recorded
    for path in recorded:
        with path.open("rb") as handle:
            assert handle.read(len(MAGIC)) == MAGIC, path
    for path in files_under(gateway.data_dir):
        assert path.suffix.lower() not in AUDIO_SUFFIXES, path
        data = path.read_bytes()
        assert not data.startswith(b"RIFF") and b"WAVEfmt " not in data, path

    # Start-up recovery settles what the crash left 'writing'.
    await gateway.start()
    async with aiohttp.ClientSession(headers=headers) as http:
        listed = await api(http, "GET", f"{gateway.base}/tenants/{TENANT}/recordings", 200)
        (row,) = listed["recordings"]
        assert (row["state"], row["complete"]) == ("incomplete", False)
        checked = await api(
            http, "POST", f"{gateway.base}/tenants/{TENANT}/recordings/{row['id']}/verify", 200
        )
    # The file is what recovery recorded; it ends in the chunk the kill tore (or one never
    # sealed as final): verify passes it, its whole chunks valid and that tail as expected.
    assert checked["ok"] and checked["matches_metadata"] and checked["authenticates"], checked
    assert (checked["complete"], checked["problem"]) == (False, None), checked
    assert checked["tail"] in EXPECTED_TAILS, checked
    assert checked["readable_chunks"] >= CHUNKS_BEFORE_KILL, checked
    assert await gateway.stop() == 0, gateway.output()

    # The whole chunks decrypt with the node's keyring, and hold what was said.
    engine = create_engine(f"sqlite+aiosqlite:///{gateway.data_dir / 'voicegw.db'}")
    try:
        async with session_factory(engine)() as session:
            stored = await store.get_recording(session, TENANT, row["id"])
    finally:
        await engine.dispose()
    assert stored is not None and stored.node == default_node_name()  # who wrote it
    storage = LocalFilesystemStorage(gateway.recordings)
    with open_stored(storage, stored) as handle:
        recovery = recover(
            handle, LocalKeyring(gateway.data_dir / "keys"), wrapped_key=wrapped_key_of(stored)
        )
    assert not recovery.complete and type(recovery.problem).__name__ in TORN_TAIL
    assert len(recovery.chunks) >= CHUNKS_BEFORE_KILL
    pcm = np.frombuffer(b"".join(recovery.chunks), dtype="<i2")
    caller = pcm[0::2]  # channel 0: the caller (baresip's tones)
    assert np.abs(caller.astype(np.float32)).mean() > 100, "no caller audio in the recording"
