"""Recording tests' helpers: the CLI's data dir and a recording made there; consent,
rows and readable text of transcripts; storage that fills up."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from voicegw.recording.container import recover
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, persist_consent_decision, wrapped_key_of
from voicegw.recording.recorder import Recorder, RecorderConfig
from voicegw.recording.storage import AppendHandle, LocalFilesystemStorage
from voicegw.store import migrate, tenants
from voicegw.store import recordings as store
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


#: The tenant and call of the transcript tests.
TENANT = "acme"
CALL = "call-7"


async def notice_for(sessions: async_sessionmaker[AsyncSession], party: str = "caller") -> int:
    """A stored, audited notice-only decision for ``party`` (the tenant made on first use)."""
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
    )
    machine = ConsentMachine(party, PartyRole.CALLER, resolution, now=0.0)
    machine.handle(PromptStarted(0.0))
    (notice,) = [e for e in machine.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
    async with sessions() as session, session.begin():
        if await tenants.get_tenant(session, TENANT) is None:
            await tenants.create_tenant(
                session, actor="test", tenant_id=TENANT, name=TENANT, settings=TenantSettings()
            )
        row = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=notice.record
        )
        return row.id


async def row_of(sessions: async_sessionmaker[AsyncSession], object_id: str) -> store.Transcript:
    async with sessions() as session:
        row = await store.get_object(session, store.ObjectKind.TRANSCRIPT, TENANT, object_id)
    assert isinstance(row, store.Transcript)
    return row


def readable(
    storage: LocalFilesystemStorage, keyring: LocalKeyring, row: store.Transcript
) -> bytes:
    """Every sealed byte of the transcript, finished or not (what an export would give)."""
    if row.state == "writing":
        handle = storage.open_incomplete(row.storage_key)
    else:
        handle = open_stored(storage, row)
    with handle:
        return b"".join(recover(handle, keyring, wrapped_key=wrapped_key_of(row)).chunks)


class FailingAfter(LocalFilesystemStorage):
    """Local storage whose objects stop taking writes after ``budget`` bytes each (a full
    disk); objects created while ``budget`` is None take everything."""

    def __init__(self, root: Path, budget: int | None) -> None:
        super().__init__(root)
        self.budget = budget

    def create(self, key: str) -> AppendHandle:
        handle = super().create(key)
        if self.budget is None:
            return handle
        write, left = handle.write, [self.budget]

        def limited(data: bytes) -> None:
            if len(data) > left[0]:
                raise OSError(28, "No space left on device")
            left[0] -= len(data)
            write(data)

        handle.write = limited  # type: ignore[method-assign]
        return handle
