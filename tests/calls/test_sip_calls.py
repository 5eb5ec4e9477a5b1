"""Inbound call legs on loopback: a scripted UDP UA against the real service, calls and echo.

The UA plays a carrier trunk (no credentials) dialling a tenant's number, so
every request is written out here and every answer checked on the wire.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.bridge import Bridge
from voicegw.calls.echo import EchoConfig, EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallFailed,
    CallState,
    EndReason,
    HoldChanged,
    InboundCall,
    OutboundCall,
    SipCalls,
    SipCallsConfig,
    info_digit,
)
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.calls.transfer import TransferRequested
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import DtmfReceived
from voicegw.sip.digest import DigestClient, TrunkCredentials
from voicegw.sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    parse_message,
)
from voicegw.sip.sdp import Direction, SessionDescription
from voicegw.sip.timers import TimerConfig
from voicegw.sip.transaction import Destination
from voicegw.sip.transaction_layer import TransactionLayer
from voicegw.sip.transport import ListenAddresses
from voicegw.sip.uri import parse_uri
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
NUMBER = "+442079460123"
REALM = f"acme.{DOMAIN}"
TIMEOUT = 5.0


class Wire(asyncio.DatagramProtocol):
    """The trunk's SIP socket: every message it receives, parsed, in order."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[SipMessage] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.messages.put_nowait(parse_message(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


@dataclass
class Trunk:
    """Writes one call's requests: INVITE, ACK, in-dialog requests, CANCEL."""

    wire: Wire
    server: tuple[str, int]
    rtp_port: int
    call_id: str = "trunk-call-1@127.0.0.1"
    cseq: int = 0
    to_tag: str | None = None
    invite_branch: str = ""
    sent: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        assert self.wire.transport is not None
        self.wire.transport.sendto(text.replace("\n", "\r\n").encode(), self.server)

    def request(
        self,
        method: str,
        uri: str,
        *,
        headers: tuple[str, ...] = (),
        body: str = "",
        branch: str | None = None,
        cseq: int | None = None,
    ) -> str:
        if cseq is None:
            self.cseq += 1
        to = f"<{uri}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        body_crlf = body.replace("\n", "\r\n")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.wire.port};branch={branch or new_branch()};rport",
            "Max-Forwards: 70",
            "From: <sip:+14155550123@carrier.test>;tag=trunk",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq or self.cseq} {method}",
            f"Contact: <sip:trunk@127.0.0.1:{self.wire.port}>",
            *headers,
            f"Content-Length: {len(body_crlf.encode())}",
        ]
        return "\n".join(lines) + "\n\n" + body

    def sdp(self, direction: str = "sendrecv", codecs: str = "0 101") -> str:
        return (
            "v=0\no=trunk 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
            f"m=audio {self.rtp_port} RTP/AVP {codecs}\na=rtpmap:0 PCMU/8000\n"
            "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\n"
            f"a=ptime:20\na={direction}\n"
        )

    def invite(self, uri: str, *, headers: tuple[str, ...] = (), body: str | None = None) -> None:
        self.invite_branch = new_branch()
        sdp = self.sdp() if body is None else body
        extra = ("Content-Type: application/sdp", *headers) if sdp else headers
        self.send(self.request("INVITE", uri, headers=extra, body=sdp, branch=self.invite_branch))

    def ack(self, uri: str, invite_cseq: int, body: str = "") -> None:
        headers = ("Content-Type: application/sdp",) if body else ()
        self.send(self.request("ACK", uri, cseq=invite_cseq, headers=headers, body=body))

    def reply(
        self, request: SipRequest, status: int, body: str = "", to_tag: str | None = None
    ) -> None:
        """Answer a request the gateway sent (in a dialog, or its INVITE with ``to_tag``)."""
        response = make_response(
            request,
            status,
            to_tag=to_tag,
            headers=(("Contact", f"<sip:trunk@127.0.0.1:{self.wire.port}>"),)
            + ((("Content-Type", "application/sdp"),) if body else ()),
            body=body.replace("\n", "\r\n").encode(),
        )
        assert self.wire.transport is not None
        self.wire.transport.sendto(bytes(response), self.server)

    async def response(self, status: int | None = None) -> SipResponse:
        """The next response (skipping provisional ones below ``status`` if given)."""
        while True:
            message = await asyncio.wait_for(self.wire.messages.get(), TIMEOUT)
            if isinstance(message, SipResponse) and (status is None or message.status >= status):
                if message.to.tag and message.status >= 200 and message.cseq.method == "INVITE":
                    self.to_tag = self.to_tag or message.to.tag
                return message

    async def request_in(self) -> SipRequest:
        while True:
            message = await asyncio.wait_for(self.wire.messages.get(), TIMEOUT)
            if isinstance(message, SipRequest):
                return message


