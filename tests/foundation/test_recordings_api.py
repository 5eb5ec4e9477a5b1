"""Recording access through the admin API: tenant-scoped, audited export, integrity, holds.

Recordings are made by the real recorder (consent stored and audited first)
into the directories the app reads (``<data_dir>/recordings``, ``/keys``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.foundation.conftest import World, auth, call
from voicegw.api.app import create_app
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
from voicegw.recording.container import read_header
from voicegw.recording.keys import KeyWrapper, LocalKeyring, PublicKeyProvider
from voicegw.recording.metadata import persist_consent_decision
from voicegw.recording.recorder import Recorder, RecorderConfig, recover_incomplete
from voicegw.recording.storage import PARTIAL_SUFFIX, LocalFilesystemStorage
from voicegw.recording.transcripts import save_transcript
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent

RATE = 8000
SAMPLES = 160  # 20 ms frames
FRAMES = 60
CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
BASE = "/api/v1/tenants/tenant-a"


@dataclass(frozen=True)
class Made:
    recording_id: str
    consent_id: int
    samples: np.ndarray  # (frames * SAMPLES, 2): caller left, agent right


@dataclass(frozen=True)
class Vault:
    storage: LocalFilesystemStorage
    keys: LocalKeyring


@pytest.fixture
def vault(world: World, tmp_path: Path) -> Vault:
    """Where the ``world`` app looks: create_app's defaults under its data dir."""
    return Vault(
        LocalFilesystemStorage(tmp_path / "var" / "recordings"),
        LocalKeyring(tmp_path / "var" / "keys"),
    )


def party_audio(seed: int) -> np.ndarray:
    """Loud, never-zero 16-bit PCM, so a blanked or shifted sample is unmistakable."""
    rng = np.random.default_rng(seed)
    pcm = rng.integers(1000, 20000, size=FRAMES * SAMPLES, dtype=np.int16)
    return pcm * rng.choice(np.array([-1, 1], dtype=np.int16), size=pcm.size)


