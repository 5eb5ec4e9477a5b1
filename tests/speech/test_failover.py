"""Failover adapters: walk the eligible list on failure, leave a processing record per use.

The failing providers below are small real implementations of the provider
interfaces that break in one deterministic way each; the provider that takes over
is the real local engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from voicegw.asr.base import AsrProvider, AsrStream, QueuedAsrStream, TranscriptKind
from voicegw.asr.failover import FailoverAsr
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import NoProviderAvailableError, ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.tts.base import TtsProvider, TtsStream
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.failover import FailoverTts

CONSENT_PHRASES = ["yes", "yes i agree", "no", "no thanks"]
CONTEXT = ProcessingContext(call_id="call-1", tenant="tenant-a")


def vendor(name: str, purpose: Purpose) -> ProviderCapabilities:
    return ProviderCapabilities(
        name=name, subprocessor_id="zhongkejin", processing_locations=frozenset({"sg"}),
        purposes=frozenset({purpose}), data_types=frozenset({DataType.AUDIO, DataType.TEXT}),
        languages=frozenset({"en"}),
    )  # fmt: skip


class _CountingStream(QueuedAsrStream):
    """Accepts audio and then breaks the way its provider says."""

    def __init__(self, mode: str, fail_after: int, rate: int, party: str) -> None:
        super().__init__(sample_rate=rate, party=party)
        self.mode = mode
        self.fail_after = fail_after
        self.frames = 0
        self._never = asyncio.Event()

    def push(self, pcm: bytes) -> None:
        self.frames += 1
        if self.frames == self.fail_after:
            error = ProviderError("upstream reset", retryable=True, status=503)
            if self.mode == "push":
                raise error
            if self.mode == "iterate":
                self._finish(error)

    async def flush(self) -> None:
        if self.mode == "stall":
            await self._never.wait()  # a vendor that stops answering

    async def close(self) -> None:
        self._finish()


class BreakingAsr(AsrProvider):
    """``push``: push raises; ``iterate``: the event stream raises; ``stall``: flush hangs."""

    def __init__(self, name: str, mode: str, fail_after: int = 10) -> None:
        self._caps = vendor(name, Purpose.ASR)
        self.mode = mode
        self.fail_after = fail_after
        self.streams: list[_CountingStream] = []

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._caps

    async def open_stream(
        self, *, language: str, sample_rate: int, party: str,
        phrases: Sequence[str] | None = None,
    ) -> AsrStream:  # fmt: skip
        if self.mode == "open":
            raise ProviderError("unauthorised", retryable=False, status=401)
        stream = _CountingStream(self.mode, self.fail_after, sample_rate, party)
        self.streams.append(stream)
        return stream


@pytest.fixture(scope="module")
def local_asr() -> Iterator[PocketsphinxAsr]:
    provider = PocketsphinxAsr()
    yield provider
    provider.shutdown()


async def say_yes_through(
    failover: FailoverAsr, speech: Any, audio: Any, rate: int = 8000
) -> list[Any]:
    stream = await failover.open_stream(
        language="en-US", sample_rate=rate, party="caller", phrases=CONSENT_PHRASES
    )
    pcm = audio.silence(0.3, rate) + speech("yes i agree", rate) + audio.silence(0.3, rate)
    for frame in audio.frames(pcm, rate):
        stream.push(frame)
        await asyncio.sleep(0)  # let a failure be noticed mid-stream, as on a live call
    await stream.flush()
    await stream.close()
    return [event async for event in stream]


@pytest.mark.parametrize("mode", ["push", "iterate"])
async def test_asr_fails_over_mid_stream_and_records_both_providers(
    local_asr: PocketsphinxAsr, speech: Any, audio: Any, mode: str
) -> None:
    records: list[ProcessingRecord] = []
    broken = BreakingAsr("vendor-sg", mode, fail_after=10)
    failover = FailoverAsr(
        [broken, local_asr], context=CONTEXT, on_record=records.append, flush_timeout=30
    )
    events = await say_yes_through(failover, speech, audio)

    assert [(e.kind, e.text) for e in events] == [(TranscriptKind.FINAL, "yes i agree")]
    assert broken.streams[0].frames >= 10
    first, second = records
    assert (first.provider, first.subprocessor, first.outcome) == (
        "vendor-sg", "zhongkejin", Outcome.ERROR
    )  # fmt: skip
    assert first.error_status == 503 and first.locations == ("sg",)
    assert first.audio_seconds == pytest.approx(0.2, abs=0.05)  # ten 20 ms frames
    assert (second.provider, second.subprocessor, second.outcome) == (
        "pocketsphinx-local", None, Outcome.OK
    )  # fmt: skip
    assert (second.call_id, second.tenant, second.purpose) == ("call-1", "tenant-a", Purpose.ASR)
    # The audio the broken vendor had was replayed, so the local engine heard it all.
    assert second.audio_seconds > events[0].end
    assert first.started <= first.ended <= second.ended


async def test_asr_fails_over_when_a_flush_times_out(
    local_asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverAsr(
        [BreakingAsr("stalls", "stall"), local_asr],
        context=CONTEXT, on_record=records.append, flush_timeout=1.0,
    )  # fmt: skip
    events = await say_yes_through(failover, speech, audio)
    assert [e.text for e in events] == ["yes i agree"]
    assert [(r.provider, r.outcome) for r in records] == [
        ("stalls", Outcome.TIMEOUT), ("pocketsphinx-local", Outcome.OK)
    ]  # fmt: skip


async def test_asr_skips_a_provider_that_cannot_open(
    local_asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverAsr(
        [BreakingAsr("refuses", "open"), local_asr], context=CONTEXT, on_record=records.append
    )
    assert [e.text for e in await say_yes_through(failover, speech, audio)] == ["yes i agree"]
    assert [(r.provider, r.outcome, r.error_status) for r in records] == [
        ("refuses", Outcome.ERROR, 401), ("pocketsphinx-local", Outcome.OK, None)
    ]  # fmt: skip


class _FlakyStream(AsrStream):
    """The local engine's stream, until push number ``fail_at`` raises."""

    def __init__(self, inner: AsrStream, fail_at: int) -> None:
        self.inner, self.fail_at, self.pushed = inner, fail_at, 0
        self.sample_rate, self.party = inner.sample_rate, inner.party

    def push(self, pcm: bytes) -> None:
        self.pushed += 1
        if self.pushed >= self.fail_at:
            raise ProviderError("connection lost", retryable=True, status=None)
        self.inner.push(pcm)

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()

    async def __anext__(self) -> Any:
        return await anext(self.inner)


