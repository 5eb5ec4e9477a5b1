"""Which recording mode applies to a call, and which rule decided it.

Precedence, highest first:

1. **Jurisdiction.** If the caller's number is in one of the tenant's
   all-party-consent jurisdictions (``US-CA``, ``DE``, ...), the mode is raised
   to at least ``opt_in``. This is law; no business setting may weaken it. It
   only ever *raises* protection: a call configured ``off`` stays ``off``,
   because all-party-consent law restricts recording and never requires it.
   A caller whose location cannot be told (withheld, malformed or
   non-geographic number) is treated as inside such a jurisdiction when the
   tenant lists any: the gateway fails closed when it cannot tell.
2. **Number override.** The dialled tenant number is what the caller chose
   and often what a published statement ("calls to this line are not
   recorded") is attached to, so it outranks grouping settings.
3. **Campaign override.** A business grouping that may span many numbers.
4. **Tenant default.**
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from voicegw.consent.jurisdiction import CallerLocation, locate, normalise_e164
from voicegw.consent.modes import STRICTNESS, RecordingMode


class Rule(enum.StrEnum):
    """The rule that fixed a call's mode; stored in every consent decision."""

    JURISDICTION = "jurisdiction"
    JURISDICTION_UNKNOWN = "jurisdiction_unknown"
    NUMBER_OVERRIDE = "number_override"
    CAMPAIGN_OVERRIDE = "campaign_override"
    TENANT_DEFAULT = "tenant_default"


def _frozen(mapping: Mapping[str, RecordingMode]) -> Mapping[str, RecordingMode]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ConsentPolicy:
    """A tenant's recording configuration (plain data, loaded by the caller)."""

    default_mode: RecordingMode
    all_party_jurisdictions: frozenset[str] = frozenset()
    number_overrides: Mapping[str, RecordingMode] = field(default_factory=dict)
    campaign_overrides: Mapping[str, RecordingMode] = field(default_factory=dict)
    unknown_location_is_all_party: bool = True
    version: str = "1"

    def __post_init__(self) -> None:
        # Keys are normalised once so "+1 (415) 555-0100" and "+14155550100" match.
        numbers = {normalise_e164(k) or k: v for k, v in self.number_overrides.items()}
        object.__setattr__(self, "number_overrides", _frozen(numbers))
        object.__setattr__(self, "campaign_overrides", _frozen(self.campaign_overrides))
        codes = frozenset(c.upper() for c in self.all_party_jurisdictions)
        object.__setattr__(self, "all_party_jurisdictions", codes)


@dataclass(frozen=True)
class CallContext:
    """What the policy looks at: caller number, dialled tenant number, campaign."""

    caller: str | None
    dialled: str | None = None
    campaign: str | None = None


@dataclass(frozen=True)
class ModeResolution:
    """The mode in force for one call and why."""

    mode: RecordingMode
    rule: Rule
    configured_mode: RecordingMode
    configured_rule: Rule
    jurisdiction: str | None  # the all-party-consent jurisdiction matched, if any
    policy_version: str

    def describe(self) -> str:
        """Compact form for audit records, e.g. ``opt_in by jurisdiction:US-CA``."""
        where = f":{self.jurisdiction}" if self.jurisdiction else ""
        return f"{self.mode.value} by {self.rule.value}{where}"


_ConfigRule = Callable[[ConsentPolicy, CallContext], RecordingMode | None]

# Configured rules in precedence order; the first that answers wins.
_CONFIG_RULES: tuple[tuple[Rule, _ConfigRule], ...] = (
    (Rule.NUMBER_OVERRIDE, lambda p, c: p.number_overrides.get(normalise_e164(c.dialled) or "")),
    (Rule.CAMPAIGN_OVERRIDE, lambda p, c: p.campaign_overrides.get(c.campaign or "")),
    (Rule.TENANT_DEFAULT, lambda p, c: p.default_mode),
)

# The least protective mode a caller in an all-party-consent jurisdiction may get.
_JURISDICTION_FLOOR = RecordingMode.OPT_IN


def _all_party_match(policy: ConsentPolicy, where: CallerLocation) -> tuple[Rule, str] | None:
    if not policy.all_party_jurisdictions:
        return None
    if not where.known:
        return (Rule.JURISDICTION_UNKNOWN, "") if policy.unknown_location_is_all_party else None
    for code in where.codes:
        if code in policy.all_party_jurisdictions:
            return Rule.JURISDICTION, code
    return None


def resolve_mode(policy: ConsentPolicy, call: CallContext) -> ModeResolution:
    """Apply the precedence rules to one call."""
    configured_rule, configured = next(
        (rule, mode) for rule, pick in _CONFIG_RULES if (mode := pick(policy, call)) is not None
    )
    mode, rule = configured, configured_rule
    match = _all_party_match(policy, locate(call.caller))
    code = (match[1] or None) if match is not None else None
    if match is not None and STRICTNESS[configured] < STRICTNESS[_JURISDICTION_FLOOR]:
        mode, rule = _JURISDICTION_FLOOR, match[0]
    return ModeResolution(mode, rule, configured, configured_rule, code, policy.version)
