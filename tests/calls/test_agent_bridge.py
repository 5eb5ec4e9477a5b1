"""The agent bridge on loopback: a scripted SIP/RTP caller, the real call layer, and agents.

The caller is a carrier trunk (no credentials) dialling the tenant's number;
its requests are written out here and it speaks PCMU over real UDP. Agents sign
in to a real :class:`AgentDirectory`; where audio matters, a plain aiortc peer
stands in for the agent's browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voicegw.calls.agent_bridge import (
    AgentBridge,
    AgentBridgeConfig,
    OverflowTreatment,
    trunk_dialer,
)
from voicegw.calls.agents import (
    AgentCall,
    AgentDirectory,
    AgentEvent,
    AgentSession,
    CallAction,
    CallOffered,
    CallState,
    CallView,
    SoftphoneError,
)
from voicegw.calls.queues import QueueDefinition, QueueSettings
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import EndReason, InboundCall, SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.calls.trunks import Trunk, TrunkOutbound, TrunkTable
from voicegw.media.codecs import PCMU
from voicegw.media.playback import BufferSource, PlaybackSource, tone
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import WebRtcConfig, offered_host_addresses
from voicegw.sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    parse_message,
)
from voicegw.sip.sdp import SessionDescription
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

DOMAIN = "voice.test"
NUMBER = "+442079460123"
URI = f"sip:{NUMBER}@{DOMAIN}"
TENANT = "acme"
TIMEOUT = 5.0
CALLER_TONE = 1000.0  # what the caller says
AGENT_TONE = 440.0  # what the agent's microphone picks up


async def within(awaitable: Any, seconds: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def eventually(condition: Callable[[], bool], seconds: float = TIMEOUT) -> None:
    """For state that no event announces (queue counts, received audio)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def loud(pcm: bytes) -> bool:
    return bool(np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 1000)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# --- the caller --------------------------------------------------------------------------


class Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


