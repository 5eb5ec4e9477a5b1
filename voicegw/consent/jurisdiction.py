"""Where a caller is, as far as consent law is concerned.

The country comes from ``phonenumbers.region_code_for_number``; for US numbers
the area code adds the state (``US-CA``), because recording-consent law in the
US is set per state. A number's region is the place it was issued, not where
the caller stands; that is the best a gateway can know, and the policy treats
an unknown location as "could be anywhere" (see :mod:`voicegw.consent.policy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers

from voicegw.consent.us_area_codes import US_AREA_CODE_STATE

_US_NATIONAL_DIGITS = 10


@dataclass(frozen=True)
class CallerLocation:
    """ISO 3166 codes of a caller's number: country (``DE``) and subdivision (``US-CA``)."""

    country: str | None
    subdivision: str | None = None

    @property
    def known(self) -> bool:
        return self.country is not None

    @property
    def codes(self) -> tuple[str, ...]:
        """Jurisdiction codes from most to least specific, e.g. ``("US-CA", "US")``."""
        return tuple(c for c in (self.subdivision, self.country) if c is not None)


UNKNOWN_LOCATION = CallerLocation(None, None)


def locate(number: str | None) -> CallerLocation:
    """The jurisdiction of an E.164 number; UNKNOWN_LOCATION if absent or not a valid number."""
    if not number:
        return UNKNOWN_LOCATION
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return UNKNOWN_LOCATION
    if not phonenumbers.is_valid_number(parsed):
        return UNKNOWN_LOCATION
    region = phonenumbers.region_code_for_number(parsed)
    if not region or region == "001":  # "001": non-geographic (satellite, UIFN)
        return UNKNOWN_LOCATION
    national = str(parsed.national_number)
    if region == "US" and len(national) == _US_NATIONAL_DIGITS:
        state = US_AREA_CODE_STATE.get(national[:3])
        return CallerLocation("US", f"US-{state}" if state else None)
    return CallerLocation(region, None)


def normalise_e164(number: str | None) -> str | None:
    """``+4930123456`` form of a number, or None if it does not parse."""
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
