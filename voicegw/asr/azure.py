"""Azure AI Speech recognition through Microsoft's Speech SDK.

Each utterance (the audio between two :meth:`~AsrStream.flush` calls) gets its own
``PushAudioInputStream``, recogniser and service connection. ``flush`` closes the
audio stream, which makes the service finalise everything it heard and end the
session, so "returns once its final event has been queued" holds exactly, and no
audio reaches the vendor between the VAD segments the caller chose to send. The
connection is opened as soon as an utterance's first frame arrives, while its
audio is still being pushed, so the set-up overlaps speech.

The SDK calls back on its own threads. Callbacks only copy plain values out of the
SDK objects and hand them to the event loop with ``call_soon_threadsafe``; all
blocking SDK calls (start, stop) run in the loop's default executor.

Offsets in SDK results are 100 ns ticks from the start of the utterance's audio;
they are rebased onto the stream's own time like every other provider's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import azure.cognitiveservices.speech as speechsdk

from voicegw.asr.base import AsrProvider, QueuedAsrStream, TranscriptEvent, TranscriptKind
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import ProviderError, ProviderTimeoutError
from voicegw.privacy.subprocessors import Subprocessor, capabilities_for
from voicegw.speech_vendors.azure_common import (
    SUBPROCESSOR_ID,
    TICKS_PER_SECOND,
    AzureSpeechSettings,
    cancellation_error,
    location_of_region,
)

log = logging.getLogger("voicegw.asr.azure")


class AzureAsr(AsrProvider):
    """Streaming recognition on one Azure Speech resource, with interim results."""

    def __init__(
        self, settings: AzureSpeechSettings, subprocessor: Subprocessor, *, name: str = "azure"
    ) -> None:
        self._settings = settings
        self._capabilities = capabilities_for(
            subprocessor,
            name=name,
            purposes=frozenset({Purpose.ASR}),
            languages=frozenset(settings.languages),
            locations=frozenset({location_of_region(settings.region)}),
            data_types=frozenset({DataType.AUDIO}),
            sample_rates=(8000, 16000),
            interim_results=True,
        )

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    async def open_stream(
        self,
        *,
        language: str,
        sample_rate: int,
        party: str,
        phrases: Sequence[str] | None = None,
    ) -> AzureAsrStream:
        if not self._capabilities.supports_language(language):
            raise ProviderError("language not offered by this Azure resource", retryable=False)
        if sample_rate not in self._capabilities.sample_rates:
            raise ValueError(f"unsupported sample rate {sample_rate}")
        return AzureAsrStream(
            self._settings,
            language=language,
            sample_rate=sample_rate,
            party=party,
            phrases=tuple(phrases or ()),
        )


def azure_asr(settings: AzureSpeechSettings, subprocessors: dict[str, Subprocessor]) -> AzureAsr:
    """The adapter for the ``azure`` entry of the published sub-processor list."""
    return AzureAsr(settings, subprocessors[SUBPROCESSOR_ID])


class _Utterance:
    """One recogniser session: audio pushed in, SDK events handed to the loop."""

    def __init__(self, owner: AzureAsrStream, base: float) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.base = base  # stream time of this utterance's first sample
        fmt = speechsdk.audio.AudioStreamFormat(
            samples_per_second=owner.sample_rate, bits_per_sample=16, channels=1
        )
        self.audio = speechsdk.audio.PushAudioInputStream(fmt)
        self.stopped = asyncio.Event()
        self._session_over = threading.Event()  # set on the SDK thread, read by _stop
        self._start_done = threading.Event()
        self.error: ProviderError | None = None
        self._recognizer: speechsdk.SpeechRecognizer | None = None
        self.started = self._loop.run_in_executor(None, self._start)
        # A failed start is reported by finish(); a stream closed without one must not
        # leave an unretrieved exception behind.
        self.started.add_done_callback(lambda f: f.cancelled() or f.exception())

    # --- SDK threads --------------------------------------------------------

    def _start(self) -> None:
        try:
            config = self._owner.settings.speech_config()
            config.speech_recognition_language = self._owner.language
            config.output_format = speechsdk.OutputFormat.Detailed  # carries confidence
            recognizer = speechsdk.SpeechRecognizer(
                config, audio_config=speechsdk.audio.AudioConfig(stream=self.audio)
            )
            if self._owner.phrases:
                hints = speechsdk.PhraseListGrammar.from_recognizer(recognizer)
                for phrase in self._owner.phrases:
                    hints.addPhrase(phrase)
            recognizer.recognizing.connect(self._on_recognizing)
            recognizer.recognized.connect(self._on_recognized)
            recognizer.canceled.connect(self._on_canceled)
            recognizer.session_stopped.connect(self._on_stopped)
            self._recognizer = recognizer
            recognizer.start_continuous_recognition_async().get()
        finally:
            self._start_done.set()

    def _stop(self) -> None:
        # A start still running in its thread (its awaiter was cancelled) is let finish,
        # so the session it opens is stopped rather than left running.
        self._start_done.wait(self._owner.settings.session_timeout)
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is None:
            return
        # After a connection failure stopping blocks for ~11 s; a session that has
        # already ended needs no stop, only its callbacks cut.
        if not self._session_over.is_set():
            recognizer.stop_continuous_recognition_async().get()
        for signal in (recognizer.recognizing, recognizer.recognized, recognizer.canceled,
                       recognizer.session_stopped):  # fmt: skip
            signal.disconnect_all()
        # The last reference goes here, on this executor thread: the SDK's destructor
        # waits for its worker threads (about a second after a failure).

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(handler, *args)

    def _on_recognizing(self, evt: speechsdk.SpeechRecognitionEventArgs) -> None:
        result = evt.result
        self._post(self._owner._partial, self, result.text, result.offset, result.duration)

    def _on_recognized(self, evt: speechsdk.SpeechRecognitionEventArgs) -> None:
        result = evt.result
        if result.reason == speechsdk.ResultReason.RecognizedSpeech:
            confidence = _confidence(result.json)
            self._post(self._owner._final, self, result.text, result.offset, result.duration,
                       confidence)  # fmt: skip

    def _on_canceled(self, evt: speechsdk.SpeechRecognitionCanceledEventArgs) -> None:
        details = evt.cancellation_details
        if details.reason == speechsdk.CancellationReason.Error:
            self._post(self._owner._failed, self, details.code)

    def _on_stopped(self, _evt: speechsdk.SessionEventArgs) -> None:
        self._session_over.set()
        self._post(self.stopped.set)

    # --- event loop -----------------------------------------------------------

    def write(self, pcm: bytes) -> None:
        self.audio.write(pcm)

    async def finish(self) -> None:
        """End the audio and wait until the service has answered all of it."""
        try:
            try:
                await asyncio.shield(self.started)  # a cancelled flush must not orphan it
            except RuntimeError:  # how the SDK reports a recogniser it cannot build
                raise ProviderError("Azure Speech could not start", retryable=False) from None
            self.audio.close()
            async with asyncio.timeout(self._owner.settings.session_timeout):
                await self.stopped.wait()
        except TimeoutError:
            raise ProviderTimeoutError("Azure Speech did not finish the utterance") from None
        finally:
            self._owner._release_soon(self)
        if self.error is not None:
            raise self.error

    async def release(self) -> None:
        self.audio.close()
        await self._loop.run_in_executor(None, self._stop)


def _confidence(raw: str) -> float:
    """NBest[0].Confidence of a detailed result; 0.0 when the service gave none."""
    try:
        best = json.loads(raw)["NBest"][0]
        return min(max(float(best["Confidence"]), 0.0), 1.0)
    except (ValueError, KeyError, IndexError, TypeError):
        return 0.0


class AzureAsrStream(QueuedAsrStream):
    """One party's recognition stream; one Azure session per utterance."""

    def __init__(
        self,
        settings: AzureSpeechSettings,
        *,
        language: str,
        sample_rate: int,
        party: str,
        phrases: tuple[str, ...],
    ) -> None:
        super().__init__(sample_rate=sample_rate, party=party)
        self.settings = settings
        self.language = language
        self.phrases = phrases
        self._utterance: _Utterance | None = None
        self._samples = 0  # pushed in this stream
        self._error: ProviderError | None = None
        self._flushing = asyncio.Lock()
        self._cleanup: set[asyncio.Task[None]] = set()
        self._closed = False

    def push(self, pcm: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ProviderError("stream is closed", retryable=False)
        if self._utterance is None:
            self._utterance = _Utterance(self, self._samples / self.sample_rate)
        self._utterance.write(pcm)
        self._samples += len(pcm) // 2

    async def flush(self) -> None:
        async with self._flushing:
            utterance, self._utterance = self._utterance, None
            if self._error is not None:
                raise self._error
            if utterance is None:
                return
            try:
                await utterance.finish()
            except ProviderError as exc:
                self._fail(exc)
                raise

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(ProviderError):  # already handed to the consumer
            await self.flush()
        self._closed = True
        await asyncio.gather(*self._cleanup, return_exceptions=True)
        self._finish()

    # --- called on the loop from SDK callbacks ---------------------------------

    def _partial(self, utt: _Utterance, text: str, offset: int, duration: int) -> None:
        if text:
            self._emit(self._event(TranscriptKind.PARTIAL, utt, text, offset, duration, 0.0))

    def _final(
        self, utt: _Utterance, text: str, offset: int, duration: int, confidence: float
    ) -> None:
        if text:
            self._emit(self._event(TranscriptKind.FINAL, utt, text, offset, duration, confidence))

    def _failed(self, utt: _Utterance, code: speechsdk.CancellationErrorCode) -> None:
        error = cancellation_error(code)
        log.warning("asr.azure.cancelled", extra={"code": code.name, "party": self.party})
        utt.error = error
        if utt is self._utterance:  # failed mid-utterance: nobody is waiting in flush
            self._utterance = None
            self._release_soon(utt)
            self._fail(error)

    def _release_soon(self, utt: _Utterance) -> None:
        # Releasing can take a second; close() waits for it, flush and failover do not.
        task = asyncio.get_running_loop().create_task(utt.release())
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    def _fail(self, error: ProviderError) -> None:
        self._error = error
        self._finish(error)

    def _event(
        self,
        kind: TranscriptKind,
        utt: _Utterance,
        text: str,
        offset: int,
        duration: int,
        confidence: float,
    ) -> TranscriptEvent:
        start = utt.base + offset / TICKS_PER_SECOND
        end = start + duration / TICKS_PER_SECOND
        return TranscriptEvent(kind, text, start, end, confidence, self.language, self.party)
