"""Agents at real SIP phones: a baresip caller dials the tenant's number and reaches them.

The gateway is the real stack in process: the SIP service and call layer on
loopback, the agent bridge (queue, hold music, transfers) as the tenant
number's service, and :class:`~voicegw.calls.sip_agents.SipAgentPhones`
ringing agents' registered baresips. Agents 1 and 2 are linked (in the store,
as the admin API links them) to the SIP logins ``desk1`` and ``desk2``; ties in
the queue's longest-idle order go to the lower id, so agent 1 rings first.
Every phone plays its own non-repeating tone sequence, so what one records as
received must correlate with what the other sent. Waits are on baresip
ctrl_tcp events or gateway state, bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.e2e.consent_gateway import as_float, best_match
from tests.e2e.peers import (
    DOMAIN,
    EVENT_TIMEOUT,
    RATE,
    REALM,
    SECRET,
    Baresip,
    Sessions,
    acme_store,
    aligned_correlation_signed,
    loopback_sip_service,
    tone_sequence,
)
from tests.sip.test_transaction_sipp import finish, free_udp_port, start_sipp
from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig
from voicegw.calls.agents import AgentCall, AgentDirectory, CallState, Presence
from voicegw.calls.bridge import store_tenant_users
from voicegw.calls.queues import QueueSettings
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_agents import SipAgentConfig, SipAgentPhones
from voicegw.calls.sip_calls import InboundCall, SipCalls, SipCallsConfig
from voicegw.calls.sip_service import SipService
from voicegw.media.clock import MediaClock
from voicegw.media.ports import PortAllocator
from voicegw.media.webrtc import WebRtcConfig
from voicegw.store import tenants

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

NUMBER = "+6561234567"
DIALLED = f"sip:{NUMBER}@{REALM}"
USERS = {"alice": "alice-secret", "desk1": "desk1-secret", "desk2": "desk2-secret"}
RING_TIMEOUT = 4.0
INPUT_SECONDS = 40  # aufile hangs up at the end of its file: longer than any call here


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    agents: AgentDirectory
    bridge: AgentBridge
    phones: SipAgentPhones
    offered: list[AgentCall] = field(default_factory=list)
    inbound: list[InboundCall] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    async with acme_store(tmp_path / "voicegw.db", USERS) as sessions:
        async with sessions.begin() as session:
            for desk in ("desk1", "desk2"):
                agent = await tenants.add_agent(
                    session, actor="test", tenant_id="acme", username=f"agent-{desk}",
                    display_name=desk, skills=[],
                )  # fmt: skip
                await tenants.set_agent_sip_user(session, actor="test", agent=agent, sip_user=desk)
        yield sessions


@pytest.fixture
async def gateway(sessions: Sessions) -> AsyncIterator[Gateway]:
    service = loopback_sip_service(sessions, SECRET)

    async def owner(number: str) -> str | None:
        return "acme" if number == NUMBER else None

    agents = AgentDirectory(WebRtcConfig(), wrap_up_seconds=0.0)
    # One media clock for the callers' and the phones' legs, as `serve` has (the consent
    # flow makes each caller's media on it before the bridge sees the call).
    clock = MediaClock()
    clock.start()
    bridge = AgentBridge(
        agents,
        AgentBridgeConfig(queue=QueueSettings(ring_timeout=RING_TIMEOUT, max_wait=60.0)),
        clock=clock,
    )
    phones = SipAgentPhones(
        agents,
        sessions,
        SipAgentConfig(domain=DOMAIN, poll_interval=0.2),
        clock=clock,
        bridge=bridge,
    )
    calls = SipCalls(
        service,
        Router(owner, tenant_user=store_tenant_users(sessions)),
        PortAllocator("127.0.0.1", 46000, 46999),
        {Service.AGENT_QUEUE: bridge},
        SipCallsConfig(),
    )
    phones.bind(calls)
    gw = Gateway(service, calls, agents, bridge, phones)
    bridge.on_agent_call = lambda _sip, agent_call: gw.offered.append(agent_call)
    calls.on_call = gw.inbound.append
    calls.attach()
    await service.start()
    await phones.start()
    try:
        yield gw
    finally:
        await calls.close()
        await bridge.close()
        await phones.close()
        await agents.close()
        await service.stop()
        await clock.stop()


async def phone(tmp_path: Path, name: str, seed: int, rtp_ports: str) -> Baresip:
    wav = tmp_path / f"{name}.wav"
    soundfile.write(wav, tone_sequence(INPUT_SECONDS, seed), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / name, wav, rtp_ports)
    await baresip.start()
    return baresip


@pytest.fixture
async def alice(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "alice", 7, "48000-48299")
    yield baresip
    await baresip.stop()


@pytest.fixture
async def desk1(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "desk1", 11, "48300-48599")
    yield baresip
    await baresip.stop()


@pytest.fixture
async def desk2(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "desk2", 13, "48600-48899")
    yield baresip
    await baresip.stop()


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll gateway state that has no event of its own (presence, packet counters)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def sign_in(gw: Gateway, desk: Baresip, user: str, *, auto_answer: bool) -> None:
    await desk.register(user, USERS[user], gw.port, auto_answer=auto_answer)


async def dial(gw: Gateway, alice: Baresip, *, agents: list[int]) -> None:
    # The registrations poll makes the phones reachable: only then is the call dialled.
    await until(lambda: sorted(gw.agents.available_agents("acme")) == agents)
    await alice.register("alice", USERS["alice"], gw.port)
    await alice.command("dial", DIALLED)


async def answered(agent_call: AgentCall) -> CallState:
    """The agent call's state once the phone's answer (or failure) is in.

    A phone reports its call established as it sends its 200, which may still be on its
    way to the gateway.
    """
    async with asyncio.timeout(EVENT_TIMEOUT):
        await agent_call.until(lambda c: c.state is not CallState.RINGING)
    return agent_call.state


def packets_sent(gw: Gateway, agent_call: AgentCall) -> int:
    leg = gw.phones.legs.get(agent_call.call_id)
    return 0 if leg is None else leg.transport.leg.summary().packets_sent


def heard_lately(sender: Baresip, receiver: Baresip) -> float:
    """How well the last seconds ``receiver`` heard match what ``sender`` sent at some point.

    For a call that changed parties (a transfer): the two recordings then start seconds
    apart, further than :func:`heard`'s alignment looks.
    """
    received = receiver.recording("dec")
    needle = received[len(received) - int(2.5 * RATE) : len(received) - int(0.5 * RATE)]
    correlation, _offset = best_match(needle, sender.recording("enc"))
    return correlation


def heard(sender: Baresip, receiver: Baresip) -> float:
    correlation, _lag = aligned_correlation_signed(
        sender.recording("enc"), receiver.recording("dec")
    )
    return correlation


async def test_a_registered_phone_agent_takes_the_call_and_audio_flows_both_ways(
    gateway: Gateway, alice: Baresip, desk1: Baresip
) -> None:
    gw = gateway
    await sign_in(gw, desk1, "desk1", auto_answer=True)
    await dial(gw, alice, agents=[1])
    assert await desk1.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    (agent_call,) = gw.offered
    assert (agent_call.agent_id, agent_call.phone) == (1, "desk1")
    assert await answered(agent_call) is CallState.ACTIVE
    session = gw.agents.session(1)
    assert session is not None and session.presence is Presence.ON_CALL
    assert gw.agents.available_agents("acme") == []
    (caller,) = gw.inbound
    # The caller's media (what consent, recording and transcription read) has the phone's
    # voice as its agent party: 2 s of it, found in what desk1 sent. The 2 s are the tap's
    # timeline from the first frame heard, concealed frames in their places: dropping them
    # would shift everything after a lost packet out of alignment with what was sent.
    media = caller.media(MediaClock())  # the bridge's own, made when the call arrived
    consumer = media.frames()
    agent_pcm: list[bytes] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        async for frame in consumer:
            if frame.party == media.agent_party and (agent_pcm or not frame.filled):
                agent_pcm.append(frame.pcm)
                if len(agent_pcm) == 100:
                    break
    consumer.close()
    # 3 s each way: the phone's leg sends the caller's audio, the caller's leg the phone's.
    await until(lambda: packets_sent(gw, agent_call) >= 150)
    await until(lambda: caller.transport.leg.summary().packets_sent >= 150)
    # Talking directly, the caller's RTP is relayed into the phone's leg as it arrives.
    assert caller.transport.peer is gw.phones.legs[agent_call.call_id].transport
    await alice.command("hangup")
    assert await alice.event("CALL_CLOSED") == "CALL_CLOSED"
    assert await desk1.event("CALL_CLOSED") == "CALL_CLOSED"  # the gateway's BYE to the phone
    await agent_call.until(lambda c: c.state is CallState.ENDED)
    assert agent_call.ended_reason == "caller_hangup"
    await until(lambda: gw.calls.calls == {} and gw.calls.ports.in_use == 0)

    assert heard(alice, desk1) > 0.8
    assert heard(desk1, alice) > 0.8
    tapped = as_float(np.frombuffer(b"".join(agent_pcm), dtype="<i2"))
    assert best_match(tapped, desk1.recording("enc"))[0] > 0.8
    own, _ = aligned_correlation_signed(alice.recording("enc"), alice.recording("dec"))
    assert own < 0.3  # nobody hears themselves
    # Wrap-up over (0 s here), the registered phone is available for the next call.
    await until(lambda: gw.agents.available_agents("acme") == [1])


async def test_the_phone_hanging_up_ends_the_callers_call(
    gateway: Gateway, alice: Baresip, desk1: Baresip
) -> None:
    gw = gateway
    await sign_in(gw, desk1, "desk1", auto_answer=True)
    await dial(gw, alice, agents=[1])
    assert await desk1.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    await desk1.command("hangup")
    assert await alice.event("CALL_CLOSED") == "CALL_CLOSED"
    (agent_call,) = gw.offered
    assert agent_call.ended_reason == "agent_hangup"
    await until(lambda: gw.calls.calls == {} and gw.calls.ports.in_use == 0)


async def test_a_phone_that_does_not_answer_in_the_ring_timeout_passes_the_call_on(
    gateway: Gateway, alice: Baresip, desk1: Baresip, desk2: Baresip
) -> None:
    gw = gateway
    await sign_in(gw, desk1, "desk1", auto_answer=False)
    await sign_in(gw, desk2, "desk2", auto_answer=True)
    await dial(gw, alice, agents=[1, 2])
    assert await desk1.event("CALL_INCOMING") == "CALL_INCOMING"
    started = time.monotonic()
    # Nobody answers desk1: the queue's ring timeout cancels its INVITE ...
    assert await desk1.event("CALL_CLOSED", within=RING_TIMEOUT + EVENT_TIMEOUT) == "CALL_CLOSED"
    assert time.monotonic() - started >= RING_TIMEOUT - 0.5
    # ... and rings desk2, which takes the caller.
    assert await desk2.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    first, second = gw.offered
    assert (first.agent_id, first.ended_reason) == (1, "no_answer")
    assert (second.agent_id, await answered(second)) == (2, CallState.ACTIVE)
    await until(lambda: packets_sent(gw, second) >= 100)
    await alice.command("hangup")
    assert await desk2.event("CALL_CLOSED") == "CALL_CLOSED"
    assert heard(alice, desk2) > 0.8


async def test_a_phone_declining_passes_the_call_on_at_once(
    gateway: Gateway, alice: Baresip, desk1: Baresip, desk2: Baresip
) -> None:
    gw = gateway
    await sign_in(gw, desk1, "desk1", auto_answer=False)
    await sign_in(gw, desk2, "desk2", auto_answer=True)
    await dial(gw, alice, agents=[1, 2])
    assert await desk1.event("CALL_INCOMING") == "CALL_INCOMING"
    started = time.monotonic()
    await desk1.command("hangup")  # baresip rejects a ringing call with 486 Busy Here
    assert await desk2.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert time.monotonic() - started < RING_TIMEOUT
    first, second = gw.offered
    assert (first.agent_id, first.ended_reason) == (1, "busy")
    assert second.agent_id == 2
    await alice.command("hangup")
    assert await desk2.event("CALL_CLOSED") == "CALL_CLOSED"


async def test_a_blind_refer_from_the_phone_moves_the_caller_to_another_phone_agent(
    gateway: Gateway, alice: Baresip, desk1: Baresip, desk2: Baresip
) -> None:
    gw = gateway
    await sign_in(gw, desk1, "desk1", auto_answer=True)
    await sign_in(gw, desk2, "desk2", auto_answer=True)
    await dial(gw, alice, agents=[1, 2])
    assert await desk1.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    (first,) = gw.offered

    await desk1.command("transfer", f"sip:desk2@{REALM}")
    assert await desk2.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await desk1.event("CALL_CLOSED") == "CALL_CLOSED"
    _, second = gw.offered
    assert (second.agent_id, await answered(second)) == (2, CallState.ACTIVE)
    await first.until(lambda c: c.state is CallState.ENDED)
    assert first.ended_reason == "transferred"
    (progress,) = gw.phones.refers
    await until(lambda: progress.finished)
    assert progress.reported == [100, 200]
    # The caller's leg never changed; desk2 now hears alice and alice hears desk2.
    (caller,) = gw.inbound
    assert not caller.ended.is_set()
    await until(lambda: packets_sent(gw, second) >= 175)
    assert caller.transport.peer is gw.phones.legs[second.call_id].transport
    await alice.command("hangup")
    assert await desk2.event("CALL_CLOSED") == "CALL_CLOSED"
    assert heard_lately(alice, desk2) > 0.8
    assert heard_lately(desk2, alice) > 0.8


#: SIPp as desk1's phone registering with its credential (SIPp maps messages to its call by
#: Call-ID, so the call is taken by a second run on the same port) ...
REGISTER_DESK1 = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register desk1 with digest">
  <send retrans="500"><![CDATA[
REGISTER sip:{realm} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:desk1@{realm}>;tag=[pid]reg[call_number]
To: <sip:desk1@{realm}>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:desk1@[local_ip]:[local_port]>
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
REGISTER sip:{realm} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:desk1@{realm}>;tag=[pid]reg[call_number]
To: <sip:desk1@{realm}>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:desk1@[local_ip]:[local_port]>
[authentication username=desk1 password=desk1-secret]
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""
_IN_DIALOG = """{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:desk1@{realm}>;tag=[pid]desk1[call_number]
To:[$caller]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:desk1@[local_ip]:[local_port]>
Max-Forwards: 70
"""
#: ... then answering the queued call and REFERring it to targets the rules refuse: each
#: REFER fails, and the call goes on until the phone's own BYE (a BYE from the gateway
#: would be an unexpected message and fail the scenario).
REFUSED_REFERS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone agent: answer, two refused REFERs, then BYE">
  <recv request="INVITE" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/></action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]desk1[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:desk1@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv request="ACK"/>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
{unknown}Refer-To: <sip:nobody@{realm}>
Content-Length: 0

]]></send>
  <recv response="404"/>
  <send retrans="500"><![CDATA[
{other}Refer-To: <sip:desk2@other.voice.test>
Content-Length: 0

]]></send>
  <recv response="403"/>
  <pause milliseconds="1500"/>
  <send retrans="500"><![CDATA[
{bye}Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""
DESK_SDP = (
    "v=0\no=desk1 1 1 IN IP4 [media_ip]\ns=-\nc=IN IP4 [media_ip]\nt=0 0\n"
    "m=audio [media_port] RTP/AVP 0\na=rtpmap:0 PCMU/8000\na=sendrecv\n"
)


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed")
async def test_refers_to_unknown_or_forbidden_targets_are_refused_and_the_call_goes_on(
    gateway: Gateway, alice: Baresip, tmp_path: Path
) -> None:
    gw = gateway
    (tmp_path / "register.xml").write_text(REGISTER_DESK1.format(realm=REALM))
    scenario = REFUSED_REFERS.format(
        realm=REALM,
        sdp=DESK_SDP,
        unknown=_IN_DIALOG.format(method="REFER", cseq=1, realm=REALM),
        other=_IN_DIALOG.format(method="REFER", cseq=2, realm=REALM),
        bye=_IN_DIALOG.format(method="BYE", cseq=3, realm=REALM),
    )
    (tmp_path / "desk1.xml").write_text(scenario)
    desk_port = free_udp_port()
    register = await start_sipp(
        tmp_path, "-sf", "register.xml", f"127.0.0.1:{gw.port}", "-p", str(desk_port)
    )
    await finish(register, tmp_path)
    desk1 = await start_sipp(tmp_path, "-sf", "desk1.xml", "-p", str(desk_port))
    try:
        await dial(gw, alice, agents=[1])
        assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        # The phone's BYE, after both refusals and a pause, is what ends the call.
        assert await alice.event("CALL_CLOSED") == "CALL_CLOSED"
        await finish(desk1, tmp_path)
    finally:
        if desk1.returncode is None:
            desk1.kill()
            await desk1.wait()
    (agent_call,) = gw.offered
    assert agent_call.ended_reason == "agent_hangup"
    assert agent_call.answered_at is not None
    assert not gw.phones.refers  # neither REFER was accepted: no transfer was started


_NOTIFY_OK = """  <recv request="NOTIFY">
    <action>
      <ereg regexp="SIP/2.0 {status} " search_in="body" check_it="true" assign_to="n{status}"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""
_BYE_RECEIVED = """  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""
_BYE_SENT = """  <pause milliseconds="1000"/>
  <send retrans="500"><![CDATA[
{bye}Content-Length: 0

]]></send>
  <recv response="200"/>
"""
#: ... or answering and REFERring the caller to ``{target}``: 202, a NOTIFY with 100, one
#: with the final ``{final}``; then either the gateway's BYE (the caller left) or ours.
REFER_WITH_NOTIFY = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone agent: answer, REFER, NOTIFYs">
  <recv request="INVITE" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/></action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]desk1[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:desk1@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv request="ACK"/>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
{refer}Refer-To: <{target}>
Referred-By: <sip:desk1@{realm}>
Content-Length: 0

]]></send>
  <recv response="202"/>
{notify_trying}{notify_final}{ending}  <Reference variables="n100,n{final}"/>
</scenario>
"""


async def refer_scenario(
    gw: Gateway, tmp_path: Path, target: str, final: int, *, gateway_hangs_up: bool
) -> asyncio.subprocess.Process:
    """Register desk1 with SIPp, then start its REFER scenario on the same port."""
    (tmp_path / "register.xml").write_text(REGISTER_DESK1.format(realm=REALM))
    scenario = REFER_WITH_NOTIFY.format(
        realm=REALM,
        sdp=DESK_SDP,
        refer=_IN_DIALOG.format(method="REFER", cseq=1, realm=REALM),
        target=target,
        final=final,
        notify_trying=_NOTIFY_OK.format(status=100),
        notify_final=_NOTIFY_OK.format(status=final),
        ending=_BYE_RECEIVED
        if gateway_hangs_up
        else _BYE_SENT.format(bye=_IN_DIALOG.format(method="BYE", cseq=2, realm=REALM)),
    )
    (tmp_path / "desk1.xml").write_text(scenario)
    desk_port = free_udp_port()
    register = await start_sipp(
        tmp_path, "-sf", "register.xml", f"127.0.0.1:{gw.port}", "-p", str(desk_port)
    )
    await finish(register, tmp_path)
    return await start_sipp(tmp_path, "-sf", "desk1.xml", "-p", str(desk_port))


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed")
async def test_a_refer_to_the_tenants_number_requeues_the_caller_for_the_next_agent(
    gateway: Gateway, alice: Baresip, desk2: Baresip, tmp_path: Path
) -> None:
    gw = gateway
    desk1 = await refer_scenario(gw, tmp_path, DIALLED, 200, gateway_hangs_up=True)
    try:
        await dial(gw, alice, agents=[1])
        assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        # desk2 signs in only now: the queue has no one else to give the caller to.
        await sign_in(gw, desk2, "desk2", auto_answer=True)
        assert await desk2.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await finish(desk1, tmp_path)  # NOTIFY 100, NOTIFY 200, then the gateway's BYE
    finally:
        if desk1.returncode is None:
            desk1.kill()
            await desk1.wait()
    first, second = gw.offered
    assert (first.agent_id, first.ended_reason) == (1, "transferred")
    assert (second.agent_id, await answered(second)) == (2, CallState.ACTIVE)
    (progress,) = gw.phones.refers
    assert progress.reported == [100, 200]
    await until(lambda: packets_sent(gw, second) >= 175)
    await alice.command("hangup")
    assert await desk2.event("CALL_CLOSED") == "CALL_CLOSED"
    assert heard_lately(alice, desk2) > 0.8


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed")
async def test_a_refer_to_an_agent_who_does_not_answer_notifies_the_failure_and_keeps_the_call(
    gateway: Gateway, alice: Baresip, desk2: Baresip, tmp_path: Path
) -> None:
    gw = gateway
    await sign_in(gw, desk2, "desk2", auto_answer=False)
    desk1 = await refer_scenario(gw, tmp_path, f"sip:desk2@{REALM}", 480, gateway_hangs_up=False)
    try:
        await dial(gw, alice, agents=[1, 2])
        assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        assert await desk2.event("CALL_INCOMING") == "CALL_INCOMING"  # the transfer rings
        within = RING_TIMEOUT + EVENT_TIMEOUT
        assert await desk2.event("CALL_CLOSED", within=within) == "CALL_CLOSED"
        # NOTIFY 480, then desk1, back with the caller, hangs up itself.
        assert await alice.event("CALL_CLOSED", within=within) == "CALL_CLOSED"
        await finish(desk1, tmp_path)
    finally:
        if desk1.returncode is None:
            desk1.kill()
            await desk1.wait()
    first = gw.offered[0]
    assert (first.agent_id, first.ended_reason) == (1, "agent_hangup")
    (progress,) = gw.phones.refers
    assert progress.reported == [100, 480]
    # The caller went back to desk1 (the page would show the failed transfer).
    assert first.transfer is not None and first.transfer.state == "failed"
    assert first.transfer.reason == "no_answer"


async def test_every_registered_contact_of_the_login_rings_and_the_first_answer_wins(
    gateway: Gateway, alice: Baresip, desk1: Baresip, tmp_path: Path
) -> None:
    gw = gateway
    # The same login on a second phone (a desk phone and a softclient, say), not answering.
    desk1_mobile = await phone(tmp_path, "desk1-mobile", 17, "48900-49199")
    try:
        await sign_in(gw, desk1_mobile, "desk1", auto_answer=False)
        await sign_in(gw, desk1, "desk1", auto_answer=True)
        await dial(gw, alice, agents=[1])
        assert await desk1_mobile.event("CALL_INCOMING") == "CALL_INCOMING"
        assert await desk1.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        # The other contact's INVITE is cancelled once desk1 answered.
        assert await desk1_mobile.event("CALL_CLOSED") == "CALL_CLOSED"
        (agent_call,) = gw.offered
        assert await answered(agent_call) is CallState.ACTIVE
        assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await until(lambda: packets_sent(gw, agent_call) >= 100)
        await alice.command("hangup")
        assert await desk1.event("CALL_CLOSED") == "CALL_CLOSED"
        assert heard(alice, desk1) > 0.8
    finally:
        await desk1_mobile.stop()
