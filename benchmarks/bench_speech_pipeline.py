"""Gateway overhead of the call-side speech pipeline, with instant stand-in providers.

    .venv/bin/python benchmarks/bench_speech_pipeline.py [--calls 100] [--runs 3] [--uvloop]

``--calls`` calls share one event loop and one real-time 20 ms media clock, as on a
gateway node. Each call's caller says an utterance (eSpeak NG at 8 kHz) twice; the
frames go through :class:`~voicegw.calls.transcription.CallTranscriber` (VAD,
segment, failover ASR, fan-out) to a subscriber, which answers each final with a
TTS request through the policy-chosen :class:`~voicegw.tts.failover.FailoverTts`.

The providers answer at once (a final on flush, a chunk on request), so the figures
are the gateway's own cost, queueing on a loaded loop included (``perf_counter``:
uvloop's ``loop.time()`` has only millisecond resolution):

* ASR: from pushing the frame that ends the utterance (the VAD's hang-over — a
  setting, not overhead — has elapsed by then) to the subscriber holding the final;
* TTS: from asking for speech to holding the first audio chunk.

Per run p50/p95/p99 in ms; the summary is the median of the runs. Target: p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from voicegw.asr.base import AsrProvider, QueuedAsrStream, TranscriptEvent, TranscriptKind
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.speech_policy import CallSpeech, SpeechFeature, plan_speech
from voicegw.calls.transcription import CallTranscriber, TranscriptSubscription
from voicegw.media.clock import MediaClock
from voicegw.media.vad import Segment, VadSegmenter
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.processing import ProcessingContext, ProcessingRecord
from voicegw.privacy.registry import Registry
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.base import TtsProvider, TtsStream
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.failover import FailoverTts
from voicegw.tts.registry import TtsRegistry

RATE = 8000
FRAME = RATE * 20 // 1000 * 2
REPLY = "Thank you, your answer has been recorded."
SETTINGS = TenantSettings(region="sg", transcription_enabled=True)


def _local(name: str, purpose: Purpose, data: DataType) -> ProviderCapabilities:
    return ProviderCapabilities(
        name=name, subprocessor_id=None, processing_locations=frozenset(),
        purposes=frozenset({purpose}), data_types=frozenset({data}), languages=frozenset({"en"}),
    )  # fmt: skip


class InstantAsrStream(QueuedAsrStream):
    def __init__(self, party: str) -> None:
        super().__init__(sample_rate=RATE, party=party)
        self._samples = 0
        self._start = 0

    def push(self, pcm: bytes) -> None:
        self._samples += len(pcm) // 2

    async def flush(self) -> None:
        if self._samples == self._start:
            return  # nothing new since the last final
        start, self._start = self._start, self._samples
        self._emit(
            TranscriptEvent(
                TranscriptKind.FINAL, "yes", start / RATE, self._samples / RATE, 1.0, "en", ""
            )
        )

    async def close(self) -> None:
        self._finish()


class InstantAsr(AsrProvider):
    capabilities = _local("instant-asr", Purpose.ASR, DataType.AUDIO)

    async def open_stream(
        self, *, language: str, sample_rate: int, party: str, phrases: Sequence[str] | None = None
    ) -> InstantAsrStream:
        return InstantAsrStream(party)


class InstantTts(TtsProvider):
    capabilities = _local("instant-tts", Purpose.TTS, DataType.TEXT)

    def synthesize(
        self, text: str, *, voice: str | None = None, language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:  # fmt: skip
        return TtsStream(self._produce(), source_rate=sample_rate, sample_rate=sample_rate)

    async def _produce(self) -> AsyncGenerator[bytes, None]:
        yield bytes(FRAME)


@dataclass
class Figures:
    asr: list[float] = field(default_factory=list)
    tts: list[float] = field(default_factory=list)


def utterance_audio() -> tuple[list[bytes], int]:
    """Caller frames (speech twice between silences) and the utterances the VAD finds."""

    async def synthesize() -> bytes:
        return await EspeakTts().synthesize("yes i agree", sample_rate=RATE).read_all()

    speech = asyncio.run(synthesize())
    second = bytes(2 * RATE)  # 1 s of 16-bit silence
    pcm = (second + speech) * 2 + second
    pcm += bytes(-len(pcm) % FRAME)
    frames = [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]
    segmenter = VadSegmenter("caller", RATE)
    utterances = sum(
        isinstance(event, Segment)
        for i, frame in enumerate(frames)
        for event in segmenter.push(frame, i * 0.02)
    )
    return frames, utterances


class Call:
    """One call: a transcriber fed from the shared clock, and a subscriber that replies."""

    def __init__(
        self, index: int, frames: list[bytes], asr: AsrRegistry,
        tts: TtsRegistry, figures: Figures,
    ) -> None:  # fmt: skip
        call = CallSpeech(call_id=f"call-{index}", tenant="bench")
        self.transcriber = CallTranscriber.for_call(
            asr, SETTINGS, call, parties=["caller"], sinks_open=lambda party: True,
            on_record=self._record,
        )  # fmt: skip
        plan = plan_speech(tts, SETTINGS, call, SpeechFeature.PROMPTS)
        self.tts = FailoverTts(
            plan.providers, context=ProcessingContext(call.call_id, call.tenant),
            on_record=self._record,
        )  # fmt: skip
        self.frames = frames
        self.offset = index % 50  # calls start spread over a second, as real calls do
        self.ended: list[float] = []
        self.figures = figures
        self.subscription: TranscriptSubscription = self.transcriber.subscribe()
        self.replies = asyncio.get_running_loop().create_task(self.reply())

    def _record(self, record: ProcessingRecord) -> None:
        pass  # the store would persist it; the bench only needs the call to be made

    def on_tick(self, index: int, now: float) -> None:
        n = index - self.offset
        if 0 <= n < len(self.frames):
            stats = self.transcriber.stats("caller")
            before, pushed = stats.utterances, time.perf_counter()
            self.transcriber.push("caller", self.frames[n], now)
            if stats.utterances > before:  # this frame ended an utterance
                self.ended.append(pushed)

    async def reply(self) -> None:
        heard = 0
        async for _event in self.subscription:
            self.figures.asr.append(time.perf_counter() - self.ended[heard])
            heard += 1
            asked = time.perf_counter()
            stream = self.tts.synthesize(REPLY)
            await anext(stream)
            self.figures.tts.append(time.perf_counter() - asked)
            await stream.aclose()


async def run_once(calls: int, frames: list[bytes], utterances: int) -> Figures:
    asr: AsrRegistry = Registry("asr")
    asr.register(InstantAsr())
    tts: TtsRegistry = Registry("tts")
    tts.register(InstantTts())
    figures = Figures()
    clock = MediaClock(max_catchup=50)
    group = [Call(i, frames, asr, tts, figures) for i in range(calls)]
    for call in group:
        clock.subscribe(call.on_tick)
    await clock.run(ticks=len(frames) + 50 + 5)
    for call in group:
        await call.transcriber.aclose()
        await call.replies
    expected = calls * utterances
    if len(figures.asr) != expected:
        raise RuntimeError(f"expected {expected} finals, got {len(figures.asr)}")
    if clock.schedule is not None and clock.schedule.skipped:
        print(f"  warning: the media clock skipped {clock.schedule.skipped} ticks")
    return figures


def percentiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def main(calls: int, runs: int, runner: Callable[[Coroutine[Any, Any, Figures]], Figures]) -> None:
    frames, utterances = utterance_audio()
    print(
        f"{calls} calls on one loop, {utterances} utterances each, "
        f"{len(frames) * 0.02:.1f} s of audio per call; instant providers"
    )
    summary: dict[str, list[tuple[float, float, float]]] = {"asr": [], "tts": []}
    for run in range(1, runs + 1):
        figures = runner(run_once(calls, frames, utterances))
        for name, values in (("asr", figures.asr), ("tts", figures.tts)):
            p50, p95, p99 = percentiles(values)
            summary[name].append((p50, p95, p99))
            print(f"  run {run} {name}: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  p99 {p99:6.2f} ms")
    labels = {"asr": "end of speech → final transcript", "tts": "text → first TTS audio chunk"}
    print(f"median of {runs} runs (target p95 < 50 ms):")
    for name, rows in summary.items():
        p50, p95, p99 = (statistics.median(column) for column in zip(*rows, strict=True))
        verdict = "ok" if p95 < 50 else "OVER TARGET"
        print(
            f"  {labels[name]:<34} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  "
            f"p99 {p99:6.2f} ms  {verdict}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    runner: Callable[[Coroutine[Any, Any, Figures]], Figures] = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    main(args.calls, args.runs, runner)
