"""Processing records: one per use of a provider, the evidence behind invariant 2.

The failover adapters in ``voicegw.asr`` and ``voicegw.tts`` emit these through a
callback; storing them is the persistence layer's job. A record carries amounts
(seconds of audio, characters of text), never the audio or text itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from voicegw.privacy.capabilities import ProviderCapabilities, Purpose


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProcessingContext:
    """Who the processing is for; the adapter stamps it on every record."""

    call_id: str
    tenant: str


@dataclass(frozen=True)
class ProcessingRecord:
    call_id: str
    tenant: str
    provider: str
    subprocessor: str | None  # None: an on-node engine, no data left the gateway
    purpose: Purpose
    locations: tuple[str, ...]  # where the provider processed; () for on-node engines
    audio_seconds: float | None
    characters: int | None
    started: float
    ended: float
    outcome: Outcome
    error_status: int | None = None

    @classmethod
    def for_provider(
        cls,
        context: ProcessingContext,
        provider: ProviderCapabilities,
        purpose: Purpose,
        *,
        started: float,
        ended: float,
        outcome: Outcome,
        audio_seconds: float | None = None,
        characters: int | None = None,
        error_status: int | None = None,
    ) -> ProcessingRecord:
        return cls(
            call_id=context.call_id,
            tenant=context.tenant,
            provider=provider.name,
            subprocessor=provider.subprocessor_id,
            purpose=purpose,
            locations=tuple(sorted(provider.processing_locations)),
            audio_seconds=audio_seconds,
            characters=characters,
            started=started,
            ended=ended,
            outcome=outcome,
            error_status=error_status,
        )


RecordSink = Callable[[ProcessingRecord], None]
