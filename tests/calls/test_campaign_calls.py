"""Campaign calls through the admin API and the real SIP stack, to a carrier on loopback.

The "carrier" is a UDP socket answering our INVITEs by hand with the final
status a test picks (486 busy callee, 403 a trunk refusing us, 200 answered),
so what the scheduler sees is checked against what was on the wire. The
campaign's trunk points its outbound side at it. An answered call goes to the
node's agent-queue service; here that is a handler that notes what it was
given and hangs up (the full consent + queue path is the baresip e2e test).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.api.campaigns import CAMPAIGN_DIALER
from voicegw.calls.campaign_calls import CampaignDialer
from voicegw.calls.routing import Caller, Router, Service
from voicegw.calls.sip_calls import CallOffer, InboundCall, SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.calls.trunks import Trunk, TrunkOutbound, TrunkTable
from voicegw.media.ports import PortAllocator
from voicegw.sip.message import SipRequest, make_response, parse_message
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import ListenAddresses
from voicegw.store import campaigns, tenants, tokens
from voicegw.store.models import CampaignCall as CampaignCallRow
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
TENANT = "acme"
CALLEE = "+4915123456789"
OUR_NUMBER = "+4930901820"
TIMEOUT = 10.0


class Carrier(asyncio.DatagramProtocol):
    """Answers each INVITE with 100 and then ``final``; BYE with 200. Keeps what it got."""

    def __init__(self) -> None:
        self.final = 486
        self.invites: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.byes: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.rtp_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if not isinstance(message, SipRequest) or self.transport is None:
            return
        if message.method == "INVITE":
            self.invites.put_nowait(message)
            self.transport.sendto(bytes(make_response(message, 100)), addr)
            body = b""
            headers: tuple[tuple[str, str], ...] = ()
            if self.final == 200:
                body = (
                    "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                    f"t=0 0\r\nm=audio {self.rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                    "a=sendrecv\r\n"
                ).encode()
                port = self.transport.get_extra_info("sockname")[1]
                headers = (
                    ("Contact", f"<sip:callee@127.0.0.1:{port}>"),
                    ("Content-Type", "application/sdp"),
                )
            response = make_response(message, self.final, headers=headers, body=body)
            self.transport.sendto(bytes(response), addr)
        elif message.method == "BYE":
            self.byes.put_nowait(message)
            self.transport.sendto(bytes(make_response(message, 200)), addr)


@dataclass
class Node:
    api: TestClient  # type: ignore[type-arg]
    carrier: Carrier
    token: str
    sessions: Sessions
    taken: asyncio.Queue[CallOffer] = field(default_factory=asyncio.Queue)

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.api.request(method, path, headers=headers, **kw) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def dial(self, campaign: str, to: str = CALLEE) -> tuple[int, Any]:
        path = f"/api/v1/tenants/{TENANT}/campaigns/{campaign}/calls"
        return await self.request("POST", path, json={"to": to})

    async def settled(self, campaign: str, call_id: str) -> dict[str, Any]:
        """The call's status once it is no longer dialling or answered."""
        path = f"/api/v1/tenants/{TENANT}/campaigns/{campaign}/calls/{call_id}"
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            status, body = await self.request("GET", path)
            assert status == 200, body
            if body["state"] in ("ended", "failed"):
                return cast(dict[str, Any], body)
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.05)


