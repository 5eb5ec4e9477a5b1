"""Frames after skipped media-clock ticks: silence at the gap's place, nothing after it moves.

The recorder is fed as the consent flow feeds it: one frame per party per tick
with the tick's media time. When the clock skipped ticks (a stall longer than
its catch-up), the next frame comes later than the previous one ended; the
file must hold silence for the missing ticks at their place, the gate's
positions must stay on media time (so a pause after the gap is listed where it
is silent), and a long gap must not cost memory in proportion to its length.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
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
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, persist_consent_decision, wrapped_key_of
from voicegw.recording.recorder import Recorder, RecorderConfig
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import recordings as store
from voicegw.store import tenants
from voicegw.tenant_settings import Retention, TenantSettings

RATE = 8000
SAMPLES = 160
STEP = SAMPLES / RATE
TENANT = "acme"
CALL = "call-1"

Samples = npt.NDArray[np.int16]


def said(party: str, tick: int) -> bytes:
    """A frame no other tick or party has (never zero), so its place in the file shows."""
    value = 1 + tick % 30000
    return np.full(SAMPLES, value if party == "caller" else -value, dtype="<i2").tobytes()


@pytest.fixture
async def call(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring]:
    """A notified call: recording allowed from t=0, its consent stored and audited."""
    settings = TenantSettings(region="eu", retention=Retention(recordings_days=30))
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.NOTIFY), CallContext("+12125550100")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    caller.handle(PromptStarted(0.0))
    (notice,) = [e for e in caller.handle(PromptFinished(0.0)) if isinstance(e, DecisionMade)]
    async with sessions() as session, session.begin():
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name=TENANT, settings=settings
        )
        consent = await persist_consent_decision(
            session, actor="test", tenant_id=TENANT, call_id=CALL, decision=notice.record
        )
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    storage = LocalFilesystemStorage(tmp_path / "recordings")
    return gate, consent.id, storage, LocalKeyring(tmp_path / "keys")


def recorder_for(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
    config: RecorderConfig | None = None,
) -> Recorder:
    gate, _, storage, keyring = call
    return Recorder(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        gate=gate,
        tenant_id=TENANT,
        call_id=CALL,
        region="eu",
        config=config or RecorderConfig(chunk_size=4096),
    )


async def stored(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
    recording_id: str,
) -> tuple[store.Recording, Samples, Samples]:
    _, _, storage, keyring = call
    async with sessions() as session:
        row = await store.get_recording(session, TENANT, recording_id)
    assert row is not None
    with open_stored(storage, row) as handle:
        stereo = np.frombuffer(decrypt(handle, keyring, wrapped_key=wrapped_key_of(row)), "<i2")
    return row, stereo[0::2], stereo[1::2]


def frame_at(channel: Samples, tick: int) -> bytes:
    return channel[tick * SAMPLES : (tick + 1) * SAMPLES].tobytes()


@pytest.mark.parametrize("start_before", [0, 25], ids=["recording", "in-pre-roll"])
async def test_skipped_ticks_are_silence_in_place_and_a_later_pause_is_listed_where_it_is_silent(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
    start_before: int,
) -> None:
    gate, consent_id, _, _ = call
    recorder = recorder_for(sessions, call)
    ticks, skipped = range(40), range(10, 17)  # the clock skipped ticks 10-16
    for tick in ticks:
        if tick == start_before:
            await recorder.start(consent_id)  # before the gap, or after it (pre-roll)
        if tick == 20:
            gate.pause_all(tick * STEP)  # secure pause for ticks 20-24
        if tick == 25:
            gate.resume_all(tick * STEP)
        if tick not in skipped:
            recorder.feed(said("caller", tick), said("agent", tick), tick * STEP)
    result = await recorder.finish()
    assert result is not None and result.complete and result.dropped_frames == 0

    row, caller, agent = await stored(sessions, call, result.recording_id)
    assert caller.size == agent.size == len(ticks) * SAMPLES  # the call's media time
    assert row.duration_seconds == pytest.approx(len(ticks) * STEP)
    paused = range(20, 25)
    for tick in ticks:
        for party, channel in (("caller", caller), ("agent", agent)):
            heard = frame_at(channel, tick)
            if tick in skipped or tick in paused:
                assert heard == bytes(2 * SAMPLES), (party, tick)
            else:
                assert heard == said(party, tick), (party, tick)
    listed = sorted(
        (i["party"], i["reason"], i["start_sample"], i["end_sample"]) for i in row.intervals
    )
    assert listed == [
        ("*", "skipped", 10 * SAMPLES, 17 * SAMPLES),
        ("agent", "paused", 20 * SAMPLES, 25 * SAMPLES),
        ("caller", "paused", 20 * SAMPLES, 25 * SAMPLES),
    ]
    # and the gate's own account agrees: the pause starts at its media time
    (pause,) = gate.intervals("caller")
    assert pause.start_time == pytest.approx(20 * STEP)
    assert pause.start_sample == 20 * SAMPLES


async def test_a_pause_spanning_the_gap_is_one_interval_across_it(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
) -> None:
    gate, consent_id, _, _ = call
    recorder = recorder_for(sessions, call)
    await recorder.start(consent_id)
    for tick in range(30):
        if tick == 5:
            gate.pause_all(tick * STEP)
        if tick == 20:
            gate.resume_all(tick * STEP)
        if not 10 <= tick < 16:
            recorder.feed(said("caller", tick), said("agent", tick), tick * STEP)
    result = await recorder.finish()
    assert result is not None
    row, caller, _ = await stored(sessions, call, result.recording_id)
    assert caller.size == 30 * SAMPLES
    assert not caller[5 * SAMPLES : 20 * SAMPLES].any()
    assert frame_at(caller, 20) == said("caller", 20)
    assert [
        (i["start_sample"], i["end_sample"])
        for i in row.intervals
        if (i["party"], i["reason"]) == ("caller", "paused")
    ] == [(5 * SAMPLES, 20 * SAMPLES)]


async def test_frame_times_off_by_less_than_half_a_frame_insert_nothing(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
) -> None:
    _, consent_id, _, _ = call
    recorder = recorder_for(sessions, call)
    await recorder.start(consent_id)
    jitter = [0.0, 0.004, -0.003, 0.004, 0.0]  # a frame never more than 7 ms off the last
    for tick in range(50):
        recorder.feed(said("caller", tick), said("agent", tick), tick * STEP + jitter[tick % 5])
    result = await recorder.finish()
    assert result is not None
    row, caller, _ = await stored(sessions, call, result.recording_id)
    assert caller.size == 50 * SAMPLES
    assert all(frame_at(caller, tick) == said("caller", tick) for tick in range(50))
    assert row.intervals == []


@pytest.mark.parametrize("start_before", [0, 5], ids=["recording", "in-pre-roll"])
async def test_a_long_stall_is_filled_in_place_with_bounded_memory(
    sessions: async_sessionmaker[AsyncSession],
    call: tuple[RecordingGate, int, LocalFilesystemStorage, LocalKeyring],
    start_before: int,
) -> None:
    _, consent_id, _, _ = call
    # A 2 s pre-roll, so a gap longer than it must evict rather than grow it.
    recorder = recorder_for(sessions, call, RecorderConfig(preroll_frames=100))
    stall = 240 * 50  # four minutes without a tick: 7.7 MB of stereo silence
    ticks = [0, 1, 2, 3, 4 + stall, 5 + stall]
    tracemalloc.start()
    try:
        for tick in ticks:
            if tick == ticks[start_before]:
                await recorder.start(consent_id)
            recorder.feed(said("caller", tick), said("agent", tick), tick * STEP)
        result = await recorder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # a gap costs a block of silence at a time, not its length
    assert result is not None and result.complete

    row, caller, agent = await stored(sessions, call, result.recording_id)
    # Started after the stall, the file begins with what the 100-frame pre-roll still held.
    first = 0 if start_before == 0 else ticks[-2] - 99
    assert caller.size == agent.size == (ticks[-1] + 1 - first) * SAMPLES
    for tick in ticks:
        if tick >= first:
            assert frame_at(caller, tick - first) == said("caller", tick)
            assert frame_at(agent, tick - first) == said("agent", tick)
    gap = slice(max(4 - first, 0) * SAMPLES, (ticks[-2] - first) * SAMPLES)
    assert not caller[gap].any() and not agent[gap].any()
    assert [(i["reason"], i["end_sample"]) for i in row.intervals] == [
        ("skipped", (ticks[-2] - first) * SAMPLES)
    ]