class FlakyAsr(AsrProvider):
    """A vendor-like provider that transcribes well, then drops the connection."""

    def __init__(self, inner: AsrProvider, fail_at: int) -> None:
        self.inner, self.fail_at = inner, fail_at
        self._caps = vendor("flaky-vendor", Purpose.ASR)

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._caps

    async def open_stream(
        self, *, language: str, sample_rate: int, party: str,
        phrases: Sequence[str] | None = None,
    ) -> AsrStream:  # fmt: skip
        inner = await self.inner.open_stream(
            language=language, sample_rate=sample_rate, party=party, phrases=phrases
        )
        return _FlakyStream(inner, self.fail_at)


async def test_asr_replays_only_the_unfinished_utterance_and_keeps_stream_time(
    local_asr: PocketsphinxAsr, speech: Any, audio: Any
) -> None:
    rate = 8000
    records: list[ProcessingRecord] = []
    first = audio.silence(0.3, rate) + speech("no", rate) + audio.silence(0.3, rate)
    second = audio.silence(0.3, rate) + speech("yes i agree", rate) + audio.silence(0.3, rate)
    first_frames, second_frames = audio.frames(first, rate), audio.frames(second, rate)
    failover = FailoverAsr(
        [FlakyAsr(local_asr, fail_at=len(first_frames) + 20), local_asr],
        context=CONTEXT, on_record=records.append,
    )  # fmt: skip
    stream = await failover.open_stream(
        language="en-US", sample_rate=rate, party="caller", phrases=CONSENT_PHRASES
    )
    for frame in first_frames:
        stream.push(frame)
    await stream.flush()
    for frame in second_frames:
        stream.push(frame)
        await asyncio.sleep(0)
    await stream.flush()
    await stream.close()
    no, yes = [event async for event in stream]

    assert (no.text, yes.text) == ("no", "yes i agree")
    first_seconds = len(first_frames) * 0.02
    assert no.end <= first_seconds < yes.start  # rebased onto the adapter's stream time
    flaky, local = records
    assert (flaky.provider, flaky.outcome) == ("flaky-vendor", Outcome.ERROR)
    assert flaky.audio_seconds == pytest.approx(first_seconds + 19 * 0.02)
    # Only the second utterance was replayed to the local engine.
    assert local.audio_seconds == pytest.approx(len(second_frames) * 0.02)


