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

from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig, OverflowTreatment
from voicegw.calls.agents import (
    AgentCall,
    AgentDirectory,
    AgentEvent,
    AgentSession,
    CallAction,
    CallOffered,
    CallState,
)
from voicegw.calls.queues import QueueSettings
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import EndReason, InboundCall, SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.media.codecs import PCMU
from voicegw.media.playback import BufferSource, PlaybackSource, tone
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import WebRtcConfig, offered_host_addresses
from voicegw.sip.message import SipMessage, SipRequest, SipResponse, new_branch, parse_message
from voicegw.sip.sdp import SessionDescription
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
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(Microphone(AGENT_TONE))
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

    def sign_in(self, agent_id: int) -> tuple[AgentSession, Page]:
        page = Page()
        return self.agents.sign_in(TENANT, agent_id, page), page

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

        async def stop() -> None:
            await caller.hang_up()
            await calls.close()
            await bridge.close()
            await agents.close()
            await service.stop()
            for socket in (sip, rtp):
                assert socket.transport is not None
                socket.transport.close()

        cleanup.append(stop)
        return Gateway(agents, bridge, calls, offered, caller)

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