@dataclass
class Node:
    service: SipService
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]

    @property
    def address(self) -> tuple[str, int]:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        await tenants.add_number(session, actor="test", tenant_id="acme", number=NUMBER)
        await sip_accounts.create_credential(
            session,
            actor="test",
            tenant_id="acme",
            username="alice",
            realm=REALM,
            password="secret",
        )
    yield sessions
    await engine.dispose()


NodeFactory = Callable[..., Awaitable[Node]]
TrunkFactory = Callable[[Node], Awaitable[tuple[Trunk, socket.socket]]]


@pytest.fixture
async def node_factory(sessions: Sessions) -> AsyncIterator[NodeFactory]:
    started: list[Node] = []

    async def start(
        echo: EchoConfig | None = None,
        timers: TimerConfig | None = None,
        config: SipCallsConfig | None = None,
    ) -> Node:
        service = SipService(
            SipServiceConfig(
                domain=DOMAIN,
                nonce_secret=b"0123456789abcdef-test-secret",
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
            ),
            sessions,
            layer=TransactionLayer(timers),
        )

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        # The call-leg tests dial the tenant number; echo stands in for the agent queue there.
        echo_service = EchoService(echo)
        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 43000, 43999),
            {Service.ECHO: echo_service, Service.AGENT_QUEUE: echo_service},
            config,
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


@pytest.fixture
async def trunk_for() -> AsyncIterator[TrunkFactory]:
    opened: list[asyncio.DatagramTransport] = []
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(TIMEOUT)

    async def make(node: Node) -> tuple[Trunk, socket.socket]:
        loop = asyncio.get_running_loop()
        transport, wire = await loop.create_datagram_endpoint(Wire, local_addr=("127.0.0.1", 0))
        opened.append(transport)
        return Trunk(wire, node.address, rtp.getsockname()[1]), rtp

    yield make
    for transport in opened:
        transport.close()
    rtp.close()


def uri(user: str = NUMBER) -> str:
    return f"sip:{user}@{DOMAIN}"


async def answered_call(node: Node, trunk: Trunk) -> tuple[InboundCall, SipResponse]:
    trunk.invite(uri())
    ok = await trunk.response(200)
    assert ok.status == 200
    trunk.ack(uri(), ok.cseq.seq)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
    return call, ok


async def test_unauthenticated_invite_to_a_tenant_number_is_answered_by_echo(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, rtp = await trunk_for(node)
    trunk.invite(uri())
    ringing = await trunk.response(180)
    assert ringing.status == 180
    ok = await trunk.response(200)
    assert ok.status == 200 and ok.to.tag == ringing.to.tag
    trunk.ack(uri(), ok.cseq.seq)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    assert (call.offer.caller.kind.value, call.offer.route.tenant_id) == ("public", "acme")
    assert call.offer.route.number == NUMBER
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)

    answer = SessionDescription.parse(ok.body)
    media = answer.media[0]
    assert answer.connection is not None
    ours = (answer.connection.host, media.port)
    sent = RtpPacket(0, 1000, 160_000, 0x1234, bytes(range(160)), True)
    rtp.sendto(bytes(sent), ours)
    echoed = RtpPacket.parse(await asyncio.to_thread(rtp.recv, 2048))
    assert echoed.payload == sent.payload
    assert echoed.ssrc != sent.ssrc  # our own stream, not a reflected packet

    trunk.send(trunk.request("BYE", uri()))
    bye_ok = await trunk.response()
    assert (bye_ok.status, bye_ok.cseq.method) == (200, "BYE")
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    assert call.end_reason is EndReason.REMOTE_BYE
    assert node.calls.ports.in_use == 0


