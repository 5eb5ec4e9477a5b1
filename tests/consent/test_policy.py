"""Mode resolution: jurisdiction > number override > campaign override > tenant default."""

from __future__ import annotations

import pytest

from voicegw.consent import (
    CallContext,
    CallerLocation,
    ConsentPolicy,
    RecordingMode,
    Rule,
    locate,
    resolve_mode,
)
from voicegw.consent.us_area_codes import US_AREA_CODE_STATE

OFF, NOTIFY, OPT_IN, OPT_OUT = (
    RecordingMode.OFF,
    RecordingMode.NOTIFY,
    RecordingMode.OPT_IN,
    RecordingMode.OPT_OUT,
)

SF = "+14155550100"  # San Francisco, US-CA
NYC = "+12125550100"  # New York, one-party consent
BERLIN = "+493012345678"
LONDON = "+442079460000"
SUPPORT_LINE = "+18005550199"
CAMPAIGN = "winter-renewals"


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (SF, CallerLocation("US", "US-CA")),
        ("+13055550100", CallerLocation("US", "US-FL")),
        ("+13125550100", CallerLocation("US", "US-IL")),
        ("+14105550100", CallerLocation("US", "US-MD")),
        ("+16175550100", CallerLocation("US", "US-MA")),
        ("+14065550100", CallerLocation("US", "US-MT")),
        ("+17025550100", CallerLocation("US", "US-NV")),
        ("+16035550100", CallerLocation("US", "US-NH")),
        ("+12155550100", CallerLocation("US", "US-PA")),
        ("+12065550100", CallerLocation("US", "US-WA")),
        (NYC, CallerLocation("US", "US-NY")),
        (SUPPORT_LINE, CallerLocation("US", None)),  # toll-free: no state
        ("+14165550100", CallerLocation("CA", None)),  # Toronto: NANP but Canada
        (BERLIN, CallerLocation("DE", None)),
        (LONDON, CallerLocation("GB", None)),
        (None, CallerLocation(None, None)),
        ("anonymous", CallerLocation(None, None)),
        ("+999123", CallerLocation(None, None)),
        ("+1415", CallerLocation(None, None)),
    ],
)
def test_locate_derives_country_and_us_state(number: str | None, expected: CallerLocation) -> None:
    assert locate(number) == expected


def test_every_all_party_state_has_area_codes_in_the_table() -> None:
    states = set(US_AREA_CODE_STATE.values())
    assert {"CA", "FL", "IL", "MD", "MA", "MT", "NV", "NH", "PA", "WA"} <= states
    assert "800" not in US_AREA_CODE_STATE


def policy(**overrides: object) -> ConsentPolicy:
    settings: dict[str, object] = {
        "default_mode": NOTIFY,
        "all_party_jurisdictions": frozenset({"US-CA", "DE"}),
        "number_overrides": {"+1 (800) 555-0199": OPT_OUT},
        "campaign_overrides": {CAMPAIGN: OFF},
    }
    settings.update(overrides)
    return ConsentPolicy(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("caller", "dialled", "campaign", "mode", "rule", "jurisdiction"),
    [
        # All-party-consent caller under notify: raised to opt_in by the law.
        (SF, None, None, OPT_IN, Rule.JURISDICTION, "US-CA"),
        (BERLIN, None, None, OPT_IN, Rule.JURISDICTION, "DE"),
        # Jurisdiction outranks a number override that is weaker.
        (SF, SUPPORT_LINE, None, OPT_IN, Rule.JURISDICTION, "US-CA"),
        # ... but never switches recording on: off stays off.
        (SF, None, CAMPAIGN, OFF, Rule.CAMPAIGN_OVERRIDE, "US-CA"),
        # One-party-consent caller: configuration decides.
        (NYC, None, None, NOTIFY, Rule.TENANT_DEFAULT, None),
        (NYC, SUPPORT_LINE, None, OPT_OUT, Rule.NUMBER_OVERRIDE, None),
        (NYC, None, CAMPAIGN, OFF, Rule.CAMPAIGN_OVERRIDE, None),
        # Number override outranks campaign override.
        (NYC, SUPPORT_LINE, CAMPAIGN, OPT_OUT, Rule.NUMBER_OVERRIDE, None),
        (LONDON, "+14155550000", "other-campaign", NOTIFY, Rule.TENANT_DEFAULT, None),
        # Unknown caller location with all-party jurisdictions configured: fail closed.
        (None, None, None, OPT_IN, Rule.JURISDICTION_UNKNOWN, None),
        ("anonymous", SUPPORT_LINE, None, OPT_IN, Rule.JURISDICTION_UNKNOWN, None),
    ],
)
def test_precedence(
    caller: str | None,
    dialled: str | None,
    campaign: str | None,
    mode: RecordingMode,
    rule: Rule,
    jurisdiction: str | None,
) -> None:
    resolution = resolve_mode(policy(), CallContext(caller, dialled, campaign))
    assert (resolution.mode, resolution.rule, resolution.jurisdiction) == (
        mode,
        rule,
        jurisdiction,
    )


def test_resolution_keeps_what_configuration_alone_said() -> None:
    resolution = resolve_mode(policy(), CallContext(SF, SUPPORT_LINE))
    assert (resolution.configured_mode, resolution.configured_rule) == (
        OPT_OUT,
        Rule.NUMBER_OVERRIDE,
    )
    assert resolution.describe() == "opt_in by jurisdiction:US-CA"


def test_opt_in_tenant_in_all_party_jurisdiction_keeps_its_own_rule() -> None:
    resolution = resolve_mode(policy(default_mode=OPT_IN), CallContext(SF))
    assert (resolution.mode, resolution.rule, resolution.jurisdiction) == (
        OPT_IN,
        Rule.TENANT_DEFAULT,
        "US-CA",
    )


def test_whole_country_listed_covers_every_state() -> None:
    resolution = resolve_mode(policy(all_party_jurisdictions={"us"}), CallContext(NYC))
    assert (resolution.mode, resolution.jurisdiction) == (OPT_IN, "US")


def test_unknown_location_without_all_party_jurisdictions_uses_configuration() -> None:
    resolution = resolve_mode(policy(all_party_jurisdictions=frozenset()), CallContext(None))
    assert (resolution.mode, resolution.rule) == (NOTIFY, Rule.TENANT_DEFAULT)


def test_unknown_location_can_be_configured_as_not_all_party() -> None:
    tenant = policy(unknown_location_is_all_party=False)
    assert resolve_mode(tenant, CallContext("anonymous")).mode is NOTIFY


@pytest.mark.parametrize("mode", list(RecordingMode))
def test_all_party_caller_never_gets_less_than_opt_in_unless_off(mode: RecordingMode) -> None:
    resolved = resolve_mode(policy(default_mode=mode, campaign_overrides={}), CallContext(BERLIN))
    assert resolved.mode is (OFF if mode is OFF else OPT_IN)