@dataclass
class Caller:
    """A trunk placing one call: INVITE/ACK/BYE on ``sip``, PCMU on ``rtp``."""

    sip: Socket
    rtp: Socket
    gateway: tuple[str, int]
    cseq: int = 0
    to_tag: str | None = None
    media_at: tuple[str, int] | None = None
    heard: list[bytes] = field(default_factory=list)
    _talking: asyncio.Task[None] | None = None
    _listening: asyncio.Task[None] | None = None

    def send(self, method: str, body: str = "", cseq: int | None = None) -> int:
        if cseq is None:
            self.cseq += 1
        to = f"<{URI}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} {URI} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            "From: <sip:+14155550123@carrier.test>;tag=trunk",
            f"To: {to}",
            "Call-ID: bridge-call-1@127.0.0.1",
            f"CSeq: {cseq or self.cseq} {method}",
            f"Contact: <sip:trunk@127.0.0.1:{self.sip.port}>",
            *(["Content-Type: application/sdp"] if body else []),
            f"Content-Length: {len(body.encode())}",
        ]
        assert self.sip.transport is not None
        self.sip.transport.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.gateway)
        return cseq or self.cseq

    def invite(self) -> None:
        sdp = (
            "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp.port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendrecv\r\n"
        )
        self.send("INVITE", sdp)

    async def message(self) -> SipMessage:
        return parse_message(await within(self.sip.received.get()))

    async def final(self) -> SipResponse:
        """The INVITE's final response (ACKed when it is a 2xx)."""
        while True:
            message = await self.message()
            if isinstance(message, SipResponse) and message.status >= 200:
                break
        if message.status < 300:
            self.to_tag = message.to.tag
            self.send("ACK", cseq=message.cseq.seq)
            answer = SessionDescription.parse(message.body)
            assert answer.connection is not None
            self.media_at = (answer.connection.host, answer.media[0].port)
        return message

    async def request(self) -> SipRequest:
        while True:
            message = await self.message()
            if isinstance(message, SipRequest):
                return message

    def talk(self, frequency: float) -> None:
        self._talking = asyncio.create_task(self._talk(frequency))
        self._listening = asyncio.create_task(self._listen())

    async def _talk(self, frequency: float) -> None:
        assert self.rtp.transport is not None and self.media_at is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(3000):  # a minute at most
            t = (np.arange(160) + 160 * n) / 8000
            pcm = (0.4 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()
            packet = RtpPacket(0, n, 160 * n, 0x5EED, PCMU.encode(pcm), n == 0)
            self.rtp.transport.sendto(bytes(packet), self.media_at)
            await asyncio.sleep(max(0.0, start + 0.02 * (n + 1) - loop.time()))

    async def _listen(self) -> None:
        while True:
            packet = RtpPacket.parse(await self.rtp.received.get())
            if packet.payload_type == 0:
                self.heard.append(PCMU.decode(packet.payload))

    async def hang_up(self) -> None:
        for task in (self._talking, self._listening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@dataclass
class Callee(Caller):
    """An external number behind the tenant's trunk: answers one INVITE and talks."""

    invite_request: SipRequest | None = None

    async def answer(self, frequency: float) -> None:
        request = await self.request()
        assert request.method == "INVITE"
        self.invite_request = request
        offer = SessionDescription.parse(request.body)
        assert offer.connection is not None
        self.media_at = (offer.connection.host, offer.media[0].port)
        sdp = (
            "v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp.port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        )
        response = make_response(
            request,
            200,
            headers=(
                ("Contact", f"<sip:callee@127.0.0.1:{self.sip.port}>"),
                ("Content-Type", "application/sdp"),
            ),
            body=sdp.encode(),
        )
        assert self.sip.transport is not None
        self.sip.transport.sendto(bytes(response), self.gateway)
        self.to_tag = response.to.tag
        while (await self.request()).method != "ACK":
            pass
        self.talk(frequency)

    def bye(self) -> None:
        """Hang up in the dialog the gateway's INVITE set up."""
        invite = self.invite_request
        assert invite is not None and self.sip.transport is not None
        contact = (invite.headers.get("Contact") or "").strip("<>")
        lines = [
            f"BYE {contact} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: {invite.headers.get('To')};tag={self.to_tag}",
            f"To: {invite.headers.get('From')}",
            f"Call-ID: {invite.headers.get('Call-ID')}",
            "CSeq: 1 BYE",
            "Content-Length: 0",
        ]
        self.sip.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.gateway)


# --- agents ------------------------------------------------------------------------------


@dataclass
class Page:
    """An agent's softphone socket: what the page is told."""

    events: asyncio.Queue[AgentEvent] = field(default_factory=asyncio.Queue)

    def deliver(self, event: AgentEvent) -> None:
        self.events.put_nowait(event)

    def close(self) -> None:
        pass

    async def rings(self) -> str:
        while True:
            event = await within(self.events.get())
            if isinstance(event, CallOffered):
                # The page sees the tenant and the caller's masked number, nothing more.
                assert (event.call.tenant_id, event.call.caller) == (TENANT, "+14****0123")
                return event.call.call_id


class Microphone(MediaStreamTrack):
    """48 kHz frames of a tone, paced at 20 ms like a browser's capture."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self.frequency = frequency
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        self._start = self._start or loop.time()
        await asyncio.sleep(max(0.0, self._start + self.sent * 0.02 - loop.time()))
        t = (np.arange(960) + self.sent * 960) / 48000
        samples = (0.4 * 32767 * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.sent * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.sent += 1
        return frame


@dataclass
class Browser:
    """The agent's browser: an aiortc peer that offers, plays its microphone and records."""

    pc: RTCPeerConnection
    heard: list[np.ndarray] = field(default_factory=list)

    async def connect(self, agents: AgentDirectory, session: AgentSession, call_id: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await agents.negotiate(session, call_id, self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with open_browser(AGENT_TONE) as peer:
        yield peer


@contextlib.asynccontextmanager
async def open_browser(frequency: float) -> AsyncIterator[Browser]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(Microphone(frequency))
    peer = Browser(pc)
    tasks: list[asyncio.Task[None]] = []

    async def listen(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                channels = len(frame.layout.channels)  # Opus decodes to stereo
                samples = frame.to_ndarray().astype(np.float32).reshape(-1, channels)
                peer.heard.append(samples.mean(axis=1) / 32768)

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(listen(track))))
    with offered_host_addresses(("127.0.0.1",)):
        yield peer
    await pc.close()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the gateway -------------------------------------------------------------------------


@dataclass
class Gateway:
    agents: AgentDirectory
    bridge: AgentBridge
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]
    caller: Caller
    #: The external number behind the tenant's trunk (external transfers).
    callee: Callee

    def sign_in(self, agent_id: int, skills: tuple[str, ...] = ()) -> tuple[AgentSession, Page]:
        page = Page()
        return self.agents.sign_in(TENANT, agent_id, page, skills), page

    async def inbound(self) -> InboundCall:
        return cast(InboundCall, await within(self.offered.get()))

    def agent_call(self, session: AgentSession) -> AgentCall:
        assert session.call is not None
        return session.call


GatewayFactory = Callable[[AgentBridgeConfig], Any]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name="Acme", settings=TenantSettings()
        )
        await tenants.add_number(session, actor="test", tenant_id=TENANT, number=NUMBER)
    cleanup: list[Callable[[], Any]] = []

    async def owner(number: str) -> str | None:
        async with sessions() as session:
            found = await tenants.tenant_for_number(session, number)
            return None if found is None else found.tenant_id

    async def start(config: AgentBridgeConfig) -> Gateway:
        service = SipService(
            SipServiceConfig(
                domain=DOMAIN,
                nonce_secret=b"0123456789abcdef-test-secret",
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
            ),
            sessions,
        )
        agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=0)
        bridge = AgentBridge(agents, config)
        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 44000, 44999),
            {Service.AGENT_QUEUE: bridge},
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        loop = asyncio.get_running_loop()
        _, sip = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        _, rtp = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        assert service.transports.bound.udp is not None
        caller = Caller(sip, rtp, service.transports.bound.udp)
        _, callee_sip = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        _, callee_rtp = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        callee = Callee(callee_sip, callee_rtp, service.transports.bound.udp)
        trunk = Trunk(
            "carrier-out",
            TENANT,
            outbound=TrunkOutbound(Destination("127.0.0.1", callee_sip.port)),
        )
        bridge.dial = trunk_dialer(calls, TrunkTable([trunk]))

        async def stop() -> None:
            await caller.hang_up()
            await callee.hang_up()
            await calls.close()
            await bridge.close()
            await agents.close()
            await service.stop()
            for socket in (sip, rtp, callee_sip, callee_rtp):
                assert socket.transport is not None
                socket.transport.close()

        cleanup.append(stop)
        return Gateway(agents, bridge, calls, offered, caller, callee)

    yield start
    for stop in cleanup:
        await stop()
    await engine.dispose()


