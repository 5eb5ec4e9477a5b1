"""The local eSpeak NG provider: real audio at telephony rates, prompt cancel."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import ProviderError
from voicegw.tts.espeak_local import EspeakTts


def rms_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return 20 * np.log10(np.sqrt(np.mean(samples**2)) / 32768)


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_speech_is_loud_enough_and_as_long_as_the_words(rate: int) -> None:
    pcm = (
        await EspeakTts()
        .synthesize("This call may be recorded for quality purposes.", sample_rate=rate)
        .read_all()
    )
    seconds = len(pcm) / 2 / rate
    assert 2.0 < seconds < 5.0
    assert rms_dbfs(pcm) > -30


async def test_resampled_rates_carry_the_same_duration() -> None:
    tts = EspeakTts()
    narrow = await tts.synthesize("Press one for sales.", sample_rate=8000).read_all()
    wide = await tts.synthesize("Press one for sales.", sample_rate=16000).read_all()
    # eSpeak's output length drifts by ~15 ms with what the process synthesised before.
    assert len(narrow) / 2 / 8000 == pytest.approx(len(wide) / 2 / 16000, abs=0.05)


async def test_telephony_output_has_no_energy_above_nyquist_artifacts() -> None:
    pcm = await EspeakTts().synthesize("Thank you for calling.", sample_rate=8000).read_all()
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    # soxr's anti-alias filter: almost nothing left in the last few hundred hertz.
    assert spectrum[freqs > 3900].sum() < 0.01 * spectrum.sum()


async def test_cancel_stops_a_long_prompt_promptly_and_the_engine_stays_usable() -> None:
    tts = EspeakTts()
    stream = tts.synthesize("This is a very long announcement. " * 40, sample_rate=8000)
    received = 0
    async for chunk in stream:
        received += len(chunk)
        break
    started = time.perf_counter()
    await stream.cancel()
    assert time.perf_counter() - started < 0.5
    assert [c async for c in stream] == []
    assert received < 8000 * 2 * 5  # far less than the whole prompt
    assert await tts.synthesize("Goodbye.", sample_rate=8000).read_all()


async def test_concurrent_utterances_are_serialised_not_mixed() -> None:
    tts = EspeakTts()
    alone = await tts.synthesize("one two three", sample_rate=16000).read_all()
    together = await asyncio.gather(
        *(tts.synthesize("one two three", sample_rate=16000).read_all() for _ in range(3))
    )
    # eSpeak varies by a few samples between runs; mixed output would be far off.
    assert [len(pcm) / 2 / 16000 for pcm in together] == pytest.approx(
        [len(alone) / 2 / 16000] * 3, abs=0.05
    )
    assert all(rms_dbfs(pcm) == pytest.approx(rms_dbfs(alone), abs=0.5) for pcm in together)


async def test_language_tag_falls_back_to_its_primary_subtag_voice() -> None:
    assert await EspeakTts().synthesize("sawasdee", language="th-TH").read_all()


async def test_unknown_voice_is_a_non_retryable_provider_error() -> None:
    with pytest.raises(ProviderError) as caught:
        await EspeakTts().synthesize("hello", voice="no-such-voice", sample_rate=8000).read_all()
    assert caught.value.retryable is False


def test_capabilities_declare_an_on_node_tts_engine() -> None:
    caps = EspeakTts().capabilities
    assert caps.is_local and caps.subprocessor_id is None
    assert caps.processing_locations == frozenset()
    assert caps.purposes == frozenset({Purpose.TTS})
    assert caps.supports_language("en-US") and caps.supports_language("de")
    assert {8000, 16000} <= set(caps.sample_rates)


def test_first_syntheses_racing_from_threads_share_one_engine() -> None:
    """Regression: the engine was cached outside its lock, so two first calls built two
    (and libespeak-ng, initialised twice, corrupted itself). Raced in a fresh process."""
    import subprocess
    import sys

    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from voicegw.tts import espeak_local\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    engines = list(pool.map(lambda _: id(espeak_local._engine()), range(8)))\n"
        "print(len(set(engines)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
