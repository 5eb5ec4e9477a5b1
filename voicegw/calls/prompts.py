"""Consent notices and announcements, synthesised by the policy-chosen TTS and cached.

A prompt is the same few sentences on thousands of calls, so its audio is kept in
a bounded LRU of PCM bytes keyed by (tenant, provider, voice, language, text hash,
sample rate): a hit costs no synthesis and sends no text to any vendor. The
provider in the key is the policy's first choice; audio that a failover provider
produced instead is played but not cached, so the next call tries the first
choice again and the cache never serves audio from a provider the key does not
name. Two calls asking for the same prompt at once share one synthesis.

The prompt's :func:`text_hash` is what the consent evidence records as "what was
asked"; :attr:`Prompt.audio_hash` additionally pins the exact audio played.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voicegw.calls.speech_policy import CallSpeech, SpeechDecision, SpeechFeature, plan_speech
from voicegw.media.playback import BufferSource
from voicegw.privacy.errors import NoProviderAvailableError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord, RecordSink
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.base import TtsProvider
from voicegw.tts.failover import FailoverTts
from voicegw.tts.registry import TtsRegistry

__all__ = ["Prompt", "PromptCache", "PromptKey", "PromptSynthesizer", "text_hash"]


def text_hash(text: str) -> str:
    """SHA-256 of the prompt's UTF-8 text, hex: the content hash consent evidence keeps."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptKey:
    tenant: str
    provider: str
    voice: str | None
    language: str
    text_hash: str
    sample_rate: int


@dataclass(frozen=True)
class Prompt:
    """Synthesised audio of one prompt: 16-bit mono PCM at ``sample_rate``."""

    pcm: bytes
    sample_rate: int
    text_hash: str
    audio_hash: str
    provider: str  # the provider whose audio this is
    voice: str | None
    language: str
    from_cache: bool

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate

    def source(self, frame_ms: int = 20) -> BufferSource:
        """A playback source of the audio in frames of ``frame_ms``."""
        samples = np.frombuffer(self.pcm, dtype="<i2")
        return BufferSource(samples, self.sample_rate * frame_ms // 1000)


@dataclass(frozen=True)
class _Entry:
    pcm: bytes
    audio_hash: str


class PromptCache:
    """A bounded LRU of prompt audio, shared by every call of the node."""

    def __init__(self, *, max_bytes: int = 32 * 1024 * 1024, max_entries: int = 1024) -> None:
        if max_bytes < 1 or max_entries < 1:
            raise ValueError("cache bounds must be positive")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[PromptKey, _Entry] = OrderedDict()
        self._bytes = 0

    def get(self, key: PromptKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: PromptKey, pcm: bytes) -> _Entry:
        entry = _Entry(pcm, hashlib.sha256(pcm).hexdigest())
        if len(pcm) > self.max_bytes:
            return entry  # larger than the whole cache: play it, keep nothing
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.pcm)
        self._entries[key] = entry
        self._bytes += len(pcm)
        while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.pcm)
            self.evictions += 1
        return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes


class PromptSynthesizer:
    """Prompts for one tenant through failover over the policy-approved TTS providers."""

    def __init__(
        self,
        providers: Sequence[TtsProvider],
        *,
        context: ProcessingContext,
        on_record: RecordSink,
        cache: PromptCache,
        sample_rate: int = 8000,
        chunk_timeout: float = 5.0,
        decision: SpeechDecision | None = None,
    ) -> None:
        self.providers = tuple(providers)
        self.decision = decision
        self.sample_rate = sample_rate
        self.synthesized = 0  # syntheses started (cache misses that were not shared)
        self._context = context
        self._on_record = on_record
        self._cache = cache
        self._chunk_timeout = chunk_timeout
        self._in_flight: dict[PromptKey, asyncio.Task[tuple[_Entry, str]]] = {}

    @classmethod
    def for_call(
        cls,
        registry: TtsRegistry,
        settings: TenantSettings,
        call: CallSpeech,
        *,
        cache: PromptCache,
        on_record: RecordSink,
        on_decision: Callable[[SpeechDecision], None] | None = None,
        sample_rate: int = 8000,
        preference: tuple[str, ...] = (),
    ) -> PromptSynthesizer:
        plan = plan_speech(
            registry,
            settings,
            call,
            SpeechFeature.PROMPTS,
            preference=preference,
            on_decision=on_decision,
        )
        return cls(
            plan.providers,
            context=ProcessingContext(
                call_id=call.call_id, tenant=call.tenant, bases=plan.decision.bases
            ),
            on_record=on_record,
            cache=cache,
            sample_rate=sample_rate,
            decision=plan.decision,
        )

    @property
    def available(self) -> bool:
        """False: no TTS may be used on this call (play a recorded file, or skip)."""
        return bool(self.providers)

    def key(self, text: str, *, language: str, voice: str | None = None) -> PromptKey:
        if not self.providers:
            raise NoProviderAvailableError()
        return PromptKey(
            tenant=self._context.tenant,
            provider=self.providers[0].capabilities.name,
            voice=voice,
            language=language.lower(),
            text_hash=text_hash(text),
            sample_rate=self.sample_rate,
        )

    async def get(self, text: str, *, language: str, voice: str | None = None) -> Prompt:
        """The prompt's audio: from the cache, from a synthesis in flight, or synthesised."""
        key = self.key(text, language=language, voice=voice)
        entry = self._cache.get(key)
        if entry is not None:
            return self._prompt(key, entry, key.provider, from_cache=True)
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._synthesize(key, text, language))
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: one caller hanging up must not cancel the synthesis others await.
        made, provider = await asyncio.shield(task)
        return self._prompt(key, made, provider, from_cache=False)

    def _settled(self, key: PromptKey, task: asyncio.Task[tuple[_Entry, str]]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged

    async def _synthesize(self, key: PromptKey, text: str, language: str) -> tuple[_Entry, str]:
        self.synthesized += 1
        served: list[str] = []

        def record(item: ProcessingRecord) -> None:
            if item.outcome is Outcome.OK:
                served.append(item.provider)
            self._on_record(item)

        tts = FailoverTts(
            self.providers,
            context=self._context,
            on_record=record,
            chunk_timeout=self._chunk_timeout,
        )
        stream = tts.synthesize(
            text, voice=key.voice, language=language, sample_rate=self.sample_rate
        )
        pcm = await stream.read_all()
        provider = served[-1] if served else key.provider
        if provider == key.provider:
            return self._cache.put(key, pcm), provider
        return _Entry(pcm, hashlib.sha256(pcm).hexdigest()), provider

    def _prompt(self, key: PromptKey, entry: _Entry, provider: str, *, from_cache: bool) -> Prompt:
        return Prompt(
            pcm=entry.pcm,
            sample_rate=key.sample_rate,
            text_hash=key.text_hash,
            audio_hash=entry.audio_hash,
            provider=provider,
            voice=key.voice,
            language=key.language,
            from_cache=from_cache,
        )
