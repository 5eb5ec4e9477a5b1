"""The call layer's one question: which ASR/TTS may this call use, and why not the others."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.calls.speech_policy import (
    CallSpeech,
    DisabledReason,
    SpeechDecision,
    SpeechFeature,
    plan_speech,
    selection_request,
)
from voicegw.privacy.capabilities import ProviderCapabilities, Purpose
from voicegw.privacy.regions import TransferMechanism
from voicegw.privacy.registry import HasCapabilities, Registry
from voicegw.privacy.selection import RefusalCode
from voicegw.privacy.subprocessors import capabilities_for, load_subprocessors
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.espeak_local import EspeakTts

LISTING = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
CALL = CallSpeech(call_id="call-7", tenant="acme", language="en-US")


class Listed:
    """A registry entry that is nothing but its declared capabilities (policy never calls it)."""

    def __init__(self, capabilities: ProviderCapabilities) -> None:
        self._capabilities = capabilities

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities


def vendor(subprocessor: str, purpose: Purpose, name: str | None = None) -> Listed:
    return Listed(
        capabilities_for(
            LISTING[subprocessor],
            name=name or f"{subprocessor}-{purpose.value}",
            purposes=frozenset({purpose}),
            languages=frozenset({"en"}),
        )
    )


def speech_registry(*entries: HasCapabilities) -> Registry[HasCapabilities]:
    registry: Registry[HasCapabilities] = Registry("speech")
    for entry in entries:
        registry.register(entry)
    return registry


def test_eu_tenant_approving_only_an_asia_vendor_gets_no_asr_and_keeps_the_reason() -> None:
    # The operator runs no local engine here: the Singapore vendor is the only candidate.
    registry = speech_registry(vendor("zhongkejin", Purpose.ASR))
    settings = TenantSettings(
        region="eu", transcription_enabled=True, approved_subprocessors=("zhongkejin",)
    )
    decisions: list[SpeechDecision] = []
    plan = plan_speech(
        registry, settings, CALL, SpeechFeature.TRANSCRIPTION, on_decision=decisions.append
    )
    assert not plan.enabled and plan.providers == ()
    assert decisions == [plan.decision]
    assert plan.decision.disabled is DisabledReason.NO_ELIGIBLE_PROVIDER
    refusal = plan.decision.refusal("zhongkejin-asr")
    assert refusal is not None and refusal.subprocessor == "zhongkejin"
    assert refusal.codes == (RefusalCode.REGION_NOT_PERMITTED,)
    assert "outside tenant region 'eu'" in refusal.reasons[0]


def test_eu_tenant_falls_back_to_the_local_engine_when_the_vendor_is_refused() -> None:
    local = PocketsphinxAsr()  # no worker starts until a stream decodes
    registry = speech_registry(vendor("zhongkejin", Purpose.ASR), local)
    settings = TenantSettings(
        region="eu", transcription_enabled=True, approved_subprocessors=("zhongkejin",)
    )
    plan = plan_speech(registry, settings, CALL, SpeechFeature.TRANSCRIPTION)
    assert plan.providers == (local,)
    assert plan.decision.eligible == ("pocketsphinx-local",)
    assert [r.provider for r in plan.decision.refused] == ["zhongkejin-asr"]


@pytest.mark.parametrize(
    ("feature", "purpose"),
    [(SpeechFeature.TRANSCRIPTION, Purpose.ASR), (SpeechFeature.PROMPTS, Purpose.TTS)],
)
def test_restricted_caller_gets_local_engines_only_never_a_vendor(
    feature: SpeechFeature, purpose: Purpose
) -> None:
    local = PocketsphinxAsr() if purpose is Purpose.ASR else EspeakTts()
    approved = vendor("azure", purpose)  # approved, in region: eligible but for the restriction
    registry = speech_registry(approved, local)
    settings = TenantSettings(
        region="sg", transcription_enabled=True, approved_subprocessors=("azure",)
    )
    restricted = CallSpeech(call_id="call-8", tenant="acme", caller_restricted=True)

    unrestricted = plan_speech(registry, settings, CALL, feature)
    assert unrestricted.decision.eligible[0] == f"azure-{purpose.value}"
    plan = plan_speech(registry, settings, restricted, feature)
    assert plan.providers == (local,)
    assert all(p.capabilities.is_local for p in plan.providers)
    refusal = plan.decision.refusal(f"azure-{purpose.value}")
    assert refusal is not None and refusal.codes == (RefusalCode.CALLER_RESTRICTED,)
    assert plan.decision.caller_restricted


def test_restricted_caller_with_no_local_engine_has_the_feature_off() -> None:
    registry = speech_registry(vendor("azure", Purpose.ASR))
    settings = TenantSettings(
        region="sg", transcription_enabled=True, approved_subprocessors=("azure",)
    )
    restricted = CallSpeech(call_id="call-9", tenant="acme", caller_restricted=True)
    plan = plan_speech(registry, settings, restricted, SpeechFeature.TRANSCRIPTION)
    assert plan.providers == ()
    assert plan.decision.disabled is DisabledReason.NO_ELIGIBLE_PROVIDER


def test_transcription_switch_off_disables_transcripts_but_not_spoken_answers() -> None:
    registry = speech_registry(PocketsphinxAsr())
    settings = TenantSettings(region="sg", transcription_enabled=False)
    off = plan_speech(registry, settings, CALL, SpeechFeature.TRANSCRIPTION)
    assert off.providers == () and off.decision.disabled is DisabledReason.TENANT_DISABLED
    assert off.decision.refused == ()  # nothing was even considered
    answers = plan_speech(registry, settings, CALL, SpeechFeature.SPOKEN_ANSWER)
    assert answers.decision.eligible == ("pocketsphinx-local",)


def test_eligible_order_is_the_failover_order_with_tenant_preference_first() -> None:
    local = PocketsphinxAsr()
    azure = vendor("azure", Purpose.ASR, name="azure")
    registry = speech_registry(local, azure)
    settings = TenantSettings(
        region="sg", transcription_enabled=True, approved_subprocessors=("azure",)
    )
    default = plan_speech(registry, settings, CALL, SpeechFeature.TRANSCRIPTION)
    assert default.decision.eligible == ("pocketsphinx-local", "azure")
    preferred = plan_speech(
        registry, settings, CALL, SpeechFeature.TRANSCRIPTION, preference=("azure",)
    )
    assert preferred.providers == (azure, local)


def test_cross_border_settings_become_the_transfer_mechanism() -> None:
    settings = TenantSettings.model_validate(
        {"region": "sg", "cross_border": {"allowed": True, "mechanism": "scc"}}
    )
    request = selection_request(
        settings, purpose=Purpose.TTS, language="en", caller_restricted=False
    )
    assert request.cross_border_allowed
    assert request.transfer_mechanism is TransferMechanism.SCC
    registry = speech_registry(vendor("elevenlabs", Purpose.TTS))
    approved = settings.model_copy(update={"approved_subprocessors": ("elevenlabs",)})
    plan = plan_speech(registry, approved, CALL, SpeechFeature.PROMPTS)
    assert plan.decision.eligible == ("elevenlabs-tts",)  # US processing under SCCs


def test_decision_log_carries_names_and_codes_only(caplog: pytest.LogCaptureFixture) -> None:
    registry = speech_registry(vendor("zhongkejin", Purpose.ASR))
    settings = TenantSettings(region="eu", transcription_enabled=True)
    caller = CallSpeech(call_id="call-10", tenant="acme", language="en-GB")
    with caplog.at_level(logging.INFO, logger="voicegw.calls.speech_policy"):
        plan_speech(registry, settings, caller, SpeechFeature.TRANSCRIPTION)
    (entry,) = caplog.records
    assert entry.getMessage() == "speech.feature_off"
    assert entry.refused == {  # type: ignore[attr-defined]
        "zhongkejin-asr": ["not_approved", "region_not_permitted"]
    }
    assert entry.disabled == "no_eligible_provider"  # type: ignore[attr-defined]
