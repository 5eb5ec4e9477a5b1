"""``voicegw recordings``: list, verify, export (audited) and hold, with clear errors."""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile
from sqlalchemy import select
from typer.testing import CliRunner

from tests.recording.conftest import record_notified_call
from voicegw.cli import app
from voicegw.config import load_settings
from voicegw.recording.container import TAG_BYTES, read_header
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.recorder import RecorderConfig, recover_incomplete
from voicegw.recording.storage import PARTIAL_SUFFIX, LocalFilesystemStorage
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory
from voicegw.store.models import AuditEvent

CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
SAMPLES = 160
FRAMES = 50  # 32000 bytes of audio: 7 full 4096-byte chunks and the final one


@pytest.fixture(autouse=True)
def _data_dir(cli_data_dir: Path) -> Path:
    return cli_data_dir


async def record_call() -> tuple[np.ndarray, Path]:
    """One finished recording of random stereo audio, where the CLI looks."""
    rng = np.random.default_rng(7)
    stereo = rng.integers(-20000, 20000, size=(FRAMES * SAMPLES, 2), dtype=np.int16)
    frames = [
        (stereo[n * SAMPLES : (n + 1) * SAMPLES, 0].tobytes(),
         stereo[n * SAMPLES : (n + 1) * SAMPLES, 1].tobytes())
        for n in range(FRAMES)
    ]  # fmt: skip
    path = await record_notified_call(
        recording_id="rec-1", created=CREATED, frames=frames, config=RecorderConfig(chunk_size=4096)
    )
    return stereo, path


