"""The one place that decides which speech provider may receive a call's data.

:func:`select_provider` is pure: plain request and capability records in, the
ordered eligible list (first = the choice, the rest = failover order) and the reasons
every other candidate was refused out. Each rule is a row of :data:`RULES`; a
candidate is eligible when no rule refuses it, and every rule is evaluated so the
refusal lists *all* reasons, not just the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from voicegw.privacy.capabilities import ProviderCapabilities, Purpose
from voicegw.privacy.regions import TransferMechanism, policy_region, transfer_permitted


class RefusalCode(StrEnum):
    NOT_APPROVED = "not_approved"
    REGION_NOT_PERMITTED = "region_not_permitted"
    NO_CROSS_BORDER_MECHANISM = "no_cross_border_mechanism"
    PURPOSE_UNSUPPORTED = "purpose_unsupported"
    LANGUAGE_UNSUPPORTED = "language_unsupported"
    CALLER_RESTRICTED = "caller_restricted"


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    text: str


@dataclass(frozen=True)
class SelectionRequest:
    """What the tenant configured and what this call needs.

    ``caller_restricted`` is set when the caller's processing is restricted (e.g. a
    GDPR Art. 18 restriction or an objection): then only on-node engines may run.
    """

    tenant_region: str
    purpose: Purpose
    language: str
    approved_subprocessors: frozenset[str] = frozenset()
    cross_border_allowed: bool = False
    transfer_mechanism: TransferMechanism | None = None
    preference: tuple[str, ...] = ()
    caller_restricted: bool = False


@dataclass(frozen=True)
class RefusedCandidate:
    provider: ProviderCapabilities
    reasons: tuple[Refusal, ...]


@dataclass(frozen=True)
class Selection:
    eligible: tuple[ProviderCapabilities, ...]
    refused: tuple[RefusedCandidate, ...]
    #: eligible provider name -> the basis it is allowed on (see :func:`transfer_basis`).
    bases: tuple[tuple[str, str], ...] = ()

    @property
    def choice(self) -> ProviderCapabilities | None:
        """The provider to use; ``None`` means the feature is off for this call."""
        return self.eligible[0] if self.eligible else None

    def reasons_for(self, name: str) -> tuple[Refusal, ...]:
        for refused in self.refused:
            if refused.provider.name == name:
                return refused.reasons
        return ()


Rule = Callable[[SelectionRequest, ProviderCapabilities], Iterable[Refusal]]


def _caller_restricted(req: SelectionRequest, cap: ProviderCapabilities) -> Iterable[Refusal]:
    if req.caller_restricted and not cap.is_local:
        yield Refusal(
            RefusalCode.CALLER_RESTRICTED,
            "the caller's processing is restricted: only on-node engines may be used",
        )


def _approved(req: SelectionRequest, cap: ProviderCapabilities) -> Iterable[Refusal]:
    if not cap.is_local and cap.subprocessor_id not in req.approved_subprocessors:
        yield Refusal(
            RefusalCode.NOT_APPROVED,
            f"sub-processor {cap.subprocessor_id!r} is not on the tenant's approved list",
        )


def _purpose(req: SelectionRequest, cap: ProviderCapabilities) -> Iterable[Refusal]:
    if req.purpose not in cap.purposes:
        yield Refusal(
            RefusalCode.PURPOSE_UNSUPPORTED, f"provider does not offer {req.purpose.value}"
        )


def _language(req: SelectionRequest, cap: ProviderCapabilities) -> Iterable[Refusal]:
    if not cap.supports_language(req.language):
        yield Refusal(
            RefusalCode.LANGUAGE_UNSUPPORTED, f"provider does not support {req.language!r}"
        )


def _locations(req: SelectionRequest, cap: ProviderCapabilities) -> Iterable[Refusal]:
    # Every declared location must be permitted: the gateway cannot tell which of a
    # vendor's locations a given request lands in, so it fails closed.
    home = policy_region(req.tenant_region)
    for location in sorted(cap.processing_locations):
        destination = policy_region(location)
        if destination == home:
            continue
        if not req.cross_border_allowed:
            yield Refusal(
                RefusalCode.REGION_NOT_PERMITTED,
                f"processing location {location!r} ({destination}) is outside tenant "
                f"region {home!r} and the tenant does not allow cross-border processing",
            )
        elif req.transfer_mechanism is None or not transfer_permitted(
            home, destination, req.transfer_mechanism
        ):
            named = "none" if req.transfer_mechanism is None else req.transfer_mechanism.value
            yield Refusal(
                RefusalCode.NO_CROSS_BORDER_MECHANISM,
                f"no valid transfer mechanism from {home!r} to {location!r} "
                f"({destination}); tenant named {named}",
            )


def transfer_basis(req: SelectionRequest, cap: ProviderCapabilities) -> str:
    """The rule an *eligible* provider is allowed on, as processing records name it.

    ``on_node`` (nothing leaves the gateway), ``in_region`` (every location inside the
    tenant's policy region) or ``cross_border_<mechanism>`` (the tenant's transfer
    mechanism covers the locations outside it).
    """
    if cap.is_local:
        return "on_node"
    home = policy_region(req.tenant_region)
    if all(policy_region(loc) == home for loc in cap.processing_locations):
        return "in_region"
    mechanism = "none" if req.transfer_mechanism is None else req.transfer_mechanism.value
    return f"cross_border_{mechanism}"


#: The residency and fitness rules, in the order their reasons are reported.
RULES: tuple[Rule, ...] = (_caller_restricted, _approved, _locations, _purpose, _language)


def select_provider(
    request: SelectionRequest, candidates: Sequence[ProviderCapabilities]
) -> Selection:
    """Order the eligible candidates by tenant preference and explain every refusal.

    Candidates named in ``request.preference`` come first in that order; the others
    follow in the order given.
    """
    eligible: list[ProviderCapabilities] = []
    refused: list[RefusedCandidate] = []
    for cap in candidates:
        reasons = tuple(r for rule in RULES for r in rule(request, cap))
        if reasons:
            refused.append(RefusedCandidate(cap, reasons))
        else:
            eligible.append(cap)
    rank = {name: i for i, name in enumerate(request.preference)}
    eligible.sort(key=lambda c: rank.get(c.name, len(rank)))  # stable: ties keep given order
    bases = tuple((c.name, transfer_basis(request, c)) for c in eligible)
    return Selection(tuple(eligible), tuple(refused), bases)
