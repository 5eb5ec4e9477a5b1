"""``voicegw retention run``: a dry run lists what is due, changes nothing; a run deletes."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voicegw.cli import app
from voicegw.config import load_settings
from voicegw.consent import (
    CallContext,
    ConsentMachine,
    ConsentPolicy,
    DecisionMade,
    PartyRole,
    PromptFinished,
    PromptStarted,
    RecordingGate,
    RecordingMode,
    resolve_mode,
)
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import persist_consent_decision
from voicegw.recording.recorder import Recorder
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import migrate, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

CREATED = datetime(2020, 5, 1, tzinfo=UTC)  # default retention 90 days: long expired


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("VOICEGW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VOICEGW_STORAGE__DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


async def record_old_call() -> tuple[str, Path]:
    """One finished recording made in 2020, through the real recorder, where the CLI looks."""
    settings = load_settings(None)
    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        resolution = resolve_mode(
            ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
        )
        caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
        caller.handle(PromptStarted(0.0))
        (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
        async with sessions() as session, session.begin():
            await tenants.create_tenant(
                session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
            )
            consent = await persist_consent_decision(
                session, actor="test", tenant_id="acme", call_id="c1", decision=notice.record
            )
        gate = RecordingGate()
        gate.add_party(caller)
        gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
        storage = LocalFilesystemStorage(settings.recordings_root)
        recorder = Recorder(
            sessions=sessions,
            storage=storage,
            keys=LocalKeyring(settings.key_dir),
            gate=gate,
            tenant_id="acme",
            call_id="c1",
            region="sg",
            recording_id="rec-2020",
            clock=lambda: CREATED,
        )
        key = await recorder.start(consent.id)
        recorder.feed(bytes(320), bytes(320), 0.0)
        await recorder.finish()
        return key, settings.recordings_root / key
    finally:
        await engine.dispose()


def test_retention_run_dry_run_lists_then_run_deletes() -> None:
    _, path = asyncio.run(record_old_call())
    runner = CliRunner()

    dry = runner.invoke(app, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "would delete recording acme/rec-2020 (retain until 2020-07-30T00:00:00+00:00)",
        "would delete 1 object(s)",
    ]
    assert path.exists()

    real = runner.invoke(app, ["retention", "run"])
    assert real.exit_code == 0, real.output
    assert real.stdout.splitlines()[-1] == "deleted 1 object(s)"
    assert not path.exists()

    again = runner.invoke(app, ["retention", "run", "--dry-run"])
    assert again.stdout.splitlines() == ["would delete 0 object(s)"]


def test_retention_help() -> None:
    result = CliRunner().invoke(app, ["retention", "run", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.stdout
