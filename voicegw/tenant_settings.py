"""A tenant's settings: validated data, shared by the API, the CLI and the policies.

These are the controller's (the tenant's) instructions to us, the processor:
where its data lives, whether and how calls are recorded, which consent is
sought, how long data is kept and which sub-processors may receive it.
Everything here is plain data; the consent and privacy packages decide over it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voicegw.consent.answers import PHRASES as BUILT_IN_ANSWERS
from voicegw.regions import REGIONS

RecordingMode = Literal["off", "notify", "opt_in", "opt_out"]
CaptureMethod = Literal["dtmf", "speech"]
TransferMechanism = Literal["adequacy", "scc", "bcr"]  # voicegw.privacy.regions.TransferMechanism

_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
_DTMF_KEYS = re.compile(r"^[0-9*#]{1,4}$")
_SUBPROCESSOR_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ANSWER_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
#: Words of letters with inner apostrophes ("don't"), one space between words.
_ANSWER_PHRASE = re.compile(r"^[^\W\d_]+(?:'[^\W\d_]+)*(?: [^\W\d_]+(?:'[^\W\d_]+)*){0,7}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentPrompt(_Model):
    """What a caller hears before recording: synthesised text or an uploaded file."""

    text: str | None = Field(
        default="This call may be recorded for quality and training. "
        "Press 1 to agree or 2 to decline.",
        min_length=1,
        max_length=1000,
    )
    language: str = Field(default="en-US", pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$")
    voice: str | None = Field(default=None, max_length=100)
    audio_file: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")
    #: Bumped whenever the wording changes, so evidence can say which version a caller heard.
    version: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _text_or_file(self) -> ConsentPrompt:
        if self.text is None and self.audio_file is None:
            raise ValueError("a consent prompt needs text or audio_file")
        return self


def _answer_phrases(value: tuple[str, ...]) -> tuple[str, ...]:
    """Lower-case, single-spaced, each once: the form recognisers return words in."""
    out: list[str] = []
    for raw in value:
        phrase = " ".join(raw.lower().replace("\u2019", "'").split())
        if len(phrase) > 64 or not _ANSWER_PHRASE.match(phrase):
            raise ValueError(
                f"{raw!r} is not an answer phrase: 1 to 8 words of letters "
                "(apostrophes inside words allowed), at most 64 characters"
            )
        out.append(phrase)
    return tuple(dict.fromkeys(out))


class SpokenAnswers(_Model):
    """The spoken answers a caller may give in one language; anything else is no answer."""

    yes: tuple[str, ...] = Field(min_length=1, max_length=50)
    no: tuple[str, ...] = Field(min_length=1, max_length=50)

    @field_validator("yes", "no")
    @classmethod
    def _phrases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _answer_phrases(value)

    @model_validator(mode="after")
    def _disjoint(self) -> SpokenAnswers:
        both = sorted(set(self.yes) & set(self.no))
        if both:
            raise ValueError(f"phrases cannot mean both yes and no: {', '.join(both)}")
        return self


class ConsentCapture(_Model):
    """How a caller's answer is captured."""

    methods: tuple[CaptureMethod, ...] = ("dtmf",)
    accept_keys: str = Field(default="1", pattern=_DTMF_KEYS.pattern)
    decline_keys: str = Field(default="2", pattern=_DTMF_KEYS.pattern)
    #: No answer within this many seconds counts as a decline.
    timeout_seconds: int = Field(default=10, ge=2, le=60)
    #: Key sequence that withdraws consent mid-call.
    withdraw_sequence: str = Field(default="*9", pattern=_DTMF_KEYS.pattern)
    #: Spoken answers per language (ISO 639 code of the prompt's language, e.g. "en").
    #: A language missing here uses the built-in answer table. A short list is both
    #: stricter and, for a grammar-mode recogniser, more confident.
    spoken_answers: dict[str, SpokenAnswers] = Field(default_factory=dict, max_length=20)
    #: Recognised speech below this confidence is no answer (re-asked or timed out).
    min_speech_confidence: float = Field(default=0.6, ge=0.0, le=1.0)

    @field_validator("spoken_answers")
    @classmethod
    def _answer_languages(cls, value: dict[str, SpokenAnswers]) -> dict[str, SpokenAnswers]:
        for language in value:
            if not _ANSWER_LANGUAGE.match(language):
                raise ValueError(
                    f"{language!r} is not a language code: use the prompt language's "
                    "ISO 639 code, e.g. en"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one capture method is needed")
        if len(set(value)) != len(value):
            raise ValueError("capture methods must not repeat")
        return value

    @model_validator(mode="after")
    def _keys_disjoint(self) -> ConsentCapture:
        if set(self.accept_keys) & set(self.decline_keys):
            raise ValueError("accept_keys and decline_keys must not share a key")
        return self


class Retention(_Model):
    recordings_days: int = Field(default=90, ge=1, le=3650)
    transcripts_days: int = Field(default=90, ge=1, le=3650)


class CrossBorder(_Model):
    """Whether data may be processed outside the tenant's region, and on what legal basis."""

    allowed: bool = False
    mechanism: TransferMechanism | None = None

    @model_validator(mode="after")
    def _mechanism_when_allowed(self) -> CrossBorder:
        if self.allowed and self.mechanism is None:
            raise ValueError("cross-border transfer needs a legal mechanism")
        return self


class TenantSettings(_Model):
    region: str = "sg"
    recording_mode: RecordingMode = "off"
    agent_recording: bool = True
    consent_prompt: ConsentPrompt = ConsentPrompt()
    consent_capture: ConsentCapture = ConsentCapture()
    #: Callers from these jurisdictions (ISO country, or country-subdivision such
    #: as US-CA) are asked for explicit consent whatever the recording mode.
    all_party_consent_jurisdictions: tuple[str, ...] = ()
    retention: Retention = Retention()
    transcription_enabled: bool = False
    approved_subprocessors: tuple[str, ...] = ()
    cross_border: CrossBorder = CrossBorder()

    @model_validator(mode="after")
    def _spoken_answers_for_prompt_language(self) -> TenantSettings:
        capture = self.consent_capture
        language = self.consent_prompt.language.split("-")[0]
        if (
            "speech" in capture.methods
            and language not in capture.spoken_answers
            and language not in BUILT_IN_ANSWERS
        ):
            raise ValueError(
                f"spoken answers in {language!r} need consent_capture.spoken_answers.{language} "
                f"(built-in: {', '.join(sorted(BUILT_IN_ANSWERS))})"
            )
        return self

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in REGIONS:
            raise ValueError(f"unknown region; allowed: {', '.join(sorted(REGIONS))}")
        return value

    @field_validator("all_party_consent_jurisdictions")
    @classmethod
    def _jurisdictions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _JURISDICTION.match(item):
                raise ValueError(f"{item!r} is not an ISO 3166 code such as DE or US-CA")
        return tuple(dict.fromkeys(value))

    @field_validator("approved_subprocessors")
    @classmethod
    def _subprocessor_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _SUBPROCESSOR_ID.match(item):
                raise ValueError(
                    f"{item!r} is not a sub-processor id (lower-case letters, digits, - and _)"
                )
        return tuple(dict.fromkeys(value))


def merge_settings(current: TenantSettings, patch: dict[str, Any]) -> TenantSettings:
    """Apply a partial update (nested dicts merge, other values replace) and re-validate."""
    merged = _deep_merge(current.model_dump(mode="json"), patch)
    return TenantSettings.model_validate(merged)


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
