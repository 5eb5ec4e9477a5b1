"""Azure TTS through the real Speech SDK, against the local USP stand-in.

The stand-in answers the SDK's synthesis requests (``synthesis.context``, ``ssml``)
with real speech from eSpeak NG in binary ``audio`` frames. The live test against
the real service runs only when AZURE_SPEECH_KEY and AZURE_SPEECH_REGION are set.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.speech.standins.azure_usp import UspStandIn
from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.privacy.subprocessors import load_subprocessors
from voicegw.speech_vendors.azure_common import AzureSpeechSettings
from voicegw.tts.azure import AzureTts, azure_tts
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.failover import FailoverTts

SUBPROCESSORS = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
CONTEXT = ProcessingContext(call_id="call-1", tenant="tenant-a")
TEXT = "Your call may be recorded for quality purposes."


def adapter(host: str, key: str | None = None) -> AzureTts:
    return azure_tts(AzureSpeechSettings(region="southeastasia", host=host, key=key), SUBPROCESSORS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype=np.int16).astype(np.float64) ** 2)))


def test_capabilities_declare_text_to_speech_in_the_resource_region() -> None:
    caps = adapter("ws://127.0.0.1:9").capabilities
    assert caps.subprocessor_id == "azure" and caps.processing_locations == frozenset({"sg"})
    assert caps.purposes == frozenset({Purpose.TTS}) and 8000 in caps.sample_rates


@pytest.mark.parametrize(
    ("rate", "output_format"),
    [(8000, "raw-8khz-16bit-mono-pcm"), (16000, "raw-16khz-16bit-mono-pcm")],
)
async def test_streams_non_silent_speech_at_the_requested_rate(
    rate: int, output_format: str
) -> None:
    async with UspStandIn([]) as standin:
        stream = adapter(standin.host).synthesize(TEXT, sample_rate=rate)
        chunks = [chunk async for chunk in stream]
    pcm = b"".join(chunks)
    assert len(chunks) > 1  # streamed as the service produced it
    assert [pcm] == standin.synthesized  # every sample, as the service sent it
    assert rms(pcm) > 1000
    context = next(m.body for m in standin.log if m.path == "synthesis.context")
    assert context["synthesis"]["audio"]["outputFormat"] == output_format
    assert standin.spoken == [("en-US-JennyNeural", TEXT)]


async def test_request_log_shows_the_key_header_and_only_the_text_to_speak() -> None:
    async with UspStandIn([]) as standin:
        provider = adapter(standin.host, key="test-key-2")
        await provider.synthesize("Hello.", voice="en-SG-LunaNeural", language="en-SG").read_all()
    (upgrade,) = standin.upgrades
    assert upgrade.path == "/cognitiveservices/websocket/v1"
    assert upgrade.headers["Ocp-Apim-Subscription-Key"] == "test-key-2"
    assert set(standin.paths()) <= {"speech.config", "synthesis.context", "ssml", "telemetry"}
    assert standin.spoken == [("en-SG-LunaNeural", "Hello.")]


async def test_cancel_mid_utterance_stops_the_service_promptly() -> None:
    async with UspStandIn([], chunk_seconds=0.1) as standin:
        stream = adapter(standin.host).synthesize(TEXT * 3, sample_rate=8000)
        first = await asyncio.wait_for(anext(stream), 10)
        started = time.monotonic()
        await stream.cancel()
        assert time.monotonic() - started < 2
        rest = [chunk async for chunk in stream]
        # stop_speaking ends the service's work too: it hangs up mid-utterance.
        await asyncio.wait_for(standin.disconnected.wait(), 5)
    assert first and rest == [] and stream.cancelled
    assert standin.audio_bytes_sent < len(standin.synthesized[0])  # cut short


async def test_connection_refused_is_a_retryable_provider_error_not_a_timeout() -> None:
    # The SDK reports the refusal (a cancellation): the adapter fails at once instead of
    # waiting out its session timeout, made long here so the two cannot be confused
    # however busy the machine is.
    settings = AzureSpeechSettings(
        region="southeastasia", host=f"ws://127.0.0.1:{free_port()}", session_timeout=120.0
    )
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await azure_tts(settings, SUBPROCESSORS).synthesize(TEXT).read_all()
    assert raised.value.retryable and time.monotonic() - started < 60


async def test_service_failing_mid_utterance_fails_over_to_the_local_engine() -> None:
    records: list[ProcessingRecord] = []
    async with UspStandIn([], fail_after_bytes=3200) as standin:  # dies after 0.2 s at 8 kHz
        failover = FailoverTts([adapter(standin.host), EspeakTts()], context=CONTEXT,
                               on_record=records.append)  # fmt: skip
        pcm = await failover.synthesize(TEXT, sample_rate=8000).read_all()
    reference = await EspeakTts().synthesize(TEXT, sample_rate=8000).read_all()
    assert [(r.provider, r.outcome) for r in records] == [
        ("azure-tts", Outcome.ERROR), ("espeak-local", Outcome.OK)
    ]  # fmt: skip
    vendor_seconds = records[0].audio_seconds
    assert vendor_seconds is not None and vendor_seconds <= 0.2
    # What the service sent before failing, then the whole text again locally
    # (eSpeak's length varies by ~15 ms from one synthesis to the next).
    delivered = int(vendor_seconds * 8000) * 2
    assert pcm[:delivered] == standin.synthesized[0][:delivered]
    assert len(pcm) - delivered == pytest.approx(len(reference), abs=0.03 * 8000 * 2)


@pytest.mark.skipif(
    not (os.environ.get("AZURE_SPEECH_KEY") and os.environ.get("AZURE_SPEECH_REGION")),
    reason="live Azure test: set AZURE_SPEECH_KEY and AZURE_SPEECH_REGION",
)
async def test_live_azure_synthesises_speech() -> None:
    region = os.environ["AZURE_SPEECH_REGION"]
    if region != "southeastasia":
        pytest.skip("the published list allows Azure in southeastasia only")
    provider = AzureTts(AzureSpeechSettings(region=region, key=os.environ["AZURE_SPEECH_KEY"]),
                        SUBPROCESSORS["azure"])  # fmt: skip
    pcm = await provider.synthesize("Hello from the gateway.", sample_rate=8000).read_all()
    assert len(pcm) > 8000 and rms(pcm) > 300