async def audit_actions() -> list[tuple[str, str, str]]:
    settings = load_settings(None)
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as session:
            events = (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()
            return [(e.action, e.actor, e.target) for e in events]
    finally:
        await engine.dispose()


def test_list_verify_export_hold_round_trip(tmp_path: Path) -> None:
    stereo, _ = asyncio.run(record_call())
    runner = CliRunner()

    listed = runner.invoke(app, ["recordings", "list", "--tenant", "acme"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == [
        "rec-1  c1  finished  1.0s  retain until 2026-05-30",
        "1 recording(s)",
    ]

    verified = runner.invoke(app, ["recordings", "verify", "--tenant", "acme", "rec-1"])
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.strip() == "recording rec-1: OK (8 chunks, complete)"

    out = tmp_path / "rec-1.wav"
    exported = runner.invoke(
        app, ["recordings", "export", "--tenant", "acme", "rec-1", "--output", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert "exported recording rec-1" in exported.stdout
    data, rate = soundfile.read(out, dtype="int16", always_2d=True)
    assert rate == 8000 and np.array_equal(data, stereo)
    assert out.stat().st_mode & 0o777 == 0o600
    export_events = [a for a in asyncio.run(audit_actions()) if a[0] == "recording.export"]
    assert [(target, actor.startswith("cli:")) for _, actor, target in export_events] == [
        ("tenant/acme/recordings/rec-1", True)
    ]

    held = runner.invoke(
        app, ["recordings", "hold", "--tenant", "acme", "rec-1", "--reason", "case 42"]
    )
    assert held.exit_code == 0, held.output
    listed = runner.invoke(app, ["recordings", "list", "--tenant", "acme"])
    assert listed.stdout.splitlines()[0].endswith("  HOLD")
    released = runner.invoke(app, ["recordings", "hold", "--tenant", "acme", "rec-1", "--release"])
    assert released.exit_code == 0, released.output
    actions = [a[0] for a in asyncio.run(audit_actions())]
    assert actions[-2:] == ["legal_hold.set", "legal_hold.release"]


def test_tampered_file_fails_verify_and_export_writes_nothing(tmp_path: Path) -> None:
    _, path = asyncio.run(record_call())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    runner = CliRunner()

    verified = runner.invoke(app, ["recordings", "verify", "--tenant", "acme", "rec-1"])
    assert verified.exit_code == 1
    assert "FAILED verification: TamperedError" in verified.stderr

    out = tmp_path / "rec-1.wav"
    exported = runner.invoke(
        app, ["recordings", "export", "--tenant", "acme", "rec-1", "--output", str(out)]
    )
    assert exported.exit_code == 1
    assert "not exported" in exported.stderr and "TamperedError" in exported.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    assert "recording.export" not in [a[0] for a in asyncio.run(audit_actions())]


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--tenant", "acme", "rec-nope"],
        ["export", "--tenant", "acme", "rec-nope", "--output", "x.wav"],
        ["hold", "--tenant", "acme", "rec-nope", "--reason", "r"],
        ["hold", "--tenant", "acme", "rec-nope", "--release"],
    ],
)
def test_unknown_recording_is_a_clear_error(args: list[str]) -> None:
    asyncio.run(record_call())
    result = CliRunner().invoke(app, ["recordings", *args])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no recording rec-nope in tenant acme"


def test_unknown_tenant_and_missing_reason_are_clear_errors() -> None:
    asyncio.run(record_call())
    runner = CliRunner()
    result = runner.invoke(app, ["recordings", "list", "--tenant", "nope"])
    assert (result.exit_code, result.stderr.strip()) == (1, "error: no tenant nope")
    result = runner.invoke(app, ["recordings", "hold", "--tenant", "acme", "rec-1"])
    assert result.exit_code == 1
    assert "--reason is required" in result.stderr


WHOLE = 6  # chunks a crash in the middle of chunk 6 leaves whole


def tear_mid_chunk(path: Path, *, complete: bool) -> bytes:
    """The file as a kill -9 in the middle of chunk :data:`WHOLE` leaves it: still being
    written (``.partial``), or, ``complete``, (falsely) in the finished object's place."""
    data = path.read_bytes()
    torn = data[: read_header(io.BytesIO(data)).length + WHOLE * (4096 + TAG_BYTES) + 1000]
    path.unlink()
    (path if complete else path.with_name(path.name + PARTIAL_SUFFIX)).write_bytes(torn)
    return torn


async def after_the_crash(torn: bytes, *, complete: bool) -> None:
    """node-a's row as the crash left it, then its start-up recovery; ``complete``: the row
    claims instead that the torn file was finished (its digest matching)."""
    settings = load_settings(None)
    engine = create_engine(settings.database_url)
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            row = await store.get_recording(session, "acme", "rec-1")
            assert row is not None
            if complete:
                row.size_bytes, row.ciphertext_sha256 = len(torn), hashlib.sha256(torn).hexdigest()
            else:
                row.state, row.complete, row.node = "writing", False, "node-a"
        if not complete:
            storage = LocalFilesystemStorage(settings.recordings_root)
            keys = LocalKeyring(settings.key_dir)
            await recover_incomplete(sessions, storage, keys, tenant_id="acme", node="node-a")
    finally:
        await engine.dispose()


def test_verify_passes_an_incomplete_recording_torn_by_a_crash_and_names_its_tail() -> None:
    _, path = asyncio.run(record_call())
    asyncio.run(after_the_crash(tear_mid_chunk(path, complete=False), complete=False))
    verified = CliRunner().invoke(app, ["recordings", "verify", "--tenant", "acme", "rec-1"])
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.strip() == (
        f"recording rec-1: OK ({WHOLE} chunks readable, incomplete: the tail is torn, "
        "as expected of a recording cut short by a crash)"
    )


def test_verify_fails_the_same_torn_tail_on_a_recording_marked_complete() -> None:
    _, path = asyncio.run(record_call())
    asyncio.run(after_the_crash(tear_mid_chunk(path, complete=True), complete=True))
    verified = CliRunner().invoke(app, ["recordings", "verify", "--tenant", "acme", "rec-1"])
    assert verified.exit_code == 1
    assert "FAILED verification: TruncatedOrTamperedError" in verified.stderr
