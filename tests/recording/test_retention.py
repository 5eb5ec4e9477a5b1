"""Retention: exactly the expired, unheld objects go; a second run or a crash changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from voicegw.recording import retention
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, persist_consent_decision, wrapped_key_of
from voicegw.recording.recorder import Recorder
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.recording.transcripts import save_transcript
from voicegw.store import audit, tenants
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import Retention, TenantSettings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FRAME = bytes(range(64)) * 5  # 160 samples of non-silent PCM
REC = store.ObjectKind.RECORDING
TX = store.ObjectKind.TRANSCRIPT


@dataclass
class World:
    sessions: async_sessionmaker[AsyncSession]
    storage: LocalFilesystemStorage
    keyring: LocalKeyring

    async def tenant(self, tenant_id: str) -> None:
        settings = TenantSettings(
            region="eu", retention=Retention(recordings_days=30, transcripts_days=10)
        )
        async with self.sessions() as session, session.begin():
            await tenants.create_tenant(
                session, actor="test", tenant_id=tenant_id, name=tenant_id, settings=settings
            )

    async def consent(self, tenant_id: str, call_id: str) -> int:
        resolution = resolve_mode(
            ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+4930123456")
        )
        caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
        caller.handle(PromptStarted(0.0))
        (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
        async with self.sessions() as session, session.begin():
            row = await persist_consent_decision(
                session, actor="test", tenant_id=tenant_id, call_id=call_id, decision=notice.record
            )
            return row.id

    async def recording(self, tenant_id: str, name: str, created: datetime) -> str:
        call_id = f"call-{name}"
        consent_id = await self.consent(tenant_id, call_id)
        resolution = resolve_mode(
            ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+4930123456")
        )
        gate = RecordingGate()
        caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
        caller.handle(PromptStarted(0.0))
        caller.handle(PromptFinished(0.0))
        gate.add_party(caller)
        gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
        recorder = Recorder(
            sessions=self.sessions,
            storage=self.storage,
            keys=self.keyring,
            gate=gate,
            tenant_id=tenant_id,
            call_id=call_id,
            region="eu",
            recording_id=f"rec-{name}",
            clock=lambda: created,
        )
        await recorder.start(consent_id)
        for n in range(5):
            recorder.feed(FRAME, FRAME, n * 0.02)
        result = await recorder.finish()
        assert result is not None and result.complete
        return result.recording_id

    async def transcript(self, tenant_id: str, name: str, created: datetime) -> str:
        call_id = f"call-{name}"
        row = await save_transcript(
            self.sessions,
            self.storage,
            self.keyring,
            tenant_id=tenant_id,
            call_id=call_id,
            region="eu",
            party="caller",
            consent_record_id=await self.consent(tenant_id, call_id),
            segments=[{"start": 0.0, "end": 1.2, "text": "hello"}],
            language="en",
            transcript_id=f"tx-{name}",
            clock=lambda: created,
        )
        return row.id

    async def row(
        self, kind: store.ObjectKind, tenant_id: str, object_id: str
    ) -> store.StoredObject:
        async with self.sessions() as session:
            row = await store.get_object(session, kind, tenant_id, object_id)
            assert row is not None
            return row

    async def stored(self, kind: store.ObjectKind, tenant_id: str, object_id: str) -> bool:
        row = await self.row(kind, tenant_id, object_id)
        return self.storage.exists(row.storage_key)


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> World:
    w = World(sessions, LocalFilesystemStorage(tmp_path / "rec"), LocalKeyring(tmp_path / "keys"))
    await w.tenant("acme")
    await w.tenant("globex")
    return w


def names(items: Sequence[retention.SweepItem]) -> set[tuple[str, str, str]]:
    return {(i.kind.value, i.tenant_id, i.object_id) for i in items}


async def test_sweep_deletes_exactly_the_expired_unheld_objects_and_a_second_run_nothing(
    world: World,
) -> None:
    old = await world.recording("acme", "old", T0)  # retained until T0 + 30 d
    young = await world.recording("acme", "young", T0 + timedelta(days=20))  # until T0 + 50 d
    held = await world.recording("acme", "held", T0)
    tx_old = await world.transcript("acme", "txold", T0)  # transcripts: 10 days
    other = await world.recording("globex", "other", T0)
    await retention.place_legal_hold(
        world.sessions, actor="legal", kind=REC, tenant_id="acme", object_id=held, reason="case 7"
    )
    now = T0 + timedelta(days=31)
    expected = {
        ("recording", "acme", old),
        ("transcript", "acme", tx_old),
        ("recording", "globex", other),
    }

    preview = await retention.sweep(world.sessions, world.storage, now=now, dry_run=True)
    assert preview.dry_run and names(preview.items) == expected
    assert await world.stored(REC, "acme", old)  # a dry run changes nothing

    report = await retention.sweep(world.sessions, world.storage, now=now)
    assert names(report.items) == expected and report.failures == ()
    for kind, tenant_id, object_id in [
        (REC, "acme", old),
        (TX, "acme", tx_old),
        (REC, "globex", other),
    ]:
        row = await world.row(kind, tenant_id, object_id)
        assert (row.state, row.wrapped_key) == ("deleted", None)
        assert row.deleted_at is not None and store.as_utc(row.deleted_at) == now
        assert not world.storage.exists(row.storage_key)
    for object_id in (young, held):
        row = await world.row(REC, "acme", object_id)
        assert row.state == "finished" and world.storage.exists(row.storage_key)
        with open_stored(world.storage, row) as handle:
            assert decrypt(handle, world.keyring, wrapped_key=wrapped_key_of(row))

    again = await retention.sweep(world.sessions, world.storage, now=now)
    assert again.items == () and again.failures == ()

    async with world.sessions() as session:
        events = list((await session.execute(select(AuditEvent))).scalars())
        deletions = sorted(e.target for e in events if e.action.startswith("retention.delete"))
        assert deletions == sorted(
            [
                f"tenant/acme/recordings/{old}",
                f"tenant/acme/transcripts/{tx_old}",
                f"tenant/globex/recordings/{other}",
            ]
        )
        assert [e.action for e in events if e.action.startswith("legal_hold")] == ["legal_hold.set"]
        assert (await audit.verify(session)).ok

    # releasing the hold lets the next sweep take it; a deleted object cannot be held
    await retention.release_legal_hold(
        world.sessions, actor="legal", kind=REC, tenant_id="acme", object_id=held
    )
    released = await retention.sweep(world.sessions, world.storage, now=now)
    assert names(released.items) == {("recording", "acme", held)}
    with pytest.raises(store.StateError):
        await retention.place_legal_hold(
            world.sessions, actor="legal", kind=REC, tenant_id="acme", object_id=old, reason="x"
        )
    with pytest.raises(store.NotFoundError):  # another tenant's object is simply not there
        await retention.place_legal_hold(
            world.sessions, actor="legal", kind=REC, tenant_id="acme", object_id=other, reason="x"
        )


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the sweeper catches it."""


