"""The call recorder: gated two-party PCM in, an encrypted stereo container out.

Invariants it keeps (DESIGN §4.1, §4.3):

* **Consent before the first byte.** :meth:`Recorder.start` refuses unless the
  caller's consent decision is stored *and* its audit event is in the chain
  with the hash the record names, and the decision allows recording. Only
  then is the recording row written and the storage object created.
* **Every frame through the gate.** :meth:`Recorder.feed` passes both
  parties' frames through the :class:`RecordingGate`, so unconsented or
  paused stretches are silence before they reach any buffer.
* **No plaintext on disk.** Frames are sealed by a :class:`ContainerWriter`
  straight into the storage backend's append handle; nothing else is written.
* **The media path never waits.** ``feed`` is synchronous and O(frame): it
  puts the interleaved frame on a bounded queue, which one executor thread
  drains into the container. When the queue is full the frame is dropped and
  counted, and the thread later writes silence of the same length so the
  two channels keep their timing; the gap is listed as a ``dropped`` interval.
* **The file is the call's media time.** Each frame comes with its media time
  (its clock tick's deadline). A frame later than the end of the one before
  means the media clock skipped ticks after a stall (or a tap consumer lost
  frames): the stretch between is written as silence at its place, passes the
  gate as such (:meth:`RecordingGate.advance`), and is listed as a ``skipped``
  interval, so nothing after it moves. Silence is written a block at a time,
  so a long stall costs no more memory than a short one.

Frames that arrive before :meth:`start` (while the caller is still being
asked) are kept, gated, in a bounded in-memory pre-roll and written first, so
the file covers the call from its start; if consent never comes,
:meth:`finish` discards them and no object or row is ever created.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import queue
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.consent.gate import RecordingGate
from voicegw.consent.records import RECORDING_DECISIONS
from voicegw.recording import metadata
from voicegw.recording.container import (
    DEFAULT_CHUNK_SIZE,
    NONCE_PREFIX_BYTES,
    ContainerWriter,
    FsyncPolicy,
    inspect,
)
from voicegw.recording.errors import ContainerError, ObjectNotFoundError, RecordingError
from voicegw.recording.keys import KeyUnwrapper, KeyWrapper, WrappedKey, new_data_key
from voicegw.recording.storage import AppendHandle, StorageBackend, recording_key
from voicegw.store import audit, tenants
from voicegw.store import recordings as store

CHANNELS = 2
SAMPLE_BYTES = 2
_ALLOWING = frozenset(d.value for d in RECORDING_DECISIONS)
#: The writer thread drains its queue this often (5 frames of a call per wake-up, not one:
#: a thread wake-up per frame per call was half the recorder's CPU); finish() wakes it at once.
_BATCH_SECONDS = 0.1
#: Silence the writer thread writes at a time for a gap (one second of 8 kHz stereo).
_SILENCE_BLOCK = bytes(8000 * CHANNELS * SAMPLE_BYTES)


class ConsentNotPersistedError(RecordingError):
    """No stored, audited consent record of this call's caller: nothing may be written."""


class ConsentRefusedError(RecordingError):
    """The stored consent decision does not allow recording (declined, withdrawn, off)."""


