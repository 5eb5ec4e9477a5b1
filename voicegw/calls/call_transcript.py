"""A live call's transcript, per party, written encrypted while the call goes on.

The consent flow runs one :class:`~voicegw.calls.transcription.CallTranscriber`
per call (both parties, behind the call's consent gate) when the tenant has
transcription on. :class:`CallTranscript` subscribes to it and writes each
final line into that party's encrypted transcript as it comes
(:class:`~voicegw.recording.transcripts.TranscriptWriter`: the same container,
metadata and retention as recordings), so a crash of the gateway mid-call
loses at most the line being written; at hang-up it seals them.

A party's transcript rests on the decision that allowed its audio to be kept
(:meth:`CallTranscript.allow`, called once that decision is stored and
audited). A line can only exist because the gate let the party's audio
through, so its decision is already made; storing it takes a moment, and
lines heard meanwhile wait in memory and are written as soon as it is stored.
A party whose decision was never stored gets nothing written, whatever the
ASR heard.

Lines are timed in seconds from the call's first media frame (sample 0 of the
call's recording, :attr:`CallTranscript.origin`), so a player can put them on
the recording's timeline. Interim results are not kept: they are rewritten by
the final that follows.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.asr.base import TranscriptKind
from voicegw.calls.transcription import TranscriptSubscription
from voicegw.recording.errors import RecordingError
from voicegw.recording.keys import KeyWrapper
from voicegw.recording.storage import StorageBackend
from voicegw.recording.transcripts import TranscriptWriter

__all__ = ["MAX_LINES", "CallTranscript", "TranscriptTarget"]

log = logging.getLogger("voicegw.calls.call_transcript")

#: Lines kept per party (about 8 hours of steady talk); later ones are counted, not kept.
MAX_LINES: Final = 10_000

#: What a failed transcript write can raise; the call goes on without that transcript.
_STORE_ERRORS: Final = (RecordingError, SQLAlchemyError, OSError)


@dataclass(frozen=True)
class TranscriptTarget:
    """Where and for whom the transcript is stored."""

    sessions: async_sessionmaker[AsyncSession]
    storage: StorageBackend
    keys: KeyWrapper
    tenant_id: str
    call_id: str
    region: str
    node: str | None = None
    actor: str = "consent-flow"


@dataclass
class _Party:
    name: str
    #: Final lines not yet written (times on the media clock).
    pending: list[dict[str, Any]] = field(default_factory=list)
    #: Lines not written because writing this party's transcript failed.
    lost: int = 0
    record_id: int | None = None
    writer: TranscriptWriter | None = None
    failed: bool = False
    #: One writer call at a time: lines and the decision arrive from different tasks.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def lines(self) -> int:
        """Lines written."""
        return 0 if self.writer is None else self.writer.lines


class CallTranscript:
    """Final transcript lines of one call, per party, written as they come (module docstring)."""

    def __init__(self, target: TranscriptTarget) -> None:
        self.target = target
        #: Media-clock time of the call's first frame: time zero of the stored lines.
        self.origin: float | None = None
        self.language: str | None = None
        #: Final lines not kept because the party already had :data:`MAX_LINES`.
        self.overflow = 0
        self._parties: dict[str, _Party] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    def _party(self, name: str) -> _Party:
        party = self._parties.get(name)
        if party is None:
            party = self._parties[name] = _Party(name)
        return party

    def allow(self, party: str, record_id: int) -> None:
        """``party``'s audio may be kept from now on, under consent record ``record_id``.

        The first allowing decision is the one the transcript rests on; lines
        that were waiting for it are written now.
        """
        state = self._party(party)
        if state.record_id is not None:
            return
        state.record_id = record_id
        if state.pending:
            task = asyncio.create_task(self._flush(state), name="transcript-flush")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def collect(self, events: TranscriptSubscription) -> None:
        """Write every final line from ``events`` until they end."""
        async for event in events:
            if event.kind is not TranscriptKind.FINAL or not event.text.strip():
                continue
            state = self._party(event.party)
            if state.failed:
                state.lost += 1
                continue
            if state.lines + len(state.pending) >= MAX_LINES:
                self.overflow += 1
                continue
            self.language = self.language or event.language
            state.pending.append(
                {
                    "start": event.start,
                    "end": event.end,
                    "text": event.text,
                    "confidence": round(event.confidence, 3),
                }
            )
            await self._flush(state)

    async def _flush(self, state: _Party) -> None:
        async with state.lock:
            if not state.pending or state.failed or state.record_id is None:
                return
            if self.origin is None:  # pragma: no cover - lines only follow frames
                return
            writer = state.writer
            if writer is None:
                writer = self._writer(state.name, state.record_id)
                try:
                    await writer.open()
                except _STORE_ERRORS as exc:
                    self._failed(state, "transcript not stored", exc)
                    return
                state.writer = writer
            while state.pending:
                line = state.pending[0]
                try:
                    await writer.append(_from(self.origin, line))
                except _STORE_ERRORS as exc:
                    self._failed(state, "transcript writing stopped", exc)
                    return
                state.pending.pop(0)

    def _writer(self, party: str, record_id: int) -> TranscriptWriter:
        target = self.target
        return TranscriptWriter(
            target.sessions,
            target.storage,
            target.keys,
            tenant_id=target.tenant_id,
            call_id=target.call_id,
            region=target.region,
            party=party,
            consent_record_id=record_id,
            language=self.language,
            actor=target.actor,
            node=target.node,
        )

    def _failed(self, state: _Party, message: str, exc: BaseException) -> None:
        state.failed = True
        state.lost += len(state.pending)
        state.pending.clear()
        log.error(
            message,
            extra={
                "call_id": self.target.call_id,
                "party": state.name,
                "error": type(exc).__name__,
            },
        )

    async def finish(self) -> list[str]:
        """Write what is still waiting and seal every party's transcript; the stored ids.

        Run once the lines have ended (the subscription closed). A party whose
        writing failed keeps what was sealed before the failure (``incomplete``).
        """
        await asyncio.gather(*self._flushes, return_exceptions=True)
        stored: list[str] = []
        for state in self._parties.values():
            await self._flush(state)
            if state.pending:  # no allowing decision was ever stored for this party
                log.warning(
                    "transcript lines without a stored decision not kept",
                    extra={
                        "call_id": self.target.call_id,
                        "party": state.name,
                        "lines": len(state.pending),
                    },
                )
            if state.lost:
                log.warning(
                    "transcript lines lost to a failed write",
                    extra={
                        "call_id": self.target.call_id,
                        "party": state.name,
                        "lines": state.lost,
                    },
                )
            if state.writer is None:
                continue
            try:
                await state.writer.finish()
            except _STORE_ERRORS as exc:
                log.error(
                    "transcript not sealed",
                    extra={
                        "call_id": self.target.call_id,
                        "party": state.name,
                        "error": type(exc).__name__,
                    },
                )
            stored.append(state.writer.transcript_id)
        if self.overflow:
            log.warning(
                "transcript lines over the limit not kept",
                extra={"call_id": self.target.call_id, "lines": self.overflow},
            )
        return stored


def _from(origin: float, line: dict[str, Any]) -> dict[str, Any]:
    start, end = (round(max(line[k] - origin, 0.0), 3) for k in ("start", "end"))
    return {**line, "start": start, "end": end}
