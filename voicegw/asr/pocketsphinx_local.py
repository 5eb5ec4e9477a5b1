"""PocketSphinx 5 on the node: the embedded default ASR, no account, no sub-processor.

Two modes per stream:

* generic: the en-US n-gram model shipped in the wheel; weak on synthetic speech
  but returns *something* for free-form speech;
* grammar: when the caller passes the expected ``phrases`` (consent answers, menu
  intents) a JSGF grammar of exactly those phrases is searched instead — exact on
  clear speech and about 15× faster.

Each utterance (one VAD segment, ended by :meth:`flush`) is decoded as a whole with
``full_utt=True``: batch cepstral-mean normalisation is what makes 8 kHz audio,
upsampled to 16 kHz with a per-stream ``soxr.ResampleStream``, recognisable.

PocketSphinx holds the GIL while it decodes, so a thread executor would still stall
the event loop (measured: a 7 s utterance in generic mode froze it for ~3 s).
Decoding therefore runs in a small pool of worker *processes*, each holding one
decoder (building one loads the acoustic model, ~0.4 s) for the provider's lifetime.
A job is stateless — audio and phrase list in, best hypothesis out — so any worker
can take any utterance of any stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import re
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
from pocketsphinx import Decoder

from voicegw.asr.base import AsrProvider, QueuedAsrStream, TranscriptEvent, TranscriptKind
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import ProviderError

DECODER_RATE = 16_000
_FRAMES_PER_SECOND = 100  # pocketsphinx segment frames are 10 ms
_DEFAULT_SEARCH = "_default"
_GRAMMAR_SEARCH = "phrases"
_DITHER_SEED = 1
_FILLERS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "<unk>"})
_WORD = re.compile(r"[a-z']+")


def normalise_phrase(phrase: str) -> str:
    """Lower-case words only: the form the dictionary and the grammar use."""
    return " ".join(_WORD.findall(phrase.lower()))


def phrase_grammar(phrases: Sequence[str]) -> str:
    """A JSGF grammar whose sentences are exactly ``phrases``."""
    alternatives = sorted({normalise_phrase(p) for p in phrases} - {""})
    if not alternatives:
        raise ValueError("a phrase grammar needs at least one phrase with words")
    body = " | ".join(alternatives)
    return f"#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = {body};\n"


# --- worker process side ------------------------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    """What one decode job returns: picklable, audio-free."""

    text: str
    confidence: float
    first_frame: int | None  # 10 ms frames from the start of the audio, None: no words
    end_frame: int | None
    cpu_seconds: float


_decoder: Any = None
_active_grammar: str | None = None


def _new_decoder() -> Any:
    # Dither: 8 kHz audio upsampled to 16 kHz has nothing above 4 kHz, and the log
    # energies of those empty mel bands swamp the features; half a bit of noise gives
    # them a floor. A fixed seed keeps recognition reproducible.
    return Decoder(samprate=DECODER_RATE, loglevel="FATAL", dither=True, seed=_DITHER_SEED)


def _worker_init() -> None:
    global _decoder
    _decoder = _new_decoder()


def _missing_words(words: tuple[str, ...]) -> list[str]:
    return sorted(w for w in words if _decoder.lookup_word(w) is None)


def _use_search(grammar: str | None) -> None:
    global _active_grammar
    if grammar == _active_grammar:
        return
    if grammar is None:
        _decoder.activate_search(_DEFAULT_SEARCH)
    else:
        _decoder.add_jsgf_string(_GRAMMAR_SEARCH, grammar)
        _decoder.activate_search(_GRAMMAR_SEARCH)
    _active_grammar = grammar


def _decode(audio: bytes, grammar: str | None) -> Hypothesis:
    started = time.process_time()
    _use_search(grammar)
    _decoder.start_utt()
    _decoder.process_raw(audio, no_search=False, full_utt=True)
    _decoder.end_utt()
    hyp = _decoder.hyp()
    text = hyp.hypstr.strip() if hyp is not None else ""
    words = [s for s in _decoder.seg() if s.word not in _FILLERS] if text else []
    return Hypothesis(
        text=text,
        confidence=min(max(float(hyp.prob), 0.0), 1.0) if text else 0.0,
        first_frame=words[0].start_frame if words else None,
        end_frame=words[-1].end_frame + 1 if words else None,
        cpu_seconds=time.process_time() - started,
    )


# --- event loop side ----------------------------------------------------------------


@dataclass
class RecognitionStats:
    """Audio decoded and worker CPU time spent on it, for the real-time factor."""

    audio_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


class PocketsphinxAsr(AsrProvider):
    """Local en-US recognition; a phrase list switches a stream into grammar mode.

    ``partial_interval`` > 0 enables interim results: the utterance so far is
    re-decoded each time that much new audio has arrived (CPU grows with length).
    """

    def __init__(
        self,
        *,
        name: str = "pocketsphinx-local",
        workers: int = 1,
        partial_interval: float = 0.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._workers = workers
        self._partial_interval = partial_interval
        self._pool: ProcessPoolExecutor | None = None
        self._capabilities = ProviderCapabilities(
            name=name,
            subprocessor_id=None,
            processing_locations=frozenset(),
            purposes=frozenset({Purpose.ASR}),
            data_types=frozenset({DataType.AUDIO}),
            languages=frozenset({"en-us", "en"}),
            sample_rates=(8000, 16000),
            interim_results=partial_interval > 0,
        )

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._pool = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
        return self._pool

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool:
            self._pool = None  # the next call starts a fresh pool
            raise ProviderError("local recognition worker died", retryable=True) from None

    async def warm_up(self) -> None:
        """Start the workers and load their models before the first call needs them."""
        await asyncio.gather(*(self._run(_missing_words, ()) for _ in range(self._workers)))

    async def open_stream(
        self,
        *,
        language: str,
        sample_rate: int,
        party: str,
        phrases: Sequence[str] | None = None,
    ) -> PocketsphinxStream:
        if not self._capabilities.supports_language(language):
            raise ProviderError("language not supported by the local engine", retryable=False)
        if sample_rate not in self._capabilities.sample_rates:
            raise ValueError(f"unsupported sample rate {sample_rate}")
        grammar = None
        if phrases is not None:
            grammar = phrase_grammar(phrases)
            words = tuple(sorted({w for p in phrases for w in normalise_phrase(p).split()}))
            missing = await self._run(_missing_words, words)
            if missing:
                raise ValueError(f"words not in the pronunciation dictionary: {missing}")
        return PocketsphinxStream(
            self,
            grammar=grammar,
            language=language,
            sample_rate=sample_rate,
            party=party,
            partial_interval=self._partial_interval,
        )

    async def _decode(self, audio: bytes, grammar: str | None) -> Hypothesis:
        result: Hypothesis = await self._run(_decode, audio, grammar)
        return result

    def shutdown(self) -> None:
        """Stop the worker processes (blocking; for synchronous owners and tests)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)


