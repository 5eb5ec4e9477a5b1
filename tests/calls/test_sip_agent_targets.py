"""A REFER from an agent's SIP phone names a softphone transfer target, or is refused."""

from __future__ import annotations

import dataclasses

import pytest

from voicegw.calls.agent_transfers import TargetKind, TransferTarget
from voicegw.calls.routing import Refusal
from voicegw.calls.sip_agent_targets import REFER_RULES, Named, TenantTargets, refer_target
from voicegw.sip.uri import parse_uri

REALM = "acme.voice.test"
ACME = TenantTargets(
    realm=REALM,
    from_agent=1,
    phones={"desk1": 1, "desk2": 2, "desk3": 3},
    agents=frozenset({1, 2, 3, 4}),
    available=frozenset({2, 4}),
    queues=frozenset({"default", "sales"}),
    can_dial=True,
    tenant_id="acme",
)


def target(uri: str, tenant: TenantTargets = ACME) -> TransferTarget | Refusal:
    return refer_target(parse_uri(uri), tenant)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"sip:desk2@{REALM}", TransferTarget(TargetKind.AGENT, "2")),
        (f"sip:agent-4@{REALM}", TransferTarget(TargetKind.AGENT, "4")),
        (f"sip:sales@{REALM}", TransferTarget(TargetKind.QUEUE, "sales")),
        (f"sip:+6598765432@{REALM}", TransferTarget(TargetKind.NUMBER, "+6598765432")),
        (f"sip:desk3@{REALM}", Refusal(480, "Temporarily Unavailable")),  # on a call
        (f"sip:desk1@{REALM}", Refusal(403, "Cannot Transfer To Yourself")),
        (f"sip:agent-1@{REALM}", Refusal(403, "Cannot Transfer To Yourself")),
        (f"sip:agent-9@{REALM}", Refusal(404, "Not Found")),  # no such agent of the tenant
        (f"sip:nobody@{REALM}", Refusal(404, "Not Found")),
        ("sip:desk2@other.voice.test", Refusal(403, "Forbidden")),  # another tenant's realm
        ("tel:+6598765432", Refusal(404, "Not Found")),
    ],
)
def test_refer_to_names_the_target_a_softphone_would_choose(
    uri: str, expected: TransferTarget | Refusal
) -> None:
    assert target(uri) == expected


def test_the_tenants_own_number_is_the_queue_it_rings_and_another_tenants_is_forbidden() -> None:
    own = dataclasses.replace(ACME, number_owner="acme", number_queue="sales")
    assert target(f"sip:+6561234567@{REALM}", own) == TransferTarget(TargetKind.QUEUE, "sales")
    other = dataclasses.replace(ACME, number_owner="globex")
    assert target(f"sip:+6561234567@{REALM}", other) == Refusal(403, "Forbidden")


def test_external_numbers_need_a_trunk() -> None:
    no_trunk = dataclasses.replace(ACME, can_dial=False)
    refused = target(f"sip:+6598765432@{REALM}", no_trunk)
    assert isinstance(refused, Refusal) and refused.status == 403


def test_every_kind_of_name_has_a_rule() -> None:
    assert set(REFER_RULES) == set(Named)
