"""Tenant settings are validated data from the start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from voicegw.tenant_settings import TenantSettings, merge_settings


def test_defaults_are_privacy_preserving() -> None:
    s = TenantSettings()
    assert s.recording_mode == "off"
    assert s.transcription_enabled is False
    assert s.approved_subprocessors == ()
    assert s.cross_border.allowed is False
    assert (s.retention.recordings_days, s.retention.transcripts_days) == (90, 90)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"region": "mars"}, "region"),
        ({"recording_mode": "always"}, "recording_mode"),
        ({"retention": {"recordings_days": 0}}, "retention.recordings_days"),
        ({"all_party_consent_jurisdictions": ["California"]}, "all_party_consent_jurisdictions"),
        ({"cross_border": {"allowed": True}}, "cross_border"),
        ({"consent_capture": {"accept_keys": "1", "decline_keys": "1"}}, "consent_capture"),
        ({"consent_capture": {"methods": []}}, "consent_capture.methods"),
        ({"consent_prompt": {"text": None}}, "consent_prompt"),
        ({"approved_subprocessors": ["Not An Id"]}, "approved_subprocessors"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_patches_name_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        merge_settings(TenantSettings(), patch)
    assert ".".join(str(p) for p in err.value.errors()[0]["loc"]).startswith(field)


def test_patch_merges_nested_objects() -> None:
    s = merge_settings(TenantSettings(), {"retention": {"recordings_days": 30}})
    assert s.retention.recordings_days == 30
    assert s.retention.transcripts_days == 90


def test_cross_border_with_mechanism_and_jurisdictions() -> None:
    s = merge_settings(
        TenantSettings(region="eu"),
        {
            "cross_border": {"allowed": True, "mechanism": "scc"},
            "all_party_consent_jurisdictions": ["DE", "US-CA", "DE"],
            "recording_mode": "opt_out",
        },
    )
    assert s.cross_border.mechanism == "scc"
    assert s.all_party_consent_jurisdictions == ("DE", "US-CA")