async def test_asr_with_every_provider_failing_turns_the_feature_off() -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverAsr(
        [BreakingAsr("a", "open"), BreakingAsr("b", "open")],
        context=CONTEXT, on_record=records.append,
    )  # fmt: skip
    with pytest.raises(NoProviderAvailableError):
        await failover.open_stream(language="en", sample_rate=8000, party="caller")
    assert [r.outcome for r in records] == [Outcome.ERROR, Outcome.ERROR]


async def test_asr_failure_mid_stream_with_no_next_provider_reaches_the_consumer() -> None:
    failover = FailoverAsr(
        [BreakingAsr("only", "iterate", fail_after=2)], context=CONTEXT, on_record=lambda r: None
    )
    stream = await failover.open_stream(language="en", sample_rate=8000, party="caller")
    stream.push(bytes(320))
    stream.push(bytes(320))
    with pytest.raises(NoProviderAvailableError):
        await asyncio.wait_for(anext(stream), timeout=5)


class ToneTts(TtsProvider):
    """Speaks a 440 Hz tone in 20 ms chunks; breaks after ``fail_after`` chunks if set."""

    def __init__(self, name: str, *, fail_after: int | None = None, stall: bool = False) -> None:
        self._caps = vendor(name, Purpose.TTS)
        self.fail_after = fail_after
        self.stall = stall

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._caps

    def synthesize(
        self, text: str, *, voice: str | None = None, language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:  # fmt: skip
        return TtsStream(
            self._chunks(len(text), sample_rate), source_rate=sample_rate, sample_rate=sample_rate
        )

    async def _chunks(self, characters: int, rate: int) -> AsyncGenerator[bytes, None]:
        t = np.arange(rate // 50) / rate
        chunk = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes()
        for index in range(characters):
            if self.stall:
                await asyncio.Event().wait()
            if index == self.fail_after:
                raise ProviderError("stream interrupted", retryable=True, status=500)
            yield chunk


async def test_tts_fails_over_before_audio_and_records_both_uses() -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverTts(
        [ToneTts("vendor-tts", fail_after=0), EspeakTts()],
        context=CONTEXT, on_record=records.append,
    )  # fmt: skip
    pcm = await failover.synthesize("Your call may be recorded.", sample_rate=8000).read_all()
    assert len(pcm) / 2 / 8000 > 1.0
    assert [(r.provider, r.outcome, r.characters) for r in records] == [
        ("vendor-tts", Outcome.ERROR, 26), ("espeak-local", Outcome.OK, 26)
    ]  # fmt: skip
    assert records[0].audio_seconds == 0.0 and records[0].purpose is Purpose.TTS
    assert records[1].audio_seconds == pytest.approx(len(pcm) / 2 / 8000)


async def test_tts_failing_part_way_restarts_the_text_on_the_next_provider() -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverTts(
        [ToneTts("first", fail_after=5), ToneTts("second")],
        context=CONTEXT, on_record=records.append,
    )  # fmt: skip
    pcm = await failover.synthesize("ten chars!", sample_rate=8000).read_all()
    assert len(pcm) == (5 + 10) * 320
    assert [(r.provider, r.outcome, r.audio_seconds) for r in records] == [
        ("first", Outcome.ERROR, 0.1), ("second", Outcome.OK, 0.2)
    ]  # fmt: skip


async def test_tts_provider_that_goes_silent_times_out() -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverTts(
        [ToneTts("silent", stall=True), ToneTts("second")],
        context=CONTEXT, on_record=records.append, chunk_timeout=0.1,
    )  # fmt: skip
    assert await failover.synthesize("abc", sample_rate=8000).read_all()
    assert [(r.provider, r.outcome) for r in records] == [
        ("silent", Outcome.TIMEOUT), ("second", Outcome.OK)
    ]  # fmt: skip


async def test_tts_cancel_is_recorded_and_no_provider_is_tried_after_it() -> None:
    records: list[ProcessingRecord] = []
    failover = FailoverTts(
        [EspeakTts(), ToneTts("second")], context=CONTEXT, on_record=records.append
    )
    stream = failover.synthesize("A long notice. " * 30, sample_rate=8000)
    await anext(stream)
    await stream.cancel()
    assert [(r.provider, r.outcome) for r in records] == [("espeak-local", Outcome.CANCELLED)]


async def test_tts_with_every_provider_failing_raises_no_provider_available() -> None:
    failover = FailoverTts(
        [ToneTts("a", fail_after=0), ToneTts("b", fail_after=0)],
        context=CONTEXT, on_record=lambda r: None,
    )  # fmt: skip
    with pytest.raises(NoProviderAvailableError):
        await failover.synthesize("hello", sample_rate=8000).read_all()
