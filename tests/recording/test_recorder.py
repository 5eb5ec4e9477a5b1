"""The recorder: consent before the first byte, sample-accurate gating, encrypted stereo out."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.consent import (
    CallContext,
    ConsentMachine,
    ConsentPolicy,
    DecisionMade,
    Dtmf,
    PartyRole,
    PromptFinished,
    PromptStarted,
    RecordingGate,
    RecordingMode,
    resolve_mode,
)
from voicegw.recording.container import decrypt, inspect, read_header
from voicegw.recording.errors import MissingWrappedKeyError
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import (
    Verification,
    open_stored,
    persist_consent_decision,
    verify_stored,
    wrapped_key_of,
)
from voicegw.recording.recorder import (
    ConsentNotPersistedError,
    ConsentRefusedError,
    Recorder,
    RecorderConfig,
)
from voicegw.recording.storage import AppendHandle, LocalFilesystemStorage
from voicegw.store import audit, tenants
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import Retention, TenantSettings

RATE = 8000
SAMPLES = 160  # 20 ms frames
STEP = SAMPLES / RATE
CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
TENANT = "acme"
CALL = "call-1"


def clock() -> datetime:
    return CREATED


def party_audio(seed: int, frames: int) -> list[bytes]:
    """Loud, never-zero 16-bit PCM frames, so a blanked sample is unmistakable."""
    rng = np.random.default_rng(seed)
    pcm = rng.integers(1000, 20000, size=frames * SAMPLES, dtype=np.int16)
    pcm *= rng.choice(np.array([-1, 1], dtype=np.int16), size=pcm.size)
    return [pcm[i * SAMPLES : (i + 1) * SAMPLES].tobytes() for i in range(frames)]


def channels(plaintext: bytes) -> tuple[np.ndarray, np.ndarray]:
    stereo = np.frombuffer(plaintext, dtype="<i2")
    return stereo[0::2], stereo[1::2]


def joined(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<i2")


async def make_tenant(sessions: async_sessionmaker[AsyncSession], tenant_id: str = TENANT) -> None:
    settings = TenantSettings(region="eu", retention=Retention(recordings_days=30))
    async with sessions() as session, session.begin():
        await tenants.create_tenant(
            session, actor="test", tenant_id=tenant_id, name=tenant_id, settings=settings
        )


def opt_in_gate() -> tuple[RecordingGate, ConsentMachine]:
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.OPT_IN), CallContext("+12125550100")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    agent = ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0)
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(caller)
    gate.add_party(agent)
    return gate, caller


@pytest.fixture
def storage(tmp_path: Path) -> LocalFilesystemStorage:
    return LocalFilesystemStorage(tmp_path / "recordings")


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keys")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def run_call(
    sessions: async_sessionmaker[AsyncSession],
    recorder: Recorder,
    caller: ConsentMachine,
    caller_frames: list[bytes],
    agent_frames: list[bytes],
    *,
    answer_at: int,
    digit: str,
) -> int | None:
    """Play the prompt, answer ``digit`` at frame ``answer_at``; persist and start on a grant."""
    consent_id: int | None = None
    for n, (c, a) in enumerate(zip(caller_frames, agent_frames, strict=True)):
        t = n * STEP
        if n == 2:
            caller.handle(PromptStarted(t))
        if n == answer_at - 5:
            caller.handle(PromptFinished(t))
        if n == answer_at:
            (decided,) = [e for e in caller.handle(Dtmf(t, digit)) if isinstance(e, DecisionMade)]
            async with sessions() as session, session.begin():
                row = await persist_consent_decision(
                    session, actor="test", tenant_id=TENANT, call_id=CALL, decision=decided.record
                )
            consent_id = row.id
            if decided.record.allows_recording:
                await recorder.start(consent_id)
        recorder.feed(c, a, t)
    return consent_id


async def test_grant_at_frame_k_caller_silent_before_and_bit_exact_after(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keyring: LocalKeyring,
) -> None:
    await make_tenant(sessions)
    gate, caller = opt_in_gate()
    frames, k = 120, 37
    caller_in, agent_in = party_audio(1, frames), party_audio(2, frames)
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="eu",
        config=RecorderConfig(chunk_size=4096),
        clock=clock,
    )
    consent_id = await run_call(
        sessions, recorder, caller, caller_in, agent_in, answer_at=k, digit="1"
    )
    result = await recorder.finish()
    assert result is not None and result.complete and result.dropped_frames == 0

    async with sessions() as session:
        row = await store.get_recording(session, TENANT, result.recording_id)
        assert row is not None
        with open_stored(storage, row) as handle:
            plaintext = decrypt(handle, keyring, wrapped_key=wrapped_key_of(row))
        left, right = channels(plaintext)
        assert left.size == right.size == frames * SAMPLES
        assert not left[: k * SAMPLES].any()  # nothing before the grant, not one sample
        assert np.array_equal(left[k * SAMPLES :], joined(caller_in)[k * SAMPLES :])
        assert np.array_equal(right, joined(agent_in))  # agent: not required, whole call

        # the metadata describes exactly that file
        ciphertext = (storage.root / row.storage_key).read_bytes()
        assert row.state == "finished" and row.complete
        assert row.storage_key == f"eu/{TENANT}/2026/03/{row.id}.vgr"
        assert row.size_bytes == len(ciphertext) == result.size_bytes
        assert row.ciphertext_sha256 == hashlib.sha256(ciphertext).hexdigest()
        assert row.duration_seconds == pytest.approx(frames * STEP)
        assert (row.channels, row.sample_rate, row.format) == (2, RATE, "vgr1/pcm_s16le")
        assert (row.key_id, row.key_version) == (TENANT, 1)
        assert row.consent_record_id == consent_id
        assert store.as_utc(row.retain_until) == CREATED + timedelta(days=30)
        assert [(i["party"], i["start_sample"], i["end_sample"]) for i in row.intervals] == [
            ("caller", 0, 2 * SAMPLES),
            ("caller", 2 * SAMPLES, (k - 5) * SAMPLES),
            ("caller", (k - 5) * SAMPLES, k * SAMPLES),
        ]
        assert [i["reason"] for i in row.intervals] == ["pending", "prompting", "awaiting_answer"]

        # evidence audited before the recording started, the finish audited after
        events = (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()
        actions = [e.action for e in events if e.tenant_id == TENANT]
        assert actions[-3:] == ["consent.decision", "recording.start", "recording.finish"]
        assert (await audit.verify(session)).ok

    # only ciphertext reached the disk; the wrapped key lives in the database
    assert files_under(storage.root) == [storage.root / row.storage_key]
    assert joined(caller_in)[k * SAMPLES :].tobytes()[:64] not in ciphertext
    with storage.open_read(row.storage_key) as handle:
        assert read_header(handle).detached
    with pytest.raises(MissingWrappedKeyError):
        decrypt(storage.root / row.storage_key, keyring)

    with storage.open_read(row.storage_key) as handle:
        chunks = inspect(handle, keyring, wrapped_key=wrapped_key_of(row)).readable_chunks
    assert verify_stored(storage, row, keyring) == Verification(True, True, True, None, chunks)
    path = storage.root / row.storage_key
    damaged = bytearray(ciphertext)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    seen = verify_stored(storage, row, keyring)
    assert seen == Verification(False, False, False, "TamperedError", seen.readable_chunks)
    assert seen.readable_chunks is not None and seen.readable_chunks < chunks


async def test_declined_call_leaves_no_file_and_no_recording_row(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keyring: LocalKeyring,
) -> None:
    await make_tenant(sessions)
    gate, caller = opt_in_gate()
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="eu",
        clock=clock,
    )
    caller_in, agent_in = party_audio(3, 60), party_audio(4, 60)
    declined = await run_call(
        sessions, recorder, caller, caller_in, agent_in, answer_at=30, digit="2"
    )
    assert declined is not None
    with pytest.raises(ConsentRefusedError):
        await recorder.start(declined)  # an orchestrator bug must not get round the decision
    assert await recorder.finish() is None

    assert files_under(storage.root) == []
    async with sessions() as session:
        assert await store.list_recordings(session, TENANT, include_deleted=True) == []
        (record,) = await store.list_consent_records(session, TENANT, CALL)
        assert (record.decision, record.method, record.evidence) == (
            "declined",
            "dtmf",
            {"reason": "answered_no", "digit": "2"},
        )


async def test_recorder_refuses_to_start_without_a_stored_and_audited_decision(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keyring: LocalKeyring,
) -> None:
    await make_tenant(sessions)
    await make_tenant(sessions, "globex")
    gate, caller = opt_in_gate()
    caller.handle(PromptStarted(0.0))
    (granted,) = [e for e in caller.handle(Dtmf(0.5, "1")) if isinstance(e, DecisionMade)]

    async with sessions() as session, session.begin():
        audited = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=granted.record
        )
        other_tenant = await persist_consent_decision(
            session, actor="test", tenant_id="globex", call_id=CALL, decision=granted.record
        )
        other_call = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id="call-2", decision=granted.record
        )
        unaudited = store.ConsentRecord(
            tenant_id=TENANT,
            call_id=CALL,
            party="caller",
            role="caller",
            decision="granted",
            method="dtmf",
            evidence={"reason": "answered_yes"},
            mode="opt_in",
            policy_rule="tenant_default",
            policy_version="1",
            decided_at=0.5,
            recorded_at=CREATED,
        )
        session.add(unaudited)
        forged = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=granted.record
        )
        forged.audit_hash = "0" * 64  # points at an audit event that does not say this
        await session.flush()
        refused = [None, 999_999, unaudited.id, forged.id, other_tenant.id, other_call.id]

    for consent_id in refused:
        recorder = Recorder(
            sessions=sessions,
            storage=storage,
            keys=keyring,
            gate=gate,
            tenant_id=TENANT,
            call_id=CALL,
            region="eu",
            clock=clock,
        )
        recorder.feed(bytes(2 * SAMPLES), bytes(2 * SAMPLES), 1.0)
        with pytest.raises(ConsentNotPersistedError):
            await recorder.start(consent_id)
        assert await recorder.finish() is None

    assert files_under(storage.root) == []
    async with sessions() as session:
        assert await store.list_recordings(session, TENANT) == []
    # the audited record itself is accepted
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="eu",
        clock=clock,
    )
    await recorder.start(audited.id)
    assert (await recorder.finish()) is not None


class _StallingStorage(LocalFilesystemStorage):
    """Real storage whose appends stall once armed: the disk is slower than the media clock."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.armed = False
        self.stalled = threading.Event()
        self.release = threading.Event()

    def create(self, key: str) -> AppendHandle:
        handle = super().create(key)
        write = handle.write

        def stalling_write(data: bytes) -> None:
            if self.armed:
                self.stalled.set()
                assert self.release.wait(30)
            write(data)

        handle.write = stalling_write  # type: ignore[method-assign]
        return handle


