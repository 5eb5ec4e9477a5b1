"""The text-to-speech provider interface.

A provider turns text into a :class:`TtsStream`: an async iterator of 16-bit mono
PCM chunks at the sample rate the caller asked for. Engines that produce another
rate hand the stream their native chunks and it resamples them with one stateful
``soxr.ResampleStream`` (never one-shot per chunk, which clicks at chunk edges).
Cancelling stops the engine promptly: a barge-in must silence the prompt at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable

import numpy as np
import soxr

from voicegw.privacy.capabilities import ProviderCapabilities
from voicegw.privacy.errors import ProviderError

__all__ = ["ProviderError", "TtsProvider", "TtsStream"]


class TtsStream:
    """PCM chunks of one synthesis, at ``sample_rate``; iterate, or ``cancel()``.

    ``source`` yields int16 PCM at ``source_rate``. ``on_cancel`` is called (from the
    loop) when the consumer cancels, so an engine running in a thread can stop.
    """

    def __init__(
        self,
        source: AsyncGenerator[bytes, None],
        *,
        source_rate: int,
        sample_rate: int,
        on_cancel: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.source_rate = source_rate
        self._source = source
        self._on_cancel = on_cancel
        self._resampler = (
            None
            if source_rate == sample_rate
            else soxr.ResampleStream(source_rate, sample_rate, 1, dtype="int16")
        )
        self._done = False
        self.cancelled = False
        self.samples_out = 0

    def __aiter__(self) -> TtsStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                self._done = True
                tail = self._resample(b"", last=True)
                if tail:
                    return tail
                break
            out = self._resample(chunk, last=False)
            if out:
                return out
        raise StopAsyncIteration

    def _resample(self, chunk: bytes, *, last: bool) -> bytes:
        if self._resampler is None:
            out = chunk
        else:
            samples = np.frombuffer(chunk, dtype=np.int16)
            out = self._resampler.resample_chunk(samples, last=last).tobytes()
        self.samples_out += len(out) // 2
        return out

    async def read_all(self) -> bytes:
        """Collect the whole utterance (prompts that are played from memory)."""
        return b"".join([chunk async for chunk in self])

    async def cancel(self) -> None:
        """Stop synthesis now; the iterator ends without further chunks."""
        if self._done and self.cancelled:
            return
        self.cancelled = True
        self._done = True
        if self._on_cancel is not None:
            await self._on_cancel()
        await self._source.aclose()

    async def aclose(self) -> None:
        if not self._done:
            await self.cancel()


class TtsProvider(ABC):
    """One text-to-speech engine or vendor, registered by ``capabilities.name``."""

    @property
    @abstractmethod
    def capabilities(self) -> ProviderCapabilities: ...

    @abstractmethod
    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:
        """Start synthesising ``text``; errors surface as :class:`ProviderError` on iteration."""

    async def aclose(self) -> None:  # noqa: B027 - a no-op default, not an abstract hook
        """Release engine resources; the default engine holds none."""
