"""ElevenLabs TTS through the real ``elevenlabs`` SDK, against a local HTTP stand-in.

The stand-in answers the documented streaming endpoint with real speech (eSpeak NG);
the SDK, httpx and the wire format are the real ones. The live test against the
real service runs only when ELEVENLABS_API_KEY is set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elevenlabs.environment import ElevenLabsEnvironment

from tests.speech.standins.elevenlabs_http import ElevenLabsStandIn
from voicegw.media.g711 import ulaw_decode
from voicegw.privacy.errors import ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.privacy.subprocessors import load_subprocessors
from voicegw.tts.elevenlabs import ElevenLabsSettings, ElevenLabsTts, elevenlabs_tts
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.failover import FailoverTts

SUBPROCESSORS = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
CONTEXT = ProcessingContext(call_id="call-1", tenant="tenant-a")
KEY = "xi-test-key-5f0c"
TEXT = "Your call may be recorded for quality purposes."


def adapter(base_url: str, **settings: Any) -> ElevenLabsTts:
    settings = {"api_key": KEY, "base_url": base_url, **settings}
    return elevenlabs_tts(ElevenLabsSettings(**settings), SUBPROCESSORS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype=np.int16).astype(np.float64) ** 2)))


@pytest.mark.parametrize(
    ("environment", "location"),
    [
        (ElevenLabsEnvironment.PRODUCTION, "us"),
        (ElevenLabsEnvironment.PRODUCTION_US, "us"),
        (ElevenLabsEnvironment.PRODUCTION_EU, "eu"),
        (ElevenLabsEnvironment.PRODUCTION_INDIA, "in"),
        (ElevenLabsEnvironment.PRODUCTION_SINGAPORE, "sg"),
    ],
)
async def test_residency_environment_is_the_declared_processing_location(
    environment: ElevenLabsEnvironment, location: str
) -> None:
    provider = elevenlabs_tts(ElevenLabsSettings(api_key=KEY, environment=environment),
                              SUBPROCESSORS)  # fmt: skip
    assert provider.capabilities.subprocessor_id == "elevenlabs"
    assert provider.capabilities.processing_locations == frozenset({location})
    await provider.aclose()


def test_settings_repr_never_shows_the_key() -> None:
    assert KEY not in repr(ElevenLabsSettings(api_key=KEY))


@pytest.mark.parametrize(("rate", "output_format"), [(8000, "ulaw_8000"), (16000, "pcm_16000")])
async def test_streams_non_silent_speech_at_the_requested_rate(
    rate: int, output_format: str
) -> None:
    async with ElevenLabsStandIn() as standin:
        provider = adapter(standin.base_url)
        stream = provider.synthesize(TEXT, sample_rate=rate)
        chunks = [chunk async for chunk in stream]
        await provider.aclose()
    pcm = b"".join(chunks)
    assert stream.sample_rate == rate and len(chunks) > 1  # streamed, not one block
    (body,) = standin.bodies
    assert pcm == (ulaw_decode(body) if rate == 8000 else body)  # every sample, decoded
    assert rms(pcm) > 1000
    (request,) = standin.log
    assert request.query == {"output_format": output_format}


async def test_request_carries_the_key_header_and_nothing_but_text_and_model() -> None:
    async with ElevenLabsStandIn() as standin:
        provider = adapter(standin.base_url, voice_id="voice-a", model_id="eleven_flash_v2_5")
        await provider.synthesize("Hello.", sample_rate=8000).read_all()
        await provider.aclose()
    (request,) = standin.log
    assert (request.method, request.path) == ("POST", "/v1/text-to-speech/voice-a/stream")
    assert request.headers["xi-api-key"] == KEY
    assert request.body == {"text": "Hello.", "model_id": "eleven_flash_v2_5"}


async def test_the_key_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with ElevenLabsStandIn(fail_status=500) as standin:
        provider = adapter(standin.base_url)
        with pytest.raises(ProviderError):
            await provider.synthesize(TEXT).read_all()
        await provider.aclose()
    assert caplog.records and KEY not in caplog.text


@pytest.mark.parametrize(("status", "retryable"), [(401, False), (422, False), (429, True),
                                                   (500, True), (503, True)])  # fmt: skip
async def test_http_errors_map_to_provider_errors(status: int, retryable: bool) -> None:
    async with ElevenLabsStandIn(fail_status=status) as standin:
        provider = adapter(standin.base_url)
        with pytest.raises(ProviderError) as raised:
            await provider.synthesize(TEXT).read_all()
        await provider.aclose()
    assert (raised.value.status, raised.value.retryable) == (status, retryable)


async def test_connection_refused_is_retryable_and_immediate() -> None:
    provider = adapter(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await provider.synthesize(TEXT).read_all()
    await provider.aclose()
    assert raised.value.retryable and time.monotonic() - started < 2


async def test_cancel_mid_stream_closes_the_http_response() -> None:
    async with ElevenLabsStandIn(chunk_bytes=400) as standin:
        provider = adapter(standin.base_url)
        stream = provider.synthesize(TEXT, sample_rate=8000)
        await anext(stream)
        await stream.cancel()
        await asyncio.wait_for(standin.disconnected.wait(), 5)
        sent = standin.chunks_sent
        await provider.aclose()
    whole = -(-len(standin.bodies[0]) // 400)
    assert stream.cancelled and sent < whole  # the reply was cut short


async def test_upstream_reset_mid_stream_fails_over_to_the_local_engine() -> None:
    records: list[ProcessingRecord] = []
    async with ElevenLabsStandIn(drop_after_chunks=1) as standin:
        vendor = adapter(standin.base_url)
        failover = FailoverTts([vendor, EspeakTts()], context=CONTEXT, on_record=records.append)
        pcm = await failover.synthesize(TEXT, sample_rate=8000).read_all()
        await vendor.aclose()
    reference = await EspeakTts().synthesize(TEXT, sample_rate=8000).read_all()
    assert [(r.provider, r.outcome) for r in records] == [
        ("elevenlabs", Outcome.ERROR), ("espeak-local", Outcome.OK)
    ]  # fmt: skip
    vendor_seconds = records[0].audio_seconds
    assert vendor_seconds is not None and 0 < vendor_seconds <= 0.2  # part of one chunk
    assert records[0].locations == ("us",)
    # What the vendor delivered before the reset, then the whole text again locally
    # (eSpeak's length varies by ~15 ms from one synthesis to the next).
    delivered = int(vendor_seconds * 8000) * 2
    assert pcm[:delivered] == ulaw_decode(standin.bodies[0][: delivered // 2])
    assert len(pcm) - delivered == pytest.approx(len(reference), abs=0.03 * 8000 * 2)


@pytest.mark.skipif(not os.environ.get("ELEVENLABS_API_KEY"),
                    reason="live ElevenLabs test: set ELEVENLABS_API_KEY")  # fmt: skip
async def test_live_elevenlabs_streams_speech() -> None:
    provider = elevenlabs_tts(ElevenLabsSettings(api_key=os.environ["ELEVENLABS_API_KEY"]),
                              SUBPROCESSORS)  # fmt: skip
    pcm = await provider.synthesize("Hello from the gateway.", sample_rate=8000).read_all()
    await provider.aclose()
    assert len(pcm) > 8000 and rms(pcm) > 300