class WriterIdleError(RecordingError):
    """The writer thread saw no frame and no finish for ``idle_timeout``; file left unfinished."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RecorderConfig:
    sample_rate: int = 8000
    #: Frames the writer thread may fall behind before frames are dropped (10 s of 20 ms).
    queue_frames: int = 500
    #: Frames kept in memory while consent is pending (60 s of 20 ms); oldest go first.
    preroll_frames: int = 3000
    chunk_size: int = DEFAULT_CHUNK_SIZE
    fsync: FsyncPolicy = FsyncPolicy.ON_FINISH
    #: Writer thread gives up (as a crash would) when no frame and no finish() came for this
    #: long: the media path or its owner died, and the thread must not outlive them forever.
    idle_timeout: float = 300.0
    #: Keep the wrapped data key in the database rather than the file header, so
    #: retention can crypto-shred it (copies of the file in backups become unreadable).
    detach_wrapped_key: bool = True
    #: The node writing (``Settings.node_name``), stored on the row: start-up recovery
    #: settles only its own node's unfinished recordings.
    node: str | None = None


@dataclass(frozen=True)
class RecordingResult:
    """What :meth:`Recorder.finish` stored."""

    recording_id: str
    storage_key: str
    complete: bool
    duration_seconds: float
    size_bytes: int
    ciphertext_sha256: str
    dropped_frames: int


class _Phase(enum.Enum):
    PENDING = "pending"  # consent not yet proven: frames go to the pre-roll
    RUNNING = "running"  # frames go to the writer thread
    CLOSED = "closed"


def interleave(left: bytes, right: bytes) -> bytes:
    """Two mono 16-bit frames into one stereo frame (L R L R ...)."""
    a = np.frombuffer(left, dtype="<i2")
    b = np.frombuffer(right, dtype="<i2")
    out = np.empty(a.size * 2, dtype="<i2")
    out[0::2] = a
    out[1::2] = b
    return out.tobytes()


def _write_silence(writer: ContainerWriter, samples: int) -> None:
    """``samples`` stereo samples of silence, one shared block at a time (bounded memory)."""
    remaining = samples * CHANNELS * SAMPLE_BYTES
    block = _SILENCE_BLOCK
    while remaining >= len(block):
        writer.write(block)
        remaining -= len(block)
    if remaining:
        writer.write(block[:remaining])


def _in_own_thread(work: Callable[[], None], *, name: str) -> asyncio.Future[None]:
    """Run ``work`` on a thread of its own; the future settles on the loop when it returns.

    Not the loop's default executor: a writer lives as long as its call, and that pool
    has only ``min(32, cpus + 4)`` workers, so a handful of recorded calls would hold
    all of them and every later ``to_thread`` (the next recorder's key wrap included)
    would wait until one of those calls ended.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(failure: BaseException | None) -> None:
        if done.done():
            return
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)

    def run() -> None:
        failure: BaseException | None = None
        try:
            work()
        except BaseException as exc:  # handed to whoever awaits the future
            failure = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
            loop.call_soon_threadsafe(settle, failure)

    threading.Thread(target=run, name=name).start()
    return done


class HashingSink:
    """The container's sink: appends to storage and hashes the ciphertext on the way."""

    def __init__(self, handle: AppendHandle) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def sync(self) -> None:
        self.handle.sync()


def create_container(
    storage: StorageBackend,
    key: str,
    data_key: bytes,
    wrapped: WrappedKey,
    *,
    chunk_size: int,
    fsync: FsyncPolicy = FsyncPolicy.ON_FINISH,
    detach_wrapped_key: bool,
) -> tuple[ContainerWriter, HashingSink]:
    """A new storage object under ``key`` holding the container's header, and its writer.

    Blocking (storage I/O): run it on a thread. Each container gets a fresh nonce prefix.
    """
    sink = HashingSink(storage.create(key))
    writer = ContainerWriter(
        sink,
        data_key=data_key,
        wrapped_key=wrapped,
        nonce_prefix=secrets.token_bytes(NONCE_PREFIX_BYTES),
        chunk_size=chunk_size,
        fsync=fsync,
        detach_wrapped_key=detach_wrapped_key,
    )
    return writer, sink


@dataclass(frozen=True)
class _Item:
    gap_samples: int  # silence to write first, for frames dropped before this one
    data: bytes


async def require_consent(
    session: AsyncSession, tenant_id: str, call_id: str, party: str, record_id: int
) -> store.ConsentRecord:
    """The party's consent record for this call, if stored, audited and allowing recording."""
    consent = await store.audited_consent_record(session, tenant_id, record_id)
    if consent is None or consent.call_id != call_id or consent.party != party:
        raise ConsentNotPersistedError(
            "the party's consent decision for this call is not stored and audited"
        )
    if consent.decision not in _ALLOWING:
        raise ConsentRefusedError(f"consent decision {consent.decision!r} forbids recording")
    return consent


_RETENTION_FIELD = {
    store.ObjectKind.RECORDING: "recordings_days",
    store.ObjectKind.TRANSCRIPT: "transcripts_days",
}


async def retention_days(session: AsyncSession, tenant_id: str, kind: store.ObjectKind) -> int:
    """The tenant's retention, in days, for objects of ``kind``."""
    tenant = await tenants.get_tenant(session, tenant_id)
    if tenant is None:
        raise ConsentNotPersistedError("unknown tenant")
    retention = tenants.tenant_settings(tenant).retention
    return int(getattr(retention, _RETENTION_FIELD[kind]))


