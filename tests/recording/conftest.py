"""The recording CLI tests: a data dir from the environment, and a recording made there."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

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
from voicegw.recording.recorder import Recorder, RecorderConfig
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import migrate, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings


@pytest.fixture
def cli_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's data dir (and nothing else of VOICEGW_*) set through the environment."""
    for key in [k for k in os.environ if k.startswith("VOICEGW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VOICEGW_STORAGE__DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


async def record_notified_call(
    *,
    recording_id: str,
    created: datetime,
    frames: Sequence[tuple[bytes, bytes]],
    config: RecorderConfig | None = None,
) -> Path:
    """One finished notify-mode recording of tenant acme through the real recorder, where
    the CLI looks (settings from the environment); returns the stored file."""
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
        recorder = Recorder(
            sessions=sessions,
            storage=LocalFilesystemStorage(settings.recordings_root),
            keys=LocalKeyring(settings.key_dir),
            gate=gate,
            tenant_id="acme",
            call_id="c1",
            region="sg",
            recording_id=recording_id,
            config=config or RecorderConfig(),
            clock=lambda: created,
        )
        key = await recorder.start(consent.id)
        for n, (caller_pcm, agent_pcm) in enumerate(frames):
            recorder.feed(caller_pcm, agent_pcm, n * (len(caller_pcm) // 2) / 8000)
        await recorder.finish()
        return settings.recordings_root / key
    finally:
        await engine.dispose()