async def test_slow_storage_drops_frames_but_keeps_the_timing(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, keyring: LocalKeyring
) -> None:
    await make_tenant(sessions)
    storage = _StallingStorage(tmp_path / "slow")
    gate = RecordingGate(sample_rate=RATE)
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    caller.handle(PromptStarted(0.0))
    (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
    async with sessions() as session, session.begin():
        record = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=notice.record
        )
    # one frame per chunk, so every frame the writer takes is one stalled write
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="eu",
        config=RecorderConfig(queue_frames=2, chunk_size=4 * SAMPLES),
        clock=clock,
    )
    await recorder.start(record.id)
    caller_in, agent_in = party_audio(5, 20), party_audio(6, 20)
    storage.armed = True
    recorder.feed(caller_in[0], agent_in[0], 0.0)
    assert await asyncio_wait(storage.stalled)  # the writer holds frame 0, stuck on the disk
    for n in range(1, 20):
        recorder.feed(caller_in[n], agent_in[n], n * STEP)  # returns at once: never blocks
    assert recorder.dropped_frames == 17  # frames 1-2 queued, 3-19 dropped
    storage.release.set()
    result = await recorder.finish()
    assert result is not None and result.complete and result.dropped_frames == 17

    async with sessions() as session:
        row = await store.get_recording(session, TENANT, result.recording_id)
        assert row is not None
        with open_stored(storage, row) as handle:
            left, right = channels(decrypt(handle, keyring, wrapped_key=wrapped_key_of(row)))
    assert left.size == 20 * SAMPLES  # dropped frames became silence: timing kept
    assert np.array_equal(left[: 3 * SAMPLES], joined(caller_in[:3]))
    assert np.array_equal(right[: 3 * SAMPLES], joined(agent_in[:3]))
    assert not left[3 * SAMPLES :].any() and not right[3 * SAMPLES :].any()
    assert row.dropped_frames == 17
    assert [(i["reason"], i["start_sample"], i["end_sample"]) for i in row.intervals] == [
        ("dropped", n * SAMPLES, (n + 1) * SAMPLES) for n in range(3, 20)
    ]


async def asyncio_wait(event: threading.Event) -> bool:
    return await asyncio.to_thread(event.wait, 10.0)
