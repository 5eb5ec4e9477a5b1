"""Two real baresips of one tenant call each other through the gateway's B2BUA.

Alice (``aufile`` microphone, ``sndfile`` recording) dials ``sip:bob@<realm>``;
Bob is registered with ``answermode=auto`` (or answers/declines by command).
Each plays its own non-repeating tone sequence, so what one records as
received must correlate with what the other sent, not with its own. Every
wait is on a baresip ctrl_tcp event or a gateway call event, bounded.
For early media, SIPp plays a Bob whose phone answers 183 with SDP and an
announcement before it picks up.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile

from tests.e2e.peers import (
    EVENT_TIMEOUT,
    RATE,
    REALM,
    SECRET,
    Baresip,
    Sessions,
    acme_store,
    aligned_correlation_signed,
    free_port_pair,
    loopback_sip_service,
    tone_sequence,
)
from tests.sip.test_transaction_sipp import finish, free_udp_port, start_sipp
from voicegw.calls.bridge import BridgeConfig, BridgeService, store_contacts, store_tenant_users
from voicegw.calls.echo import EchoService
from voicegw.calls.records import CallRecords
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallEvent,
    EndReason,
    HoldChanged,
    InboundCall,
    SipCalls,
    SipCallsConfig,
)
from voicegw.calls.sip_service import SipService
from voicegw.media.ports import PortAllocator
from voicegw.sip.sdp import Direction
from voicegw.store.models import Call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

BOB_URI = f"sip:bob@{REALM}"
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than any call here


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    bridge: BridgeService
    records: CallRecords
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    users = {user: f"{user}-secret" for user in ("alice", "bob")}
    async with acme_store(tmp_path / "voicegw.db", users) as sessions:
        yield sessions


@pytest.fixture
async def gateway(sessions: Sessions) -> AsyncIterator[Gateway]:
    service = loopback_sip_service(sessions, SECRET)

    async def owner(number: str) -> str | None:
        return None

    records = CallRecords(sessions, node="e2e")
    bridge = BridgeService(
        store_contacts(sessions), records=records, config=BridgeConfig(answer_timeout=3.0)
    )
    calls = SipCalls(
        service,
        Router(owner, tenant_user=store_tenant_users(sessions)),
        PortAllocator("127.0.0.1", 43000, 43999),
        {Service.ECHO: EchoService(), Service.BRIDGE_USER: bridge},
        SipCallsConfig(),
    )
    bridge.bind(calls)
    offered: asyncio.Queue[InboundCall] = asyncio.Queue()

    def on_call(call: InboundCall) -> None:
        records.track(call)
        offered.put_nowait(call)

    calls.on_call = on_call
    calls.attach()
    await service.start()
    try:
        yield Gateway(service, calls, bridge, records, offered)
    finally:
        await calls.close()
        await records.wait_written()
        await service.stop()


async def phone(tmp_path: Path, name: str, seed: int, rtp_ports: str) -> Baresip:
    wav = tmp_path / f"{name}.wav"
    soundfile.write(wav, tone_sequence(INPUT_SECONDS, seed), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / name, wav, rtp_ports)
    await baresip.start()
    return baresip


@pytest.fixture
async def alice(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "alice", 7, "41000-41499")
    yield baresip
    await baresip.stop()


@pytest.fixture
async def bob(tmp_path: Path) -> AsyncIterator[Baresip]:
    baresip = await phone(tmp_path, "bob", 11, "41500-41999")
    yield baresip
    await baresip.stop()


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll a gateway-side condition that has no event of its own (packet counters)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def stored_call(gw: Gateway, sessions: Sessions) -> Call:
    await gw.records.wait_written()
    async with sessions() as session:
        rows = list((await session.execute(Call.__table__.select())).all())
        assert len(rows) == 1, rows
        found = await session.get(Call, rows[0].id)
    assert found is not None
    return found


async def connect(gw: Gateway, alice: Baresip, bob: Baresip) -> InboundCall:
    await bob.register("bob", "bob-secret", gw.port, auto_answer=True)
    await alice.register("alice", "alice-secret", gw.port)
    await alice.command("dial", BOB_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    assert await bob.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
    return call


async def test_bridged_audio_flows_both_ways_and_caller_bye_ends_the_callee(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gw = gateway
    call = await connect(gw, alice, bob)
    bridge = gw.bridge.bridges[call.id]
    callee = bridge.callee
    # 3 s each way (150 packets of 20 ms relayed into each leg).
    await until(lambda: call.transport.leg.summary().packets_sent >= 150)
    await until(lambda: callee.transport.leg.summary().packets_sent >= 150)
    await alice.command("hangup")
    assert await alice.event("CALL_CLOSED") == "CALL_CLOSED"
    assert await bob.event("CALL_CLOSED") == "CALL_CLOSED"
    await asyncio.wait_for(callee.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.REMOTE_BYE
    assert callee.end_reason is EndReason.LOCAL_HANGUP
    await until(lambda: gw.calls.calls == {} and gw.calls.ports.in_use == 0)

    row = await stored_call(gw, sessions)
    assert (row.tenant_id, row.direction, row.state) == ("acme", "inbound", "ended")
    assert (row.caller_masked, row.callee_masked) == ("alice", "bob")
    assert row.end_reason == "caller-hangup"
    assert row.answered_at is not None and row.ended_at is not None
    assert row.media_stats is not None and set(row.media_stats) == {"caller", "callee"}
    for leg in ("caller", "callee"):
        stats = row.media_stats[leg]
        assert isinstance(stats, dict)
        assert stats["packets_sent"] >= 150
        assert stats["received"]["packets_received"] >= 150
        assert 0 <= stats["received"]["jitter_ms"] < 100

    for sender, receiver in ((alice, bob), (bob, alice)):
        correlation, lag = aligned_correlation_signed(
            sender.recording("enc"), receiver.recording("dec")
        )
        assert correlation > 0.9, (correlation, lag)
    # Nobody hears themselves: the bridge is not an echo.
    own, _ = aligned_correlation_signed(alice.recording("enc"), alice.recording("dec"))
    assert own < 0.3


async def test_bridged_dtmf_reaches_the_callee_and_callee_bye_ends_the_caller(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gw = gateway
    call = await connect(gw, alice, bob)
    bridge = gw.bridge.bridges[call.id]
    received = []
    for key in "4#":
        await alice.command("sndcode", key)
        event = await bob.event_message("CALL_DTMF_START")
        received.append(event.get("param"))
    assert received == ["4", "#"]
    assert bridge.to_callee.sent == ["4", "#"]
    await bob.command("hangup")
    assert await bob.event("CALL_CLOSED") == "CALL_CLOSED"
    assert await alice.event("CALL_CLOSED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.LOCAL_HANGUP
    row = await stored_call(gw, sessions)
    assert row.end_reason == "callee-hangup"
    assert row.media_stats is not None and set(row.media_stats) == {"caller", "callee"}
    # Each key press arrived exactly once.
    starts = [e.get("param") for e in bob.seen if e.get("type") == "CALL_DTMF_START"]
    assert starts == ["4", "#"]


async def ring_bob(gw: Gateway, alice: Baresip, bob: Baresip) -> InboundCall:
    await bob.register("bob", "bob-secret", gw.port)
    await alice.register("alice", "alice-secret", gw.port)
    await alice.command("dial", BOB_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    await bob.event("CALL_INCOMING")
    assert await alice.event("CALL_RINGING", "CALL_CLOSED") == "CALL_RINGING"
    return call


async def test_callee_declining_gives_the_caller_486_busy(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    call = await ring_bob(gateway, alice, bob)
    await bob.command("hangup")  # baresip declines a ringing call with 486
    assert (await alice.event_message("CALL_CLOSED"))["param"] == "486 Busy Here"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.REJECTED
    row = await stored_call(gateway, sessions)
    assert (row.state, row.end_reason, row.answered_at) == ("ended", "callee-busy", None)
    assert row.media_stats is not None and set(row.media_stats) == {"caller"}


async def test_caller_cancelling_cancels_the_ringing_callee(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    call = await ring_bob(gateway, alice, bob)
    await alice.command("hangup")
    assert await bob.event("CALL_CLOSED", "CALL_ESTABLISHED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    assert call.end_reason is EndReason.CANCELLED
    await until(lambda: gateway.calls.calls == {} and gateway.calls.ports.in_use == 0)
    row = await stored_call(gateway, sessions)
    assert (row.end_reason, row.answered_at) == ("cancelled", None)


async def test_unanswered_callee_is_cancelled_and_the_caller_gets_480(
    gateway: Gateway, alice: Baresip, bob: Baresip, sessions: Sessions
) -> None:
    gateway.bridge.config = BridgeConfig(answer_timeout=1.0)
    call = await ring_bob(gateway, alice, bob)
    assert (await alice.event_message("CALL_CLOSED"))["param"] == "480 No Answer"
    assert await bob.event("CALL_CLOSED", "CALL_ESTABLISHED") == "CALL_CLOSED"
    await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
    row = await stored_call(gateway, sessions)
    assert row.end_reason == "callee-no-answer"


async def test_unregistered_callee_gives_the_caller_480_at_once(
    gateway: Gateway, alice: Baresip, sessions: Sessions
) -> None:
    await alice.register("alice", "alice-secret", gateway.port)
    await alice.command("dial", BOB_URI)
    assert (await alice.event_message("CALL_CLOSED"))["param"] == "480 Temporarily Unavailable"
    row = await stored_call(gateway, sessions)
    assert row.end_reason == "callee-not-registered"


async def test_caller_hold_reaches_the_callee_as_a_sendonly_reinvite_and_resume_restores_audio(
    gateway: Gateway, alice: Baresip, bob: Baresip
) -> None:
    call = await connect(gateway, alice, bob)
    callee = gateway.bridge.bridges[call.id].callee
    changes: asyncio.Queue[tuple[str, HoldChanged]] = asyncio.Queue()
    for side, leg in (("caller", call), ("callee", callee)):
        watched = leg.on_event
        assert watched is not None

        def on_event(
            event: CallEvent, watched: Callable[[CallEvent], None] = watched, side: str = side
        ) -> None:
            watched(event)  # the bridge's own handler first: it re-decides the relay
            if isinstance(event, HoldChanged):
                changes.put_nowait((side, event))

        leg.on_event = on_event  # fmt: skip

    async def change() -> tuple[str, HoldChanged]:
        return await asyncio.wait_for(changes.get(), EVENT_TIMEOUT)

    def sent_to_caller() -> int:
        return call.transport.leg.summary().packets_sent

    def sent_to_callee() -> int:
        return callee.transport.leg.summary().packets_sent

    await until(lambda: sent_to_caller() >= 25 and sent_to_callee() >= 25)
    await alice.command("hold")
    side, held = await change()
    assert (side, held.held, held.direction, held.by_peer) == (
        "caller", True, Direction.RECVONLY, True,
    )  # fmt: skip
    # The gateway re-INVITEd Bob with a=sendonly and Bob answered recvonly.
    side, propagated = await change()
    assert (side, propagated.direction, propagated.by_peer) == ("callee", Direction.SENDONLY, False)
    assert callee.local_sdp.direction_of(callee.local_sdp.media[0]) is Direction.SENDONLY
    assert not callee.held and call.held
    at_hold = sent_to_caller()
    await asyncio.sleep(0.3)  # 15 packets' worth: nothing may go to the held Alice meanwhile
    assert sent_to_caller() == at_hold

    await alice.command("resume")
    side, resumed = await change()
    assert (side, resumed.held, resumed.direction) == ("caller", False, Direction.SENDRECV)
    side, propagated = await change()
    assert (side, propagated.direction) == ("callee", Direction.SENDRECV)
    assert callee.local_sdp.direction_of(callee.local_sdp.media[0]) is Direction.SENDRECV
    # Bob's audio reaches Alice again, and Alice's Bob.
    at_resume = sent_to_callee()
    await until(lambda: sent_to_caller() >= at_hold + 25 and sent_to_callee() >= at_resume + 25)
    await alice.command("hangup")
    assert await bob.event("CALL_CLOSED") == "CALL_CLOSED"


G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")

#: SIPp as Bob's phone, first registering with his credential (SIPp maps messages to its
#: call by Call-ID, so the INVITE is answered by a second run on the same port) ...
REGISTER_BOB = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register bob with digest">
  <send retrans="500"><![CDATA[
REGISTER sip:{realm} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:bob@{realm}>;tag=[pid]reg[call_number]
To: <sip:bob@{realm}>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:bob@[local_ip]:[local_port]>
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
REGISTER sip:{realm} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:bob@{realm}>;tag=[pid]reg[call_number]
To: <sip:bob@{realm}>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:bob@[local_ip]:[local_port]>
[authentication username=bob password=bob-secret]
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""
#: ... then answering the bridged INVITE with 183 and SDP, playing an announcement (PCMA
#: from a capture) as early media, and answering 2.5 s later.
EARLY_MEDIA_BOB = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registered callee: 183 with early media, then 200">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 183 Session Progress
[last_Via:]
[last_From:]
[last_To:];tag=[pid]bob[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:bob@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <pause milliseconds="2500"/>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]bob[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:bob@[local_ip]:[local_port]>
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
BOB_SDP = (
    "v=0\no=bob 1 1 IN IP4 [media_ip]\ns=-\nc=IN IP4 [media_ip]\nt=0 0\n"
    "m=audio [media_port] RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\n"
    "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=sendrecv\n"
)


@pytest.mark.skipif(
    shutil.which("sipp") is None or not G711A_PCAP.exists(), reason="SIPp or its captures missing"
)
async def test_callee_183_early_media_reaches_the_caller_before_the_answer(
    gateway: Gateway, alice: Baresip, tmp_path: Path
) -> None:
    (tmp_path / "register.xml").write_text(REGISTER_BOB.format(realm=REALM))
    scenario = EARLY_MEDIA_BOB.format(realm=REALM, sdp=BOB_SDP, pcap=G711A_PCAP)
    (tmp_path / "bob.xml").write_text(scenario)
    bob_port = free_udp_port()
    register = await start_sipp(
        tmp_path, "-sf", "register.xml", f"127.0.0.1:{gateway.port}", "-p", str(bob_port)
    )
    await finish(register, tmp_path)
    assert await gateway.bridge.contacts("acme", BOB_URI)
    bob = await start_sipp(
        tmp_path, "-sf", "bob.xml", "-p", str(bob_port), "-mp", str(free_port_pair())
    )
    try:
        await alice.register("alice", "alice-secret", gateway.port)
        await alice.command("dial", BOB_URI)
        call = await asyncio.wait_for(gateway.offered.get(), EVENT_TIMEOUT)
        assert await alice.event("CALL_PROGRESS", "CALL_CLOSED") == "CALL_PROGRESS"
        # Bob's announcement is relayed (PCMA -> PCMU) to Alice while Bob has not answered.
        await until(lambda: call.transport.leg.summary().packets_sent >= 25)
        assert call.id not in gateway.bridge.bridges and not call.confirmed.is_set()
        assert await alice.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        callee = gateway.bridge.bridges[call.id].callee
        assert callee.audio.codec.name == "PCMA" and call.audio.codec.name == "PCMU"
        await alice.command("hangup")
        await finish(bob, tmp_path)
    finally:
        if bob.returncode is None:
            bob.kill()
            await bob.wait()
