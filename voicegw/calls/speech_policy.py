"""Which ASR/TTS providers a call may use: the one question the call layer asks.

The call knows the tenant's settings, whether the caller's processing is
restricted, and what it needs speech for (a live transcript, a spoken consent
answer, prompts). :func:`plan_speech` turns that into a
:class:`~voicegw.privacy.selection.SelectionRequest`, lets the pure policy
(:func:`~voicegw.privacy.selection.select_provider`) decide over the registry's
declared capabilities, and hands back the providers in eligible order — the
failover order — with a :class:`SpeechDecision` that keeps every refusal reason.

An empty plan means the feature is off for this call; the call itself goes on.
The decision is logged (names and reason codes only, nothing about the caller)
and passed to ``on_decision`` so the call record can keep it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.regions import TransferMechanism
from voicegw.privacy.registry import HasCapabilities, Registry
from voicegw.privacy.selection import RefusalCode, SelectionRequest, select_provider
from voicegw.tenant_settings import TenantSettings

__all__ = [
    "CallSpeech",
    "DisabledReason",
    "ProviderRefusal",
    "SpeechDecision",
    "SpeechFeature",
    "SpeechPlan",
    "plan_speech",
    "selection_request",
]

log = logging.getLogger("voicegw.calls.speech_policy")

P = TypeVar("P", bound=HasCapabilities)


class SpeechFeature(StrEnum):
    """What the call wants speech for; each feature maps to one purpose and one switch."""

    TRANSCRIPTION = "transcription"  # live and stored transcripts of both parties
    SPOKEN_ANSWER = "spoken_answer"  # a consent answer or menu intent said aloud
    PROMPTS = "prompts"  # consent notices, announcements, bot speech


class DisabledReason(StrEnum):
    TENANT_DISABLED = "tenant_disabled"
    NO_ELIGIBLE_PROVIDER = "no_eligible_provider"


def _always(_: TenantSettings) -> bool:
    return True


def _transcription_enabled(settings: TenantSettings) -> bool:
    return settings.transcription_enabled


#: feature → (purpose sent to the policy, the tenant switch that must be on).
#: A spoken answer is part of the consent flow the tenant configured (capture
#: method "speech"), not a transcript, so it does not hang on transcription.
FEATURES: dict[SpeechFeature, tuple[Purpose, Callable[[TenantSettings], bool]]] = {
    SpeechFeature.TRANSCRIPTION: (Purpose.ASR, _transcription_enabled),
    SpeechFeature.SPOKEN_ANSWER: (Purpose.ASR, _always),
    SpeechFeature.PROMPTS: (Purpose.TTS, _always),
}


@dataclass(frozen=True)
class CallSpeech:
    """The call-side facts the choice depends on."""

    call_id: str
    tenant: str
    language: str = "en-US"
    #: The caller restricted or objected to processing: on-node engines only.
    caller_restricted: bool = False


@dataclass(frozen=True)
class ProviderRefusal:
    """Why one registered provider may not serve this call (codes and static texts)."""

    provider: str
    subprocessor: str | None
    codes: tuple[RefusalCode, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SpeechDecision:
    """The structured record of one choice, kept with the call."""

    call_id: str
    tenant: str
    feature: SpeechFeature
    purpose: Purpose
    language: str
    caller_restricted: bool
    eligible: tuple[str, ...]  # provider names, first = the choice
    refused: tuple[ProviderRefusal, ...]
    disabled: DisabledReason | None
    #: eligible provider name -> the rule it is allowed on ("on_node", "in_region", ...).
    bases: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.disabled is None

    def refusal(self, provider: str) -> ProviderRefusal | None:
        return next((r for r in self.refused if r.provider == provider), None)


@dataclass(frozen=True)
class SpeechPlan(Generic[P]):
    """The providers to hand to a failover adapter, in order, and why."""

    providers: tuple[P, ...]
    decision: SpeechDecision

    @property
    def enabled(self) -> bool:
        return bool(self.providers)


def selection_request(
    settings: TenantSettings,
    *,
    purpose: Purpose,
    language: str,
    caller_restricted: bool,
    preference: tuple[str, ...] = (),
) -> SelectionRequest:
    """The tenant's instructions and this call's needs, in the policy's terms."""
    mechanism = settings.cross_border.mechanism
    return SelectionRequest(
        tenant_region=settings.region,
        purpose=purpose,
        language=language,
        approved_subprocessors=frozenset(settings.approved_subprocessors),
        cross_border_allowed=settings.cross_border.allowed,
        transfer_mechanism=None if mechanism is None else TransferMechanism(mechanism),
        preference=preference,
        caller_restricted=caller_restricted,
    )


def plan_speech(
    registry: Registry[P],
    settings: TenantSettings,
    call: CallSpeech,
    feature: SpeechFeature,
    *,
    preference: tuple[str, ...] = (),
    on_decision: Callable[[SpeechDecision], None] | None = None,
) -> SpeechPlan[P]:
    """Choose the providers ``feature`` may use on this call, or none (feature off)."""
    purpose, switch = FEATURES[feature]
    refused: tuple[ProviderRefusal, ...] = ()
    providers: tuple[P, ...] = ()
    bases: tuple[tuple[str, str], ...] = ()
    if not switch(settings):
        disabled: DisabledReason | None = DisabledReason.TENANT_DISABLED
    else:
        request = selection_request(
            settings,
            purpose=purpose,
            language=call.language,
            caller_restricted=call.caller_restricted,
            preference=preference,
        )
        selection = select_provider(request, registry.capabilities())
        providers = tuple(registry.get(cap.name) for cap in selection.eligible)
        refused = tuple(
            ProviderRefusal(
                provider=r.provider.name,
                subprocessor=r.provider.subprocessor_id,
                codes=tuple(reason.code for reason in r.reasons),
                reasons=tuple(reason.text for reason in r.reasons),
            )
            for r in selection.refused
        )
        bases = selection.bases
        disabled = None if providers else DisabledReason.NO_ELIGIBLE_PROVIDER
    decision = SpeechDecision(
        call_id=call.call_id,
        tenant=call.tenant,
        feature=feature,
        purpose=purpose,
        language=call.language,
        caller_restricted=call.caller_restricted,
        eligible=tuple(p.capabilities.name for p in providers),
        refused=refused,
        disabled=disabled,
        bases=bases,
    )
    _log(decision)
    if on_decision is not None:
        on_decision(decision)
    return SpeechPlan(providers, decision)


def _log(decision: SpeechDecision) -> None:
    # Provider names, sub-processor ids and reason codes only: no caller data.
    log.info(
        "speech.providers_chosen" if decision.enabled else "speech.feature_off",
        extra={
            "call_id": decision.call_id,
            "tenant": decision.tenant,
            "feature": decision.feature.value,
            "eligible": list(decision.eligible),
            "refused": {r.provider: [c.value for c in r.codes] for r in decision.refused},
            "disabled": None if decision.disabled is None else decision.disabled.value,
        },
    )
