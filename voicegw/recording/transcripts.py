"""Transcripts at rest: one party's final lines, written into the encrypted container
as the call goes on.

The rules are a recording's (DESIGN §4.1, §4.3): the party's consent decision
must be stored, audited and allowing before the row is written, the row is
committed before the first byte reaches storage, and only ciphertext does.

A transcript is written line by line, not at hang-up, so that a crash of the
gateway mid-call loses at most the line being written: each line is one JSON
object and a newline (JSON Lines), and the container seals a chunk as soon as
it is full. The chunks are small (:data:`TRANSCRIPT_CHUNK_SIZE`, 64 bytes, a
quarter of it authentication tag: text is small, and what a crash can lose is
the unsealed rest of one chunk). Start-up recovery
(:func:`~voicegw.recording.recorder.recover_incomplete`) marks what a crash
left ``incomplete``; every sealed chunk of it decrypts, so the export returns
the lines up to the crash, the last of them possibly cut short (a reader keeps
the lines that end in a newline).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.recording import metadata
from voicegw.recording.container import ContainerWriter
from voicegw.recording.errors import ObjectNotFoundError
from voicegw.recording.keys import KeyWrapper, new_data_key
from voicegw.recording.recorder import (
    HashingSink,
    create_container,
    require_consent,
    retention_days,
    utc_now,
)
from voicegw.recording.storage import StorageBackend, recording_key
from voicegw.store import audit
from voicegw.store import recordings as store

__all__ = ["TRANSCRIPT_CHUNK_SIZE", "TranscriptWriter", "save_transcript", "transcript_line"]

#: Plaintext bytes per sealed chunk of a transcript (see the module docstring).
TRANSCRIPT_CHUNK_SIZE: Final = 64


def transcript_line(segment: Mapping[str, Any]) -> bytes:
    """One stored line: compact JSON, UTF-8, newline-terminated."""
    return json.dumps(segment, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class TranscriptWriter:
    """One party's transcript of one call, appended to while the call goes on.

    :meth:`open` checks consent and writes the row and the container header;
    :meth:`append` seals each line into storage (on a worker thread);
    :meth:`finish` seals the final chunk and marks the row finished, or, after
    a failed write, ``incomplete``. Calls must not overlap (each is awaited
    before the next); the owner of a call's transcript does exactly that.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: StorageBackend,
        keys: KeyWrapper,
        *,
        tenant_id: str,
        call_id: str,
        region: str,
        party: str,
        consent_record_id: int,
        language: str | None = None,
        transcript_id: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        actor: str = "recorder",
        detach_wrapped_key: bool = True,
        node: str | None = None,
        chunk_size: int = TRANSCRIPT_CHUNK_SIZE,
    ) -> None:
        self.transcript_id = transcript_id or f"tx-{uuid.uuid4().hex}"
        self.tenant_id = tenant_id
        self.call_id = call_id
        self.region = region
        self.party = party
        self.consent_record_id = consent_record_id
        self.language = language
        #: Plaintext offset where each appended line ends: which lines a chunk seals.
        self._ends: list[int] = []
        self._sessions = sessions
        self._storage = storage
        self._keys = keys
        self._clock = clock
        self._actor = actor
        self._detach = detach_wrapped_key
        self._node = node
        self._chunk_size = chunk_size
        self._writer: ContainerWriter | None = None
        self._sink: HashingSink | None = None
        self._failure: BaseException | None = None

    @property
    def lines(self) -> int:
        """Lines appended so far."""
        return len(self._ends)

    def __repr__(self) -> str:
        return (
            f"TranscriptWriter(id={self.transcript_id!r}, call_id={self.call_id!r}, "
            f"party={self.party!r}, lines={self.lines})"
        )

    async def open(self) -> None:
        """Check consent, commit the row (state ``writing``), create the container."""
        if self._writer is not None:
            raise RuntimeError("transcript already open")
        now = store.as_utc(self._clock())
        key = recording_key(self.region, self.tenant_id, self.transcript_id, now)
        data_key = new_data_key()
        wrapped = await asyncio.to_thread(self._keys.wrap, self.tenant_id, data_key)
        async with self._sessions() as session, session.begin():
            consent = await require_consent(
                session, self.tenant_id, self.call_id, self.party, self.consent_record_id
            )
            days = await retention_days(session, self.tenant_id, store.ObjectKind.TRANSCRIPT)
            row = await store.add_transcript(
                session,
                store.Transcript(
                    id=self.transcript_id,
                    tenant_id=self.tenant_id,
                    call_id=self.call_id,
                    party=self.party,
                    language=self.language,
                    segments=0,
                    region=self.region,
                    storage_key=key,
                    format=metadata.TRANSCRIPT_FORMAT,
                    key_id=wrapped.key_id,
                    key_version=wrapped.version,
                    wrapped_key=wrapped.blob if self._detach else None,
                    consent_record_id=consent.id,
                    created_at=now,
                    retain_until=now + timedelta(days=days),
                    legal_hold=False,
                    complete=False,
                    state=store.ObjectState.WRITING.value,
                    intervals=[],
                    node=self._node,
                ),
            )
            await audit.append(
                session,
                actor=self._actor,
                tenant_id=self.tenant_id,
                action="transcript.start",
                target=store.target_of(row),
                details={
                    "call_id": self.call_id,
                    "party": self.party,
                    "consent_record_id": consent.id,
                },
            )

        # The row is committed: a crash from here on leaves something recovery finds.
        try:
            self._writer, self._sink = await asyncio.to_thread(
                create_container,
                self._storage,
                key,
                data_key,
                wrapped,
                chunk_size=self._chunk_size,
                detach_wrapped_key=self._detach,
            )
        except BaseException as exc:
            self._failure = exc
            await self._settle(complete=False)
            raise

    async def append(self, segment: Mapping[str, Any]) -> None:
        """Seal one line into storage. After a failed write the rest are refused."""
        writer = self._writer
        if writer is None:
            raise RuntimeError("transcript not open")
        if self._failure is not None:
            raise RuntimeError("transcript writing failed earlier") from self._failure
        line = transcript_line(segment)
        try:
            await asyncio.to_thread(writer.write, line)
        except BaseException as exc:
            self._failure = exc
            raise
        self._ends.append((self._ends[-1] if self._ends else 0) + len(line))

    async def finish(self) -> store.Transcript:
        """Seal the final chunk and store size, hash and line count; the finished row.

        After a failed write the container is left unsealed (the lines before the
        failure still decrypt) and the row is marked ``incomplete``.
        """
        writer, sink = self._writer, self._sink
        if writer is None or sink is None:
            raise RuntimeError("transcript not open")
        complete = self._failure is None
        if complete:

            def seal() -> None:
                writer.finish()
                sink.handle.finalize()

            try:
                await asyncio.to_thread(seal)
            except BaseException as exc:
                self._failure = exc
                complete = False
        return await self._settle(complete=complete)

    def _whole_lines(self, complete: bool) -> int:
        """Lines the stored container holds whole: all, or those its sealed chunks cover."""
        if complete:
            return self.lines
        if self._writer is None:
            return 0
        sealed = self._writer.chunks_written * self._chunk_size
        return bisect.bisect_right(self._ends, sealed)

    async def _settle(self, *, complete: bool) -> store.Transcript:
        sink = self._sink
        async with self._sessions() as session, session.begin():
            row = await store.get_object(
                session, store.ObjectKind.TRANSCRIPT, self.tenant_id, self.transcript_id
            )
            if not isinstance(row, store.Transcript):  # pragma: no cover - committed in open()
                raise ObjectNotFoundError("transcript row vanished")
            row.complete = complete
            row.state = (
                store.ObjectState.FINISHED if complete else store.ObjectState.INCOMPLETE
            ).value
            row.segments = self._whole_lines(complete)
            row.finished_at = store.as_utc(self._clock())
            row.size_bytes = sink.size if sink is not None else 0
            row.ciphertext_sha256 = sink.sha256.hexdigest() if sink is not None else None
            await audit.append(
                session,
                actor=self._actor,
                tenant_id=self.tenant_id,
                action="transcript.finish" if complete else "transcript.incomplete",
                target=store.target_of(row),
                details={
                    "lines": row.segments,
                    "size_bytes": row.size_bytes,
                    "ciphertext_sha256": row.ciphertext_sha256,
                    "error": type(self._failure).__name__ if self._failure else None,
                },
            )
        return row


async def save_transcript(
    sessions: async_sessionmaker[AsyncSession],
    storage: StorageBackend,
    keys: KeyWrapper,
    *,
    segments: Sequence[Mapping[str, Any]],
    **writer: Any,
) -> store.Transcript:
    """A whole transcript at once (imports, tests): open, every line, finish.

    ``writer`` takes :class:`TranscriptWriter`'s keyword arguments.
    """
    transcript = TranscriptWriter(sessions, storage, keys, **writer)
    await transcript.open()
    for segment in segments:
        await transcript.append(segment)
    return await transcript.finish()
