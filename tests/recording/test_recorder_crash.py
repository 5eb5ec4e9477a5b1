"""A recorder killed mid-call: recovery marks it incomplete and its whole chunks decrypt.

Two nodes share the database: the crashed node's recovery settles only its own
recording, while the other node's recording, live at that moment, goes on and
finishes complete.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

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
from voicegw.recording.container import TAG_BYTES, decrypt, read_header, recover
from voicegw.recording.errors import TruncatedError
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import (
    Verification,
    open_stored,
    persist_consent_decision,
    verify_stored,
    wrapped_key_of,
)
from voicegw.recording.recorder import Recorder, RecorderConfig, interleave, recover_incomplete
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import audit, tenants
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import TenantSettings

REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"
CALL = "call-9"
FRAMES = 40  # 40 x 640 bytes of stereo = exactly 25 chunks of 1024
CHUNK = 1024
SAMPLES = 160

# The child records a NOTIFY call (caller allowed from t=0), feeds FRAMES frames,
# waits until all whole chunks are on disk, says READY and waits to be killed.
CHILD = """
import asyncio, sys
import numpy as np
from voicegw.consent import (CallContext, ConsentMachine, ConsentPolicy, PartyRole,
    PromptFinished, PromptStarted, RecordingGate, RecordingMode, resolve_mode)
from voicegw.recording.container import inspect
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import wrapped_key_of
from voicegw.recording.recorder import Recorder, RecorderConfig
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory

URL, ROOT, KEYS, CONSENT, FRAMES, CHUNK, WANT = sys.argv[1:8]

def frames(seed):
    rng = np.random.default_rng(seed)
    pcm = rng.integers(-20000, 20000, size=int(FRAMES) * 160, dtype=np.int16)
    return [pcm[i * 160:(i + 1) * 160].tobytes() for i in range(int(FRAMES))]

async def main():
    engine = create_engine(URL)
    sessions = session_factory(engine)
    storage, keyring = LocalFilesystemStorage(ROOT), LocalKeyring(KEYS)
    resolution = resolve_mode(ConsentPolicy(default_mode=RecordingMode.NOTIFY),
                              CallContext("+6561234567"))
    gate = RecordingGate(sample_rate=8000)
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    caller.handle(PromptStarted(0.0))
    caller.handle(PromptFinished(0.0))
    recorder = Recorder(sessions=sessions, storage=storage, keys=keyring, gate=gate,
                        tenant_id="acme", call_id="call-9", region="sg",
                        recording_id="rec-crash",
                        config=RecorderConfig(chunk_size=int(CHUNK), node="node-a"))
    key = await recorder.start(int(CONSENT))
    for n, (c, a) in enumerate(zip(frames(1), frames(2))):
        recorder.feed(c, a, n * 0.02)
    async with sessions() as session:
        row = await store.get_recording(session, "acme", "rec-crash")
    for _ in range(1000):
        with storage.open_incomplete(key) as handle:
            seen = inspect(handle, keyring, wrapped_key=wrapped_key_of(row))
        if seen.readable_chunks >= int(WANT):
            break
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def frames(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pcm = rng.integers(-20000, 20000, size=FRAMES * SAMPLES, dtype=np.int16)
    return [pcm[i * SAMPLES : (i + 1) * SAMPLES].tobytes() for i in range(FRAMES)]


async def persisted_notice(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name=TENANT, settings=TenantSettings()
        )
        resolution = resolve_mode(
            ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
        )
        caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
        caller.handle(PromptStarted(0.0))
        (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
        row = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=notice.record
        )
        return row.id


async def live_recorder(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keyring: LocalKeyring,
    consent_id: int,
) -> Recorder:
    """Another node's recorder, started on the same call's notice and still running."""
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
    )
    gate = RecordingGate(sample_rate=8000)
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    caller.handle(PromptStarted(0.0))
    caller.handle(PromptFinished(0.0))
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="sg",
        recording_id="rec-live",
        config=RecorderConfig(chunk_size=CHUNK, node="node-b"),
    )
    await recorder.start(consent_id)
    return recorder


async def test_killed_recorder_leaves_whole_chunks_that_recovery_marks_incomplete(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    consent_id = await persisted_notice(sessions)
    storage, keyring = LocalFilesystemStorage(tmp_path / "rec"), LocalKeyring(tmp_path / "keys")
    whole_chunks = FRAMES * 4 * SAMPLES // CHUNK
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        engine.url.render_as_string(hide_password=False),
        str(storage.root),
        str(keyring.directory),
        str(consent_id),
        str(FRAMES),
        str(CHUNK),
        str(whole_chunks),
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)  # type: ignore[union-attr]
    finally:
        child.kill()  # SIGKILL: no finally blocks, no final chunk, no metadata
        _, err = await child.communicate()
    assert line == b"READY\n", err.decode()[-2000:]

    async with sessions() as session:
        row = await store.get_recording(session, TENANT, "rec-crash")
        assert row is not None and row.state == "writing"  # what the crash left

    # node-b is recording right now; node-a restarts and recovers: only its own row.
    live = await live_recorder(sessions, storage, keyring, consent_id)
    caller_b, agent_b = frames(3), frames(4)
    live.feed(caller_b[0], agent_b[0], 0.0)
    assert await recover_incomplete(
        sessions, storage, keyring, tenant_id=TENANT, node="node-c"
    ) == []  # fmt: skip
    (recovered,) = await recover_incomplete(
        sessions, storage, keyring, tenant_id=TENANT, node="node-a"
    )
    assert (recovered.kind, recovered.object_id, recovered.complete) == (
        store.ObjectKind.RECORDING,
        "rec-crash",
        False,
    )
    assert recovered.readable_chunks == whole_chunks
    assert await recover_incomplete(
        sessions, storage, keyring, tenant_id=TENANT, node="node-a"
    ) == []  # fmt: skip
    async with sessions() as session:
        other = await store.get_recording(session, TENANT, "rec-live")
        assert other is not None and (other.node, other.state) == ("node-b", "writing")
    for n in range(1, FRAMES):
        live.feed(caller_b[n], agent_b[n], n * 0.02)
    finished = await live.finish()
    assert finished is not None and finished.complete  # untouched by node-a's recovery

    async with sessions() as session:
        row = await store.get_recording(session, TENANT, "rec-crash")
        assert row is not None
        assert (row.state, row.complete) == ("incomplete", False)
        assert row.duration_seconds == pytest.approx(whole_chunks * CHUNK / (4 * 8000))
        with open_stored(storage, row) as handle:
            header = read_header(handle)
            handle.seek(0)
            assert row.size_bytes == len(handle.read())
            assert row.size_bytes == header.length + whole_chunks * (CHUNK + TAG_BYTES)
            handle.seek(0)
            result = recover(handle, keyring, wrapped_key=wrapped_key_of(row))
            handle.seek(0)
            with pytest.raises(TruncatedError):
                decrypt(handle, keyring, wrapped_key=wrapped_key_of(row))
        # Marked incomplete: the missing final chunk is what the crash explains, not damage.
        assert verify_stored(storage, row, keyring) == Verification(
            True, True, False, None, readable_chunks=whole_chunks, tail="unsealed"
        )
        expected = b"".join(interleave(c, a) for c, a in zip(frames(1), frames(2), strict=True))
        assert not result.complete
        assert result.plaintext == expected[: whole_chunks * CHUNK]  # every sample fed, intact
        events = (await session.execute(select(AuditEvent))).scalars()
        actions = [e.action for e in events if e.target == store.target_of(row)]
        assert actions == ["recording.start", "recording.recovered"]
        assert (await audit.verify(session)).ok
