"""Speech fixtures: real eSpeak NG output, synthesised once per session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voicegw.tts.espeak_local import EspeakTts

Speech = Callable[[str, int], bytes]


@pytest.fixture(scope="session")
def speech() -> Speech:
    """``speech(text, rate)`` → 16-bit PCM of eSpeak saying ``text`` at ``rate`` Hz."""
    cache: dict[tuple[str, int], bytes] = {}

    async def synthesize(text: str, rate: int) -> bytes:
        return await EspeakTts().synthesize(text, sample_rate=rate).read_all()

    def get(text: str, rate: int) -> bytes:
        # Tests call this from inside their own running loop, so the synthesis gets a
        # loop of its own on a helper thread.
        if (text, rate) not in cache:
            with ThreadPoolExecutor(1) as pool:
                cache[(text, rate)] = pool.submit(asyncio.run, synthesize(text, rate)).result()
        return cache[(text, rate)]

    return get


class Audio:
    """Signal helpers, handed to tests through the ``audio`` fixture."""

    @staticmethod
    def silence(seconds: float, rate: int) -> bytes:
        return bytes(int(seconds * rate) * 2)

    @staticmethod
    def frames(pcm: bytes, rate: int, ms: int = 20) -> list[bytes]:
        """Split into whole frames; a partial last frame is zero-padded."""
        size = rate * ms // 1000 * 2
        padded = pcm + bytes(-len(pcm) % size)
        return [padded[i : i + size] for i in range(0, len(padded), size)]

    @staticmethod
    def voiced_tone(seconds: float, rate: int, amplitude: int = 8000) -> bytes:
        """A 140 Hz harmonic buzz that WebRTC VAD calls speech in every frame: exact timing."""
        t = np.arange(int(seconds * rate)) / rate
        signal = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 15))
        signal = signal * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
        return (signal / np.abs(signal).max() * amplitude).astype(np.int16).tobytes()

    @staticmethod
    def white_noise(seconds: float, rate: int, sigma: float, seed: int = 7) -> bytes:
        rng = np.random.default_rng(seed)
        return rng.normal(0, sigma, int(seconds * rate)).astype(np.int16).tobytes()


@pytest.fixture(scope="session")
def audio() -> type[Audio]:
    return Audio