async def consent(
    sessions: async_sessionmaker[AsyncSession], tenant: str, call_id: str
) -> tuple[int, RecordingGate]:
    """A notify-mode caller decision, stored and audited; the gate it opens."""
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+6561234567")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    caller.handle(PromptStarted(0.0))
    (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
    async with sessions() as session, session.begin():
        row = await persist_consent_decision(
            session, actor="test", tenant_id=tenant, call_id=call_id, decision=notice.record
        )
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    return row.id, gate


async def record(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keys: KeyWrapper,
    *,
    recording_id: str = "rec-a1",
    call_id: str = "call-1",
    tenant: str = "tenant-a",
) -> Made:
    consent_id, gate = await consent(sessions, tenant, call_id)
    recorder = Recorder(
        sessions=sessions,
        storage=storage,
        keys=keys,
        gate=gate,
        tenant_id=tenant,
        call_id=call_id,
        region="sg",
        recording_id=recording_id,
        config=RecorderConfig(chunk_size=4096),  # several chunks per recording
        clock=lambda: CREATED,
    )
    await recorder.start(consent_id)
    caller, agent = party_audio(1), party_audio(2)
    for n in range(FRAMES):
        frame = slice(n * SAMPLES, (n + 1) * SAMPLES)
        recorder.feed(caller[frame].tobytes(), agent[frame].tobytes(), n * SAMPLES / RATE)
    result = await recorder.finish()
    assert result is not None and result.complete
    return Made(recording_id, consent_id, np.stack([caller, agent], axis=1))


async def download(world: World, path: str, token: str) -> tuple[int, str, bytes]:
    async with world.client.get(path, headers=auth(token)) as resp:
        return resp.status, resp.content_type, await resp.read()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def stored_path(vault: Vault, key: str) -> Path:
    return vault.storage.root / key


async def storage_key(sessions: async_sessionmaker[AsyncSession], recording_id: str) -> str:
    async with sessions() as session:
        row = await store.get_recording(session, "tenant-a", recording_id)
        assert row is not None
        return row.storage_key


async def audit_events(sessions: async_sessionmaker[AsyncSession], action: str) -> list[AuditEvent]:
    async with sessions() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list((await session.execute(query)).scalars())


# --- metadata ----------------------------------------------------------------------


async def test_tenant_admin_lists_and_shows_recordings_with_consent_audit_link(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first = await record(sessions, vault.storage, vault.keys, recording_id="rec-a1")
    await record(sessions, vault.storage, vault.keys, recording_id="rec-a2", call_id="call-2")

    status, body = await call(world, "GET", f"{BASE}/recordings", world.admin_a)
    assert status == 200
    assert [r["id"] for r in body["recordings"]] == ["rec-a1", "rec-a2"]
    assert body["next"] is None

    status, one = await call(world, "GET", f"{BASE}/recordings/rec-a1", world.admin_a)
    assert status == 200
    assert one == body["recordings"][0]
    async with sessions() as session:
        (record_row,) = await store.list_consent_records(session, "tenant-a", "call-1")
        row = await store.get_recording(session, "tenant-a", "rec-a1")
    assert row is not None
    assert one["consent"] == {
        "id": first.consent_id,
        "party": "caller",
        "decision": record_row.decision,
        "method": record_row.method,
        "audit_seq": record_row.audit_seq,
        "audit_hash": record_row.audit_hash,
    }
    assert one["consent"]["audit_hash"] is not None
    assert (one["channels"], one["sample_rate"], one["complete"], one["state"]) == (
        2,
        RATE,
        True,
        "finished",
    )
    assert one["duration_seconds"] == pytest.approx(FRAMES * SAMPLES / RATE)
    assert one["retain_until"] == store.as_utc(row.retain_until).isoformat()
    assert one["legal_hold"] is False
    assert isinstance(one["intervals"], list)
    assert one["ciphertext_sha256"] == row.ciphertext_sha256

    # filter and page
    status, only = await call(world, "GET", f"{BASE}/recordings?call_id=call-2", world.admin_a)
    assert [r["id"] for r in only["recordings"]] == ["rec-a2"]
    status, page = await call(world, "GET", f"{BASE}/recordings?limit=1", world.admin_a)
    assert ([r["id"] for r in page["recordings"]], page["next"]) == (["rec-a1"], "rec-a1")
    status, page = await call(
        world, "GET", f"{BASE}/recordings?limit=1&after=rec-a1", world.admin_a
    )
    assert ([r["id"] for r in page["recordings"]], page["next"]) == (["rec-a2"], None)
    status, bad = await call(world, "GET", f"{BASE}/recordings?limit=0", world.admin_a)
    assert (status, bad["error"]["field"]) == (400, "limit")

    status, missing = await call(world, "GET", f"{BASE}/recordings/rec-nope", world.admin_a)
    assert (status, missing["error"]["code"]) == (404, "not_found")


# --- export ------------------------------------------------------------------------


async def test_download_is_a_two_channel_wav_of_exactly_the_samples_written_audited_first(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    made = await record(sessions, vault.storage, vault.keys)
    before = files_under(tmp_path)

    async with world.client.get(
        f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "audio/wav"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="rec-a1.wav"'
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.content_length == 44 + made.samples.size * 2
        wav = await resp.read()

    data, rate = soundfile.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    assert rate == RATE and data.shape == (FRAMES * SAMPLES, 2)
    assert np.array_equal(data, made.samples)

    (event,) = await audit_events(sessions, "recording.export")
    assert event.target == "tenant/tenant-a/recordings/rec-a1"
    assert event.tenant_id == "tenant-a"
    assert event.actor.startswith("token:")
    assert json.loads(event.details)["plaintext_bytes"] == made.samples.size * 2
    # Nothing decrypted was left on disk: the same files as before the download.
    assert files_under(tmp_path) == before


async def test_transcript_text_downloads_as_json_lines_audited(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consent_id, _ = await consent(sessions, "tenant-a", "call-9")
    segments = [
        {"start": 0.0, "end": 1.2, "text": "hello"},
        {"start": 1.5, "end": 2.0, "text": "ja"},
    ]
    row = await save_transcript(
        sessions,
        vault.storage,
        vault.keys,
        tenant_id="tenant-a",
        call_id="call-9",
        region="sg",
        party="caller",
        consent_record_id=consent_id,
        segments=segments,
        transcript_id="tx-1",
        clock=lambda: CREATED,
    )
    status, listed = await call(world, "GET", f"{BASE}/transcripts", world.supervisor_a)
    assert status == 200 and [t["id"] for t in listed["transcripts"]] == [row.id]
    assert listed["transcripts"][0]["segments"] == 2

    status, kind, body = await download(world, f"{BASE}/transcripts/tx-1/text", world.admin_a)
    assert (status, kind) == (200, "application/x-ndjson")
    assert [json.loads(line) for line in body.decode().splitlines()] == segments
    (event,) = await audit_events(sessions, "transcript.export")
    assert event.target == "tenant/tenant-a/transcripts/tx-1"

    status, kind, _ = await download(world, f"{BASE}/transcripts/tx-1/text", world.supervisor_a)
    assert status == 403


# --- isolation and roles --------------------------------------------------------------

ROUTES = (
    ("GET", "/recordings", None),
    ("GET", "/recordings/rec-a1", None),
    ("GET", "/recordings/rec-a1/audio", None),
    ("POST", "/recordings/rec-a1/verify", None),
    ("PUT", "/recordings/rec-a1/legal-hold", {"reason": "litigation"}),
    ("DELETE", "/recordings/rec-a1/legal-hold", None),
    ("GET", "/transcripts", None),
    ("GET", "/transcripts/tx-1/text", None),
)


async def test_tenant_b_admin_gets_404_on_every_recording_route_of_tenant_a(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await record(sessions, vault.storage, vault.keys)
    for method, suffix, body in ROUTES:
        status, error = await call(world, method, BASE + suffix, world.admin_b, json=body)
        assert (status, error["error"]["code"]) == (404, "not_found"), (method, suffix)
        # and tenant B's own tenant path does not reach tenant A's recording either
        if "rec-a1" in suffix:
            path = "/api/v1/tenants/tenant-b" + suffix
            status, error = await call(world, method, path, world.admin_b, json=body)
            assert status == 404, (method, path)
    assert await audit_events(sessions, "recording.export") == []
    assert await audit_events(sessions, "legal_hold.set") == []


async def test_supervisor_lists_and_shows_but_may_not_download_verify_or_hold(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await record(sessions, vault.storage, vault.keys)
    status, _ = await call(world, "GET", f"{BASE}/recordings", world.supervisor_a)
    assert status == 200
    status, _ = await call(world, "GET", f"{BASE}/recordings/rec-a1", world.supervisor_a)
    assert status == 200
    for method, suffix, body in ROUTES[2:6]:
        status, error = await call(world, method, BASE + suffix, world.supervisor_a, json=body)
        assert (status, error["error"]["code"]) == (403, "forbidden"), (method, suffix)
    assert await audit_events(sessions, "recording.export") == []

    # the operator may (no tenant of its own)
    status, kind, _ = await download(world, f"{BASE}/recordings/rec-a1/audio", world.operator)
    assert (status, kind) == (200, "audio/wav")


# --- integrity ---------------------------------------------------------------------


async def test_verify_reports_a_clean_recording_ok(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    made = await record(sessions, vault.storage, vault.keys)
    status, body = await call(world, "POST", f"{BASE}/recordings/rec-a1/verify", world.admin_a)
    assert status == 200
    chunks = -(-made.samples.size * 2 // 4096)  # ceil; the last one is the final chunk
    assert body == {
        "id": "rec-a1",
        "ok": True,
        "matches_metadata": True,
        "authenticates": True,
        "complete": True,
        "chunks": chunks,
        "readable_chunks": chunks,
        "tail": None,
        "problem": None,
    }


@pytest.mark.parametrize(
    ("damage", "problem", "code"),
    [
        ("flip", "TamperedError", "tampered"),
        ("cut", "TruncatedError", "truncated"),
    ],
)
async def test_damaged_file_fails_verify_and_download_is_refused_with_json_error(
    world: World,
    vault: Vault,
    sessions: async_sessionmaker[AsyncSession],
    damage: str,
    problem: str,
    code: str,
) -> None:
    made = await record(sessions, vault.storage, vault.keys)
    path = stored_path(vault, await storage_key(sessions, "rec-a1"))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        final_chunk = made.samples.size * 2 % 4096 + 16  # plaintext remainder and its tag
        del data[-final_chunk:]  # ends at a chunk boundary, without the final chunk
    path.write_bytes(bytes(data))

    status, body = await call(world, "POST", f"{BASE}/recordings/rec-a1/verify", world.admin_a)
    assert status == 200
    assert (body["ok"], body["matches_metadata"], body["problem"]) == (False, False, problem)

    status, error = await call(world, "GET", f"{BASE}/recordings/rec-a1/audio", world.admin_a)
    assert status == 422
    assert error["error"]["code"] == code
    assert problem in error["error"]["message"]
    assert await audit_events(sessions, "recording.export") == []  # nothing was exported


async def test_damage_the_metadata_vouches_for_aborts_the_stream_short_of_its_length(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A file changed together with its row passes the pre-check; decryption still catches it."""
    await record(sessions, vault.storage, vault.keys)
    key = await storage_key(sessions, "rec-a1")
    path = stored_path(vault, key)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last chunks: headers and early chunks go out first
    path.write_bytes(bytes(data))
    async with sessions() as session, session.begin():
        row = await store.get_recording(session, "tenant-a", "rec-a1")
        assert row is not None
        row.ciphertext_sha256 = hashlib.sha256(bytes(data)).hexdigest()

    async with world.client.get(
        f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
    ) as resp:
        assert resp.status == 200  # the pre-check passed: headers went out
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_incomplete_recording_downloads_its_readable_part_marked_incomplete(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """What crash recovery leaves: no final chunk, row ``incomplete`` with the file's digest."""
    made = await record(sessions, vault.storage, vault.keys)
    key = await storage_key(sessions, "rec-a1")
    path = stored_path(vault, key)
    data = path.read_bytes()
    cut = data[: -(made.samples.size * 2 % 4096 + 16)]  # whole chunks only
    path.write_bytes(cut)
    async with sessions() as session, session.begin():
        row = await store.get_recording(session, "tenant-a", "rec-a1")
        assert row is not None
        row.state, row.complete = store.ObjectState.INCOMPLETE.value, False
        row.size_bytes, row.ciphertext_sha256 = len(cut), hashlib.sha256(cut).hexdigest()

    async with world.client.get(
        f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Recording-Complete"] == "false"
        wav = await resp.read()
    data_read, _ = soundfile.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    readable_frames = made.samples.size * 2 // 4096 * 4096 // 4
    assert np.array_equal(data_read, made.samples[:readable_frames])


CHUNK_ON_DISK = 4096 + 16  # the recordings here: 4096-byte chunks and their tags


async def crash_mid_chunk(
    sessions: async_sessionmaker[AsyncSession], vault: Vault, made: Made, *, torn: int
) -> tuple[int, bytes]:
    """What a kill -9 leaves, then recovery: the file as still being written (``.partial``)
    cut ``torn`` bytes into a chunk after the last whole one, the row ``writing``; then
    :func:`recover_incomplete` marks it. Returns (whole chunks, the stored bytes)."""
    key = await storage_key(sessions, "rec-a1")
    final = stored_path(vault, key)
    data = final.read_bytes()
    whole = made.samples.size * 2 // 4096 - 1  # keep one whole chunk back to tear
    left = data[: read_header(io.BytesIO(data)).length + whole * CHUNK_ON_DISK + torn]
    final.unlink()
    final.with_name(final.name + PARTIAL_SUFFIX).write_bytes(left)
    async with sessions() as session, session.begin():
        row = await store.get_recording(session, "tenant-a", "rec-a1")
        assert row is not None
        row.state, row.complete, row.node = store.ObjectState.WRITING.value, False, "node-a"
    (recovered,) = await recover_incomplete(
        sessions, vault.storage, vault.keys, tenant_id="tenant-a", node="node-a"
    )
    assert (recovered.complete, recovered.readable_chunks) == (False, whole)
    return whole, left


@pytest.mark.parametrize(("torn", "tail"), [(1000, "torn"), (0, "unsealed")])
async def test_verify_accepts_the_tail_a_crash_left_on_an_incomplete_recording(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession], torn: int, tail: str
) -> None:
    made = await record(sessions, vault.storage, vault.keys)
    whole, _ = await crash_mid_chunk(sessions, vault, made, torn=torn)

    status, body = await call(world, "POST", f"{BASE}/recordings/rec-a1/verify", world.admin_a)
    assert status == 200
    assert body == {
        "id": "rec-a1",
        "ok": True,
        "matches_metadata": True,
        "authenticates": True,  # every finished chunk
        "complete": False,
        "chunks": whole + (1 if torn else 0),
        "readable_chunks": whole,
        "tail": tail,  # reported, as expected of an incomplete recording: not a failure
        "problem": None,
    }
    # The finished chunks download, exactly; the torn bytes are not part of it.
    async with world.client.get(
        f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
    ) as resp:
        assert (resp.status, resp.headers["X-Recording-Complete"]) == (200, "false")
        wav = await resp.read()
    data_read, _ = soundfile.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    assert np.array_equal(data_read, made.samples[: whole * 4096 // 4])


async def test_verify_rejects_a_torn_tail_on_a_complete_recording(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The same bytes as a crash leaves, on a row that says ``complete``: damage."""
    made = await record(sessions, vault.storage, vault.keys)
    await crash_mid_chunk(sessions, vault, made, torn=1000)
    key = await storage_key(sessions, "rec-a1")
    final = stored_path(vault, key)
    final.with_name(final.name + PARTIAL_SUFFIX).rename(final)
    async with sessions() as session, session.begin():
        row = await store.get_recording(session, "tenant-a", "rec-a1")
        assert row is not None
        row.state, row.complete = store.ObjectState.FINISHED.value, True

    status, body = await call(world, "POST", f"{BASE}/recordings/rec-a1/verify", world.admin_a)
    assert status == 200
    assert (body["ok"], body["matches_metadata"], body["authenticates"]) == (False, True, False)
    assert (body["problem"], body["tail"]) == ("TruncatedOrTamperedError", None)
    # The row vouches for these bytes, so the download starts and is cut short of its length.
    async with world.client.get(
        f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_verify_of_an_incomplete_recording_still_rejects_a_modified_finished_chunk(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Only the tail is excused: a flipped bit in a whole chunk fails, even with the row's
    digest brought in line with the file."""
    made = await record(sessions, vault.storage, vault.keys)
    _, left = await crash_mid_chunk(sessions, vault, made, torn=1000)
    key = await storage_key(sessions, "rec-a1")
    partial = stored_path(vault, key).with_name(stored_path(vault, key).name + PARTIAL_SUFFIX)
    damaged = bytearray(left)
    damaged[len(damaged) // 2] ^= 0x01
    partial.write_bytes(bytes(damaged))
    async with sessions() as session, session.begin():
        row = await store.get_recording(session, "tenant-a", "rec-a1")
        assert row is not None
        row.size_bytes, row.ciphertext_sha256 = len(damaged), hashlib.sha256(damaged).hexdigest()

    status, body = await call(world, "POST", f"{BASE}/recordings/rec-a1/verify", world.admin_a)
    assert status == 200
    assert (body["ok"], body["problem"], body["tail"]) == (False, "TamperedError", None)


async def test_public_key_mode_download_is_409_decrypt_offline_and_verify_checks_digest(
    sessions: async_sessionmaker[AsyncSession], world: World, tmp_path: Path
) -> None:
    storage = LocalFilesystemStorage(tmp_path / "pk" / "recordings")
    provider = PublicKeyProvider()
    provider.add_public_key("tenant-a", X25519PrivateKey.generate().public_key())
    await record(sessions, storage, provider)
    app = create_app(sessions, tmp_path / "pk", recording_storage=storage, recording_keys=provider)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with client.get(
            f"{BASE}/recordings/rec-a1/audio", headers=auth(world.admin_a)
        ) as resp:
            assert resp.status == 409
            error = (await resp.json())["error"]
        assert error["code"] == "public_key_mode"
        assert "decrypt it offline" in error["message"]
        async with client.post(
            f"{BASE}/recordings/rec-a1/verify", headers=auth(world.admin_a)
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert (body["ok"], body["matches_metadata"], body["authenticates"]) == (True, True, None)
    finally:
        await client.close()
    assert await audit_events(sessions, "recording.export") == []


# --- legal hold ----------------------------------------------------------------------


async def test_legal_hold_placed_and_released_is_reflected_and_audited(
    world: World, vault: Vault, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await record(sessions, vault.storage, vault.keys)
    hold = f"{BASE}/recordings/rec-a1/legal-hold"

    status, error = await call(world, "PUT", hold, world.admin_a, json={})
    assert (status, error["error"]["field"]) == (400, "reason")

    status, body = await call(world, "PUT", hold, world.admin_a, json={"reason": "case 42"})
    assert status == 200
    assert (body["legal_hold"], body["legal_hold_reason"]) == (True, "case 42")
    status, shown = await call(world, "GET", f"{BASE}/recordings/rec-a1", world.admin_a)
    assert shown["legal_hold"] is True

    status, body = await call(world, "DELETE", hold, world.admin_a)
    assert status == 200
    assert (body["legal_hold"], body["legal_hold_reason"]) == (False, None)

    (placed,) = await audit_events(sessions, "legal_hold.set")
    (released,) = await audit_events(sessions, "legal_hold.release")
    for event in (placed, released):
        assert event.target == "tenant/tenant-a/recordings/rec-a1"
        assert event.actor.startswith("token:")
    assert json.loads(placed.details) == {"reason": "case 42"}

    status, error = await call(
        world, "PUT", f"{BASE}/recordings/rec-x/legal-hold", world.admin_a, json={"reason": "x"}
    )
    assert status == 404
