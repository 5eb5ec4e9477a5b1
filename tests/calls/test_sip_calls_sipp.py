"""Call legs against SIPp on loopback: delayed offer, REFER/NOTIFY and 183 early media.

SIPp plays the far end from a scenario that spells out every message of the
flow; its exit status is 0 only if each expected message arrived, in order,
with the content its checks ask for (``check_it``). The gateway side is the
real SIP service, call layer and echo service over a migrated SQLite store.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.peers import REALM, SECRET, Sessions, acme_store, loopback_sip_service
from tests.sip.test_transaction_sipp import SIPP_TIMEOUT, finish, free_udp_port, start_sipp
from voicegw.calls.bridge import store_tenant_users
from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallFailed,
    CallProgress,
    EndReason,
    InboundCall,
    OutboundCall,
    SipCalls,
    SipCallsConfig,
)
from voicegw.calls.sip_service import SipService
from voicegw.calls.transfer import TransferRequested
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import parse_uri
from voicegw.store import tenants

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

NUMBER = "+442079460123"


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    users = {"alice": "alice-secret", "bob": "bob-secret"}
    async with acme_store(tmp_path / "voicegw.db", users) as sessions:
        await add_number(sessions)
        service = loopback_sip_service(sessions, SECRET)  # MD5 only: SIPp's digest

        async def owner(number: str) -> str | None:
            return "acme" if number == NUMBER else None

        echo = EchoService()
        calls = SipCalls(
            service,
            Router(owner, tenant_user=store_tenant_users(sessions)),
            PortAllocator("127.0.0.1", 45000, 45999),
            {Service.ECHO: echo, Service.AGENT_QUEUE: echo},
            SipCallsConfig(),
        )
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        calls.attach()
        await service.start()
        try:
            yield Gateway(service, calls, offered)
        finally:
            await calls.close()
            await service.stop()


async def add_number(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await tenants.add_number(session, actor="test", tenant_id="acme", number=NUMBER)


async def run_sipp(tmp_path: Path, scenario: str, *args: str) -> asyncio.subprocess.Process:
    (tmp_path / "scenario.xml").write_text(scenario)
    return await start_sipp(tmp_path, "-sf", "scenario.xml", *args)


# --- SIPp as an agent's phone: delayed-offer INVITE, then REFER -------------------------------

UAC_HEAD = """Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:alice@{realm}>;tag=[pid]SIPpTag00[call_number]
Call-ID: [call_id]
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70"""


def refer_scenario(gateway_port: int, rtp_port: int) -> str:
    head = UAC_HEAD.format(realm=REALM)
    to_echo = f"<sip:echo@{REALM}>"
    in_dialog_to = f"To: {to_echo}[peer_tag_param]"

    def request(method: str, cseq: int, extra: str = "", body: str = "") -> str:
        return f"""
{method} [next_url] SIP/2.0
{head}
{in_dialog_to}
[routes]
CSeq: {cseq} {method}
{extra}Content-Length: [len]

{body}"""

    def ok_to_notify() -> str:
        return """
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

"""

    answer = (
        "v=0\no=alice 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
        "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=sendrecv\n"
    )
    invite = f"""
INVITE sip:echo@{REALM} SIP/2.0
{head}
To: {to_echo}
CSeq: %d INVITE
%sContent-Length: 0

"""
    first_invite = invite % (1, "")
    authenticated = invite % (2, "[authentication username=alice password=alice-secret]\n")
    ack_with_answer = request("ACK", 2, "Content-Type: application/sdp\n", answer)
    refer_unknown = request("REFER", 3, "Refer-To: <sip:+19995550100@voice.test>\n")
    referred = f"Refer-To: <sip:bob@{REALM}>\nReferred-By: <sip:alice@{REALM}>\n"
    refer_bob = request("REFER", 4, referred)
    bye = request("BYE", 5)
    notify_ok = ok_to_notify()

    def check(regexp: str, where: str, name: str) -> str:
        place = 'search_in="body"' if where == "body" else f'search_in="hdr" header="{where}:"'
        return f'<ereg regexp="{regexp}" {place} check_it="true" assign_to="{name}"/>'

    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="delayed-offer INVITE, REFER refused then accepted, two NOTIFYs">
  <send retrans="500"><![CDATA[{first_invite}]]></send>
  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send><![CDATA[
ACK sip:echo@{REALM} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: <sip:alice@{REALM}>;tag=[pid]SIPpTag00[call_number]
To: {to_echo}[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[{authenticated}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      {check("application/sdp", "Content-Type", "ct")}
      {check("m=audio [0-9]+ RTP/AVP 0 101", "body", "m")}
    </action>
  </recv>
  <send><![CDATA[{ack_with_answer}]]></send>
  <send retrans="500"><![CDATA[{refer_unknown}]]></send>
  <recv response="404"/>
  <send retrans="500"><![CDATA[{refer_bob}]]></send>
  <recv response="202"/>
  <recv request="NOTIFY">
    <action>
      {check("^SIP/2.0 100 Trying", "body", "f1")}
      {check("refer;id=4", "Event", "e1")}
      {check("active", "Subscription-State", "s1")}
      {check("message/sipfrag", "Content-Type", "c1")}
    </action>
  </recv>
  <send><![CDATA[{notify_ok}]]></send>
  <recv request="NOTIFY">
    <action>
      {check("^SIP/2.0 200 OK", "body", "f2")}
      {check("terminated", "Subscription-State", "s2")}
    </action>
  </recv>
  <send><![CDATA[{notify_ok}]]></send>
  <send retrans="500"><![CDATA[{bye}]]></send>
  <recv response="200"/>
  <Reference variables="ct,m,f1,e1,s1,c1,f2,s2"/>
</scenario>
"""


