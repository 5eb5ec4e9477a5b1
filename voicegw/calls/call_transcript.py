"""A live call's transcript, kept per party and stored encrypted when the call ends.

The consent flow runs one :class:`~voicegw.calls.transcription.CallTranscriber`
per call (both parties, behind the call's consent gate) when the tenant has
transcription on. :class:`CallTranscript` subscribes to it and keeps each final
line; when the call is over :meth:`CallTranscript.store` writes one encrypted
transcript per party through :func:`~voicegw.recording.recorder.save_transcript`
(the same container, metadata and retention as recordings), linked to the
decision that allowed that party's audio to be kept. A party with no allowing
decision gets nothing stored, whatever the ASR heard (it cannot have heard
anything: the gate kept the audio from it).

Lines are timed in seconds from the call's first media frame (sample 0 of the
call's recording), so a player can put them on the recording's timeline.
Interim results are not kept: they are rewritten by the final that follows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.asr.base import TranscriptKind
from voicegw.calls.transcription import TranscriptSubscription
from voicegw.recording.errors import RecordingError
from voicegw.recording.keys import KeyWrapper
from voicegw.recording.recorder import save_transcript
from voicegw.recording.storage import StorageBackend

__all__ = ["MAX_LINES", "CallTranscript", "TranscriptTarget"]

log = logging.getLogger("voicegw.calls.call_transcript")

#: Lines kept per party (about 8 hours of steady talk); later ones are counted, not kept.
MAX_LINES: Final = 10_000


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


class CallTranscript:
    """Final transcript lines of one call, per party (module docstring)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[dict[str, Any]]] = {}
        self.language: str | None = None
        #: Final lines not kept because the party already had :data:`MAX_LINES`.
        self.overflow = 0

    async def collect(self, events: TranscriptSubscription) -> None:
        """Keep every final line from ``events`` (times on the media clock) until they end."""
        async for event in events:
            if event.kind is not TranscriptKind.FINAL or not event.text.strip():
                continue
            kept = self.lines.setdefault(event.party, [])
            if len(kept) >= MAX_LINES:
                self.overflow += 1
                continue
            self.language = self.language or event.language
            kept.append(
                {
                    "start": event.start,
                    "end": event.end,
                    "text": event.text,
                    "confidence": round(event.confidence, 3),
                }
            )

    async def store(
        self, target: TranscriptTarget, allowed: Mapping[str, int], origin: float
    ) -> list[str]:
        """One encrypted transcript per party that has lines and an allowing decision
        (``allowed``: party -> that decision's consent record id); the stored ids.
        ``origin`` (media clock) is time zero of the stored lines.

        A party that fails to store is logged and skipped; the others are still stored.
        """
        stored: list[str] = []
        for party, lines in self.lines.items():
            record_id = allowed.get(party)
            if not lines or record_id is None:
                continue
            try:
                row = await save_transcript(
                    target.sessions,
                    target.storage,
                    target.keys,
                    tenant_id=target.tenant_id,
                    call_id=target.call_id,
                    region=target.region,
                    party=party,
                    consent_record_id=record_id,
                    segments=[_from(origin, line) for line in lines],
                    language=self.language,
                    actor=target.actor,
                    node=target.node,
                )
            except (RecordingError, SQLAlchemyError, OSError) as exc:
                log.error(
                    "transcript not stored",
                    extra={
                        "call_id": target.call_id,
                        "party": party,
                        "error": type(exc).__name__,
                    },
                )
                continue
            stored.append(row.id)
        if self.overflow:
            log.warning(
                "transcript lines over the limit not kept",
                extra={"call_id": target.call_id, "lines": self.overflow},
            )
        return stored


def _from(origin: float, line: dict[str, Any]) -> dict[str, Any]:
    start, end = (round(max(line[k] - origin, 0.0), 3) for k in ("start", "end"))
    return {**line, "start": start, "end": end}