@pytest.mark.parametrize("target", ["+14155550199", "echo", "alice"])
async def test_unauthenticated_invite_elsewhere_is_challenged_and_never_routed(
    node_factory: NodeFactory, trunk_for: TrunkFactory, target: str
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    trunk.invite(f"sip:{target}@acme.{DOMAIN}")
    response = await trunk.response(200)
    assert response.status == 401
    assert node.offered.empty() and node.calls.calls == {}


async def test_offer_without_a_common_codec_gets_488_with_a_warning(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    g729_only = trunk.sdp(codecs="18").replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
    trunk.invite(uri(), body=g729_only)
    response = await trunk.response(200)
    assert response.status == 488
    warning = response.headers.get("Warning")
    assert warning is not None and warning.startswith("305 ") and "codec" in warning
    assert node.calls.ports.in_use == 0


async def test_invite_with_a_body_that_is_not_sdp_gets_488(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    trunk.send(
        trunk.request("INVITE", uri(), headers=("Content-Type: text/plain",), body="hello\n")
    )
    assert (await trunk.response(200)).status == 488
    assert node.calls.ports.in_use == 0


async def test_rfc3261_13_2_1_delayed_offer_gets_our_offer_in_the_200_and_the_ack_answers(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, rtp = await trunk_for(node)
    trunk.invite(uri(), body="")
    ok = await trunk.response(200)
    assert ok.status == 200 and ok.content_type == "application/sdp"
    offer = SessionDescription.parse(ok.body)
    media = offer.media[0]
    # One codec (and telephone-event): the answer cannot pick one the leg was not built for.
    assert media.formats == ("0", "101") and offer.direction_of(media).value == "sendrecv"
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    assert call.offer.remote_sdp is None
    trunk.ack(uri(), ok.cseq.seq, body=trunk.sdp())
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
    assert call.audio.remote_port == trunk.rtp_port

    assert offer.connection is not None
    sent = RtpPacket(0, 1000, 160_000, 0x1234, bytes(range(160)), True)
    rtp.sendto(bytes(sent), (offer.connection.host, media.port))
    echoed = RtpPacket.parse(await asyncio.to_thread(rtp.recv, 2048))
    assert echoed.payload == sent.payload  # echo reached the address the ACK's answer gave


async def test_delayed_offer_whose_ack_has_no_answer_ends_with_bye_and_a_488_reason(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    trunk.invite(uri(), body="")
    ok = await trunk.response(200)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    trunk.ack(uri(), ok.cseq.seq)  # no SDP: the offer in our 200 is never answered
    bye = await trunk.request_in()
    assert bye.method == "BYE"
    assert bye.headers.get("Reason") == 'SIP;cause=488;text="No acceptable SDP answer"'
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    assert call.end_reason is EndReason.BAD_ANSWER
    assert node.calls.ports.in_use == 0


async def test_rfc4028_session_timer_is_answered_with_the_caller_refreshing(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    trunk.invite(uri(), headers=("Supported: timer", "Session-Expires: 1800"))
    ok = await trunk.response(200)
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    trunk.ack(uri(), ok.cseq.seq)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
    assert call.dialog is not None and call.dialog.session is not None
    assert not call.dialog.session.we_refresh


async def test_rfc4028_interval_below_min_se_gets_422(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    trunk.invite(uri(), headers=("Supported: timer", "Session-Expires: 30"))
    response = await trunk.response(200)
    assert (response.status, response.headers.get("Min-SE")) == (422, "90")


async def test_info_digits_become_the_same_events_as_rfc4733_digits(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    bodies = [
        ("application/dtmf-relay", "Signal=5\nDuration=160\n"),
        ("application/dtmf", "#"),
    ]
    for content_type, body in bodies:
        trunk.send(
            trunk.request("INFO", uri(), headers=(f"Content-Type: {content_type}",), body=body)
        )
        assert (await trunk.response()).status == 200
    trunk.send(trunk.request("INFO", uri(), headers=("Content-Type: text/plain",), body="hi"))
    assert (await trunk.response()).status == 415
    digits = [e.digit.digit for e in call.events if isinstance(e, DtmfReceived)]
    assert digits == ["5", "#"]


async def test_reinvite_sendonly_is_answered_recvonly_and_resume_sendrecv(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    for offered, answered, held in (
        ("sendonly", "recvonly", True),
        ("sendrecv", "sendrecv", False),
    ):
        body = trunk.sdp(direction=offered).replace("o=trunk 1 1", f"o=trunk 1 {2 if held else 3}")
        trunk.send(
            trunk.request("INVITE", uri(), headers=("Content-Type: application/sdp",), body=body)
        )
        ok = await trunk.response(200)
        assert f"a={answered}" in ok.body.decode()
        trunk.ack(uri(), ok.cseq.seq)
        assert call.held is held


async def test_in_dialog_requests_requiring_an_extension_we_lack_get_420_and_the_call_goes_on(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    held = trunk.sdp(direction="sendonly").replace("o=trunk 1 1", "o=trunk 1 2")
    sdp = ("Content-Type: application/sdp",)
    trunk.send(trunk.request("INVITE", uri(), headers=(*sdp, "Require: 100rel, timer"), body=held))
    refused = await trunk.response(420)
    assert refused.headers.get("Unsupported") == "100rel"  # session timers we do have
    trunk.send(trunk.request("INFO", uri(), headers=("Require: foo",)))
    assert ((await trunk.response()).status, call.held) == (420, False)  # nothing acted on
    assert call.state is CallState.CONFIRMED
    # The same re-INVITE without the extension is taken.
    trunk.send(trunk.request("INVITE", uri(), headers=sdp, body=held))
    ok = await trunk.response(200)
    trunk.ack(uri(), ok.cseq.seq)
    assert call.held


async def test_reinvite_without_sdp_gets_our_offer_and_the_ack_answer_applies(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    trunk.send(trunk.request("INVITE", uri()))
    ok = await trunk.response(200)
    assert ok.status == 200 and ok.body == bytes(call.local_sdp)  # our offer, §14.2
    body = trunk.sdp(direction="sendonly").replace("o=trunk 1 1", "o=trunk 1 2")
    trunk.ack(uri(), ok.cseq.seq, body=body)
    for _ in range(250):  # the ACK has no response: wait (at most 5 s) for it to land
        if call.held:
            break
        await asyncio.sleep(0.02)
    assert call.held and call.audio.direction is Direction.RECVONLY
    assert call.state is CallState.CONFIRMED


async def test_gateway_reinvite_puts_the_peer_on_hold_and_resumes(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    for ours, theirs in (("sendonly", "recvonly"), ("sendrecv", "sendrecv")):
        version = call.local_sdp.origin.version + 1  # RFC 3264 §8: one up per new offer
        holding = asyncio.create_task(call.reinvite(Direction(ours)))
        reinvite = await trunk.request_in()
        assert (reinvite.method, reinvite.call_id) == ("INVITE", trunk.call_id)
        offer = SessionDescription.parse(reinvite.body)
        assert offer.direction_of(offer.media[0]).value == ours
        assert offer.origin.version == version
        trunk.reply(reinvite, 200, trunk.sdp(direction=theirs))
        ack = await trunk.request_in()
        assert (ack.method, ack.cseq.seq) == ("ACK", reinvite.cseq.seq)
        assert await asyncio.wait_for(holding, TIMEOUT) is True
        assert call.audio.direction.value == ours and not call.held
    changes = [e for e in call.events if isinstance(e, HoldChanged)]
    assert [(e.direction.value, e.by_peer) for e in changes] == [
        ("sendonly", False),
        ("sendrecv", False),
    ]


async def test_rfc3261_14_1_reinvite_glare_491_is_retried_after_the_interval(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    loop = asyncio.get_running_loop()
    holding = asyncio.create_task(call.reinvite(Direction.INACTIVE))
    first = await trunk.request_in()
    # Our own re-INVITE crossing theirs: the gateway refuses ours with 491 (§14.2) ...
    body = trunk.sdp(direction="sendonly").replace("o=trunk 1 1", "o=trunk 1 2")
    trunk.send(
        trunk.request("INVITE", uri(), headers=("Content-Type: application/sdp",), body=body)
    )
    assert (await trunk.response(200)).status == 491
    # ... and we refuse theirs with 491: the gateway waits 0-2 s (it did not make the Call-ID).
    trunk.reply(first, 491)
    refused_at = loop.time()
    await trunk.request_in()  # the ACK of the 491 (hop-by-hop, from the transaction)
    second = await trunk.request_in()
    waited = loop.time() - refused_at
    assert second.method == "INVITE" and second.cseq.seq > first.cseq.seq
    assert 0 <= waited <= 2.5, waited
    trunk.reply(second, 200, trunk.sdp(direction="inactive"))
    assert await asyncio.wait_for(holding, TIMEOUT) is True
    assert call.held and call.audio.direction is Direction.INACTIVE


@pytest.mark.parametrize(
    ("handled", "reason"),
    [(False, "Transfer Not Available"), (True, "Transfer Needs Authentication")],
)
async def test_refer_without_a_handler_or_from_an_unauthenticated_peer_gets_403(
    node_factory: NodeFactory, trunk_for: TrunkFactory, handled: bool, reason: str
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    transfers: list[TransferRequested] = []
    if handled:
        call.on_transfer = transfers.append
    refer_to = f"Refer-To: <sip:{NUMBER}@{DOMAIN}>"
    trunk.send(trunk.request("REFER", uri(), headers=(refer_to,)))
    response = await trunk.response()
    assert (response.status, response.reason) == (403, reason)
    assert transfers == [] and call.state is CallState.CONFIRMED


async def test_bridged_callee_bye_reason_reaches_the_caller_rfc3326(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    caller, _ = await trunk_for(node)
    callee, _ = await trunk_for(node)
    callee_at = Destination("127.0.0.1", callee.wire.port, "UDP")

    async def bridge_to_callee(call: InboundCall) -> None:
        placed = await node.calls.place_call(
            parse_uri(f"sip:bob@127.0.0.1:{callee.wire.port}"),
            callee_at,
            caller=f"sip:gateway@{DOMAIN}",
            tenant_id="acme",
        )
        assert isinstance(placed, OutboundCall)
        bridge = Bridge(call, placed, None)
        call.answer()
        await bridge.wait()

    node.calls.services[Service.AGENT_QUEUE] = bridge_to_callee
    caller.invite(uri())
    invite = await callee.request_in()
    callee.reply(invite, 200, callee.sdp(), to_tag="bob")
    assert (await callee.request_in()).method == "ACK"
    ok = await caller.response(200)
    caller.ack(uri(), ok.cseq.seq)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)

    busy = 'Q.850;cause=17;text="User busy"'
    callee.send(
        "\n".join(
            [
                f"BYE {invite.contact[0].uri} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{callee.wire.port};branch={new_branch()};rport",
                "Max-Forwards: 70",
                f"From: <sip:bob@127.0.0.1:{callee.wire.port}>;tag=bob",
                f"To: {invite.headers.get('From')}",
                f"Call-ID: {invite.call_id}",
                "CSeq: 1 BYE",
                f"Reason: {busy}",
                "Content-Length: 0",
            ]
        )
        + "\n\n"
    )
    assert (await callee.response()).status == 200
    bye = await caller.request_in()
    assert bye.method == "BYE" and bye.headers.get("Reason") == busy
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    assert call.end_reason is EndReason.LOCAL_HANGUP


async def test_gateway_bye_carries_a_reason(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory()
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    call.hang_up()
    bye = await trunk.request_in()
    assert bye.method == "BYE" and bye.call_id == trunk.call_id
    assert bye.headers.get("Reason") == 'Q.850;cause=16;text="Normal call clearing"'
    assert call.state is CallState.ENDED and call.end_reason is EndReason.LOCAL_HANGUP


async def test_rfc3261_13_3_1_4_unacknowledged_200_is_resent_then_bye(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory(timers=TimerConfig(t1=0.02, t2=0.08))
    trunk, _ = await trunk_for(node)
    trunk.invite(uri())
    first = await trunk.response(200)
    resent = await trunk.response(200)
    assert (resent.status, resent.to.tag) == (200, first.to.tag)
    call = await asyncio.wait_for(node.offered.get(), TIMEOUT)
    bye = await trunk.request_in()  # 64*T1 = 1.28 s without an ACK
    assert bye.method == "BYE"
    assert re.search(r"cause=408", bye.headers.get("Reason") or "")
    assert call.end_reason is EndReason.NO_ACK


def test_info_digit_reads_dtmf_relay_and_refuses_other_bodies() -> None:
    digit = info_digit("application/dtmf-relay", b"Signal=*\r\nDuration=250\r\n")
    assert digit is not None and (digit.digit, digit.event, digit.duration) == ("*", 10, 2000)
    assert info_digit("application/dtmf-relay", b"Signal=Z\r\n") is None
    assert info_digit("application/json", b"{}") is None


async def place_to(caller_node: Node, callee: Node, password: str) -> OutboundCall | CallFailed:
    """``caller_node`` calls the echo service of ``callee`` as a trunk with alice's credentials."""
    host, port = callee.address
    digest = DigestClient(TrunkCredentials("alice", password, REALM, host))
    return await caller_node.calls.place_call(
        parse_uri(f"sip:echo@{REALM}"),
        Destination(host, port),
        caller=f"sip:alice@{REALM}",
        tenant_id="acme",
        digest=digest,
    )


async def test_outbound_call_answers_the_challenge_hears_echo_and_hangs_up(
    node_factory: NodeFactory,
) -> None:
    callee, caller = await node_factory(), await node_factory()
    call = await asyncio.wait_for(place_to(caller, callee, "secret"), TIMEOUT)
    assert isinstance(call, OutboundCall)
    far = await asyncio.wait_for(callee.offered.get(), TIMEOUT)
    assert far.offer.caller.username == "alice"
    await asyncio.wait_for(far.confirmed.wait(), TIMEOUT)

    silence = bytes(320)  # 20 ms of 16-bit PCM at 8 kHz
    leg = call.transport.leg
    for _ in range(10):
        call.transport.send_pcm(silence)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while leg.summary().received is None or leg.summary().received.packets_received < 10:
        assert asyncio.get_running_loop().time() < deadline, "no echo came back"
        await asyncio.sleep(0.02)

    call.hang_up()
    await asyncio.wait_for(far.ended.wait(), TIMEOUT)
    assert far.end_reason is EndReason.REMOTE_BYE
    assert call.end_reason is EndReason.LOCAL_HANGUP
    assert caller.calls.calls == {} and caller.calls.ports.in_use == 0


async def test_outbound_call_with_refused_credentials_fails_with_the_401(
    node_factory: NodeFactory,
) -> None:
    callee, caller = await node_factory(), await node_factory()
    result = await asyncio.wait_for(place_to(caller, callee, "wrong"), TIMEOUT)
    assert result == CallFailed(401, "Unauthorized")
    assert callee.offered.empty()
    assert caller.calls.ports.in_use == 0


async def test_remote_bye_ends_an_outbound_call(node_factory: NodeFactory) -> None:
    callee, caller = await node_factory(), await node_factory()
    call = await asyncio.wait_for(place_to(caller, callee, "secret"), TIMEOUT)
    assert isinstance(call, OutboundCall)
    far = await asyncio.wait_for(callee.offered.get(), TIMEOUT)
    await asyncio.wait_for(far.confirmed.wait(), TIMEOUT)
    far.hang_up()
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    assert call.end_reason is EndReason.REMOTE_BYE


async def test_call_duration_limit_ends_the_call_with_our_bye(
    node_factory: NodeFactory, trunk_for: TrunkFactory
) -> None:
    node = await node_factory(config=SipCallsConfig(max_call_seconds=0.3))
    trunk, _ = await trunk_for(node)
    call, _ = await answered_call(node, trunk)
    bye = await trunk.request_in()
    assert bye.method == "BYE"
    assert bye.headers.get("Reason") == 'Q.850;cause=16;text="Call duration limit"'
    assert call.end_reason is EndReason.DURATION_LIMIT
