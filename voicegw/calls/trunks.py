"""Carrier/PBX trunks: who a trunk is on the way in, what it may use on the way out.

A trunk belongs to one tenant, and that is where its calls' tenant comes from
(never from a header): inbound, a trunk is recognised either by a SIP
credential of its tenant that verified ("digest") or by the source address of
an INVITE matching its allow-list ("allow_list", for carriers that cannot
answer a challenge). Outbound, the trunk's credentials answer 401/407 only
through :func:`~voicegw.sip.digest.credential_guard`: to that trunk's host,
for its configured realm, so a callee cannot harvest a response for the
trunk's password.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voicegw.config import TrunkConfig
from voicegw.sip.digest import DigestClient, TrunkCredentials
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import SipURI, parse_sip_uri

if TYPE_CHECKING:  # sip_calls -> sip_service -> trunks: the call layer is only a type here
    from voicegw.calls.sip_calls import CallFailed, OutboundCall, SipCalls

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrunkOutbound:
    """Where calls through the trunk go and, if the provider challenges, with what."""

    destination: Destination
    credentials: TrunkCredentials | None = field(default=None, repr=False)

    def digest_client(self) -> DigestClient | None:
        """A client for one call's INVITE (its nonce counts are the call's own)."""
        return None if self.credentials is None else DigestClient(self.credentials)

    def request_uri(self, number: str) -> SipURI:
        """``sip:<number>@<trunk host>`` (with its transport) for calling ``number``."""
        kind = self.destination.transport.upper()
        params = "" if kind == "UDP" else f";transport={kind.lower()}"
        host = _uri_host(self.destination.host)
        return parse_sip_uri(f"sip:{number}@{host}:{self.destination.port}{params}")


@dataclass(frozen=True, slots=True)
class Trunk:
    name: str
    tenant_id: str
    #: The tenant's SIP credential a "digest" trunk authenticates with (None: allow-listed).
    username: str | None = None
    sources: tuple[Network, ...] = ()
    outbound: TrunkOutbound | None = None

    def admits(self, host: str) -> bool:
        """True if a request from ``host`` (an IP literal) is from this trunk's allow-list."""
        address = _address(host)
        return address is not None and any(address in network for network in self.sources)


@dataclass(frozen=True, slots=True)
class TrunkIdentity:
    """Who an inbound request is, when it is a trunk's: the tenant comes from config."""

    trunk: str
    tenant_id: str


class TrunkTable:
    """The node's trunks, looked up by source address, credential or name."""

    def __init__(self, trunks: Iterable[Trunk] = ()) -> None:
        self.trunks = tuple(trunks)
        self._by_name = {trunk.name: trunk for trunk in self.trunks}
        self._by_credential = {
            (trunk.tenant_id, trunk.username): trunk
            for trunk in self.trunks
            if trunk.username is not None
        }

    def __len__(self) -> int:
        return len(self.trunks)

    def get(self, name: str) -> Trunk | None:
        return self._by_name.get(name)

    def by_source(self, host: str) -> TrunkIdentity | None:
        """The allow-listed trunk ``host`` belongs to (sources never overlap, see config)."""
        for trunk in self.trunks:
            if trunk.admits(host):
                return TrunkIdentity(trunk.name, trunk.tenant_id)
        return None

    def by_credential(self, tenant_id: str, username: str) -> TrunkIdentity | None:
        """The "digest" trunk whose SIP credential ``username`` of ``tenant_id`` verified."""
        trunk = self._by_credential.get((tenant_id, username))
        return None if trunk is None else TrunkIdentity(trunk.name, trunk.tenant_id)


def trunk_from_config(config: TrunkConfig) -> Trunk:
    outbound = None
    if config.outbound is not None:
        out = config.outbound
        credentials = None
        if out.username is not None and out.password is not None and out.realm is not None:
            credentials = TrunkCredentials(
                username=out.username,
                password=out.password.get_secret_value(),
                realm=out.realm,
                host=out.host,
            )
        outbound = TrunkOutbound(Destination(out.host, out.port, out.transport), credentials)
    return Trunk(
        name=config.name,
        tenant_id=config.tenant,
        username=config.username,
        sources=tuple(config.sources),
        outbound=outbound,
    )


def trunk_table(configs: Iterable[TrunkConfig]) -> TrunkTable:
    return TrunkTable(trunk_from_config(config) for config in configs)


class NoOutbound(ValueError):
    """The trunk has no ``outbound`` section: calls cannot be placed through it."""


async def place_trunk_call(
    calls: SipCalls, trunk: Trunk, number: str, *, caller: str, answer_timeout: float = 60.0
) -> OutboundCall | CallFailed:
    """Call ``number`` through ``trunk`` on behalf of the trunk's tenant.

    A 401/407 is answered only if it comes from the trunk's host for its realm
    (the credential guard); any other challenge fails the call as it stands.
    """
    if trunk.outbound is None:
        raise NoOutbound(trunk.name)
    return await calls.place_call(
        trunk.outbound.request_uri(number),
        trunk.outbound.destination,
        caller=caller,
        tenant_id=trunk.tenant_id,
        digest=trunk.outbound.digest_client(),
        answer_timeout=answer_timeout,
    )


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _uri_host(host: str) -> str:
    address = _address(host)
    return f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else host