async def test_delayed_offer_call_from_an_agent_phone_is_transferred_by_refer_with_notifys(
    gateway: Gateway, tmp_path: Path
) -> None:
    rtp_port = free_udp_port()
    transfers: list[TransferRequested] = []

    def on_transfer(event: TransferRequested) -> None:
        transfers.append(event)
        # The transfer engineer's side: the new call "answers" a moment later, after T1,
        # so a 401 still retransmitted for want of a matched ACK would reach SIPp first.
        asyncio.get_running_loop().call_later(0.8, event.progress.report, 200, "OK")

    def on_call(call: InboundCall) -> None:
        call.on_transfer = on_transfer
        gateway.offered.put_nowait(call)

    gateway.calls.on_call = on_call
    proc = await run_sipp(
        tmp_path,
        refer_scenario(gateway.port, rtp_port),
        f"127.0.0.1:{gateway.port}",
        "-p",
        str(free_udp_port()),
    )
    await finish(proc, tmp_path)
    call = await asyncio.wait_for(gateway.offered.get(), SIPP_TIMEOUT)
    await asyncio.wait_for(call.ended.wait(), SIPP_TIMEOUT)
    assert call.offer.remote_sdp is None  # the INVITE had no offer
    assert call.audio.remote_port == rtp_port  # the ACK's answer was applied
    assert call.end_reason is EndReason.REMOTE_BYE
    assert len(transfers) == 1  # the REFER to an unknown number never reached the handler
    transfer = transfers[0]
    assert str(transfer.target) == f"sip:bob@{REALM}"
    assert (transfer.route.service, transfer.route.tenant_id) == (Service.BRIDGE_USER, "acme")
    assert transfer.replaces is None and transfer.referred_by == f"<sip:alice@{REALM}>"
    assert transfer.leg is call and transfer.progress.reported == [100, 200]


# --- SIPp as a carrier answering our call with 183 early media -------------------------------

REPLY_HEAD = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>"""


def early_media_scenario(rtp_port: int) -> str:
    sdp = (
        "v=0\no=carrier 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
        "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=sendrecv\n"
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAS: 183 with SDP (early media), 200 with the same SDP, ACK, BYE">
  <recv request="INVITE">
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP" search_in="body" check_it="true" assign_to="m"/>
    </action>
  </recv>
  <Reference variables="m"/>
  <send><![CDATA[
SIP/2.0 183 Session Progress
{REPLY_HEAD}
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <pause milliseconds="800"/>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
{REPLY_HEAD}
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


async def test_183_with_sdp_opens_early_media_that_the_answered_call_keeps(
    gateway: Gateway, tmp_path: Path
) -> None:
    sipp_port = free_udp_port()
    carrier_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    carrier_rtp.bind(("127.0.0.1", 0))
    proc = await run_sipp(
        tmp_path, early_media_scenario(carrier_rtp.getsockname()[1]), "-p", str(sipp_port)
    )
    progress: list[CallProgress] = []
    ringback = [RtpPacket(0, 7000 + i, 160 * i, 0xCAFE, bytes([i]) * 160) for i in range(10)]

    def on_progress(event: CallProgress) -> None:
        progress.append(event)
        if event.early_media is not None:  # the carrier's ringback, before any answer
            for packet in ringback:
                carrier_rtp.sendto(bytes(packet), event.early_media.local_rtp)

    try:
        result = await gateway.calls.place_call(
            parse_uri(f"sip:{NUMBER}@127.0.0.1:{sipp_port}"),
            Destination("127.0.0.1", sipp_port, "UDP"),
            caller=f"sip:gateway@{REALM}",
            tenant_id="acme",
            on_progress=on_progress,
        )
        assert not isinstance(result, CallFailed), result
        assert isinstance(result, OutboundCall)
        assert [(p.status, p.early_media is not None) for p in progress] == [(183, True)]
        early = progress[0].early_media
        assert result.transport is early  # the answer kept the early media's sockets
        received = early.leg.summary().received if early is not None else None
        assert received is not None and received.packets_received == len(ringback)
        result.hang_up()
        await finish(proc, tmp_path)
        assert gateway.calls.ports.in_use == 0
    finally:
        carrier_rtp.close()