class PocketsphinxStream(QueuedAsrStream):
    """One party's recognition stream: audio kept per utterance, decoded at flush."""

    def __init__(
        self,
        provider: PocketsphinxAsr,
        *,
        grammar: str | None,
        language: str,
        sample_rate: int,
        party: str,
        partial_interval: float,
        max_utterance_seconds: float = 60.0,
    ) -> None:
        super().__init__(sample_rate=sample_rate, party=party)
        self.language = language
        self.stats = RecognitionStats()
        self._provider = provider
        self._grammar = grammar
        self._partial_bytes = int(partial_interval * DECODER_RATE) * 2
        self._max_utterance_bytes = int(max_utterance_seconds * DECODER_RATE) * 2
        self._resampler = (
            None
            if sample_rate == DECODER_RATE
            else soxr.ResampleStream(sample_rate, DECODER_RATE, 1, dtype="int16")
        )
        self._utterance = bytearray()  # 16 kHz audio of the utterance in progress
        self._utt_start = 0  # stream sample index where it began
        self._samples = 0  # 16 kHz samples received in this stream
        self._generation = 0  # bumps at each flush; stale partials are dropped
        self._partial_at = 0  # utterance length at the last partial job
        self._partial_job: asyncio.Task[None] | None = None
        self._last_partial = ""
        self._flushing = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def push(self, pcm: bytes) -> None:
        if self._closed:
            raise ProviderError("stream is closed", retryable=False)
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(np.frombuffer(pcm, dtype=np.int16)).tobytes()
        if not self._utterance:
            self._utt_start = self._samples
        self._utterance += pcm
        self._samples += len(pcm) // 2
        if len(self._utterance) >= self._max_utterance_bytes:
            self._spawn(self._auto_flush())  # bound memory when the caller never flushes
        elif self._partial_bytes and self._partial_due():
            self._partial_at = len(self._utterance)
            self._partial_job = self._spawn(self._partial(self._generation))

    async def flush(self) -> None:
        async with self._flushing:
            audio, start = bytes(self._utterance), self._utt_start
            self._utterance = bytearray()
            self._generation += 1
            self._partial_at, self._last_partial = 0, ""
            if not audio:
                return
            try:
                hyp = await self._provider._decode(audio, self._grammar)
            except ProviderError as exc:
                self._finish(exc)
                raise
            self._count(audio, hyp)
            if hyp.text:
                self._emit(self._event(TranscriptKind.FINAL, hyp, start, len(audio)))

    async def close(self) -> None:
        if self._closed:
            return
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if self._utterance:
                self._utterance += tail.tobytes()
        await self.flush()
        self._closed = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._finish()

    async def _auto_flush(self) -> None:
        with contextlib.suppress(ProviderError):  # already handed to the consumer
            await self.flush()

    def _partial_due(self) -> bool:
        idle = self._partial_job is None or self._partial_job.done()
        return idle and len(self._utterance) - self._partial_at >= self._partial_bytes

    async def _partial(self, generation: int) -> None:
        audio, start = bytes(self._utterance), self._utt_start
        try:
            hyp = await self._provider._decode(audio, self._grammar)
        except ProviderError:
            return  # the flush of this utterance will meet and report the same failure
        self._count(audio, hyp)
        if generation == self._generation and hyp.text and hyp.text != self._last_partial:
            self._last_partial = hyp.text
            self._emit(self._event(TranscriptKind.PARTIAL, hyp, start, len(audio)))

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _count(self, audio: bytes, hyp: Hypothesis) -> None:
        self.stats.audio_seconds += len(audio) / 2 / DECODER_RATE
        self.stats.decode_seconds += hyp.cpu_seconds

    def _event(
        self, kind: TranscriptKind, hyp: Hypothesis, utt_start: int, length_bytes: int
    ) -> TranscriptEvent:
        base = utt_start / DECODER_RATE
        if hyp.first_frame is None or hyp.end_frame is None:
            start, end = base, base + length_bytes / 2 / DECODER_RATE
        else:
            start = base + hyp.first_frame / _FRAMES_PER_SECOND
            end = base + hyp.end_frame / _FRAMES_PER_SECOND
        confidence = hyp.confidence if kind is TranscriptKind.FINAL else 0.0
        return TranscriptEvent(kind, hyp.text, start, end, confidence, self.language, self.party)
