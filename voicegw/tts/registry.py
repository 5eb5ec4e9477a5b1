"""The TTS provider registry, seeded with the on-node engine."""

from __future__ import annotations

from voicegw.privacy.registry import Registry
from voicegw.tts.base import TtsProvider
from voicegw.tts.espeak_local import EspeakTts

TtsRegistry = Registry[TtsProvider]


def default_tts_registry() -> TtsRegistry:
    """A registry holding the local engine; vendor adapters register themselves on top."""
    registry: TtsRegistry = Registry("tts")
    registry.register(EspeakTts())
    return registry
