"""Policy regions a tenant can be homed in, and the countries each covers.

A tenant's region decides where its recordings land and which processing
locations its data may reach without a cross-border transfer mechanism. Region
codes are the policy regions of :mod:`voicegw.privacy.regions` (ISO country
codes, and ``eu`` for the EEA).
"""

from __future__ import annotations

from voicegw.privacy.regions import EEA

#: region code -> (display name, ISO 3166-1 alpha-2 countries inside it)
REGIONS: dict[str, tuple[str, frozenset[str]]] = {
    "sg": ("Singapore", frozenset({"SG"})),
    "eu": ("European Union / EEA", frozenset(code.upper() for code in EEA)),
    "gb": ("United Kingdom", frozenset({"GB"})),
    "us": ("United States", frozenset({"US"})),
    "in": ("India", frozenset({"IN"})),
    "au": ("Australia", frozenset({"AU"})),
    "jp": ("Japan", frozenset({"JP"})),
    "th": ("Thailand", frozenset({"TH"})),
    "cn": ("China", frozenset({"CN"})),
}


def region_of_country(country: str) -> str | None:
    """The policy region an ISO country code belongs to, if any."""
    code = country.upper()
    for region, (_, countries) in REGIONS.items():
        if code in countries:
            return region
    return None
