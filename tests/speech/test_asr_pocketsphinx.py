"""The local PocketSphinx provider: grammar mode for consent and menus, generic mode."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from voicegw.asr.base import TranscriptEvent, TranscriptKind
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr, phrase_grammar
from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import ProviderError

CONSENT_PHRASES = ["yes", "yes i agree", "no", "no thanks", "i do not agree"]


async def transcribe(
    asr: PocketsphinxAsr, pcm: bytes, rate: int, phrases: list[str] | None
) -> tuple[list[TranscriptEvent], Any]:
    stream = await asr.open_stream(
        language="en-US", sample_rate=rate, party="caller", phrases=phrases
    )
    frame = rate * 20 // 1000 * 2
    for i in range(0, len(pcm), frame):
        stream.push(pcm[i : i + frame])
    await stream.flush()
    await stream.close()
    return [event async for event in stream], stream.stats


@pytest.fixture(scope="module")
def asr() -> Iterator[PocketsphinxAsr]:
    provider = PocketsphinxAsr(workers=2)
    yield provider
    provider.shutdown()


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("answer", ["yes i agree", "no"])
async def test_grammar_mode_recognises_consent_answers_exactly(
    asr: PocketsphinxAsr, speech: Any, audio: Any, rate: int, answer: str
) -> None:
    pcm = audio.silence(0.2, rate) + speech(answer, rate) + audio.silence(0.2, rate)
    events, stats = await transcribe(asr, pcm, rate, CONSENT_PHRASES)
    assert [(e.kind, e.text) for e in events] == [(TranscriptKind.FINAL, answer)]
    (final,) = events
    assert final.party == "caller" and final.language == "en-US"
    assert 0.1 <= final.start < final.end <= len(pcm) / 2 / rate
    assert 0.0 < final.confidence <= 1.0
    assert stats.real_time_factor < 0.5  # generous: ~0.02 on a laptop core


async def test_generic_mode_returns_text_for_free_speech(
    asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    rate = 16000
    pcm = audio.silence(0.2, rate) + speech("yes i agree", rate) + audio.silence(0.2, rate)
    events, _ = await transcribe(asr, pcm, rate, None)
    (final,) = events
    assert final.kind is TranscriptKind.FINAL
    assert final.text.strip()


async def test_each_flush_closes_one_utterance_with_stream_time_stamps(
    asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    rate = 8000
    stream = await asr.open_stream(
        language="en", sample_rate=rate, party="agent", phrases=CONSENT_PHRASES
    )
    for answer in ("no", "yes i agree"):
        stream.push(audio.silence(0.3, rate) + speech(answer, rate) + audio.silence(0.2, rate))
        await stream.flush()
    await stream.close()
    first, second = [event async for event in stream]
    assert (first.text, second.text) == ("no", "yes i agree")
    assert first.end <= second.start
    assert second.start > len(speech("no", rate)) / 2 / rate


async def test_partials_arrive_before_the_flush_when_enabled(speech: Any, audio: Any) -> None:
    rate = 16000
    asr = PocketsphinxAsr(partial_interval=0.3)
    try:
        stream = await asr.open_stream(
            language="en-US", sample_rate=rate, party="caller", phrases=CONSENT_PHRASES
        )
        stream.push(audio.silence(0.2, rate) + speech("yes i agree", rate))
        partial = await asyncio.wait_for(anext(stream), timeout=30)
        stream.push(audio.silence(0.2, rate))
        await stream.close()
        rest = [event async for event in stream]
    finally:
        await asr.aclose()
    assert partial.kind is TranscriptKind.PARTIAL and partial.text
    assert (rest[-1].kind, rest[-1].text) == (TranscriptKind.FINAL, "yes i agree")
    assert {e.kind for e in rest[:-1]} <= {TranscriptKind.PARTIAL}


async def test_decoding_does_not_block_the_event_loop(
    asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    rate = 16000
    pcm = audio.silence(0.2, rate) + speech("Please hold while we connect your call.", rate)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    events, stats = await transcribe(asr, pcm, rate, None)
    stop.set()
    await task
    assert events
    assert stats.decode_seconds > 0.2  # long enough to notice a stalled loop
    assert ticks >= 0.5 * stats.decode_seconds / 0.005


async def test_phrases_with_words_outside_the_dictionary_are_refused(
    asr: PocketsphinxAsr,
) -> None:
    with pytest.raises(ValueError, match="zzyzxq"):
        await asr.open_stream(
            language="en-US", sample_rate=8000, party="caller", phrases=["yes", "zzyzxq"]
        )


async def test_other_languages_are_refused_as_unsupported(asr: PocketsphinxAsr) -> None:
    with pytest.raises(ProviderError) as caught:
        await asr.open_stream(language="th-TH", sample_rate=8000, party="caller")
    assert caught.value.retryable is False


def test_phrase_grammar_normalises_case_punctuation_and_duplicates() -> None:
    grammar = phrase_grammar(["Yes, I agree!", "yes i agree", "NO"])
    assert grammar.endswith("public <phrase> = no | yes i agree;\n")


def test_capabilities_declare_an_on_node_asr_engine(asr: PocketsphinxAsr) -> None:
    caps = asr.capabilities
    assert caps.is_local and caps.purposes == frozenset({Purpose.ASR})
    assert caps.sample_rates == (8000, 16000)
    assert caps.supports_language("en-US") and not caps.supports_language("fr")
