"""Where a REFER from an agent's SIP phone sends the caller: the softphone's transfer targets.

Sans-IO. A phone names its target in ``Refer-To``; :func:`refer_target` reads
it against a snapshot of the tenant (:class:`TenantTargets`: its realm, which
SIP login rings which agent, the agents free now, its queues, whether a trunk
can dial out) and returns the
:class:`~voicegw.calls.agent_transfers.TransferTarget` a softphone would have
sent, or the :class:`~voicegw.calls.routing.Refusal` the REFER is answered
with. The transfer itself then follows
:data:`~voicegw.calls.agent_transfers.TRANSFER_RULES` like any other (blind).

What a Refer-To user names (the host must be the tenant's realm):

=========================  ===============================================
``+<E.164>`` of the tenant  the queue that number rings (its ``[[queues]]``)
``+<E.164>`` elsewhere     an external number, dialled through a trunk
another tenant's number    refused (403): never a relay into a tenant
``<SIP user>``             the agent whose phone that login is
``agent-<id>``             that agent of the tenant
``<queue name>``           that queue of the tenant
=========================  ===============================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from voicegw.calls.agent_transfers import TargetKind, TransferTarget
from voicegw.calls.routing import E164_USER, Refusal
from voicegw.sip.uri import URI, SipURI

__all__ = ["REFER_RULES", "Named", "TenantTargets", "name_of", "refer_target"]

_AGENT_ID = re.compile(r"^agent-([1-9][0-9]{0,9})$")


class Named(enum.Enum):
    """What a Refer-To URI names, before it becomes a target."""

    OWN_NUMBER = "own-number"
    EXTERNAL_NUMBER = "external-number"
    OTHER_TENANT_NUMBER = "other-tenant-number"
    AGENT = "agent"
    QUEUE = "queue"
    OTHER_DOMAIN = "other-domain"
    UNKNOWN = "unknown"


#: What each kind of name becomes: a softphone target kind, or the REFER's refusal.
REFER_RULES: Final[Mapping[Named, TargetKind | Refusal]] = MappingProxyType(
    {
        Named.OWN_NUMBER: TargetKind.QUEUE,
        Named.EXTERNAL_NUMBER: TargetKind.NUMBER,
        Named.OTHER_TENANT_NUMBER: Refusal(403, "Forbidden"),
        Named.AGENT: TargetKind.AGENT,
        Named.QUEUE: TargetKind.QUEUE,
        Named.OTHER_DOMAIN: Refusal(403, "Forbidden"),
        Named.UNKNOWN: Refusal(404, "Not Found"),
    }
)

#: Checks after the name resolved (the softphone's ``TransferError`` codes as SIP).
AGENT_BUSY: Final = Refusal(480, "Temporarily Unavailable")
SELF: Final = Refusal(403, "Cannot Transfer To Yourself")
NO_TRUNK: Final = Refusal(403, "No Route To External Numbers")


@dataclass(frozen=True, slots=True)
class TenantTargets:
    """The referring agent's tenant, as far as transfer targets go, right now."""

    realm: str
    #: The referring agent (it cannot transfer to itself).
    from_agent: int
    #: SIP login -> the agent whose phone it is.
    phones: Mapping[str, int]
    #: Agents of the tenant with a session here, and those of them free to ring now.
    agents: frozenset[int]
    available: frozenset[int]
    queues: frozenset[str]
    #: Whether an external number can be dialled (the tenant has an outbound trunk).
    can_dial: bool
    #: For a ``+E.164`` user: the tenant that owns it (None: nobody) and, if it is this
    #: tenant, the queue it rings. Looked up by the caller before the rules run.
    number_owner: str | None = None
    number_queue: str | None = None
    tenant_id: str = ""


def name_of(uri: URI, tenant: TenantTargets) -> tuple[Named, str]:
    """What ``uri`` names and the value the target takes (agent id, queue, number)."""
    if not isinstance(uri, SipURI) or not uri.user:
        return Named.UNKNOWN, ""
    if uri.host.lower() != tenant.realm:
        return Named.OTHER_DOMAIN, ""
    user = uri.user
    if E164_USER.match(user):
        if tenant.number_owner is None:
            return Named.EXTERNAL_NUMBER, user
        if tenant.number_owner == tenant.tenant_id and tenant.number_queue is not None:
            return Named.OWN_NUMBER, tenant.number_queue
        return Named.OTHER_TENANT_NUMBER, ""
    agent = tenant.phones.get(user)
    if agent is not None:
        return Named.AGENT, str(agent)
    found = _AGENT_ID.match(user)
    if found is not None and int(found.group(1)) in tenant.agents:
        return Named.AGENT, found.group(1)
    if user in tenant.queues:
        return Named.QUEUE, user
    return Named.UNKNOWN, ""


def refer_target(uri: URI, tenant: TenantTargets) -> TransferTarget | Refusal:
    """The blind-transfer target ``uri`` names for the referring agent, or why not."""
    named, value = name_of(uri, tenant)
    rule = REFER_RULES[named]
    if isinstance(rule, Refusal):
        return rule
    if rule is TargetKind.AGENT:
        agent = int(value)
        if agent == tenant.from_agent:
            return SELF
        if agent not in tenant.available:
            return AGENT_BUSY
    if rule is TargetKind.NUMBER and not tenant.can_dial:
        return NO_TRUNK
    return TransferTarget(rule, value)
