"""Who may call what: the routing table for inbound INVITEs.

A call's tenant comes only from the digest credential that verified (an
authenticated user) or from the dialled number that a tenant owns (an
unauthenticated source, e.g. a carrier trunk) — never from a header the
caller wrote. Everything the table does not name is refused, so the gateway
is no open relay: an unauthenticated caller reaches nothing but a tenant's
own numbers, and nobody reaches another tenant's services.

The table (:data:`ROUTES`) maps (who calls, what the Request-URI names) to a
service or a refusal. The dialled number of an unauthenticated call is the
Request-URI user, which must be an E.164 number (``+`` and digits) that some
tenant owns.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voicegw.sip.message import SipRequest
from voicegw.sip.uri import URI, SipURI

#: Cheap shape check before a lookup: E.164 is at most 15 digits after ``+``.
E164_USER = re.compile(r"^\+[1-9][0-9]{5,14}$")
DEFAULT_ECHO_USER = "echo"


class Caller(enum.Enum):
    USER = "user"  # digest-authenticated SIP user of a tenant
    PUBLIC = "public"  # no credentials (carrier trunk, anybody on the network)
    TRUNK = "trunk"  # a configured trunk of a tenant (allow-listed source or its credential)


class Target(enum.Enum):
    ECHO = "echo"  # sip:<echo user>@<the caller's own realm>
    OWN_NUMBER = "own-number"  # an E.164 number of the caller's tenant (or any tenant, for PUBLIC)
    OTHER_TENANT_NUMBER = "other-tenant-number"
    #: sip:<user>@<the caller's own realm>: another registered user of the caller's tenant.
    TENANT_USER = "tenant-user"
    UNKNOWN = "unknown"


class Service(enum.Enum):
    ECHO = "echo"
    AGENT_QUEUE = "agent-queue"  # the tenant's queue of softphone agents
    BRIDGE_USER = "bridge-user"  # B2BUA to a registered user of the same tenant


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


#: (who calls, what they dial) -> the service that takes the call, or why not.
#: Tenant numbers go to the tenant's agent queue; the echo service stays at sip:echo@<realm>.
ROUTES: dict[tuple[Caller, Target], Service | Refusal] = {
    (Caller.USER, Target.ECHO): Service.ECHO,
    (Caller.USER, Target.OWN_NUMBER): Service.AGENT_QUEUE,
    (Caller.USER, Target.OTHER_TENANT_NUMBER): Refusal(403, "Forbidden"),
    (Caller.USER, Target.UNKNOWN): Refusal(404, "Not Found"),
    (Caller.USER, Target.TENANT_USER): Service.BRIDGE_USER,
    (Caller.PUBLIC, Target.TENANT_USER): Refusal(403, "Forbidden"),
    (Caller.TRUNK, Target.TENANT_USER): Refusal(403, "Forbidden"),
    (Caller.PUBLIC, Target.ECHO): Refusal(403, "Forbidden"),
    (Caller.PUBLIC, Target.OWN_NUMBER): Service.AGENT_QUEUE,
    (Caller.PUBLIC, Target.OTHER_TENANT_NUMBER): Refusal(403, "Forbidden"),
    (Caller.PUBLIC, Target.UNKNOWN): Refusal(404, "Not Found"),
    # A trunk carries calls for its own tenant only: never a relay into another tenant.
    (Caller.TRUNK, Target.ECHO): Refusal(403, "Forbidden"),
    (Caller.TRUNK, Target.OWN_NUMBER): Service.AGENT_QUEUE,
    (Caller.TRUNK, Target.OTHER_TENANT_NUMBER): Refusal(403, "Forbidden"),
    (Caller.TRUNK, Target.UNKNOWN): Refusal(404, "Not Found"),
}


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """Who places the call: ``tenant_id``/``username``/``realm`` for USER callers,
    ``tenant_id`` (from the trunk's config) and ``username`` (the trunk name) for TRUNK."""

    kind: Caller
    tenant_id: str | None = None
    username: str | None = None
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where an accepted call goes and on whose behalf."""

    service: Service
    tenant_id: str
    #: The dialled tenant number (E.164), None for a call to a service address.
    number: str | None


#: Looks up which tenant owns an E.164 number (None: nobody).
NumberOwner = Callable[[str], Awaitable[str | None]]
#: Whether (tenant id, realm, user name) is a SIP user of that tenant (a bridge target).
TenantUserLookup = Callable[[str, str, str], Awaitable[bool]]


def dialled_number(request: SipRequest) -> str | None:
    """The Request-URI user when it has the shape of an E.164 number."""
    return uri_number(request.uri)


def uri_number(uri: URI) -> str | None:
    """The user part of a SIP URI when it has the shape of E.164 (tel: URIs route nowhere)."""
    user = uri.user if isinstance(uri, SipURI) else None
    return user if user is not None and E164_USER.match(user) else None


class Router:
    """Classifies an INVITE's target and looks the decision up in :data:`ROUTES`."""

    def __init__(
        self,
        number_owner: NumberOwner,
        *,
        echo_user: str = DEFAULT_ECHO_USER,
        tenant_user: TenantUserLookup | None = None,
    ) -> None:
        self.number_owner = number_owner
        self.echo_user = echo_user
        #: None: users of the caller's realm are not callable (no bridging on this node).
        self.tenant_user = tenant_user

    async def target(
        self, uri: URI, caller: CallerIdentity
    ) -> tuple[Target, str | None, str | None]:
        """What ``uri`` names: the target kind, the owning tenant and the number."""
        number = uri_number(uri)
        if not isinstance(uri, SipURI) or uri.user is None:
            return Target.UNKNOWN, None, None
        if (
            caller.realm is not None
            and uri.user == self.echo_user
            and uri.host.lower() == caller.realm
        ):
            return Target.ECHO, caller.tenant_id, None
        if (
            self.tenant_user is not None
            and caller.realm is not None
            and caller.tenant_id is not None
            and uri.host.lower() == caller.realm
            and number is None
            and await self.tenant_user(caller.tenant_id, caller.realm, uri.user)
        ):
            # A user of the caller's own realm: the realm is the tenant's, so never another's.
            return Target.TENANT_USER, caller.tenant_id, None
        if number is None:
            return Target.UNKNOWN, None, None
        return await self._number_target(number, caller)

    async def _number_target(
        self, number: str, caller: CallerIdentity
    ) -> tuple[Target, str | None, str | None]:
        owner = await self.number_owner(number)
        if owner is None:
            return Target.UNKNOWN, None, None
        if caller.kind is Caller.PUBLIC or owner == caller.tenant_id:
            return Target.OWN_NUMBER, owner, number
        return Target.OTHER_TENANT_NUMBER, None, None

    async def route(self, request: SipRequest, caller: CallerIdentity) -> Route | Refusal:
        return await self.route_uri(request.uri, caller)

    async def route_uri(self, uri: URI, caller: CallerIdentity) -> Route | Refusal:
        """The decision for ``caller`` reaching ``uri`` (an INVITE's Request-URI, a REFER's
        Refer-To): the same table, so a transfer reaches nothing a call could not."""
        target, tenant_id, number = await self.target(uri, caller)
        decision = ROUTES[(caller.kind, target)]
        if isinstance(decision, Refusal):
            return decision
        assert tenant_id is not None  # every accepting rule has a tenant (see target())
        return Route(decision, tenant_id, number)
