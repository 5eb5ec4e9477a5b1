"""The ASR provider registry, seeded with the on-node engine."""

from __future__ import annotations

from voicegw.asr.base import AsrProvider
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.privacy.registry import Registry

AsrRegistry = Registry[AsrProvider]


def default_asr_registry() -> AsrRegistry:
    """A registry holding the local engine; vendor adapters register themselves on top."""
    registry: AsrRegistry = Registry("asr")
    registry.register(PocketsphinxAsr())
    return registry
