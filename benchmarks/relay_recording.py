"""The recording side of ``bench_rtp_relay.py --record``: every bridged call recorded as
``serve`` records it.

A :class:`RecordingNode` is what ``voicegw.server.serve`` builds for its consent
wrapper (:class:`~voicegw.calls.consented.ConsentedDeps`), rooted in a scratch
directory: the embedded SQLite database migrated to head, a
:class:`~voicegw.recording.storage.LocalFilesystemStorage`, a
:class:`~voicegw.recording.keys.LocalKeyring`, a prompt library, and one tenant
whose policy is ``opt_in`` with an uploaded notice. Each call is then put
together as ``ConsentedService`` does for a SIP call once an agent joins: an
:class:`~voicegw.calls.call_media.RtpCallMedia` over the caller's leg with the
agent's leg attached, and a :class:`~voicegw.calls.consent_flow.ConsentFlow`
(consent machines, the recording gate, the recorder writing the encrypted
container) running for the call's lifetime. The caller hears the notice and
presses the accept key (signalled as SIP INFO does, through ``push_digit``); the
agent's consent is not asked (employment terms), so both parties are recorded.
Consent is settled before the benchmark's measuring window opens, so the
window measures steady-state recording, not database writes.

Afterwards a sample of the recordings is read back through the export path the
API and CLI use (:func:`~voicegw.recording.export.check_stored`,
:func:`~voicegw.recording.export.open_export`) and checked: it authenticates,
its length is exactly the frames the flow was handed, and each party's channel
holds that party's audio frame for every frame the party was heard.
"""

from __future__ import annotations

import asyncio
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.consent_flow import (
    CallInfo,
    ConsentFlow,
    ConsentOutcome,
    ConsentServices,
    load_consent_policy,
)
from voicegw.consent import ConsentPolicy, RecordingMode, State
from voicegw.media.clock import MediaClock
from voicegw.media.taps import TapFrame
from voicegw.media.transport import LegTransport
from voicegw.recording.export import check_stored, open_export
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.recorder import RecorderConfig
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import migrate, tenants
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory
from voicegw.store.prompt_files import PromptLibrary
from voicegw.tenant_settings import ConsentPrompt, Retention, TenantSettings

TENANT = "bench"
REGION = "eu"
NODE = "bench-node"
CALLER_NUMBER = "+12125550100"  # New York: one-party consent, the tenant's opt-in applies
DIALLED = "+12125550199"
ACCEPT_KEY = "1"
SAMPLE_RATE = 8000
FRAME_SAMPLES = 160
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
STEREO_FRAME_BYTES = 2 * 2 * FRAME_SAMPLES
NOTICE_SECONDS = 0.5  # the shortest upload allowed: the notice is set-up, not measured


