"""eSpeak NG on the node: the embedded default TTS, no account, no sub-processor.

The engine comes from the ``espeakng-loader`` wheel (``libespeak-ng`` plus its voice
data) and is driven through ctypes in synchronous mode: ``espeak_Synth`` returns
after handing every 22,050 Hz int16 buffer to our callback on the calling thread.
libespeak-ng keeps global state (voice, parameters, callback) and is not thread
safe, so one lock serialises whole utterances and synthesis runs in an executor
thread, streaming chunks back to the loop as they are produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import espeakng_loader

from voicegw.privacy.capabilities import (
    DataType,
    ProviderCapabilities,
    Purpose,
    primary_language,
)
from voicegw.privacy.errors import ProviderError
from voicegw.tts.base import TtsProvider, TtsStream

ESPEAK_RATE = 22_050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_PARAM_RATE = 1
_EE_OK = 0
_BUFFER_MS = 60  # size of each callback buffer; bounds the latency of cancel

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass
class _Job:
    """One utterance in flight: where its chunks go and whether to stop."""

    deliver: Callable[[bytes], None]
    stop: threading.Event = field(default_factory=threading.Event)


class _Engine:
    """The process-wide libespeak-ng instance."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data, 0)
        if rate != ESPEAK_RATE:
            raise ProviderError("espeak-ng failed to initialise", retryable=False)
        self._lib = lib
        self._job: _Job | None = None
        # Keep a reference: ctypes does not, and a collected callback crashes the process.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        job = self._job
        if job is None or job.stop.is_set():
            return 1  # non-zero aborts synthesis
        if count > 0 and wav:
            job.deliver(ctypes.string_at(wav, count * 2))
        return 0

    def synth(self, text: str, voices: tuple[str, ...], words_per_minute: int, job: _Job) -> None:
        """Blocking: synthesise ``text`` with the first voice that exists; run in an executor."""
        with self.lock:
            if not any(self._lib.espeak_SetVoiceByName(v.encode()) == _EE_OK for v in voices):
                raise ProviderError("espeak-ng voice not available", retryable=False)
            self._lib.espeak_SetParameter(_ESPEAK_PARAM_RATE, words_per_minute, 0)
            data = text.encode("utf-8") + b"\0"
            self._job = job
            try:
                status = self._lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
                )
                self._lib.espeak_Synchronize()
            finally:
                self._job = None
            if status != _EE_OK and not job.stop.is_set():
                raise ProviderError("espeak-ng synthesis failed", retryable=False)


_engine_lock = threading.Lock()
_engine_instance: _Engine | None = None


def _engine() -> _Engine:
    """The one libespeak-ng engine of the process.

    Two first utterances race here from executor threads; a second initialisation of
    the C library corrupts it (seen: empty audio, double free), so the check and the
    creation happen under one lock.
    """
    global _engine_instance
    with _engine_lock:
        if _engine_instance is None:
            _engine_instance = _Engine()
        return _engine_instance


@cache
def espeak_languages() -> frozenset[str]:
    """Language tags the bundled voice data offers (the file names under ``lang/``)."""
    root = Path(espeakng_loader.get_data_path()) / "lang"
    return frozenset(p.name.lower() for p in root.rglob("*") if p.is_file())


class EspeakTts(TtsProvider):
    """Local eSpeak NG synthesis, streamed and resampled to the requested rate."""

    def __init__(self, *, name: str = "espeak-local", words_per_minute: int = 160) -> None:
        if not 80 <= words_per_minute <= 450:
            raise ValueError("words_per_minute must be within 80..450")
        self._words_per_minute = words_per_minute
        self._capabilities = ProviderCapabilities(
            name=name,
            subprocessor_id=None,
            processing_locations=frozenset(),
            purposes=frozenset({Purpose.TTS}),
            data_types=frozenset({DataType.TEXT}),
            languages=espeak_languages(),
            sample_rates=(8000, 16000, ESPEAK_RATE, 24000, 48000),
        )

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        language: str = "en-US",
        sample_rate: int = 8000,
    ) -> TtsStream:
        if sample_rate not in self._capabilities.sample_rates:
            raise ValueError(f"unsupported sample rate {sample_rate}")
        job_holder: list[_Job] = []

        async def stop() -> None:
            for job in job_holder:
                job.stop.set()

        # A language tag names a voice directly ("en-us"), or through its primary subtag.
        voices = (voice,) if voice else (language.lower(), primary_language(language))
        source = self._produce(text, voices, job_holder)
        return TtsStream(source, source_rate=ESPEAK_RATE, sample_rate=sample_rate, on_cancel=stop)

    async def _produce(
        self, text: str, voices: tuple[str, ...], job_holder: list[_Job]
    ) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the thread finished

        def deliver(chunk: bytes) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)

        job = _Job(deliver)
        job_holder.append(job)
        engine = await loop.run_in_executor(None, _engine)
        work = loop.run_in_executor(None, engine.synth, text, voices, self._words_per_minute, job)
        # Chunks were queued with call_soon_threadsafe before the future completes, so the
        # end marker lands after the last of them.
        work.add_done_callback(lambda _: chunks.put_nowait(None))
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
            await work  # surfaces a ProviderError raised in the thread
        finally:
            # Cancelled or closed early: stop the engine and wait for the thread to let
            # go of the lock before the next utterance may start.
            job.stop.set()
            if not work.done():
                with contextlib.suppress(ProviderError):
                    await asyncio.shield(work)
