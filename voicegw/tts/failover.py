"""Failover across an ordered list of TTS providers (after livekit-agents' FallbackAdapter).

The residency policy decides the list; this adapter only walks it. A provider that
raises :class:`ProviderError`, or is silent for longer than ``chunk_timeout``, is
replaced by the next one. If it fails before any audio was delivered the switch is
seamless; if it fails part-way, the next provider speaks the whole text again —
a restarted prompt is intelligible, a splice of two voices mid-word is not. Every
provider use ends in one :class:`ProcessingRecord` handed to ``on_record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence

from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError, ProviderTimeoutError
from voicegw.privacy.failover import ProviderChain
from voicegw.privacy.processing import Outcome, ProcessingContext, RecordSink
from voicegw.tts.base import TtsProvider, TtsStream


class FailoverTts(ProviderChain[TtsProvider], TtsProvider):
    """A :class:`TtsProvider` over ``providers`` in order; its capabilities are the first's."""

    def __init__(
        self,
        providers: Sequence[TtsProvider],
        *,
        context: ProcessingContext,
        on_record: RecordSink,
        chunk_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(providers, context=context, on_record=on_record, clock=clock)
        self._chunk_timeout = chunk_timeout

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:
        source = self._walk(text, voice, language, sample_rate)
        return TtsStream(source, source_rate=sample_rate, sample_rate=sample_rate)

    async def _walk(
        self, text: str, voice: str | None, language: str, sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        for provider in self.providers:
            started = self._clock()
            samples = 0
            outcome = Outcome.CANCELLED  # unless the loop below ends otherwise
            error: ProviderError | None = None
            inner: TtsStream | None = None
            try:
                inner = provider.synthesize(
                    text, voice=voice, language=language, sample_rate=sample_rate
                )
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(inner), self._chunk_timeout)
                    except StopAsyncIteration:
                        break
                    samples += len(chunk) // 2
                    yield chunk
                outcome = Outcome.OK
                return
            except TimeoutError:
                outcome, error = Outcome.TIMEOUT, ProviderTimeoutError()
            except ProviderError as exc:
                outcome, error = Outcome.ERROR, exc
            finally:
                if inner is not None:
                    with contextlib.suppress(ProviderError):
                        await inner.aclose()
                self._record_use(
                    provider,
                    Purpose.TTS,
                    started=started,
                    outcome=outcome,
                    error=error,
                    audio_seconds=samples / sample_rate,
                    characters=len(text),
                )
        raise NoProviderAvailableError()