QUICK = QueueSettings(ring_timeout=15.0, max_wait=30.0)


# --- the specification -------------------------------------------------------------------


async def test_caller_and_agent_hear_each_other_and_the_agent_hanging_up_sends_bye(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    session, page = gw.sign_in(7)
    gw.caller.invite()
    call_id = await page.rings()
    inbound = await gw.inbound()
    assert inbound.state.value == "ringing"  # an agent rings: no answer to the caller yet

    await gw.agents.act(session, call_id, CallAction.ANSWER)
    ok = await gw.caller.final()
    assert ok.status == 200
    gw.caller.talk(CALLER_TONE)
    await browser.connect(gw.agents, session, call_id)

    await eventually(lambda: len(browser.heard) >= 60 and len(gw.caller.heard) >= 60, 10.0)
    to_agent = np.concatenate(browser.heard[-40:])
    assert dominant_frequency(to_agent, 48000) == pytest.approx(CALLER_TONE, abs=15)
    to_caller = np.frombuffer(b"".join(gw.caller.heard[-40:]), dtype="<i2") / 32768
    assert dominant_frequency(to_caller, 8000) == pytest.approx(AGENT_TONE, abs=15)

    await gw.agents.act(session, call_id, CallAction.HANGUP)
    bye = await gw.caller.request()
    assert bye.method == "BYE"
    await within(inbound.ended.wait())
    assert gw.bridge.queued(TENANT) == 0


async def test_the_caller_hanging_up_ends_the_agents_call(gateway: GatewayFactory) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    session, page = gw.sign_in(7)
    gw.caller.invite()
    call_id = await page.rings()
    agent_call = gw.agent_call(session)
    await gw.agents.act(session, call_id, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200
    inbound = await gw.inbound()
    await within(inbound.confirmed.wait())

    gw.caller.send("BYE")
    await within(agent_call.until(lambda c: c.state is CallState.ENDED))
    assert agent_call.ended_reason == "caller_hangup"
    assert inbound.end_reason is EndReason.REMOTE_BYE


async def test_a_decline_routes_the_call_to_the_next_longest_idle_agent(
    gateway: GatewayFactory,
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, first_page = gw.sign_in(1)
    second, second_page = gw.sign_in(2)
    gw.caller.invite()
    declined = await first_page.rings()  # equally idle: the lower id goes first
    await gw.agents.act(first, declined, CallAction.DECLINE)
    taken = await second_page.rings()
    await gw.agents.act(second, taken, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200
    assert first.call is None and gw.agent_call(second).state is CallState.ACTIVE


async def test_an_unanswered_ring_times_out_to_the_next_agent(gateway: GatewayFactory) -> None:
    quick_ring = QueueSettings(ring_timeout=0.3, max_wait=30.0)
    gw: Gateway = await gateway(AgentBridgeConfig(queue=quick_ring))
    first, first_page = gw.sign_in(1)
    second, second_page = gw.sign_in(2)
    gw.caller.invite()
    await first_page.rings()
    missed = gw.agent_call(first)
    taken = await second_page.rings()
    assert missed.state is CallState.ENDED and missed.ended_reason == "no_answer"
    await gw.agents.act(second, taken, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200


async def test_with_nobody_available_the_caller_hears_hold_music_until_an_agent_signs_in(
    gateway: GatewayFactory,
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    gw.caller.invite()
    assert (await gw.caller.final()).status == 200  # answered to play the music
    gw.caller.talk(CALLER_TONE)

    await eventually(lambda: any(loud(frame) for frame in gw.caller.heard))
    assert gw.bridge.queued(TENANT) == 1
    session, page = gw.sign_in(3)
    call_id = await page.rings()
    await gw.agents.act(session, call_id, CallAction.ANSWER)
    await eventually(lambda: gw.bridge.queued(TENANT) == 0)


async def test_max_wait_with_hold_music_ends_with_bye_after_the_announcement(
    gateway: GatewayFactory,
) -> None:
    played: list[int] = []

    def announcement() -> PlaybackSource:
        played.append(1)
        return BufferSource(tone(700, 0.2))

    config = AgentBridgeConfig(
        queue=QueueSettings(max_wait=0.5),
        overflow=OverflowTreatment(announcement=announcement),
    )
    gw: Gateway = await gateway(config)
    gw.caller.invite()
    assert (await gw.caller.final()).status == 200
    bye = await gw.caller.request()
    assert bye.method == "BYE" and played == [1]
    assert gw.bridge.queued(TENANT) == 0


async def test_max_wait_without_hold_music_rejects_the_unanswered_caller(
    gateway: GatewayFactory,
) -> None:
    config = AgentBridgeConfig(
        queue=QueueSettings(max_wait=0.3),
        hold_music=None,
        overflow=OverflowTreatment(status=603, reason="Decline"),
    )
    gw: Gateway = await gateway(config)
    gw.caller.invite()
    final = await gw.caller.final()
    assert (final.status, final.reason) == (603, "Decline")
    inbound = await gw.inbound()
    await within(inbound.ended.wait())
    assert inbound.end_reason is EndReason.REJECTED


# --- transfers ---------------------------------------------------------------------------

SECOND_AGENT_TONE = 300.0
HOLD_MUSIC = (523.25, 659.25)  # the default chime's two notes


def hears(frames: list[bytes], frequency: float, last: int = 25) -> bool:
    if len(frames) < last:
        return False
    pcm = np.frombuffer(b"".join(frames[-last:]), dtype="<i2") / 32768
    return loud(b"".join(frames[-last:])) and abs(dominant_frequency(pcm, 8000) - frequency) < 15


def browser_hears(browser: Browser, frequency: float, last: int = 25) -> bool:
    if len(browser.heard) < last:
        return False
    samples = np.concatenate(browser.heard[-last:])
    return abs(dominant_frequency(samples, 48000) - frequency) < 15


def hold_music_in(frames: list[bytes]) -> bool:
    return any(
        loud(frame)
        and min(
            abs(dominant_frequency(np.frombuffer(frame, "<i2") / 32768, 8000) - f)
            for f in HOLD_MUSIC
        )
        < 40
        for frame in frames
    )


async def connected_call(gw: Gateway, browser: Browser) -> tuple[AgentSession, str, InboundCall]:
    """Agent 1 answers the caller; both hear each other."""
    session, page = gw.sign_in(1)
    gw.caller.invite()
    call_id = await page.rings()
    inbound = await gw.inbound()
    await gw.agents.act(session, call_id, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200
    gw.caller.talk(CALLER_TONE)
    await browser.connect(gw.agents, session, call_id)
    await eventually(lambda: hears(gw.caller.heard, AGENT_TONE), 10.0)
    return session, call_id, inbound


async def offered(page: Page) -> CallView:
    while True:
        event = await within(page.events.get())
        if isinstance(event, CallOffered):
            return event.call


async def test_a_warm_transfer_consults_then_hands_the_caller_to_the_second_agent(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    first_call = gw.agent_call(first)
    second, second_page = gw.sign_in(2)

    await gw.agents.transfer(first, call_id, "warm", "agent", "2")
    heard_before = len(gw.caller.heard)
    consult = await offered(second_page)
    assert consult.from_agent == 1
    assert consult.caller == "+14****0123"  # the target sees whom it is about, masked
    await eventually(lambda: hold_music_in(gw.caller.heard[heard_before:]), 10.0)

    await gw.agents.act(second, consult.call_id, CallAction.ANSWER)
    async with open_browser(SECOND_AGENT_TONE) as second_browser:
        await second_browser.connect(gw.agents, second, consult.call_id)
        # Consulting: the agents hear each other; the caller still hears only hold music.
        await eventually(lambda: browser_hears(browser, SECOND_AGENT_TONE), 10.0)
        await eventually(lambda: browser_hears(second_browser, AGENT_TONE), 10.0)
        assert not hears(gw.caller.heard, AGENT_TONE) and not hears(
            gw.caller.heard, SECOND_AGENT_TONE
        )
        assert first_call.transfer is not None and first_call.transfer.state == "consulting"

        await gw.agents.transfer_complete(first, call_id)
        # The same SIP call (no new INVITE), now with the second agent both ways.
        await eventually(lambda: hears(gw.caller.heard, SECOND_AGENT_TONE), 10.0)
        await eventually(lambda: browser_hears(second_browser, CALLER_TONE), 10.0)
        assert first_call.state is CallState.ENDED and first_call.ended_reason == "transferred"
        # Free for the next caller (wrap-up is 0 s here).
        await eventually(lambda: 1 in gw.agents.available_agents(TENANT))
        taken = gw.agent_call(second)
        assert taken.call_id == consult.call_id and taken.from_agent is None
        assert not inbound.ended.is_set()

        # The transferred call ends as any other: the second agent hangs up, BYE to the caller.
        await gw.agents.act(second, consult.call_id, CallAction.HANGUP)
        assert (await gw.caller.request()).method == "BYE"


async def test_a_declined_blind_transfer_returns_the_caller_to_the_first_agent(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    second, second_page = gw.sign_in(2)

    await gw.agents.transfer(first, call_id, "blind", "agent", "2")
    ringing = await offered(second_page)
    assert ringing.from_agent is None  # the caller's own call rings, not a consult
    heard_before = len(gw.caller.heard)
    await eventually(lambda: hold_music_in(gw.caller.heard[heard_before:]), 10.0)
    await gw.agents.act(second, ringing.call_id, CallAction.DECLINE)

    await eventually(lambda: hears(gw.caller.heard, AGENT_TONE), 10.0)
    await eventually(lambda: browser_hears(browser, CALLER_TONE), 10.0)
    kept = gw.agent_call(first)
    assert kept.call_id == call_id and kept.state is CallState.ACTIVE
    assert kept.transfer is not None
    assert (kept.transfer.state, kept.transfer.reason) == ("failed", "declined")
    assert second.call is None and not inbound.ended.is_set()


async def test_an_unanswered_transfer_rings_out_and_the_first_agent_can_cancel_a_consult(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QueueSettings(ring_timeout=0.5)))
    first, call_id, _ = await connected_call(gw, browser)
    second, second_page = gw.sign_in(2)

    await gw.agents.transfer(first, call_id, "warm", "agent", "2")
    await offered(second_page)
    call = gw.agent_call(first)
    await within(call.until(lambda c: c.transfer is not None and c.transfer.state == "failed"))
    assert call.transfer is not None and call.transfer.reason == "no_answer"
    await eventually(lambda: hears(gw.caller.heard, AGENT_TONE), 10.0)

    await eventually(lambda: second.presence.value == "available" and second.call is None)
    await gw.agents.transfer(first, call_id, "warm", "agent", "2")
    consult = await offered(second_page)
    await gw.agents.act(second, consult.call_id, CallAction.ANSWER)
    await within(call.until(lambda c: c.transfer is not None and c.transfer.state == "consulting"))
    await gw.agents.transfer_cancel(first, call_id)
    assert second.call is None  # the consult call is gone; the caller is back with agent 1
    await eventually(lambda: hears(gw.caller.heard, AGENT_TONE), 10.0)
    assert gw.agent_call(first).state is CallState.ACTIVE


async def test_a_transfer_to_the_queue_frees_the_agent_and_rings_the_next_one(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    await gw.agents.transfer(first, call_id, "blind", "queue", "default")
    assert first.call is None
    await eventually(lambda: gw.bridge.queued(TENANT) == 1)
    heard_before = len(gw.caller.heard)
    await eventually(lambda: hold_music_in(gw.caller.heard[heard_before:]), 10.0)

    second, second_page = gw.sign_in(2)
    taken = await second_page.rings()
    await gw.agents.act(second, taken, CallAction.ANSWER)
    await eventually(lambda: gw.bridge.queued(TENANT) == 0)
    assert gw.agent_call(second).state is CallState.ACTIVE and not inbound.ended.is_set()


@pytest.mark.parametrize(
    ("kind", "target", "code"),
    [
        ("agent", "9", "agent_unavailable"),  # signed in, but for another tenant
        ("agent", "1", "invalid_target"),  # oneself
        ("queue", "nope", "invalid_target"),
        ("agent", "two", "agent_unavailable"),
        ("mars", "2", "bad_field"),
    ],
)
async def test_transfers_reach_only_free_agents_and_queues_of_the_same_tenant(
    gateway: GatewayFactory, browser: Browser, kind: str, target: str, code: str
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, _ = await connected_call(gw, browser)
    gw.agents.sign_in("other-tenant", 9, Page())
    with pytest.raises(SoftphoneError) as refused:
        await gw.agents.transfer(first, call_id, "blind", kind, target)
    assert refused.value.code == code
    call = gw.agent_call(first)
    assert call.transfer is None and call.state is CallState.ACTIVE
    await eventually(lambda: hears(gw.caller.heard, AGENT_TONE))


EXTERNAL_TONE = 750.0


async def test_a_warm_transfer_to_an_external_number_goes_through_the_tenants_trunk(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    answering = asyncio.create_task(gw.callee.answer(EXTERNAL_TONE))

    await gw.agents.transfer(first, call_id, "warm", "number", "+442071234567")
    await within(answering, 10.0)
    invite = gw.callee.invite_request
    assert invite is not None and str(invite.uri).startswith("sip:+442071234567@127.0.0.1")
    # Our From is the tenant's number the caller dialled, never the caller's own.
    assert NUMBER in (invite.headers.get("From") or "")
    call = gw.agent_call(first)
    await within(call.until(lambda c: c.transfer is not None and c.transfer.state == "consulting"))
    assert call.transfer is not None and call.transfer.target == "number:+44****4567"
    await eventually(lambda: browser_hears(browser, EXTERNAL_TONE), 10.0)
    await eventually(lambda: hears(gw.callee.heard, AGENT_TONE), 10.0)
    assert not hears(gw.caller.heard, EXTERNAL_TONE)

    await gw.agents.transfer_complete(first, call_id)
    await eventually(lambda: hears(gw.caller.heard, EXTERNAL_TONE), 10.0)
    await eventually(lambda: hears(gw.callee.heard, CALLER_TONE), 10.0)
    assert first.call is None and not inbound.ended.is_set()

    # The external party hangs up: the caller's call ends too.
    gw.callee.bye()
    assert (await gw.caller.request()).method == "BYE"


# --- skills queues -----------------------------------------------------------------------


def spanish_queue(**overrides: Any) -> QueueDefinition:
    fields: dict[str, Any] = {
        "numbers": frozenset({NUMBER}),
        "skills": frozenset({"es"}),
        "settings": QUICK,
    }
    return QueueDefinition("spanish", TENANT, **{**fields, **overrides})


async def test_a_number_with_a_skills_queue_rings_only_agents_with_the_skill(
    gateway: GatewayFactory,
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK, queues=(spanish_queue(),)))
    plain, plain_page = gw.sign_in(1)  # idle as long, lower id: would ring first without skills
    speaker, speaker_page = gw.sign_in(2, ("es", "billing"))
    gw.caller.invite()
    call_id = await speaker_page.rings()
    assert plain.call is None and plain_page.events.empty()
    assert [w.queue for w in gw.bridge.waiting(TENANT)] == ["spanish"]
    assert gw.bridge.queued(TENANT, "spanish") == 1 and gw.bridge.queued(TENANT, "default") == 0
    await gw.agents.act(speaker, call_id, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200


async def test_skills_set_while_signed_in_count_from_the_next_decision(
    gateway: GatewayFactory,
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK, queues=(spanish_queue(),)))
    session, page = gw.sign_in(1)
    gw.caller.invite()
    assert (await gw.caller.final()).status == 200  # waits with hold music: nobody has "es"
    await eventually(lambda: gw.bridge.queued(TENANT, "spanish") == 1)
    gw.agents.set_skills(TENANT, 1, ["es"])
    call_id = await page.rings()
    await gw.agents.act(session, call_id, CallAction.ANSWER)
    await eventually(lambda: gw.bridge.queued(TENANT) == 0)


async def test_a_queue_overflows_into_the_queue_it_names(gateway: GatewayFactory) -> None:
    spanish = spanish_queue(
        settings=QueueSettings(max_wait=0.5), overflow_queue="default", hold_music=False
    )
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK, queues=(spanish,)))
    session, page = gw.sign_in(1)  # no "es": only the default queue may ring this agent
    gw.caller.invite()
    call_id = await page.rings()
    assert [w.queue for w in gw.bridge.waiting(TENANT)] == ["default"]
    await gw.agents.act(session, call_id, CallAction.ANSWER)
    assert (await gw.caller.final()).status == 200


async def test_an_agent_can_transfer_a_caller_to_a_skills_queue_by_name(
    gateway: GatewayFactory, browser: Browser
) -> None:
    billing = QueueDefinition("billing", TENANT, skills=frozenset({"billing"}), settings=QUICK)
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK, queues=(billing,)))
    first, call_id, inbound = await connected_call(gw, browser)
    generalist, generalist_page = gw.sign_in(2)
    specialist, specialist_page = gw.sign_in(3, ("billing",))
    await gw.agents.transfer(first, call_id, "blind", "queue", "billing")
    taken = await specialist_page.rings()
    assert generalist.call is None and generalist_page.events.empty()
    await gw.agents.act(specialist, taken, CallAction.ANSWER)
    await eventually(lambda: gw.bridge.queued(TENANT) == 0)
    assert gw.agent_call(specialist).state is CallState.ACTIVE and not inbound.ended.is_set()


async def test_hanging_up_while_consulting_hands_the_caller_over(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    second, second_page = gw.sign_in(2)
    await gw.agents.transfer(first, call_id, "warm", "agent", "2")
    consult = await offered(second_page)
    await gw.agents.act(second, consult.call_id, CallAction.ANSWER)
    first_call = gw.agent_call(first)
    await within(
        first_call.until(lambda c: c.transfer is not None and c.transfer.state == "consulting")
    )
    await gw.agents.act(first, call_id, CallAction.HANGUP)
    assert first_call.ended_reason == "transferred"
    taken = gw.agent_call(second)
    assert taken.from_agent is None and taken.state is CallState.ACTIVE
    assert not inbound.ended.is_set()


async def test_the_caller_hanging_up_during_a_consult_ends_both_agents_calls(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    second, second_page = gw.sign_in(2)
    await gw.agents.transfer(first, call_id, "warm", "agent", "2")
    consult = await offered(second_page)
    await gw.agents.act(second, consult.call_id, CallAction.ANSWER)
    first_call, consult_call = gw.agent_call(first), gw.agent_call(second)
    await within(
        first_call.until(lambda c: c.transfer is not None and c.transfer.state == "consulting")
    )

    gw.caller.send("BYE")
    await within(inbound.ended.wait())
    await within(consult_call.until(lambda c: c.state is CallState.ENDED))
    await within(first_call.until(lambda c: c.state is CallState.ENDED))
    assert (first_call.ended_reason, consult_call.ended_reason) == (
        "caller_hangup",
        "caller_hangup",
    )
    await eventually(lambda: first.call is None and second.call is None)


async def test_a_blind_transfer_answered_by_the_target_releases_the_first_agent_at_once(
    gateway: GatewayFactory, browser: Browser
) -> None:
    gw: Gateway = await gateway(AgentBridgeConfig(queue=QUICK))
    first, call_id, inbound = await connected_call(gw, browser)
    first_call = gw.agent_call(first)
    second, second_page = gw.sign_in(2)
    await gw.agents.transfer(first, call_id, "blind", "agent", "2")
    ringing = await offered(second_page)
    await gw.agents.act(second, ringing.call_id, CallAction.ANSWER)
    await within(first_call.until(lambda c: c.state is CallState.ENDED))
    assert first_call.ended_reason == "transferred"
    async with open_browser(SECOND_AGENT_TONE) as second_browser:
        await second_browser.connect(gw.agents, second, ringing.call_id)
        await eventually(lambda: hears(gw.caller.heard, SECOND_AGENT_TONE), 10.0)
        await eventually(lambda: browser_hears(second_browser, CALLER_TONE), 10.0)
    assert not inbound.ended.is_set()
