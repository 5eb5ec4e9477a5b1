"""What the ASR and TTS failover adapters share: the chain they walk and its records.

The policy (:func:`~voicegw.privacy.selection.select_provider`) orders the eligible
providers; :class:`ProviderChain` holds that order, stands in with the first
provider's capabilities, and turns each provider's turn into one
:class:`~voicegw.privacy.processing.ProcessingRecord`. How a turn runs and when
it fails over is each adapter's own business (streams for ASR, chunks for TTS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from voicegw.privacy.capabilities import ProviderCapabilities, Purpose
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord, RecordSink
from voicegw.privacy.registry import HasCapabilities

P = TypeVar("P", bound=HasCapabilities)


class ProviderChain(Generic[P]):
    """An ordered, non-empty list of eligible providers, and whom their use is recorded for."""

    def __init__(
        self,
        providers: Sequence[P],
        *,
        context: ProcessingContext,
        on_record: RecordSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not providers:
            raise NoProviderAvailableError()
        self.providers = tuple(providers)
        self._context = context
        self._on_record = on_record
        self._clock = clock

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self.providers[0].capabilities

    def _record_use(
        self,
        provider: P,
        purpose: Purpose,
        *,
        started: float,
        outcome: Outcome,
        error: ProviderError | None,
        audio_seconds: float | None = None,
        characters: int | None = None,
        party: str | None = None,
    ) -> None:
        """One provider's turn is over: hand its processing record to the sink."""
        self._on_record(
            ProcessingRecord.for_provider(
                self._context,
                provider.capabilities,
                purpose,
                started=started,
                ended=self._clock(),
                outcome=outcome,
                audio_seconds=audio_seconds,
                characters=characters,
                error_status=None if error is None else error.status,
                party=party,
            )
        )
