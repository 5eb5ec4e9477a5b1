"""select_provider: residency, approval and fitness rules, with a reason for every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.regions import TransferMechanism, policy_region
from voicegw.privacy.selection import RefusalCode, SelectionRequest, select_provider
from voicegw.privacy.subprocessors import capabilities_for, load_subprocessors

LISTING = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
ENGLISH = frozenset({"en-US", "en-GB", "zh-CN", "th-TH"})

AZURE = capabilities_for(
    LISTING["azure"], name="azure", purposes=frozenset({Purpose.ASR, Purpose.TTS}),
    languages=ENGLISH,
)  # fmt: skip
TENCENT = capabilities_for(
    LISTING["tencent"], name="tencent", purposes=frozenset({Purpose.ASR}), languages=ENGLISH
)
TENCENT_EU = capabilities_for(
    LISTING["tencent"], name="tencent-eu", purposes=frozenset({Purpose.ASR}),
    languages=ENGLISH, locations=frozenset({"eu"}),
)  # fmt: skip
TENCENT_SG = capabilities_for(
    LISTING["tencent"], name="tencent-sg", purposes=frozenset({Purpose.ASR}),
    languages=ENGLISH, locations=frozenset({"sg"}),
)  # fmt: skip
ELEVENLABS = capabilities_for(
    LISTING["elevenlabs"], name="elevenlabs", purposes=frozenset({Purpose.TTS}),
    languages=ENGLISH,
)  # fmt: skip
MYVOCAL = capabilities_for(
    LISTING["myvocal"], name="myvocal", purposes=frozenset({Purpose.TTS}), languages=ENGLISH
)
LOCAL_ASR = ProviderCapabilities(
    name="pocketsphinx-local", subprocessor_id=None, processing_locations=frozenset(),
    purposes=frozenset({Purpose.ASR}), data_types=frozenset({DataType.AUDIO}),
    languages=frozenset({"en-us"}),
)  # fmt: skip
LOCAL_TTS = ProviderCapabilities(
    name="espeak-local", subprocessor_id=None, processing_locations=frozenset(),
    purposes=frozenset({Purpose.TTS}), data_types=frozenset({DataType.TEXT}),
    languages=frozenset({"en-us", "th"}),
)  # fmt: skip


def asr_request(**overrides: object) -> SelectionRequest:
    fields: dict[str, object] = {
        "tenant_region": "eu", "purpose": Purpose.ASR, "language": "en-US",
        "approved_subprocessors": frozenset({"azure"}),
    }  # fmt: skip
    fields.update(overrides)
    return SelectionRequest(**fields)  # type: ignore[arg-type]


def codes(selection: object, name: str) -> list[RefusalCode]:
    return [r.code for r in selection.reasons_for(name)]  # type: ignore[attr-defined]


def test_eu_tenant_approving_only_an_asia_vendor_gets_no_asr_and_is_told_why() -> None:
    selection = select_provider(asr_request(), [AZURE])
    assert selection.choice is None
    (reason,) = selection.reasons_for("azure")
    assert reason.code is RefusalCode.REGION_NOT_PERMITTED
    assert "'sg'" in reason.text and "'eu'" in reason.text


def test_allowing_cross_border_with_scc_makes_the_asia_vendor_eligible() -> None:
    request = asr_request(cross_border_allowed=True, transfer_mechanism=TransferMechanism.SCC)
    selection = select_provider(request, [AZURE])
    assert selection.choice == AZURE
    assert selection.refused == ()


def test_allowing_cross_border_without_a_mechanism_is_still_refused() -> None:
    selection = select_provider(asr_request(cross_border_allowed=True), [AZURE])
    assert codes(selection, "azure") == [RefusalCode.NO_CROSS_BORDER_MECHANISM]


def test_adequacy_is_no_mechanism_for_a_destination_the_region_does_not_hold_adequate() -> None:
    request = asr_request(cross_border_allowed=True, transfer_mechanism=TransferMechanism.ADEQUACY)
    assert codes(select_provider(request, [AZURE]), "azure") == [
        RefusalCode.NO_CROSS_BORDER_MECHANISM
    ]


def test_a_vendor_is_refused_when_any_of_its_locations_is_not_permitted() -> None:
    request = asr_request(approved_subprocessors=frozenset({"tencent"}))
    selection = select_provider(request, [TENCENT, TENCENT_EU])
    assert selection.eligible == (TENCENT_EU,)
    assert codes(selection, "tencent") == [RefusalCode.REGION_NOT_PERMITTED]


def test_country_codes_fold_into_their_policy_region() -> None:
    assert policy_region("ie") == policy_region("de") == "eu"
    assert policy_region("sg") == "sg"
    request = SelectionRequest(
        tenant_region="de", purpose=Purpose.TTS, language="en",
        approved_subprocessors=frozenset({"myvocal"}),
    )  # fmt: skip
    # MyVocal processes in Ireland (fine for a German tenant) and Thailand (not).
    assert codes(select_provider(request, [MYVOCAL]), "myvocal") == [
        RefusalCode.REGION_NOT_PERMITTED
    ]


def test_restricted_caller_never_gets_a_vendor_whatever_else_is_allowed() -> None:
    request = asr_request(
        tenant_region="sg", caller_restricted=True, cross_border_allowed=True,
        transfer_mechanism=TransferMechanism.SCC,
        approved_subprocessors=frozenset({"azure", "tencent"}),
    )  # fmt: skip
    selection = select_provider(request, [AZURE, TENCENT, LOCAL_ASR])
    assert selection.eligible == (LOCAL_ASR,)
    assert codes(selection, "azure") == [RefusalCode.CALLER_RESTRICTED]
    assert codes(selection, "tencent") == [RefusalCode.CALLER_RESTRICTED]


def test_local_engines_need_no_approval_and_no_transfer() -> None:
    request = asr_request(approved_subprocessors=frozenset())
    assert select_provider(request, [LOCAL_ASR]).eligible == (LOCAL_ASR,)


def test_unapproved_vendor_is_refused_even_in_region() -> None:
    request = asr_request(tenant_region="sg", approved_subprocessors=frozenset())
    assert codes(select_provider(request, [AZURE]), "azure") == [RefusalCode.NOT_APPROVED]


def test_every_reason_is_reported_not_just_the_first() -> None:
    request = SelectionRequest(
        tenant_region="eu", purpose=Purpose.ASR, language="fr-FR", caller_restricted=True
    )
    assert codes(select_provider(request, [ELEVENLABS]), "elevenlabs") == [
        RefusalCode.CALLER_RESTRICTED,
        RefusalCode.NOT_APPROVED,
        RefusalCode.REGION_NOT_PERMITTED,
        RefusalCode.PURPOSE_UNSUPPORTED,
        RefusalCode.LANGUAGE_UNSUPPORTED,
    ]


@pytest.mark.parametrize(
    ("language", "eligible"), [("en-US", True), ("en", True), ("EN_us", True), ("th-TH", False)]
)
def test_language_matches_on_tag_or_primary_subtag(language: str, eligible: bool) -> None:
    request = asr_request(language=language)
    assert (select_provider(request, [LOCAL_ASR]).choice is not None) is eligible


def test_tenant_preference_orders_the_choice_and_the_failover_list() -> None:
    request = asr_request(
        tenant_region="sg", approved_subprocessors=frozenset({"azure", "tencent"}),
        preference=("tencent-sg", "azure"),
    )  # fmt: skip
    selection = select_provider(request, [LOCAL_ASR, AZURE, TENCENT_SG])
    assert [c.name for c in selection.eligible] == ["tencent-sg", "azure", "pocketsphinx-local"]
    assert selection.choice == TENCENT_SG


def test_tts_selection_uses_the_same_rules() -> None:
    request = SelectionRequest(
        tenant_region="us", purpose=Purpose.TTS, language="en-US",
        approved_subprocessors=frozenset({"elevenlabs", "azure"}),
    )  # fmt: skip
    selection = select_provider(request, [AZURE, ELEVENLABS, LOCAL_TTS])
    assert [c.name for c in selection.eligible] == ["elevenlabs", "espeak-local"]
    assert codes(selection, "azure") == [RefusalCode.REGION_NOT_PERMITTED]


def test_every_eligible_provider_carries_the_rule_it_is_allowed_on() -> None:
    request = asr_request(
        approved_subprocessors=frozenset({"azure", "tencent"}),
        cross_border_allowed=True,
        transfer_mechanism=TransferMechanism.SCC,
    )
    selection = select_provider(request, [AZURE, TENCENT_EU, LOCAL_ASR])
    assert dict(selection.bases) == {
        "azure": "cross_border_scc",  # Southeast Asia, from an EU tenant, under SCCs
        "tencent-eu": "in_region",
        "pocketsphinx-local": "on_node",
    }
    # Refused candidates get no basis: nothing may be processed on their account.
    assert dict(select_provider(asr_request(), [AZURE, LOCAL_ASR]).bases) == {
        "pocketsphinx-local": "on_node"
    }