@pytest.fixture
async def node(sessions: Sessions, tmp_path: Path) -> AsyncIterator[Node]:
    loop = asyncio.get_running_loop()
    sip_transport, carrier = await loop.create_datagram_endpoint(
        Carrier, local_addr=("127.0.0.1", 0)
    )
    rtp_sink, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    carrier.rtp_port = rtp_sink.get_extra_info("sockname")[1]
    carrier_port = sip_transport.get_extra_info("sockname")[1]
    async with sessions.begin() as session:
        for tenant in (TENANT, "globex"):
            await tenants.create_tenant(
                session, actor="test", tenant_id=tenant, name=tenant, settings=TenantSettings()
            )
        await tenants.add_number(session, actor="test", tenant_id=TENANT, number=OUR_NUMBER)
        for campaign, trunk in (
            ("renewals", "carrier-a"),
            ("lost-trunk", "nowhere"),
            ("borrowed", "carrier-g"),
        ):
            await campaigns.create_campaign(
                session,
                actor="test",
                tenant_id=TENANT,
                campaign_id=campaign,
                name=campaign,
                trunk=trunk,
            )
        _, token = await tokens.create_token(session, role="tenant_admin", tenant_id=TENANT)
    outbound = TrunkOutbound(Destination("127.0.0.1", carrier_port, "udp"))
    trunks = TrunkTable(
        [
            Trunk("carrier-a", TENANT, outbound=outbound),
            Trunk("carrier-g", "globex", outbound=outbound),
        ]
    )
    service = SipService(
        SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=b"0123456789abcdef-campaign-secret",
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
        ),
        sessions,
        trunks=trunks,
    )

    async def nobody(number: str) -> str | None:
        return None

    taken: asyncio.Queue[CallOffer] = asyncio.Queue()

    async def agent_queue(call: InboundCall) -> None:
        taken.put_nowait(call.offer)
        call.answer()  # answered by the callee already: changes nothing
        call.hang_up()

    calls = SipCalls(
        service,
        Router(nobody),
        PortAllocator("127.0.0.1", 46000, 46999),
        {Service.AGENT_QUEUE: agent_queue},
    )
    calls.attach()
    app = create_app(sessions, tmp_path / "var", sip_domain=DOMAIN)
    dialer = CampaignDialer(
        calls, service.trunks, sessions=sessions, node="node-a", answer_timeout=5.0
    )
    app[CAMPAIGN_DIALER] = dialer
    api = TestClient(TestServer(app, host="127.0.0.1"))
    await service.start()
    await api.start_server()
    try:
        yield Node(api, carrier, token, sessions, taken)
    finally:
        await api.close()
        await dialer.close()
        await calls.close()
        await service.stop()
        sip_transport.close()
        rtp_sink.close()


@pytest.mark.parametrize(("final", "reason"), [(486, "Busy Here"), (403, "Forbidden")])
async def test_a_busy_callee_or_a_refusing_trunk_is_a_failed_call_with_its_status(
    node: Node, final: int, reason: str
) -> None:
    node.carrier.final = final
    status, placed = await node.dial("renewals")
    assert status == 202, placed
    assert placed["state"] == "dialling" and placed["campaign"] == "renewals"
    assert CALLEE not in str(placed) and placed["callee"].endswith("6789")
    invite = await asyncio.wait_for(node.carrier.invites.get(), TIMEOUT)
    # Through the trunk to the callee, as the tenant's number.
    assert str(invite.uri).startswith(f"sip:{CALLEE}@127.0.0.1:")
    assert OUR_NUMBER in (invite.headers.get("From") or "")
    settled = await node.settled("renewals", placed["id"])
    assert settled["state"] == "failed"
    assert settled["failure"] == {"status": final, "reason": reason}
    assert settled["sip_call_id"] is None
    assert node.taken.empty()


async def test_an_answered_call_reaches_the_agent_queue_service_as_the_campaigns(
    node: Node,
) -> None:
    node.carrier.final = 200
    status, placed = await node.dial("renewals")
    assert status == 202, placed
    offer = await asyncio.wait_for(node.taken.get(), TIMEOUT)
    assert offer.campaign == "renewals"
    assert offer.route.service is Service.AGENT_QUEUE and offer.route.tenant_id == TENANT
    assert offer.route.number is None
    # The callee is the party on the leg: the jurisdiction rules look at its number.
    assert offer.from_uri.startswith(f"sip:{CALLEE}@")
    assert offer.caller.kind is Caller.TRUNK and offer.caller.username == "carrier-a"
    await asyncio.wait_for(node.carrier.byes.get(), TIMEOUT)
    settled = await node.settled("renewals", placed["id"])
    assert settled["state"] == "ended" and settled["failure"] is None
    assert settled["sip_call_id"] and settled["end_reason"] == "local-hangup"


async def test_a_trunk_the_node_lacks_or_of_another_tenant_places_nothing(node: Node) -> None:
    for campaign in ("lost-trunk", "borrowed"):
        status, answer = await node.dial(campaign)
        assert status == 409, answer
        assert answer["error"]["field"] == "trunk"
    assert node.carrier.invites.empty()


