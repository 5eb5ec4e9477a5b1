"""Trunks on the real SIP service over loopback: allow-listed INVITEs and outbound credentials.

The trunk side is a plain UDP socket writing requests by hand, so every answer
is checked on the wire. The allow-list names 127.0.0.1 (the test's source);
a second node plays a carrier that challenges our outbound INVITEs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import CallFailed, InboundCall, OutboundCall, SipCalls
from voicegw.calls.sip_service import AuthenticatedRequest, SipService, SipServiceConfig
from voicegw.calls.trunks import Trunk, TrunkOutbound, TrunkTable, place_trunk_call
from voicegw.media.ports import PortAllocator
from voicegw.sip.digest import DigestClient, TrunkCredentials
from voicegw.sip.message import SipMessage, SipResponse, new_branch, parse_message
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import ListenAddresses
from voicegw.sip.uri import parse_uri
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
ACME_NUMBER = "+442079460123"
GLOBEX_NUMBER = "+442079460999"
CARRIER_REALM = f"globex.{DOMAIN}"  # the "carrier" node authenticates us as globex's user
TIMEOUT = 5.0
LOOPBACK = ipaddress.IPv4Network("127.0.0.1/32")
ELSEWHERE = ipaddress.IPv4Network("192.0.2.0/28")


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        for tenant, number in (("acme", ACME_NUMBER), ("globex", GLOBEX_NUMBER)):
            await tenants.create_tenant(
                session, actor="test", tenant_id=tenant, name=tenant, settings=TenantSettings()
            )
            await tenants.add_number(session, actor="test", tenant_id=tenant, number=number)
        await sip_accounts.create_credential(
            session,
            actor="test",
            tenant_id="globex",
            username="acme-trunk",
            realm=CARRIER_REALM,
            password="trunk-secret",
        )
    yield sessions
    await engine.dispose()


@dataclass
class Node:
    service: SipService
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


NodeFactory = Callable[[TrunkTable], Awaitable[Node]]


@pytest.fixture
async def node_factory(sessions: Sessions) -> AsyncIterator[NodeFactory]:
    started: list[Node] = []

    async def start(trunks: TrunkTable) -> Node:
        service = SipService(
            SipServiceConfig(
                domain=DOMAIN,
                nonce_secret=b"0123456789abcdef-trunk-secret",
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
            ),
            sessions,
            trunks=trunks,
        )

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 44000, 44999),
            # Tenant numbers reach the agent queue; echo stands in for it here.
            {Service.ECHO: EchoService(), Service.AGENT_QUEUE: EchoService()},
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        node = Node(service, calls, offered)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.calls.close()
        await node.service.stop()


class Wire(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.messages: asyncio.Queue[SipMessage] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.messages.put_nowait(parse_message(data))


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Wire, local_addr=("127.0.0.1", 0))
    yield protocol
    transport.close()


SDP = (
    "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


async def invite(
    wire: Wire, node: Node, user: str, host: str = DOMAIN, extra: str = ""
) -> SipResponse:
    """Send an unauthenticated INVITE for ``sip:<user>@<host>`` (``extra``: header lines);
    its final response."""
    wire.transport.sendto(invite_text(wire, user, host, extra), ("127.0.0.1", node.port))
    while True:
        message = await asyncio.wait_for(wire.messages.get(), TIMEOUT)
        if isinstance(message, SipResponse) and message.status >= 200:
            return message


def invite_text(
    wire: Wire, user: str, host: str = DOMAIN, extra: str = "", call_id: str | None = None
) -> bytes:
    """An INVITE as a carrier sends it, on a branch of its own."""
    assert wire.transport is not None
    port = wire.transport.get_extra_info("sockname")[1]
    uri = f"sip:{user}@{host}"
    text = (
        f"INVITE {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        # A From naming the other tenant: the allow-list's tenant wins regardless.
        f"From: <sip:+14155550123@globex.{DOMAIN}>;tag=carrier\r\n"
        f"To: <{uri}>\r\nCall-ID: {call_id or new_branch()}@carrier\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:carrier@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n{extra}"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    )
    return text.encode()


async def confirm_and_hang_up(wire: Wire, node: Node, ok: SipResponse) -> InboundCall:
    """ACK the 200 as the carrier would, then end the call from the gateway's side."""
    assert wire.transport is not None
    port = wire.transport.get_extra_info("sockname")[1]
    to = ok.headers.get("To")
    assert to is not None and ok.to.tag is not None
    ack = (
        f"ACK {ok.to.uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: {ok.headers.get('From')}\r\nTo: {to}\r\n"
        f"Call-ID: {ok.headers.get('Call-ID')}\r\nCSeq: {ok.cseq.seq} ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    wire.transport.sendto(ack.encode(), ("127.0.0.1", node.port))
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
    call.hang_up()
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    return call


def allow_list(*networks: ipaddress.IPv4Network) -> TrunkTable:
    return TrunkTable([Trunk("carrier-a", "acme", sources=networks)])


async def test_allow_listed_trunk_invite_reaches_its_tenants_number_as_that_trunk(
    node_factory: NodeFactory, wire: Wire
) -> None:
    node = await node_factory(allow_list(LOOPBACK))
    response = await invite(wire, node, ACME_NUMBER)
    assert response.status == 200
    call = await confirm_and_hang_up(wire, node, response)
    assert call.offer.route.tenant_id == "acme"
    assert call.offer.caller.tenant_id == "acme" and call.offer.caller.username == "carrier-a"


async def test_the_same_invite_by_two_paths_is_one_call_and_the_copy_gets_482(
    node_factory: NodeFactory, wire: Wire
) -> None:
    node = await node_factory(allow_list(LOOPBACK))
    assert wire.transport is not None
    call_id = new_branch()
    for _ in range(2):  # same From tag, Call-ID and CSeq; each its own branch
        wire.transport.sendto(
            invite_text(wire, ACME_NUMBER, call_id=call_id), ("127.0.0.1", node.port)
        )
    finals: list[SipResponse] = []
    while len(finals) < 2:
        message = await asyncio.wait_for(wire.messages.get(), TIMEOUT)
        if isinstance(message, SipResponse) and message.status >= 200:
            finals.append(message)
    assert sorted(r.status for r in finals) == [200, 482]
    ok = next(r for r in finals if r.status == 200)
    await confirm_and_hang_up(wire, node, ok)
    assert node.offered.empty() and node.calls.calls == {}  # the one call, and no other


@pytest.mark.parametrize(
    ("require", "unsupported"),
    [("100rel", "100rel"), ("timer, precondition", "precondition"), ("x-a,x-b", "x-a, x-b")],
)
async def test_an_invite_requiring_an_extension_we_lack_is_refused_420_naming_it(
    node_factory: NodeFactory, wire: Wire, require: str, unsupported: str
) -> None:
    node = await node_factory(allow_list(LOOPBACK))
    response = await invite(wire, node, ACME_NUMBER, extra=f"Require: {require}\r\n")
    assert (response.status, response.headers.get("Unsupported")) == (420, unsupported)
    assert node.offered.empty() and node.calls.calls == {}


async def test_an_invite_requiring_session_timers_is_taken(
    node_factory: NodeFactory, wire: Wire
) -> None:
    node = await node_factory(allow_list(LOOPBACK))
    timers = "Require: timer\r\nSupported: timer\r\nSession-Expires: 1800\r\n"
    response = await invite(wire, node, ACME_NUMBER, extra=timers)
    assert response.status == 200 and response.headers.get("Session-Expires")
    await confirm_and_hang_up(wire, node, response)


@pytest.mark.parametrize(
    ("user", "host", "status"),
    [
        (GLOBEX_NUMBER, DOMAIN, 403),  # another tenant's number: never relayed
        ("+14155550100", DOMAIN, 404),  # nobody's number
        ("echo", f"acme.{DOMAIN}", 404),  # services need a user's credentials
        ("echo", f"globex.{DOMAIN}", 404),
    ],
)
async def test_allow_listed_trunk_reaches_nothing_else_and_is_not_challenged(
    node_factory: NodeFactory, wire: Wire, user: str, host: str, status: int
) -> None:
    node = await node_factory(allow_list(LOOPBACK))
    response = await invite(wire, node, user, host)
    assert response.status == status
    assert not response.headers.get_all("WWW-Authenticate")
    assert node.offered.empty() and node.calls.calls == {}


@pytest.mark.parametrize(
    ("user", "host", "status"),
    [
        ("+14155550100", DOMAIN, 401),
        ("echo", f"acme.{DOMAIN}", 401),
        (GLOBEX_NUMBER, DOMAIN, 200),  # as before: any tenant's own number takes public calls
    ],
)
async def test_source_not_on_the_allow_list_is_treated_as_before(
    node_factory: NodeFactory, wire: Wire, user: str, host: str, status: int
) -> None:
    node = await node_factory(allow_list(ELSEWHERE))
    response = await invite(wire, node, user, host)
    assert response.status == status
    if status == 200:
        call = await confirm_and_hang_up(wire, node, response)
        assert call.offer.caller.kind.value == "public"
        assert call.offer.route.tenant_id == "globex"


async def test_digest_trunk_is_named_on_the_authenticated_invite(
    node_factory: NodeFactory,
) -> None:
    """A trunk whose inbound auth is a SIP credential: the INVITE carries the trunk's name,
    and trunk rules apply (a trunk reaches its tenant's numbers, not the echo service)."""
    carrier = await node_factory(TrunkTable([Trunk("acme-pbx", "globex", username="acme-trunk")]))
    seen: asyncio.Queue[AuthenticatedRequest] = asyncio.Queue()
    handled = carrier.service.on_invite

    async def record(service: SipService, request: AuthenticatedRequest) -> None:
        seen.put_nowait(request)
        await handled(service, request)

    carrier.service.on_invite = record
    caller = await node_factory(TrunkTable())
    credentials = TrunkCredentials("acme-trunk", "trunk-secret", CARRIER_REALM, "127.0.0.1")
    digest = DigestClient(credentials)
    call = await caller.calls.place_call(
        parse_uri(f"sip:echo@{CARRIER_REALM}"),
        Destination("127.0.0.1", carrier.port),
        caller=f"sip:acme-trunk@{CARRIER_REALM}",
        tenant_id="acme",
        digest=digest,
        answer_timeout=TIMEOUT,
    )
    assert isinstance(call, CallFailed)
    assert call.status == 403
    request = await asyncio.wait_for(seen.get(), TIMEOUT)
    assert (request.trunk, request.tenant_id, request.username) == (
        "acme-pbx",
        "globex",
        "acme-trunk",
    )


def outbound_trunk(port: int, *, host: str = "127.0.0.1", realm: str = CARRIER_REALM) -> Trunk:
    credentials = TrunkCredentials("acme-trunk", "trunk-secret", realm, host)
    return Trunk(
        "carrier-out",
        "acme",
        outbound=TrunkOutbound(Destination("127.0.0.1", port), credentials),
    )


async def test_outbound_call_through_a_trunk_answers_its_challenge(
    node_factory: NodeFactory,
) -> None:
    carrier, node = await node_factory(TrunkTable()), await node_factory(TrunkTable())
    call = await place_trunk_call(
        node.calls,
        outbound_trunk(carrier.port),
        GLOBEX_NUMBER,
        caller="sip:+442079460123@voice.test",
        answer_timeout=TIMEOUT,
    )
    assert isinstance(call, OutboundCall)
    assert call.tenant_id == "acme"
    far = await asyncio.wait_for(carrier.offered.get(), TIMEOUT)
    assert far.offer.route.number == GLOBEX_NUMBER
    call.hang_up()
    await asyncio.wait_for(far.ended.wait(), TIMEOUT)


@pytest.mark.parametrize(
    ("host", "realm"),
    [
        ("127.0.0.2", CARRIER_REALM),  # credentials for another host
        ("127.0.0.1", "carrier-b.example"),  # the challenge is for a realm not ours
    ],
)
async def test_outbound_challenge_from_another_host_or_realm_fails_the_call(
    node_factory: NodeFactory, host: str, realm: str
) -> None:
    """The callee challenges; the guard keeps the trunk's credentials, the 401 ends the call."""
    carrier, node = await node_factory(TrunkTable()), await node_factory(TrunkTable())
    trunk = outbound_trunk(carrier.port, host=host, realm=realm)
    result = await place_trunk_call(
        node.calls, trunk, "+14155550100", caller="sip:x@voice.test", answer_timeout=TIMEOUT
    )
    assert result == CallFailed(401, "Unauthorized")
    assert node.calls.calls == {} and carrier.calls.calls == {}
