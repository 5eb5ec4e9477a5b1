"""Azure AI Speech synthesis through Microsoft's Speech SDK, streamed as it arrives.

Each utterance gets its own ``SpeechSynthesizer`` with no audio device
(``audio_config=None``) and raw 16-bit PCM output at the call's rate, so no
decoding or resampling is needed. The SDK raises ``synthesizing`` once per audio
chunk on its own thread; the callback copies the bytes and hands them to the loop
with ``call_soon_threadsafe``. Cancelling calls ``stop_speaking`` so a barge-in
stops the service, not just the playback.

The Azure resource settings and its region → location table are shared with the
recognition adapter (:mod:`voicegw.asr.azure`): one resource, one declared place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

import azure.cognitiveservices.speech as speechsdk

from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import ProviderError
from voicegw.privacy.subprocessors import Subprocessor, capabilities_for
from voicegw.speech_vendors.azure_common import (
    SUBPROCESSOR_ID,
    AzureSpeechSettings,
    cancellation_error,
    location_of_region,
)
from voicegw.tts.base import TtsProvider, TtsStream

log = logging.getLogger("voicegw.tts.azure")

#: Requested sample rate → the SDK's raw PCM output format at that rate.
OUTPUT_FORMATS: dict[int, speechsdk.SpeechSynthesisOutputFormat] = {
    8000: speechsdk.SpeechSynthesisOutputFormat.Raw8Khz16BitMonoPcm,
    16000: speechsdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm,
    22050: speechsdk.SpeechSynthesisOutputFormat.Raw22050Hz16BitMonoPcm,
    24000: speechsdk.SpeechSynthesisOutputFormat.Raw24Khz16BitMonoPcm,
    48000: speechsdk.SpeechSynthesisOutputFormat.Raw48Khz16BitMonoPcm,
}

#: Language → the neural voice used when the caller names none.
DEFAULT_VOICES: dict[str, str] = {
    "en-us": "en-US-JennyNeural", "en-gb": "en-GB-SoniaNeural", "en-sg": "en-SG-LunaNeural",
    "en-in": "en-IN-NeerjaNeural", "zh-cn": "zh-CN-XiaoxiaoNeural", "ms-my": "ms-MY-YasminNeural",
    "ta-in": "ta-IN-PallaviNeural", "th-th": "th-TH-PremwadeeNeural",
    "id-id": "id-ID-GadisNeural", "vi-vn": "vi-VN-HoaiMyNeural", "hi-in": "hi-IN-SwaraNeural",
}  # fmt: skip


def default_voice(language: str) -> str:
    try:
        return DEFAULT_VOICES[language.lower().replace("_", "-")]
    except KeyError:
        raise ProviderError("no Azure voice configured for the language", retryable=False) from None


class AzureTts(TtsProvider):
    """Streaming neural synthesis on one Azure Speech resource."""

    def __init__(
        self, settings: AzureSpeechSettings, subprocessor: Subprocessor, *, name: str = "azure-tts"
    ) -> None:
        self._settings = settings
        self._capabilities = capabilities_for(
            subprocessor,
            name=name,
            purposes=frozenset({Purpose.TTS}),
            languages=frozenset(DEFAULT_VOICES),
            locations=frozenset({location_of_region(settings.region)}),
            data_types=frozenset({DataType.TEXT}),
            sample_rates=tuple(OUTPUT_FORMATS),
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
        if sample_rate not in OUTPUT_FORMATS:
            raise ValueError(f"unsupported sample rate {sample_rate}")
        job = _Synthesis(self._settings, text, voice or default_voice(language), language,
                         OUTPUT_FORMATS[sample_rate])  # fmt: skip
        return TtsStream(job.chunks(), source_rate=sample_rate, sample_rate=sample_rate,
                         on_cancel=job.stop)  # fmt: skip


def azure_tts(settings: AzureSpeechSettings, subprocessors: dict[str, Subprocessor]) -> AzureTts:
    """The adapter for the ``azure`` entry of the published sub-processor list."""
    return AzureTts(settings, subprocessors[SUBPROCESSOR_ID])


class _Synthesis:
    """One utterance: a synthesizer whose chunks and end reach the loop through a queue."""

    def __init__(
        self,
        settings: AzureSpeechSettings,
        text: str,
        voice: str,
        language: str,
        output_format: speechsdk.SpeechSynthesisOutputFormat,
    ) -> None:
        self._settings = settings
        self._text = text
        self._voice = voice
        self._language = language
        self._format = output_format
        self._synthesizer: speechsdk.SpeechSynthesizer | None = None
        self._finished = threading.Event()  # set on the SDK thread: nothing left to stop
        self._start_done = threading.Event()
        self._queue: asyncio.Queue[bytes | ProviderError | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- SDK threads --------------------------------------------------------

    def _start(self) -> None:
        try:
            config = self._settings.speech_config()
            config.set_speech_synthesis_output_format(self._format)
            config.speech_synthesis_language = self._language
            config.speech_synthesis_voice_name = self._voice
            synthesizer = speechsdk.SpeechSynthesizer(speech_config=config, audio_config=None)
            synthesizer.synthesizing.connect(self._on_chunk)
            synthesizer.synthesis_completed.connect(self._on_completed)
            synthesizer.synthesis_canceled.connect(self._on_canceled)
            self._synthesizer = synthesizer
            synthesizer.start_speaking_text_async(self._text).get()
        finally:
            self._start_done.set()

    def _release(self, stop: bool) -> None:
        # Cancelled while starting: the start still runs in its thread; let it finish
        # so the synthesis it begins is stopped rather than left running.
        self._start_done.wait(self._settings.session_timeout)
        synthesizer, self._synthesizer = self._synthesizer, None
        if synthesizer is None:
            return
        if stop and not self._finished.is_set():
            synthesizer.stop_speaking_async().get()
        for signal in (synthesizer.synthesizing, synthesizer.synthesis_completed,
                       synthesizer.synthesis_canceled):  # fmt: skip
            signal.disconnect_all()
        # The last reference is dropped here, off the loop: the destructor may wait.

    def _post(self, item: bytes | ProviderError | None) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _on_chunk(self, evt: speechsdk.SpeechSynthesisEventArgs) -> None:
        self._post(bytes(evt.result.audio_data))

    def _on_completed(self, _evt: speechsdk.SpeechSynthesisEventArgs) -> None:
        self._finished.set()
        self._post(None)

    def _on_canceled(self, evt: speechsdk.SpeechSynthesisEventArgs) -> None:
        self._finished.set()
        details = evt.result.cancellation_details
        if details.reason == speechsdk.CancellationReason.Error:
            self._post(cancellation_error(details.error_code))
        else:
            self._post(None)  # stopped on our request

    # --- event loop -----------------------------------------------------------

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        self._loop = asyncio.get_running_loop()
        stop_on_exit = True
        try:
            try:
                await self._run(self._start)
            except RuntimeError:  # how the SDK reports a synthesizer it cannot build
                raise ProviderError("Azure Speech could not start", retryable=False) from None
            while (item := await self._queue.get()) is not None:
                if isinstance(item, ProviderError):
                    log.warning("tts.azure.cancelled", extra={"status": item.status})
                    raise item
                if item:
                    yield item
            stop_on_exit = False
        finally:
            await asyncio.shield(self._run(self._release, stop_on_exit))

    async def stop(self) -> None:
        """Stop the service mid-utterance (barge-in); the generator's exit releases it."""
        synthesizer = self._synthesizer
        if synthesizer is not None and not self._finished.is_set():
            await self._run(lambda: synthesizer.stop_speaking_async().get())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