def notice_wav() -> bytes:
    """The tenant's uploaded notice: a short 440 Hz tone as an 8 kHz WAV."""
    t = np.arange(round(NOTICE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    out = io.BytesIO()
    soundfile.write(out, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return out.getvalue()


@dataclass
class RecordingNode:
    """Database, storage, keys and prompts of one node, under ``root`` (the caller deletes it)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: LocalFilesystemStorage
    keyring: LocalKeyring
    prompt_files: PromptLibrary
    settings: TenantSettings
    policy: ConsentPolicy

    @classmethod
    async def open(cls, root: Path) -> RecordingNode:
        engine = create_engine(f"sqlite+aiosqlite:///{root / 'voicegw.db'}")
        try:
            await migrate.upgrade(engine)
            sessions = session_factory(engine)
            prompt_files = PromptLibrary(root / "prompts")
            prompt_files.save(TENANT, "notice.wav", notice_wav())
            settings = TenantSettings(
                region=REGION,
                recording_mode=RecordingMode.OPT_IN.value,
                consent_prompt=ConsentPrompt(text=None, audio_file="notice.wav"),
                retention=Retention(recordings_days=1),
            )
            async with sessions() as session, session.begin():
                await tenants.create_tenant(
                    session, actor="bench", tenant_id=TENANT, name=TENANT, settings=settings
                )
            async with sessions() as session:
                policy = await load_consent_policy(session, TENANT, settings)
        except BaseException:
            await engine.dispose()
            raise
        return cls(
            engine,
            sessions,
            LocalFilesystemStorage(root / "recordings"),
            LocalKeyring(root / "keys"),
            prompt_files,
            settings,
            policy,
        )

    async def close(self) -> None:
        await self.engine.dispose()

    def services(self) -> ConsentServices:
        """What ``ConsentedService`` hands every flow (no TTS, ASR or processing records:
        the notice is an uploaded file and answers are keys)."""
        return ConsentServices(
            self.sessions,
            self.storage,
            self.keyring,
            prompt_files=self.prompt_files,
            recorder_config=RecorderConfig(node=NODE),
        )

    def bytes_on_disk(self) -> int:
        root = self.storage.root
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class FrameCounter:
    """A flow frame sink (as ``ConsentedService``'s state watch is one): frames per party,
    all of them and those carrying received audio, and the first and last tick seen."""

    def __init__(self) -> None:
        self.ticks: dict[str, int] = {}
        self.heard: dict[str, int] = {}
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def __call__(self, frame: TapFrame) -> None:
        self.ticks[frame.party] = self.ticks.get(frame.party, 0) + 1
        self.first.setdefault(frame.party, frame.index)
        self.last[frame.party] = frame.index
        if not frame.filled:
            self.heard[frame.party] = self.heard.get(frame.party, 0) + 1

    def span(self, party: str) -> int:
        """Ticks from the party's first frame to its last, skipped ones included: the
        recording keeps the call's timeline, so this is the frames it must hold."""
        if party not in self.first:
            return 0
        return self.last[party] - self.first[party] + 1


@dataclass
class RecordedCall:
    call_id: str
    media: RtpCallMedia
    flow: ConsentFlow
    counter: FrameCounter
    task: asyncio.Task[ConsentOutcome]
    clock: MediaClock
    skipped_at_open: int
    outcome: ConsentOutcome | None = None
    hung_up_at: float | None = None
    skipped_at_hang_up: int = 0

    @property
    def skipped_ticks(self) -> int:
        """Ticks the node's clock skipped (stalls over 100 ms) while the call lived."""
        return self.skipped_at_hang_up - self.skipped_at_open


def open_call(
    node: RecordingNode,
    clock: MediaClock,
    caller: LegTransport,
    agent: LegTransport,
    call_id: str,
) -> RecordedCall:
    """One bridged call's media and consent flow, started (the notice begins playing)."""
    media = RtpCallMedia(caller, clock)
    media.attach_agent(agent)
    counter = FrameCounter()
    flow = ConsentFlow(
        media,
        CallInfo(TENANT, call_id, REGION, CALLER_NUMBER, DIALLED),
        node.settings,
        node.policy,
        node.services(),
        frame_sinks=(counter,),
    )
    task = asyncio.create_task(flow.run(), name=f"consent-flow-{call_id}")
    return RecordedCall(call_id, media, flow, counter, task, clock, _skipped(clock))


def _skipped(clock: MediaClock) -> int:
    return clock.schedule.skipped if clock.schedule is not None else 0


async def _until(condition: Callable[[], bool], what: str, deadline: float) -> None:
    """Poll ``condition()`` every 50 ms until true; TimeoutError naming ``what`` at ``deadline``."""
    loop = asyncio.get_running_loop()
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"set-up timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def grant_consent(calls: Sequence[RecordedCall], within: float) -> None:
    """Each caller hears the notice and accepts; returns once every recorder has started
    (TimeoutError after ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = list(calls)
    while pending:  # bounded by the deadline below
        waiting: list[RecordedCall] = []
        for call in pending:
            if call.task.done():
                call.task.result()  # a flow that died: raise its error here
                raise RuntimeError(f"consent flow of {call.call_id} ended during set-up")
            machine = call.flow.caller_machine
            if machine is not None and machine.state is State.AWAITING_ANSWER:
                call.media.push_digit(ACCEPT_KEY)
            else:
                waiting.append(call)
        pending = waiting
        if pending:
            if loop.time() > deadline:
                raise TimeoutError(f"set-up timed out: {len(pending)} notices still playing")
            await asyncio.sleep(0.05)

    def recording() -> bool:
        return all(call.flow.recorder.storage_key is not None for call in calls)

    try:
        await _until(recording, "every recorder to start", deadline)
    except TimeoutError:
        late = [call for call in calls if call.flow.recorder.storage_key is None]
        states = sorted({_describe(call) for call in late})
        raise TimeoutError(
            f"{len(late)} of {len(calls)} recorders did not start: {', '.join(states)}"
        ) from None
    # storage_key is set just before the container is opened in a worker thread.
    await asyncio.sleep(0.3)


def _describe(call: RecordedCall) -> str:
    """Why a call's recorder has not started, in a few words (set-up diagnostics)."""
    if call.task.done():
        failure = None if call.task.cancelled() else call.task.exception()
        return f"flow ended ({type(failure).__name__ if failure else 'no error'})"
    machine = call.flow.caller_machine
    return f"caller {machine.state.value if machine is not None else 'unresolved'}"


async def hang_up(calls: Sequence[RecordedCall], clock: MediaClock, within: float) -> None:
    """End every call and wait until each flow has sealed its recording and stored its row
    (TimeoutError after ``within`` seconds)."""
    for call in calls:
        call.hung_up_at = clock.now()
        call.skipped_at_hang_up = _skipped(clock)
        call.media.hang_up()
    done, _ = await asyncio.wait([c.task for c in calls], timeout=within)
    if len(done) != len(calls):
        raise TimeoutError(f"{len(calls) - len(done)} flows did not seal within {within:.0f} s")
    for call in calls:
        call.outcome = call.task.result()


async def abandon(calls: Sequence[RecordedCall]) -> None:
    """After a failure: end the calls, give the flows a moment to seal, cancel the rest."""
    for call in calls:
        call.media.hang_up()
    tasks = [c.task for c in calls if not c.task.done()]
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=10)
        for task in late:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors = {f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, Exception)}
        for error in sorted(errors)[:5]:  # the calls' own errors, for whoever reads the failure
            print(f"consent flow failed: {error}"[:500], file=sys.stderr)


@dataclass
class RecordingFigures:
    calls: int
    recordings: int  # complete recordings stored
    frames_written: int
    frames_given: int  # ticks the flows' frames span (frames handed over + ticks skipped)
    dropped_frames: int  # frames the recorders' writer threads could not keep up with
    recorded_seconds: float
    bytes_on_disk: int
    heard: int  # tap frames carrying received audio, both parties, all calls
    verified: int = 0
    problems: list[str] = field(default_factory=list)
    #: Per sampled recording: media-clock seconds of the call the file does not cover
    #: (from its last frame to the hang-up: skipped ticks are silence inside the file).
    shortfalls: list[float] = field(default_factory=list)


def summarise(node: RecordingNode, calls: Sequence[RecordedCall]) -> RecordingFigures:
    results = [c.outcome.recording for c in calls if c.outcome is not None]
    stored = [r for r in results if r is not None and r.complete]
    seconds = sum(r.duration_seconds for r in stored)
    return RecordingFigures(
        calls=len(calls),
        recordings=len(stored),
        frames_written=round(seconds / FRAME_SECONDS),
        frames_given=sum(c.counter.span(c.media.caller_party) for c in calls),
        dropped_frames=sum(r.dropped_frames for r in stored),
        recorded_seconds=seconds,
        bytes_on_disk=node.bytes_on_disk(),
        heard=sum(sum(c.counter.heard.values()) for c in calls),
    )


def _read_back(node: RecordingNode, row: store.Recording) -> bytes:
    """Blocking: verify the stored object and decrypt it through the export reader."""
    check = check_stored(node.storage, node.keyring, row)
    if not check.ok:
        raise ValueError(check.describe())
    export = open_export(node.storage, node.keyring, row)
    try:
        return b"".join(export.chunks())
    finally:
        export.close()


def _matching_frames(channel: np.ndarray, frame: bytes) -> int:
    """Whole 20 ms frames of ``channel`` (int16, one party) equal to ``frame``."""
    whole = channel[: channel.size - channel.size % FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    expected = np.frombuffer(frame, dtype="<i2")
    return int(np.count_nonzero((whole == expected).all(axis=1)))


async def verify_sample(
    node: RecordingNode,
    calls: Sequence[RecordedCall],
    figures: RecordingFigures,
    sample: int,
    party_pcm: dict[str, bytes],
) -> None:
    """Read back ``sample`` recordings spread over the calls; problems go to ``figures``."""
    step = max(1, math.ceil(len(calls) / max(1, sample)))
    for call in list(calls)[::step][:sample]:
        problem = await _verify_one(node, call, party_pcm, figures.shortfalls)
        if problem is None:
            figures.verified += 1
        else:
            figures.problems.append(f"{call.call_id}: {problem}")


async def _verify_one(
    node: RecordingNode, call: RecordedCall, party_pcm: dict[str, bytes], shortfalls: list[float]
) -> str | None:
    outcome = call.outcome
    result = outcome.recording if outcome is not None else None
    if outcome is None or result is None or not result.complete:
        return "no complete recording"
    async with node.sessions() as session:
        row = await store.get_recording(session, TENANT, result.recording_id)
    if row is None:
        return "recording row missing"
    try:
        plaintext = await asyncio.to_thread(_read_back, node, row)
    except Exception as exc:  # any failure to read back is the finding
        return f"does not read back: {type(exc).__name__}: {exc}"
    frames, rest = divmod(len(plaintext), STEREO_FRAME_BYTES)
    given = call.counter.span(call.media.caller_party)
    if rest or frames != given:
        return f"{len(plaintext)} plaintext bytes, expected {given} frames of 20 ms"
    duration = frames * FRAME_SECONDS
    if row.duration_seconds is None or not math.isclose(
        duration, row.duration_seconds, abs_tol=1e-6
    ):
        return f"decrypted {duration:.3f} s, row says {row.duration_seconds:.3f} s"
    first, hung = outcome.first_frame_time, call.hung_up_at
    if first is not None and hung is not None:
        shortfall = (hung - first) - duration
        shortfalls.append(shortfall)
        # Skipped clock ticks are silence inside the file (frames == span above); only
        # ticks skipped after its last frame may still make it shorter than the call.
        allowed = call.skipped_ticks * FRAME_SECONDS + 0.1
        if not -0.1 <= shortfall <= allowed:
            return (
                f"decrypted {duration:.3f} s but the media clock ran {hung - first:.3f} s "
                f"({call.skipped_ticks} ticks skipped)"
            )
    stereo = np.frombuffer(plaintext, dtype="<i2")
    for channel, party in ((stereo[0::2], "caller"), (stereo[1::2], "agent")):
        heard = call.counter.heard.get(party, 0)
        found = _matching_frames(channel, party_pcm[party]) if party in party_pcm else 0
        # Loss concealment may repeat a heard frame, so more is fine; writer drops are silence.
        if found < heard - result.dropped_frames:
            return f"{party} channel holds {found} of the {heard} frames heard from that party"
    return None
