"""Policy regions a tenant can be homed in, and the countries each covers.

A tenant's region decides where its recordings land and which processing
locations its data may reach without a cross-border transfer mechanism.
"""

from __future__ import annotations

#: region code -> (display name, ISO 3166-1 alpha-2 countries inside it)
REGIONS: dict[str, tuple[str, frozenset[str]]] = {
    "sg": ("Singapore", frozenset({"SG"})),
    "eu": (
        "European Union / EEA",
        frozenset(
            {
                "AT",
                "BE",
                "BG",
                "HR",
                "CY",
                "CZ",
                "DK",
                "EE",
                "FI",
                "FR",
                "DE",
                "GR",
                "HU",
                "IE",
                "IT",
                "LV",
                "LT",
                "LU",
                "MT",
                "NL",
                "PL",
                "PT",
                "RO",
                "SK",
                "SI",
                "ES",
                "SE",
                "IS",
                "LI",
                "NO",
            }
        ),
    ),
    "uk": ("United Kingdom", frozenset({"GB"})),
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
