"""What a speech provider declares about itself, for the residency policy to decide on.

A provider is either a *sub-processor* (a vendor listed in ``config/subprocessors.toml``
that receives audio or text) or a local engine that processes on the node itself and
therefore has no sub-processor id and no processing location of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Purpose(StrEnum):
    """Why data is handed to a provider; the words a DPA's sub-processor list uses."""

    ASR = "asr"
    TTS = "tts"
    VOICE_CLONING = "voice_cloning"
    TEXT_GENERATION = "text_generation"
    TRANSLATION = "translation"
    INFRASTRUCTURE = "infrastructure"


class DataType(StrEnum):
    """Kinds of personal data a provider receives."""

    AUDIO = "audio"
    TEXT = "text"
    ALL = "all"


def primary_language(tag: str) -> str:
    """``"en-US"`` → ``"en"``; tags compare case-insensitively (BCP 47)."""
    return tag.lower().replace("_", "-").split("-", 1)[0]


@dataclass(frozen=True)
class ProviderCapabilities:
    """The record a provider publishes; policy decisions read nothing else.

    ``processing_locations`` are country or policy-region codes (``"sg"``, ``"ie"``,
    ``"eu"``) of where *this configured instance* processes data. A vendor may offer
    several regions; an adapter pinned to one endpoint declares only that one.
    """

    name: str
    subprocessor_id: str | None
    processing_locations: frozenset[str]
    purposes: frozenset[Purpose]
    data_types: frozenset[DataType]
    languages: frozenset[str]
    sample_rates: tuple[int, ...] = (8000, 16000)
    audio_formats: tuple[str, ...] = ("pcm_s16le",)
    streaming: bool = True
    interim_results: bool = False

    def __post_init__(self) -> None:
        if self.subprocessor_id is None and self.processing_locations:
            raise ValueError(
                f"provider {self.name!r}: a local engine processes on the node; "
                "it declares no processing locations"
            )
        if self.subprocessor_id is not None and not self.processing_locations:
            raise ValueError(
                f"provider {self.name!r}: sub-processor {self.subprocessor_id!r} "
                "must declare where it processes data"
            )

    @property
    def is_local(self) -> bool:
        """Processes on the node itself: no data leaves the gateway."""
        return self.subprocessor_id is None

    def supports_language(self, language: str) -> bool:
        """Exact tag match, or a bare primary tag on either side (``en`` ~ ``en-US``)."""
        wanted = language.lower().replace("_", "-")
        for offered in self.languages:
            tag = offered.lower().replace("_", "-")
            if tag == wanted or tag == primary_language(wanted) or primary_language(tag) == wanted:
                return True
        return False
