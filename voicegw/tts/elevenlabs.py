"""ElevenLabs streaming text-to-speech through the vendor's ``elevenlabs`` SDK.

``POST /v1/text-to-speech/{voice_id}/stream`` returns the audio as it is generated.
The request asks for the format nearest the call's: µ-law at 8 kHz (what a G.711
leg carries anyway, at half the bytes of PCM; decoded here with
:mod:`voicegw.media.g711`) or raw 16-bit PCM at the wider-band rates.

ElevenLabs runs separate data-residency environments (EU, India, Singapore, US),
each its own base URL in the SDK's :class:`ElevenLabsEnvironment`. The environment
an instance is pinned to is where it processes, so that is the location it declares
to the residency policy; ``base_url`` only changes the address (a proxy, or a local
stand-in in tests), never the declared location.

The API key is handed to the SDK explicitly (never read from the environment
behind the caller's back) and is kept out of ``repr`` and logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import cast

import httpx
from elevenlabs import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.environment import ElevenLabsEnvironment

from voicegw.media.g711 import ulaw_decode
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.errors import ProviderConnectionError, ProviderError, ProviderTimeoutError
from voicegw.privacy.subprocessors import Subprocessor, capabilities_for
from voicegw.tts.base import TtsProvider, TtsStream

log = logging.getLogger("voicegw.tts.elevenlabs")

SUBPROCESSOR_ID = "elevenlabs"

#: Residency environment → where it processes (a country, or "eu" where the vendor
#: names only the region). The default environment processes in the United States.
ENVIRONMENT_LOCATIONS: dict[ElevenLabsEnvironment, str] = {
    ElevenLabsEnvironment.PRODUCTION: "us",
    ElevenLabsEnvironment.PRODUCTION_US: "us",
    ElevenLabsEnvironment.PRODUCTION_EU: "eu",
    ElevenLabsEnvironment.PRODUCTION_INDIA: "in",
    ElevenLabsEnvironment.PRODUCTION_SINGAPORE: "sg",
}


def _pcm(data: bytes) -> bytes:
    return data


#: Requested sample rate → (output_format, decoder to 16-bit PCM, bytes per sample).
OUTPUT_FORMATS: dict[int, tuple[str, Callable[[bytes], bytes], int]] = {
    8000: ("ulaw_8000", ulaw_decode, 1),
    16000: ("pcm_16000", _pcm, 2),
    22050: ("pcm_22050", _pcm, 2),
    24000: ("pcm_24000", _pcm, 2),
}

#: HTTP status → whether another attempt (or another provider) can help.
_RETRYABLE_STATUS: dict[int, bool] = {400: False, 401: False, 403: False, 404: False,
                                      422: False, 429: True}  # fmt: skip

DEFAULT_LANGUAGES = ("en", "zh", "ms", "ta", "hi", "id", "vi", "th", "ja", "ko", "fr", "de", "es")


@dataclass(frozen=True)
class ElevenLabsSettings:
    api_key: str = field(repr=False)
    voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    model_id: str = "eleven_flash_v2_5"
    environment: ElevenLabsEnvironment = ElevenLabsEnvironment.PRODUCTION
    base_url: str | None = None  # overrides the environment's address, not its location
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    timeout: float = 10.0  # connect and between-chunk read timeout, seconds

    @property
    def location(self) -> str:
        return ENVIRONMENT_LOCATIONS[self.environment]


def provider_error(exc: Exception) -> ProviderError:
    """Map an SDK or transport failure; messages are static (bodies may quote text)."""
    if isinstance(exc, ApiError):
        status = exc.status_code
        retryable = _RETRYABLE_STATUS.get(status, True) if status is not None else True
        return ProviderError("ElevenLabs refused the request", retryable=retryable, status=status)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError("ElevenLabs timed out")
    return ProviderConnectionError("ElevenLabs connection failed")


class ElevenLabsTts(TtsProvider):
    """Streaming synthesis in one ElevenLabs environment."""

    def __init__(
        self, settings: ElevenLabsSettings, subprocessor: Subprocessor, *, name: str = "elevenlabs"
    ) -> None:
        self._settings = settings
        self._capabilities = capabilities_for(
            subprocessor,
            name=name,
            purposes=frozenset({Purpose.TTS}),
            languages=frozenset(settings.languages),
            locations=frozenset({settings.location}),
            data_types=frozenset({DataType.TEXT}),
            sample_rates=tuple(OUTPUT_FORMATS),
        )
        self._http = httpx.AsyncClient(timeout=settings.timeout)
        self._client = AsyncElevenLabs(
            api_key=settings.api_key,
            environment=settings.environment,
            base_url=settings.base_url,
            httpx_client=self._http,
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
        source = self._produce(text, voice or self._settings.voice_id, sample_rate)
        return TtsStream(source, source_rate=sample_rate, sample_rate=sample_rate)

    async def _produce(
        self, text: str, voice_id: str, sample_rate: int
    ) -> AsyncGenerator[bytes, None]:
        output_format, decode, width = OUTPUT_FORMATS[sample_rate]
        # Typed as an AsyncIterator, but it is an async generator: aclose() ends the
        # HTTP response when the consumer cancels.
        chunks = cast(
            AsyncGenerator[bytes, None],
            self._client.text_to_speech.stream(
                voice_id,
                text=text,
                model_id=self._settings.model_id,
                output_format=output_format,
                request_options={"max_retries": 0},  # failover, not blind retries, handles errors
            ),
        )
        carry = b""  # a sample split across two HTTP chunks
        try:
            async for chunk in chunks:
                data = carry + chunk
                cut = len(data) - len(data) % width
                carry = data[cut:]
                if cut:
                    yield decode(data[:cut])
        except (ApiError, httpx.HTTPError) as exc:
            error = provider_error(exc)
            log.warning("tts.elevenlabs.failed", extra={"status": error.status})
            raise error from None
        finally:
            await chunks.aclose()  # cancelled: close the HTTP response now

    async def aclose(self) -> None:
        await self._http.aclose()


def elevenlabs_tts(
    settings: ElevenLabsSettings, subprocessors: dict[str, Subprocessor]
) -> ElevenLabsTts:
    """The adapter for the ``elevenlabs`` entry of the published sub-processor list."""
    return ElevenLabsTts(settings, subprocessors[SUBPROCESSOR_ID])
