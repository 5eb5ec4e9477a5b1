"""The speech-to-text provider interface (after livekit-agents ``stt/stt.py``).

A provider opens one :class:`AsrStream` per party and utterance stream. The caller
pushes 16-bit mono PCM frames at the declared sample rate, calls :meth:`flush` at
the end of each VAD segment, and iterates :class:`TranscriptEvent` s. Timestamps are
seconds of *stream audio* (samples pushed so far), not wall-clock time.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from voicegw.privacy.capabilities import ProviderCapabilities
from voicegw.privacy.errors import ProviderError

__all__ = [
    "AsrProvider",
    "AsrStream",
    "ProviderError",
    "QueuedAsrStream",
    "TranscriptEvent",
    "TranscriptKind",
]


class TranscriptKind(StrEnum):
    PARTIAL = "partial"  # may still change
    FINAL = "final"  # settled for [start, end)


@dataclass(frozen=True)
class TranscriptEvent:
    kind: TranscriptKind
    text: str
    start: float
    end: float
    confidence: float
    language: str
    party: str


class AsrStream(ABC):
    """One recognition stream: ``push`` audio, ``flush`` per utterance, iterate events."""

    sample_rate: int
    party: str

    @abstractmethod
    def push(self, pcm: bytes) -> None:
        """Queue one frame of audio; never blocks the loop."""

    @abstractmethod
    async def flush(self) -> None:
        """End the current utterance; returns once its final event has been queued."""

    @abstractmethod
    async def close(self) -> None:
        """Flush, release the engine and end the iteration."""

    def __aiter__(self) -> AsrStream:
        return self

    @abstractmethod
    async def __anext__(self) -> TranscriptEvent: ...


class QueuedAsrStream(AsrStream):
    """Shared plumbing: an event queue that iteration drains, ended by ``_finish``.

    An error passed to ``_finish`` is raised to the consumer after the events that
    preceded it, which is how a provider failing mid-stream reaches the failover.
    """

    def __init__(self, *, sample_rate: int, party: str) -> None:
        self.sample_rate = sample_rate
        self.party = party
        self._events: asyncio.Queue[TranscriptEvent | BaseException | None] = asyncio.Queue()
        self._finished = False

    def _emit(self, event: TranscriptEvent) -> None:
        self._events.put_nowait(event)

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._events.put_nowait(error)

    async def __anext__(self) -> TranscriptEvent:
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # keep later readers at the end too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._events.put_nowait(None)
            raise item
        return item


class AsrProvider(ABC):
    """One speech-to-text engine or vendor, registered by ``capabilities.name``."""

    @property
    @abstractmethod
    def capabilities(self) -> ProviderCapabilities: ...

    @abstractmethod
    async def open_stream(
        self,
        *,
        language: str,
        sample_rate: int,
        party: str,
        phrases: Sequence[str] | None = None,
    ) -> AsrStream:
        """Open a stream. ``phrases`` are the answers expected (consent, menu intents):
        a vendor may use them as hints, a local engine as a strict grammar."""

    async def aclose(self) -> None:  # noqa: B027 - a no-op default, not an abstract hook
        """Release provider-wide resources."""