class Recorder:
    """Records one call: ``feed`` frames, ``start`` once consent is stored, then ``finish``."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: StorageBackend,
        keys: KeyWrapper,
        gate: RecordingGate,
        tenant_id: str,
        call_id: str,
        region: str,
        caller_party: str = "caller",
        agent_party: str = "agent",
        recording_id: str | None = None,
        config: RecorderConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
        actor: str = "recorder",
    ) -> None:
        self.config = config or RecorderConfig()
        if gate.sample_rate != self.config.sample_rate or gate.bytes_per_sample != SAMPLE_BYTES:
            raise ValueError("gate and recorder disagree on the sample format")
        self._sessions = sessions
        self._storage = storage
        self._keys = keys
        self._gate = gate
        self.tenant_id = tenant_id
        self.call_id = call_id
        self.region = region
        self.caller_party = caller_party
        self.agent_party = agent_party
        self.recording_id = recording_id or f"rec-{uuid.uuid4().hex}"
        self._clock = clock
        self._actor = actor
        self._phase = _Phase.PENDING
        self._preroll: deque[bytes] = deque()
        self._base_position: int | None = None  # gate position of the first frame kept
        self._queue: queue.Queue[_Item] = queue.Queue(self.config.queue_frames)
        self._pending_gap = 0
        self._dropped: list[tuple[int, int]] = []  # [start, end) samples, recording time base
        self._skipped: list[tuple[int, int]] = []  # [start, end) samples, gate position base
        self._next_t = 0.0  # media time where the last frame fed ended
        self._rate = self.config.sample_rate
        self._silences: dict[int, bytes] = {}  # stereo silence by samples, shared in the pre-roll
        self._fed_samples = 0
        self._closing = threading.Event()
        self._task: asyncio.Future[None] | None = None
        self._writer: ContainerWriter | None = None
        self._sink: HashingSink | None = None
        self._failure: BaseException | None = None
        self.dropped_frames = 0
        self.storage_key: str | None = None

    def __repr__(self) -> str:
        return (
            f"Recorder(recording_id={self.recording_id!r}, phase={self._phase.value}, "
            f"dropped_frames={self.dropped_frames})"
        )

    # --- media path --------------------------------------------------------------

    def feed(self, caller: bytes, agent: bytes, t: float) -> None:
        """One frame per party starting at media time ``t``; never blocks.

        A frame starting half a frame or more after the previous one ended follows
        skipped ticks: the stretch between becomes silence at its place first.
        """
        if len(caller) != len(agent):
            raise ValueError("caller and agent frames differ in length")
        if self._phase is _Phase.CLOSED:
            return
        samples = len(caller) // SAMPLE_BYTES
        duration = samples / self._rate
        if self._base_position is None:
            self._base_position = self._gate.position(self.caller_party)
        elif t - self._next_t >= duration / 2 and samples:
            self._skip(round((t - self._next_t) * self._rate), samples)
        self._next_t = t + duration
        stereo = interleave(
            self._gate.admit(self.caller_party, caller, t),
            self._gate.admit(self.agent_party, agent, t),
        )
        if self._phase is _Phase.PENDING:
            self._keep(stereo)
            return
        try:
            self._queue.put_nowait(_Item(self._pending_gap, stereo))
        except queue.Full:
            self.dropped_frames += 1
            start = self._fed_samples
            self._dropped.append((start + self._pending_gap, start + self._pending_gap + samples))
            self._pending_gap += samples
            return
        self._fed_samples += self._pending_gap + samples
        self._pending_gap = 0

    def _keep(self, stereo: bytes) -> None:
        """Into the pre-roll; when it is full the oldest frame goes (the file starts later)."""
        assert self._base_position is not None
        if len(self._preroll) >= self.config.preroll_frames:
            evicted = self._preroll.popleft()
            self._base_position += len(evicted) // (CHANNELS * SAMPLE_BYTES)
        self._preroll.append(stereo)

    def _silence(self, samples: int) -> bytes:
        silence = self._silences.get(samples)
        if silence is None:
            silence = self._silences[samples] = bytes(samples * CHANNELS * SAMPLE_BYTES)
        return silence

    def _skip(self, missing: int, frame_samples: int) -> None:
        """``missing`` samples before this frame that no frame came for: silence, in place.

        Through the gate first (its positions and intervals stay on media time), then
        into the pre-roll as frames of one shared silence, or onto the writer's next
        item as a count: memory is bounded however long the gap.
        """
        assert self._base_position is not None
        start = self._next_t
        position = self._gate.position(self.caller_party)
        self._gate.advance(self.caller_party, missing, start)
        self._gate.advance(self.agent_party, missing, start)
        self._skipped.append((position, position + missing))
        if self._phase is not _Phase.PENDING:
            self._pending_gap += missing
            return
        whole, rest = divmod(missing, frame_samples)
        room = self.config.preroll_frames
        if whole >= room:
            # The gap alone fills the pre-roll: everything older goes at once.
            kept = sum(len(f) for f in self._preroll) // (CHANNELS * SAMPLE_BYTES)
            self._base_position += kept + rest + (whole - room) * frame_samples
            self._preroll.clear()
            whole, rest = room, 0
        if rest:
            self._keep(self._silence(rest))
        silence = self._silence(frame_samples)
        for _ in range(whole):
            self._keep(silence)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, consent_record_id: int | None) -> str:
        """Check consent, store the recording row, open the container. Returns the storage key."""
        if self._phase is not _Phase.PENDING:
            raise RuntimeError("recorder already started or closed")
        if consent_record_id is None:
            raise ConsentNotPersistedError("no consent record was given")
        now = store.as_utc(self._clock())
        key = recording_key(self.region, self.tenant_id, self.recording_id, now)
        data_key = new_data_key()
        wrapped = await asyncio.to_thread(self._keys.wrap, self.tenant_id, data_key)
        async with self._sessions() as session, session.begin():
            consent = await require_consent(
                session, self.tenant_id, self.call_id, self.caller_party, consent_record_id
            )
            days = await retention_days(session, self.tenant_id, store.ObjectKind.RECORDING)
            row = store.Recording(
                id=self.recording_id,
                tenant_id=self.tenant_id,
                call_id=self.call_id,
                region=self.region,
                storage_key=key,
                format=metadata.RECORDING_FORMAT,
                channels=CHANNELS,
                sample_rate=self.config.sample_rate,
                key_id=wrapped.key_id,
                key_version=wrapped.version,
                wrapped_key=wrapped.blob if self.config.detach_wrapped_key else None,
                consent_record_id=consent.id,
                created_at=now,
                retain_until=now + timedelta(days=days),
                legal_hold=False,
                complete=False,
                state=store.ObjectState.WRITING.value,
                intervals=[],
                dropped_frames=0,
                node=self.config.node,
            )
            await store.add_recording(session, row)
            await audit.append(
                session,
                actor=self._actor,
                tenant_id=self.tenant_id,
                action="recording.start",
                target=store.target_of(row),
                details={
                    "call_id": self.call_id,
                    "consent_record_id": consent.id,
                    "consent_audit_seq": consent.audit_seq,
                    "key_id": wrapped.key_id,
                    "key_version": wrapped.version,
                    "retain_until": row.retain_until.isoformat(),
                },
            )
        # The row is committed: a crash from here on leaves something recovery finds.
        self.storage_key = key

        try:
            self._writer, self._sink = await asyncio.to_thread(
                create_container,
                self._storage,
                key,
                data_key,
                wrapped,
                chunk_size=self.config.chunk_size,
                fsync=self.config.fsync,
                detach_wrapped_key=self.config.detach_wrapped_key,
            )
        except BaseException:
            self._phase = _Phase.CLOSED
            await self._settle(complete=False, plaintext_bytes=0)
            raise
        # No await from here to the end: no frame can slip between pre-roll and queue.
        preroll = list(self._preroll)
        self._preroll.clear()
        self._fed_samples = sum(len(f) for f in preroll) // (CHANNELS * SAMPLE_BYTES)
        self._phase = _Phase.RUNNING
        self._task = _in_own_thread(
            lambda: self._drain(preroll), name=f"recorder-{self.recording_id}"
        )
        return key

    def _drain(self, preroll: list[bytes]) -> None:
        """Writer thread: pre-roll, then queued frames, then the final chunk."""
        writer, sink = self._writer, self._sink
        assert writer is not None and sink is not None
        try:
            for frame in preroll:
                writer.write(frame)
            idle, max_idle = 0, max(1, int(self.config.idle_timeout / _BATCH_SECONDS))
            while True:
                closing = self._closing.is_set()  # before draining: nothing fed is left behind
                batch = self._take_queued()
                if batch:
                    idle = 0
                    self._write_batch(writer, batch)
                elif closing:
                    break
                else:
                    idle += 1
                    if idle >= max_idle:
                        raise WriterIdleError("no frames and no finish: writer abandoned")
                self._closing.wait(_BATCH_SECONDS)
            if self._pending_gap:  # frames dropped (or ticks skipped) at the very end
                _write_silence(writer, self._pending_gap)
            writer.finish()
            sink.handle.finalize()
        except BaseException as exc:  # kept for finish(): the row is marked incomplete
            self._failure = exc

    def _take_queued(self) -> list[_Item]:
        batch: list[_Item] = []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self._queue.get_nowait())
        return batch

    @staticmethod
    def _write_batch(writer: ContainerWriter, batch: list[_Item]) -> None:
        """Frames in order, each after the silence for frames dropped before it; runs of
        frames with no gap between go to the container in one write."""
        run: list[bytes] = []
        for item in batch:
            if item.gap_samples:
                if run:
                    writer.write(b"".join(run))
                    run = []
                _write_silence(writer, item.gap_samples)
            run.append(item.data)
        if run:
            writer.write(b"".join(run))

    async def finish(self) -> RecordingResult | None:
        """Seal the recording and store its metadata; None when there is nothing (more) to do."""
        phase, self._phase = self._phase, _Phase.CLOSED
        if phase is _Phase.PENDING:
            self._preroll.clear()  # consent never came: the gated audio is simply forgotten
            return None
        if phase is _Phase.CLOSED or self._task is None:
            return None  # finished before, or start() failed and settled the row itself
        self._closing.set()
        await self._task
        sink = self._sink
        assert sink is not None
        plaintext = (self._fed_samples + self._pending_gap) * CHANNELS * SAMPLE_BYTES
        complete = self._failure is None
        await self._settle(complete=complete, plaintext_bytes=plaintext)
        return RecordingResult(
            recording_id=self.recording_id,
            storage_key=self.storage_key or "",
            complete=complete,
            duration_seconds=self._duration(plaintext),
            size_bytes=sink.size,
            ciphertext_sha256=sink.sha256.hexdigest(),
            dropped_frames=self.dropped_frames,
        )

    def _duration(self, plaintext_bytes: int) -> float:
        return plaintext_bytes / (CHANNELS * SAMPLE_BYTES * self.config.sample_rate)

    def _intervals(self) -> list[dict[str, Any]]:
        offset = self._base_position or 0
        out = [
            *metadata.interval_values(
                self._gate.intervals(self.caller_party), offset_samples=offset
            ),
            *metadata.interval_values(
                self._gate.intervals(self.agent_party), offset_samples=offset
            ),
        ]
        out.extend(
            {
                "party": "*",
                "reason": "skipped",
                "start_sample": max(start - offset, 0),
                "end_sample": end - offset,
            }
            for start, end in self._skipped
            if end > offset  # not entirely in pre-roll the file no longer holds
        )
        out.extend(
            {"party": "*", "reason": "dropped", "start_sample": start, "end_sample": end}
            for start, end in self._dropped
        )
        return out

    async def _settle(self, *, complete: bool, plaintext_bytes: int) -> None:
        sink = self._sink
        async with self._sessions() as session, session.begin():
            row = await store.get_recording(session, self.tenant_id, self.recording_id)
            if row is None:  # pragma: no cover - the row was committed in start()
                raise ObjectNotFoundError("recording row vanished")
            row.complete = complete
            row.state = (
                store.ObjectState.FINISHED if complete else store.ObjectState.INCOMPLETE
            ).value
            row.finished_at = self._clock()
            row.duration_seconds = self._duration(plaintext_bytes)
            row.size_bytes = sink.size if sink is not None else 0
            row.ciphertext_sha256 = sink.sha256.hexdigest() if sink is not None else None
            row.intervals = self._intervals()
            row.dropped_frames = self.dropped_frames
            await audit.append(
                session,
                actor=self._actor,
                tenant_id=self.tenant_id,
                action="recording.finish" if complete else "recording.incomplete",
                target=store.target_of(row),
                details={
                    "duration_seconds": row.duration_seconds,
                    "size_bytes": row.size_bytes,
                    "ciphertext_sha256": row.ciphertext_sha256,
                    "dropped_frames": row.dropped_frames,
                    "error": type(self._failure).__name__ if self._failure else None,
                },
            )


# --- crash recovery ----------------------------------------------------------------


@dataclass(frozen=True)
class RecoveredObject:
    """What start-up recovery found for one object (a recording or a transcript)."""

    kind: store.ObjectKind
    object_id: str
    complete: bool
    readable_chunks: int | None  # None: no key to check with (public-key mode)
    size_bytes: int


def _digest(
    storage: StorageBackend, row: store.StoredObject, keys: KeyUnwrapper | None
) -> tuple[bool, int | None, int | None, int, str | None]:
    """(finished object?, readable chunks, plaintext bytes, size, sha256) of what is stored."""
    finished = storage.exists(row.storage_key)
    try:
        handle = (
            storage.open_read(row.storage_key)
            if finished
            else storage.open_incomplete(row.storage_key)
        )
    except ObjectNotFoundError:
        return False, 0, 0, 0, None  # died before the header reached storage
    with handle:
        sha, size = hashlib.sha256(), 0
        while block := handle.read(1 << 20):
            sha.update(block)
            size += len(block)
        if keys is None:
            return finished, None, None, size, sha.hexdigest()
        handle.seek(0)
        try:
            result = inspect(handle, keys, wrapped_key=metadata.wrapped_key_of(row))
        except (ContainerError, RecordingError):
            return finished, 0, 0, size, sha.hexdigest()
    return (
        finished and result.complete,
        result.readable_chunks,
        result.plaintext_bytes,
        size,
        sha.hexdigest(),
    )


async def recover_incomplete(
    sessions: async_sessionmaker[AsyncSession],
    storage: StorageBackend,
    keys: KeyUnwrapper | None,
    *,
    tenant_id: str,
    node: str,
    clock: Callable[[], datetime] = utc_now,
    actor: str = "recorder",
) -> list[RecoveredObject]:
    """Settle recordings and transcripts a crash of ``node`` left in ``writing``; run at
    that node's start-up.

    A container without its final chunk is marked ``complete=False`` (state
    ``incomplete``) and left in place: every whole chunk in it still
    decrypts. A container that was finalised before the crash but whose
    metadata was never written is marked finished. ``keys`` may be None
    (public-key mode): sizes and hashes are still recorded, durations are not.
    Run it before this node records again: it takes every ``writing`` row of
    the tenant written by ``node`` for a crashed one. Rows of other nodes are
    left alone: in a deployment sharing one database they may be recording
    right now. (Rows written before migration 0005 carry no node and are left
    for an operator.)
    """
    async with sessions() as session:
        rows = [
            row
            for kind in (store.ObjectKind.RECORDING, store.ObjectKind.TRANSCRIPT)
            for row in await store.writing_objects(session, kind, tenant_id, node=node)
        ]
    recovered: list[RecoveredObject] = []
    for row in rows:
        kind = store.kind_of(row)
        complete, chunks, plaintext, size, sha = await asyncio.to_thread(
            _digest, storage, row, keys
        )
        async with sessions() as session, session.begin():
            current = await store.get_object(session, kind, tenant_id, row.id)
            if current is None or current.state != store.ObjectState.WRITING.value:
                continue  # settled meanwhile
            current.complete = complete
            current.state = (
                store.ObjectState.FINISHED if complete else store.ObjectState.INCOMPLETE
            ).value
            current.finished_at = store.as_utc(clock())
            current.size_bytes = size
            current.ciphertext_sha256 = sha
            if plaintext is not None and isinstance(current, store.Recording):
                current.duration_seconds = plaintext / (
                    current.channels * SAMPLE_BYTES * current.sample_rate
                )
            await audit.append(
                session,
                actor=actor,
                tenant_id=tenant_id,
                action=f"{kind.value}.recovered",
                target=store.target_of(current),
                details={"complete": complete, "readable_chunks": chunks, "size_bytes": size},
            )
        recovered.append(RecoveredObject(kind, row.id, complete, chunks, size))
    return recovered
