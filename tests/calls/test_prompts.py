"""Prompts: policy-chosen TTS at the leg's rate, cached per tenant/provider/voice/language/text.

``ToneTts`` is a small in-process engine (a tone per character, so audio length
follows the text) that counts how often it was asked to synthesise and can be
held mid-synthesis or made to fail; the consent-notice test uses eSpeak NG.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from voicegw.calls.prompts import PromptCache, PromptSynthesizer, text_hash
from voicegw.calls.speech_policy import CallSpeech, DisabledReason
from voicegw.media.playback import PlaybackSource
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.privacy.registry import Registry
from voicegw.privacy.subprocessors import capabilities_for, load_subprocessors
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.base import TtsProvider, TtsStream
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

RATE = 8000
NOTICE = "This call may be recorded for quality and training. Say yes i agree, or no."
CONTEXT = ProcessingContext(call_id="call-1", tenant="acme")
LISTING = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")


class ToneTts(TtsProvider):
    """10 ms of a 440 Hz tone per character; ``hold`` pauses it before the first chunk."""

    def __init__(self, name: str = "tone-local", *, fail: bool = False) -> None:
        self._capabilities = ProviderCapabilities(
            name=name, subprocessor_id=None, processing_locations=frozenset(),
            purposes=frozenset({Purpose.TTS}), data_types=frozenset({DataType.TEXT}),
            languages=frozenset({"en"}),
        )  # fmt: skip
        self.fail = fail
        self.calls = 0
        self.hold = asyncio.Event()
        self.hold.set()

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    def synthesize(
        self, text: str, *, voice: str | None = None, language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:  # fmt: skip
        self.calls += 1
        return TtsStream(self._produce(text), source_rate=RATE, sample_rate=sample_rate)

    async def _produce(self, text: str) -> AsyncGenerator[bytes, None]:
        await self.hold.wait()
        if self.fail:
            raise ProviderError("engine broke", retryable=True, status=503)
        t = np.arange(len(text) * RATE // 100) / RATE
        pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
        for i in range(0, len(pcm), 1600):
            yield pcm[i : i + 1600]


def synthesizer(
    *providers: TtsProvider,
    cache: PromptCache | None = None,
    records: list[ProcessingRecord] | None = None,
    tenant: str = "acme",
) -> PromptSynthesizer:
    sink = records.append if records is not None else (lambda record: None)
    return PromptSynthesizer(
        providers, context=ProcessingContext(call_id="call-1", tenant=tenant),
        on_record=sink, cache=PromptCache() if cache is None else cache,
    )  # fmt: skip


async def test_a_cache_hit_does_no_synthesis() -> None:
    tts, records = ToneTts(), list[ProcessingRecord]()
    prompts = synthesizer(tts, records=records)
    first = await prompts.get(NOTICE, language="en-US")
    second = await prompts.get(NOTICE, language="en-US")
    assert tts.calls == 1 and len(records) == 1  # no second provider use, no second record
    assert (first.from_cache, second.from_cache) == (False, True)
    assert first.pcm == second.pcm and first.audio_hash == second.audio_hash
    assert first.sample_rate == RATE
    assert first.duration == pytest.approx(len(NOTICE) / 100)


async def test_two_concurrent_requests_for_one_prompt_synthesise_once() -> None:
    tts = ToneTts()
    tts.hold.clear()
    prompts = synthesizer(tts)
    both = asyncio.gather(
        prompts.get(NOTICE, language="en-US"), prompts.get(NOTICE, language="en-US")
    )
    await asyncio.sleep(0.01)  # both requests are now waiting on the same synthesis
    tts.hold.set()
    one, two = await both
    assert tts.calls == 1 and prompts.synthesized == 1
    assert one.pcm == two.pcm


async def test_one_caller_hanging_up_does_not_cancel_the_shared_synthesis() -> None:
    tts = ToneTts()
    tts.hold.clear()
    prompts = synthesizer(tts)
    gone = asyncio.ensure_future(prompts.get(NOTICE, language="en-US"))
    stays = asyncio.ensure_future(prompts.get(NOTICE, language="en-US"))
    await asyncio.sleep(0.01)
    gone.cancel()
    tts.hold.set()
    assert len((await stays).pcm) > 0
    assert tts.calls == 1


@pytest.mark.parametrize(
    "variant",
    [
        {"tenant": "globex"},
        {"voice": "en-gb"},
        {"language": "en-GB"},
        {"text": NOTICE + " Thank you."},
    ],
)
async def test_cache_key_separates_tenant_voice_language_and_text(variant: dict[str, str]) -> None:
    tts, cache = ToneTts(), PromptCache()
    await synthesizer(tts, cache=cache).get(NOTICE, language="en-US")
    other = synthesizer(tts, cache=cache, tenant=variant.get("tenant", "acme"))
    prompt = await other.get(
        variant.get("text", NOTICE),
        language=variant.get("language", "en-US"),
        voice=variant.get("voice"),
    )
    assert not prompt.from_cache and tts.calls == 2 and len(cache) == 2


async def test_lru_keeps_the_recently_used_within_its_byte_bound() -> None:
    per_prompt = len("prompt a") * RATE // 100 * 2
    cache = PromptCache(max_bytes=2 * per_prompt)
    tts = ToneTts()
    prompts = synthesizer(tts, cache=cache)
    for text in ("prompt a", "prompt b", "prompt a", "prompt c"):  # "a" used again before "c"
        await prompts.get(text, language="en")
    assert cache.size_bytes <= cache.max_bytes and cache.evictions == 1
    assert (await prompts.get("prompt a", language="en")).from_cache
    assert not (await prompts.get("prompt b", language="en")).from_cache  # evicted


async def test_prompt_exposes_the_content_hashes_consent_evidence_records() -> None:
    prompt = await synthesizer(ToneTts()).get(NOTICE, language="en-US")
    assert prompt.text_hash == text_hash(NOTICE) == hashlib.sha256(NOTICE.encode()).hexdigest()
    assert prompt.audio_hash == hashlib.sha256(prompt.pcm).hexdigest()


async def test_failover_audio_is_played_but_not_cached_under_the_first_choice() -> None:
    broken, spare = ToneTts("tone-primary", fail=True), ToneTts("tone-spare")
    records = list[ProcessingRecord]()
    prompts = synthesizer(broken, spare, records=records)
    prompt = await prompts.get(NOTICE, language="en-US")
    assert prompt.provider == "tone-spare" and not prompt.from_cache
    assert [(r.provider, r.outcome) for r in records] == [
        ("tone-primary", Outcome.ERROR), ("tone-spare", Outcome.OK),
    ]  # fmt: skip
    broken.fail = False  # the first choice recovered: it is asked again, and then cached
    again = await prompts.get(NOTICE, language="en-US")
    assert again.provider == "tone-primary" and broken.calls == 2
    assert (await prompts.get(NOTICE, language="en-US")).from_cache


async def test_every_provider_failing_raises_and_caches_nothing() -> None:
    cache = PromptCache()
    prompts = synthesizer(ToneTts(fail=True), cache=cache)
    with pytest.raises(NoProviderAvailableError):
        await prompts.get(NOTICE, language="en-US")
    assert len(cache) == 0


async def test_consent_notice_from_espeak_at_the_leg_rate_via_the_speech_policy() -> None:
    registry: TtsRegistry = Registry("tts")
    registry.register(EspeakTts())
    vendor = capabilities_for(
        LISTING["minimax"], name="minimax", purposes=frozenset({Purpose.TTS}),
        languages=frozenset({"en"}),
    )  # fmt: skip
    registry.register(Declared(vendor))
    settings = TenantSettings(region="sg", approved_subprocessors=("minimax",))
    records = list[ProcessingRecord]()
    prompts = PromptSynthesizer.for_call(
        registry, settings, CallSpeech(call_id="call-2", tenant="acme"),
        cache=PromptCache(), on_record=records.append,
    )  # fmt: skip
    assert prompts.decision is not None and prompts.decision.eligible == ("espeak-local",)
    refusal = prompts.decision.refusal("minimax")
    assert refusal is not None  # China processing, no cross-border mechanism
    prompt = await prompts.get(NOTICE, language="en-US")
    assert prompt.provider == "espeak-local" and prompt.sample_rate == RATE
    assert 3.0 < prompt.duration < 10.0
    samples = np.frombuffer(prompt.pcm, dtype="<i2")
    assert np.abs(samples).max() > 1000  # speech, not silence
    (record,) = records
    assert (record.provider, record.purpose, record.outcome) == (
        "espeak-local", Purpose.TTS, Outcome.OK,
    )  # fmt: skip
    assert record.characters == len(NOTICE)
    source: PlaybackSource = prompt.source()
    assert source.next_frame() == prompt.pcm[:320]


async def test_no_eligible_tts_leaves_prompts_unavailable() -> None:
    registry: TtsRegistry = Registry("tts")
    registry.register(EspeakTts())
    prompts = PromptSynthesizer.for_call(
        registry, TenantSettings(region="sg"),
        CallSpeech(call_id="call-3", tenant="acme", language="xx-QQ"),
        cache=PromptCache(), on_record=lambda record: None,
    )  # fmt: skip
    assert not prompts.available
    assert prompts.decision is not None
    assert prompts.decision.disabled is DisabledReason.NO_ELIGIBLE_PROVIDER
    with pytest.raises(NoProviderAvailableError):
        await prompts.get(NOTICE, language="xx-QQ")


class Declared(TtsProvider):
    """A vendor the policy refuses before it could ever be called."""

    def __init__(self, capabilities: ProviderCapabilities) -> None:
        self._capabilities = capabilities

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    def synthesize(
        self, text: str, *, voice: str | None = None, language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:  # fmt: skip
        raise AssertionError("a refused provider must never be asked to synthesise")
