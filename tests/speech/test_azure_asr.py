"""Azure ASR through the real Speech SDK, against a local USP stand-in.

The stand-in speaks the service's documented WebSocket protocol; the SDK, its
threads, reconnect logic and wire format are the real ones. Live tests against the
real service run only when AZURE_SPEECH_KEY and AZURE_SPEECH_REGION are set.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.speech.standins.azure_usp import UspStandIn
from voicegw.asr.azure import AzureAsr, azure_asr
from voicegw.asr.base import AsrStream, TranscriptEvent, TranscriptKind
from voicegw.asr.failover import FailoverAsr
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.asr.registry import default_asr_registry
from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import ProviderError
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.privacy.regions import policy_region
from voicegw.privacy.selection import SelectionRequest, select_provider
from voicegw.privacy.subprocessors import SubprocessorConfigError, load_subprocessors
from voicegw.speech_vendors.azure_common import AzureSpeechSettings, location_of_region

SUBPROCESSORS = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
CONTEXT = ProcessingContext(call_id="call-1", tenant="tenant-a")
RATE = 8000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def adapter(host: str, key: str | None = None) -> AzureAsr:
    return azure_asr(AzureSpeechSettings(region="southeastasia", host=host, key=key), SUBPROCESSORS)


async def push_audio(stream: AsrStream, pcm: bytes, audio: Any, rate: int = RATE) -> None:
    for frame in audio.frames(pcm, rate):
        stream.push(frame)
        await asyncio.sleep(0)  # let the SDK's threads and the stand-in run, like live RTP


async def drain(stream: AsrStream) -> list[TranscriptEvent]:
    return [event async for event in stream]


def test_region_table_gives_the_processing_location_and_policy_region() -> None:
    assert location_of_region("southeastasia") == "sg"
    assert policy_region(location_of_region("westeurope")) == "eu"
    assert location_of_region("eastus") == "us"
    with pytest.raises(ValueError, match="no declared location"):
        location_of_region("moon-north")


def test_capabilities_follow_the_published_subprocessor_listing() -> None:
    caps = adapter("ws://127.0.0.1:9").capabilities
    assert caps.subprocessor_id == "azure"
    assert caps.processing_locations == frozenset({"sg"})
    assert caps.purposes == frozenset({Purpose.ASR}) and caps.interim_results
    # Azure is published for Singapore only: a Europe resource must not start.
    europe = AzureSpeechSettings(region="westeurope", host="ws://127.0.0.1:9")
    with pytest.raises(SubprocessorConfigError, match="not within listed"):
        azure_asr(europe, SUBPROCESSORS)


def test_settings_repr_never_shows_the_key() -> None:
    settings = AzureSpeechSettings(region="southeastasia", key="secret-key-123")
    assert "secret-key-123" not in repr(settings)


async def test_partial_and_final_events_carry_stream_time_party_and_language(
    audio: Any,
) -> None:
    async with UspStandIn(["Yes, I agree.", "Goodbye."]) as standin:
        stream = await adapter(standin.host).open_stream(
            language="en-US", sample_rate=RATE, party="caller"
        )
        collected = asyncio.ensure_future(drain(stream))
        # utterance 1: speech from 0.5 s to 1.5 s
        await push_audio(stream, audio.silence(0.5, RATE) + audio.voiced_tone(1.0, RATE)
                         + audio.silence(0.2, RATE), audio)  # fmt: skip
        await stream.flush()
        # utterance 2 starts at 1.7 s; speech from 2.0 s to 2.6 s
        await push_audio(stream, audio.silence(0.3, RATE) + audio.voiced_tone(0.6, RATE), audio)
        await stream.flush()
        await stream.close()
        events = await asyncio.wait_for(collected, 10)

    finals = [e for e in events if e.kind is TranscriptKind.FINAL]
    partials = [e for e in events if e.kind is TranscriptKind.PARTIAL]
    assert [e.text for e in finals] == ["Yes, I agree.", "Goodbye."]
    assert partials and partials[0].text == "yes" and partials[0].end < finals[0].end
    assert finals[0].start == pytest.approx(0.5, abs=0.011)
    assert finals[0].end == pytest.approx(1.5, abs=0.011)
    assert finals[1].start == pytest.approx(2.0, abs=0.011)
    assert finals[1].end == pytest.approx(2.6, abs=0.011)
    assert finals[0].confidence == pytest.approx(0.92)
    assert {(e.party, e.language) for e in events} == {("caller", "en-US")}
    # One connection per utterance, and only the audio pushed reached the vendor.
    assert len(standin.upgrades) == 2
    assert standin.audio_seconds == pytest.approx(1.7 + 0.9)


async def test_sdk_callbacks_wake_an_idle_loop(audio: Any) -> None:
    """Results arrive on SDK threads; the loop does nothing but wait for them."""
    async with UspStandIn(["Hello there."], hypothesis_every=0.2) as standin:
        stream = await adapter(standin.host).open_stream(
            language="en-US", sample_rate=RATE, party="agent"
        )
        for frame in audio.frames(audio.voiced_tone(1.0, RATE), RATE):
            stream.push(frame)
        event = await asyncio.wait_for(anext(stream), 10)  # no flush: interim results only
        assert event.kind is TranscriptKind.PARTIAL and event.party == "agent"
        await stream.close()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_request_log_shows_the_key_header_and_nothing_but_protocol_and_audio(
    audio: Any, rate: int
) -> None:
    pcm = audio.voiced_tone(0.5, rate) + audio.silence(0.1, rate)
    async with UspStandIn(["Yes."]) as standin:
        stream = await adapter(standin.host, key="test-key-1").open_stream(
            language="en-US", sample_rate=rate, party="caller", phrases=["yes", "no"]
        )
        await push_audio(stream, pcm, audio, rate)
        await stream.close()

    (upgrade,) = standin.upgrades
    assert upgrade.path == "/speech/recognition/conversation/cognitiveservices/v1"
    assert upgrade.headers["Ocp-Apim-Subscription-Key"] == "test-key-1"
    assert upgrade.query["language"] == "en-US" and upgrade.query["format"] == "detailed"
    assert set(standin.paths()) <= {"speech.config", "speech.context", "audio", "telemetry"}
    context = next(m.body for m in standin.log if m.path == "speech.context")
    assert "yes" in str(context) and "no" in str(context)  # the phrase hints
    assert standin.sample_rates == [rate]  # the declared AudioStreamFormat
    assert standin.audio_bytes == len(pcm)  # exactly the audio pushed, once


async def test_connection_refused_is_a_retryable_provider_error_not_a_timeout(
    audio: Any,
) -> None:
    # The SDK reports the refusal (a cancellation): flush fails at once instead of waiting
    # out the session timeout, made long here so the two cannot be confused however busy
    # the machine is.
    settings = AzureSpeechSettings(
        region="southeastasia", host=f"ws://127.0.0.1:{free_port()}", session_timeout=120.0
    )
    stream = await azure_asr(settings, SUBPROCESSORS).open_stream(
        language="en-US", sample_rate=RATE, party="caller"
    )
    started = time.monotonic()
    stream.push(audio.voiced_tone(0.2, RATE))
    with pytest.raises(ProviderError) as raised:
        await stream.flush()
    assert raised.value.retryable and time.monotonic() - started < 60
    with pytest.raises(ProviderError):  # the consumer sees it too
        await asyncio.wait_for(drain(stream), 30)
    await stream.close()


async def test_vendor_dropping_mid_utterance_fails_over_to_the_local_engine(
    speech: Any, audio: Any
) -> None:
    utterance = audio.silence(0.3, RATE) + speech("yes i agree", RATE) + audio.silence(0.3, RATE)
    records: list[ProcessingRecord] = []
    local = PocketsphinxAsr()
    async with UspStandIn(["Yes, I agree."], fail_after_bytes=RATE) as standin:  # 0.5 s in
        failover = FailoverAsr([adapter(standin.host), local], context=CONTEXT,
                               on_record=records.append)  # fmt: skip
        stream = await failover.open_stream(language="en-US", sample_rate=RATE, party="caller",
                                            phrases=["yes i agree", "no"])  # fmt: skip
        collected = asyncio.ensure_future(drain(stream))
        await push_audio(stream, utterance, audio)
        await stream.flush()
        await stream.close()
        events = await asyncio.wait_for(collected, 30)
    await local.aclose()

    finals = [e for e in events if e.kind is TranscriptKind.FINAL]
    assert [e.text for e in finals] == ["yes i agree"]
    assert [(r.provider, r.outcome) for r in records] == [
        ("azure", Outcome.ERROR), ("pocketsphinx-local", Outcome.OK)
    ]  # fmt: skip


async def test_an_ineligible_vendor_receives_no_audio_at_all(audio: Any) -> None:
    async with UspStandIn(["Yes."]) as standin:
        registry = default_asr_registry()
        registry.register(adapter(standin.host))
        # A Thai tenant without a transfer mechanism: Singapore processing is refused.
        request = SelectionRequest(tenant_region="th", purpose=Purpose.ASR, language="en-US",
                                   approved_subprocessors=frozenset({"azure"}),
                                   preference=("azure",))  # fmt: skip
        selection = select_provider(request, registry.capabilities())
        assert [c.name for c in selection.eligible] == ["pocketsphinx-local"]
        chosen = [registry.get(c.name) for c in selection.eligible]
        records: list[ProcessingRecord] = []
        stream = await FailoverAsr(chosen, context=CONTEXT, on_record=records.append).open_stream(
            language="en-US", sample_rate=RATE, party="caller", phrases=["yes"]
        )
        await push_audio(stream, audio.voiced_tone(0.3, RATE), audio)
        await stream.close()
        for provider in chosen:
            await provider.aclose()
    assert standin.upgrades == [] and standin.audio_bytes == 0


@pytest.mark.skipif(
    not (os.environ.get("AZURE_SPEECH_KEY") and os.environ.get("AZURE_SPEECH_REGION")),
    reason="live Azure test: set AZURE_SPEECH_KEY and AZURE_SPEECH_REGION",
)
async def test_live_azure_recognises_espeak_speech(speech: Any, audio: Any) -> None:
    region = os.environ["AZURE_SPEECH_REGION"]
    if region != "southeastasia":
        pytest.skip("the published list allows Azure in southeastasia only")
    settings = AzureSpeechSettings(region=region, key=os.environ["AZURE_SPEECH_KEY"])
    provider = AzureAsr(settings, SUBPROCESSORS["azure"])
    stream = await provider.open_stream(language="en-US", sample_rate=16000, party="caller")
    collected = asyncio.ensure_future(drain(stream))
    for frame in audio.frames(speech("the weather is nice today", 16000), 16000):
        stream.push(frame)
    await stream.close()
    finals = [e for e in await asyncio.wait_for(collected, 30) if e.kind is TranscriptKind.FINAL]
    assert "weather" in " ".join(e.text.lower() for e in finals)
