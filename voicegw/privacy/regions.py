"""Where data is processed, in the terms a tenant's residency rules are written in.

Vendors publish processing locations as countries (``"sg"``, ``"ie"``) or as a
region when they name no country (``"eu"`` for "Europe"). Tenants are placed in a
*policy region*: the legal area whose rules govern their callers' data. A location
outside the tenant's policy region is a cross-border transfer.

These tables are policy data for the operator's DPO to review, not derived facts:
they are kept deliberately small and explicit, and anything missing fails closed.
"""

from __future__ import annotations

from enum import StrEnum

# GDPR applies across the EEA, so every EEA member state is one policy region.
EEA = (
    "at", "be", "bg", "hr", "cy", "cz", "dk", "ee", "fi", "fr", "de", "gr", "hu", "ie",
    "it", "lv", "lt", "lu", "mt", "nl", "pl", "pt", "ro", "sk", "si", "es", "se",
    "is", "li", "no",
)  # fmt: skip

#: location code → policy region. Codes not listed are their own policy region
#: (``"sg"`` → ``"sg"``), so a new country is never silently merged into another.
POLICY_REGION_OF_LOCATION: dict[str, str] = {**dict.fromkeys(EEA, "eu"), "eu": "eu"}


def policy_region(location: str, table: dict[str, str] | None = None) -> str:
    code = location.lower()
    return (POLICY_REGION_OF_LOCATION if table is None else table).get(code, code)


class TransferMechanism(StrEnum):
    """Legal grounds a tenant can name for sending data out of its policy region."""

    # Values are the spellings tenants use in their settings (TenantSettings.cross_border).
    SCC = "scc"  # standard contractual clauses (or a region's equivalent standard contract)
    BCR = "bcr"  # binding corporate rules
    ADEQUACY = "adequacy"  # the destination is recognised as adequate by the tenant's region


#: tenant policy region → mechanisms its law recognises for outbound transfers.
#: A region missing here recognises none: cross-border processing is refused.
ACCEPTED_MECHANISMS: dict[str, frozenset[TransferMechanism]] = {
    "eu": frozenset(TransferMechanism),
    "gb": frozenset(TransferMechanism),
    "sg": frozenset({TransferMechanism.SCC, TransferMechanism.BCR}),
    "th": frozenset({TransferMechanism.SCC, TransferMechanism.BCR}),
    "in": frozenset({TransferMechanism.SCC, TransferMechanism.BCR}),
    "us": frozenset({TransferMechanism.SCC, TransferMechanism.BCR}),
    "cn": frozenset({TransferMechanism.SCC}),
}

#: tenant policy region → destination regions it holds adequate. The US is absent
#: for the EU on purpose: adequacy there covers only DPF-certified organisations,
#: which is a per-vendor fact this table does not model (use SCC instead).
ADEQUATE_DESTINATIONS: dict[str, frozenset[str]] = {
    "eu": frozenset(
        {"ad", "ar", "ca", "ch", "fo", "gb", "gg", "il", "im", "je", "jp", "kr", "nz", "uy"}
    ),
    "gb": frozenset({"eu", "ch", "jp", "kr", "nz", "ca", "il", "ar", "uy"}),
}


def transfer_permitted(
    tenant_region: str, destination_region: str, mechanism: TransferMechanism
) -> bool:
    """Whether ``mechanism`` covers sending data from the tenant's region to the destination."""
    if mechanism not in ACCEPTED_MECHANISMS.get(tenant_region, frozenset()):
        return False
    if mechanism is TransferMechanism.ADEQUACY:
        return destination_region in ADEQUATE_DESTINATIONS.get(tenant_region, frozenset())
    return True