class CrashingStorage(LocalFilesystemStorage):
    """Real storage that dies once inside ``delete``, before or after removing the bytes."""

    def __init__(self, root: Path, *, after_delete: bool) -> None:
        super().__init__(root)
        self.after_delete = after_delete
        self.crashed = False

    def delete(self, key: str) -> bool:
        if not self.crashed:
            self.crashed = True
            if self.after_delete:
                super().delete(key)
            raise SimulatedCrash
        return super().delete(key)


@pytest.mark.parametrize("after_delete", [False, True], ids=["before-bytes", "after-bytes"])
async def test_crash_mid_deletion_is_completed_by_the_next_run(
    world: World, after_delete: bool
) -> None:
    victim = await world.recording("acme", "victim", T0)
    now = T0 + timedelta(days=40)
    crashing = CrashingStorage(world.storage.root, after_delete=after_delete)

    with pytest.raises(SimulatedCrash):
        await retention.sweep(world.sessions, crashing, now=now)
    row = await world.row(REC, "acme", victim)
    assert row.state == "deleting" and row.deleted_at is None  # committed to go, not gone
    assert world.storage.exists(row.storage_key) is not after_delete
    with pytest.raises(store.StateError):  # too late for a hold
        await retention.place_legal_hold(
            world.sessions, actor="legal", kind=REC, tenant_id="acme", object_id=victim, reason="x"
        )

    report = await retention.sweep(world.sessions, world.storage, now=now)
    (item,) = report.items
    assert (item.object_id, item.resumed) == (victim, True)
    row = await world.row(REC, "acme", victim)
    assert (row.state, row.wrapped_key) == ("deleted", None)
    assert not world.storage.exists(row.storage_key)
    assert list(world.storage.list_incomplete()) == []
    assert (await retention.sweep(world.sessions, world.storage, now=now)).items == ()
    async with world.sessions() as session:
        deletions = [
            e
            for e in (await session.execute(select(AuditEvent))).scalars()
            if e.action == "retention.delete.recording"
        ]
        assert len(deletions) == 1  # one audit event per deletion, however many runs
        assert (await audit.verify(session)).ok


class FailingStorage(LocalFilesystemStorage):
    def delete(self, key: str) -> bool:
        raise OSError("backend unavailable")


async def test_storage_error_is_reported_and_retried_while_other_deletions_go_on(
    world: World,
) -> None:
    first = await world.recording("acme", "first", T0)
    second = await world.transcript("acme", "second", T0)
    now = T0 + timedelta(days=60)
    report = await retention.sweep(world.sessions, FailingStorage(world.storage.root), now=now)
    assert report.items == ()
    assert {(f.item.object_id, f.error) for f in report.failures} == {
        (first, "OSError"),
        (second, "OSError"),
    }
    retried = await retention.sweep(world.sessions, world.storage, now=now)
    assert {i.object_id for i in retried.items} == {first, second}
    assert all(i.resumed for i in retried.items)
