"""Processing records: one per use of a provider, the evidence behind invariant 2.

The failover adapters in ``voicegw.asr`` and ``voicegw.tts`` emit these through a
callback; storing them is the persistence layer's job
(:class:`voicegw.store.processing.ProcessingRecordWriter`). A record carries
amounts (seconds of audio, characters of text), never the audio or text itself,
and says whose audio it was and on which legal basis it left (or stayed on) the
node — the basis the selection policy found for that provider.
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
    #: provider name -> the basis the policy allowed it on (``Selection.bases``).
    bases: tuple[tuple[str, str], ...] = ()

    def basis_of(self, provider: str) -> str | None:
        return next((basis for name, basis in self.bases if name == provider), None)


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
    party: str | None = None  # whose audio (ASR); None for text (TTS)
    basis: str | None = None  # "on_node", "in_region", "cross_border_<mechanism>"

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
        party: str | None = None,
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
            party=party,
            basis=context.basis_of(provider.name),
        )


RecordSink = Callable[[ProcessingRecord], None]