async def test_an_unknown_call_or_campaign_is_a_404(node: Node) -> None:
    node.carrier.final = 486
    _, placed = await node.dial("renewals")
    base = f"/api/v1/tenants/{TENANT}/campaigns"
    assert (await node.request("GET", f"{base}/renewals/calls/nope"))[0] == 404
    assert (await node.request("GET", f"{base}/lost-trunk/calls/{placed['id']}"))[0] == 404
    assert (await node.dial("nope"))[0] == 404
    await node.settled("renewals", placed["id"])


async def test_a_calls_status_is_stored_so_another_node_or_a_restart_can_read_it(
    node: Node,
) -> None:
    node.carrier.final = 200
    _, placed = await node.dial("renewals")
    await asyncio.wait_for(node.taken.get(), TIMEOUT)
    async with node.sessions() as session:  # answered: stored while the call is up
        row = await campaigns.get_campaign_call(session, TENANT, placed["id"])
    assert row is not None and row.state in ("answered", "ended")
    settled = await node.settled("renewals", placed["id"])

    # A node that placed nothing (another node behind the API, or this one restarted).
    # The API answers from memory as soon as the call ends; the row follows a moment later.
    elsewhere = CampaignDialer(cast(SipCalls, None), TrunkTable([]), sessions=node.sessions)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while (seen := await elsewhere.lookup(TENANT, placed["id"])) is None or seen.state in (
        "dialling",
        "answered",
    ):
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.05)
    assert seen.as_dict() == settled
    assert await elsewhere.lookup("globex", placed["id"]) is None  # ids are per tenant
    async with node.sessions() as session:
        row = await campaigns.get_campaign_call(session, TENANT, placed["id"])
    assert row is not None and row.node == "node-a"
    assert CALLEE not in repr(vars(row)) and row.callee_masked.endswith("6789")


async def test_at_start_up_a_node_settles_only_the_calls_it_left_unfinished(
    sessions: Sessions,
) -> None:
    now = datetime.now(UTC)
    calls = {
        "a-dialling": ("node-a", "dialling"),
        "a-answered": ("node-a", "answered"),
        "a-failed": ("node-a", "failed"),
        "b-dialling": ("node-b", "dialling"),  # another node's: it may be ringing right now
    }
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name=TENANT, settings=TenantSettings()
        )
        for call_id, (owner, state) in calls.items():
            await campaigns.save_campaign_call(
                session,
                CampaignCallRow(
                    id=call_id,
                    tenant_id=TENANT,
                    campaign_id="renewals",
                    callee_masked="+49*******789",
                    state=state,
                    created_at=now,
                    updated_at=now,
                    node=owner,
                    failure_status=486 if state == "failed" else None,
                    failure_reason="Busy Here" if state == "failed" else None,
                ),
            )
    async with sessions.begin() as session:
        assert await campaigns.settle_unfinished_calls(session, "node-a") == 2

    elsewhere = CampaignDialer(cast(SipCalls, None), TrunkTable([]), sessions=sessions)
    seen = {call_id: await elsewhere.lookup(TENANT, call_id) for call_id in calls}
    assert {k: v.as_dict()["state"] for k, v in seen.items() if v} == {
        "a-dialling": "failed",
        "a-answered": "ended",
        "a-failed": "failed",
        "b-dialling": "dialling",
    }
    dialling, answered, failed = (seen[k] for k in ("a-dialling", "a-answered", "a-failed"))
    assert dialling is not None and answered is not None and failed is not None
    assert dialling.as_dict()["failure"] == {"status": 503, "reason": "Gateway restarted"}
    assert answered.as_dict()["end_reason"] == "node-restarted"
    assert failed.as_dict()["failure"] == {"status": 486, "reason": "Busy Here"}  # as it was

    # Statuses of calls long over go with the retention sweep; unfinished ones stay.
    async with sessions.begin() as session:
        purged = await campaigns.purge_finished_calls(session, now + timedelta(seconds=1))
    assert purged == 3
    assert [c for c in calls if await elsewhere.lookup(TENANT, c)] == ["b-dialling"]
