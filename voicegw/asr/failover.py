"""Failover across an ordered list of ASR providers (after livekit-agents' FallbackAdapter).

The residency policy (:func:`voicegw.privacy.selection.select_provider`) decides the
list; this adapter only walks it. It never sees an ineligible provider, so failing
over can never send audio somewhere the tenant did not allow.

When the current provider raises :class:`ProviderError` — on open, on push, on
flush or while iterating — or does not finish a flush in ``flush_timeout`` seconds,
the stream moves to the next provider and replays the audio of the utterance in
progress (audio already covered by a final transcript is not sent again). Event
timestamps are rebased onto the adapter's own stream time. Every provider use
ends in one :class:`ProcessingRecord` handed to ``on_record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from voicegw.asr.base import AsrProvider, AsrStream, QueuedAsrStream, TranscriptKind
from voicegw.privacy.capabilities import ProviderCapabilities, Purpose
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError, ProviderTimeoutError
from voicegw.privacy.failover import ProviderChain
from voicegw.privacy.processing import Outcome, ProcessingContext, RecordSink


@dataclass(frozen=True)
class _Frame:
    start: float  # adapter stream time
    pcm: bytes


@dataclass
class _Use:
    """One provider's turn: its stream, pump task and what it was sent."""

    provider: AsrProvider
    stream: AsrStream
    offset: float  # adapter time of the provider stream's t=0
    started: float
    pump: asyncio.Task[None] | None = None
    audio_seconds: float = 0.0


class FailoverAsr(ProviderChain[AsrProvider], AsrProvider):
    """An :class:`AsrProvider` over ``providers`` in order; its capabilities are the first's."""

    def __init__(
        self,
        providers: Sequence[AsrProvider],
        *,
        context: ProcessingContext,
        on_record: RecordSink,
        open_timeout: float = 5.0,
        flush_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(providers, context=context, on_record=on_record, clock=clock)
        self._open_timeout = open_timeout
        self._flush_timeout = flush_timeout

    async def open_stream(
        self,
        *,
        language: str,
        sample_rate: int,
        party: str,
        phrases: Sequence[str] | None = None,
    ) -> FailoverAsrStream:
        stream = FailoverAsrStream(self, language, sample_rate, party, phrases)
        await stream._advance(None, None)
        if stream.provider is None:
            raise NoProviderAvailableError()
        return stream


class FailoverAsrStream(QueuedAsrStream):
    def __init__(
        self,
        owner: FailoverAsr,
        language: str,
        sample_rate: int,
        party: str,
        phrases: Sequence[str] | None,
    ) -> None:
        super().__init__(sample_rate=sample_rate, party=party)
        self._owner = owner
        self._language = language
        self._phrases = phrases
        self._next_index = 0
        self._use: _Use | None = None
        self._replay: deque[_Frame] = deque()  # audio not yet covered by a final
        self._time = 0.0  # adapter stream time of the next pushed sample
        self._switching = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def provider(self) -> ProviderCapabilities | None:
        """The provider currently serving the stream."""
        return None if self._use is None else self._use.provider.capabilities

    def push(self, pcm: bytes) -> None:
        if self._closed:
            raise ProviderError("stream is closed", retryable=False)
        frame = _Frame(self._time, pcm)
        self._time += len(pcm) / 2 / self.sample_rate
        self._replay.append(frame)
        use = self._use
        if use is None or self._switching.locked():
            return  # the next provider gets it from the replay buffer
        try:
            use.stream.push(pcm)
            use.audio_seconds += len(pcm) / 2 / self.sample_rate
        except ProviderError as exc:
            self._fail_soon(use, exc)

    async def flush(self) -> None:
        for _ in range(len(self._owner.providers) + 1):
            use = await self._current()
            try:
                await asyncio.wait_for(use.stream.flush(), self._owner._flush_timeout)
            except (ProviderError, TimeoutError) as exc:
                await self._advance(use, _as_provider_error(exc))
                continue
            self._replay.clear()  # everything pushed so far has had its final
            return

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(ProviderError):
            await self.flush()
        self._closed = True
        use = self._use
        if use is not None:
            await self._retire(use, Outcome.OK, None)
            self._use = None
        self._finish()

    # --- provider switching ---------------------------------------------------

    async def _current(self) -> _Use:
        async with self._switching:
            if self._use is None:
                raise NoProviderAvailableError()
            return self._use

    def _fail_soon(self, use: _Use, error: ProviderError) -> None:
        # push() is synchronous: switch in a task, held so it is not collected mid-way.
        task = asyncio.get_running_loop().create_task(self._advance(use, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _advance(self, failed: _Use | None, error: ProviderError | None) -> None:
        """Retire ``failed`` (if still current) and open the next provider that works."""
        async with self._switching:
            if failed is not self._use:
                return  # already handled by another path (pump vs flush vs push)
            if failed is not None:
                timed_out = isinstance(error, ProviderTimeoutError)
                await self._retire(failed, Outcome.TIMEOUT if timed_out else Outcome.ERROR, error)
                self._use = None
            while self._next_index < len(self._owner.providers):
                provider = self._owner.providers[self._next_index]
                self._next_index += 1
                use = await self._open(provider)
                if use is not None:
                    self._use = use
                    use.pump = asyncio.get_running_loop().create_task(self._pump(use))
                    return
            self._finish(NoProviderAvailableError())

    async def _open(self, provider: AsrProvider) -> _Use | None:
        started = self._owner._clock()
        offset = self._replay[0].start if self._replay else self._time
        try:
            stream = await asyncio.wait_for(
                provider.open_stream(
                    language=self._language,
                    sample_rate=self.sample_rate,
                    party=self.party,
                    phrases=self._phrases,
                ),
                self._owner._open_timeout,
            )
        except (ProviderError, TimeoutError) as exc:
            error = _as_provider_error(exc)
            self._record(provider, started, Outcome.ERROR, 0.0, error)
            return None
        use = _Use(provider, stream, offset, started)
        try:
            for frame in self._replay:
                stream.push(frame.pcm)
                use.audio_seconds += len(frame.pcm) / 2 / self.sample_rate
        except ProviderError as exc:
            await self._retire(use, Outcome.ERROR, exc)
            return None
        return use

    async def _pump(self, use: _Use) -> None:
        try:
            async for event in use.stream:
                rebased = replace(event, start=event.start + use.offset, end=event.end + use.offset)
                if rebased.kind is TranscriptKind.FINAL:
                    while self._replay and self._replay[0].start < rebased.end:
                        self._replay.popleft()
                self._emit(rebased)
        except ProviderError as exc:
            await self._advance(use, exc)

    async def _retire(self, use: _Use, outcome: Outcome, error: ProviderError | None) -> None:
        if use.pump is not None and use.pump is not asyncio.current_task():
            use.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProviderError):
                await use.pump
        with contextlib.suppress(ProviderError):
            await asyncio.wait_for(use.stream.close(), self._owner._flush_timeout)
        self._record(use.provider, use.started, outcome, use.audio_seconds, error)

    def _record(
        self,
        provider: AsrProvider,
        started: float,
        outcome: Outcome,
        audio_seconds: float,
        error: ProviderError | None,
    ) -> None:
        self._owner._record_use(
            provider,
            Purpose.ASR,
            started=started,
            outcome=outcome,
            error=error,
            audio_seconds=audio_seconds,
            party=self.party,
        )


def _as_provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    return ProviderTimeoutError()
