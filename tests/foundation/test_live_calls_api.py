"""Secure pause and resume of a live call through the admin API (issue #6).

The real node on loopback: a trunk caller placing a SIP call and sending
paced PCMU (every frame a distinct burst of noise, so a frame found in the
recording tells exactly when it was sent), the tenant's consent flow (an
eSpeak notice, the recorder behind the gate), the agent live view, the agent
bridge and an agent signed in to a real :class:`AgentDirectory`, with the
admin app bound to that call layer as ``voicegw serve`` binds it.

What is checked of a pause is on the recording as the API itself decrypts it
(``GET …/recordings/{id}/audio``): the caller channel is digital zero exactly
over the stretch the gate lists as paused, which starts on the frame the
pause took effect and ends on the first frame after the resume plus the
jitter guard; every other non-silent frame is one the caller sent outside
the pause; the agent channel is paused over the same samples; both changes
are in the audit chain with the token that made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.api.context import LIVE_CALLS
from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig
from voicegw.calls.agent_live import AgentLiveView
from voicegw.calls.agents import (
    AgentDirectory,
    AgentEvent,
    AgentSession,
    CallAction,
    CallOffered,
    CallStateChanged,
    CallView,
)
from voicegw.calls.consent_flow import ConsentOutcome, FlowConfig
from voicegw.calls.consented import ConsentedDeps, ConsentStateChanged, with_consent
from voicegw.calls.prompts import PromptCache
from voicegw.calls.queues import QueueSettings
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.consent import State
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import WebRtcConfig
from voicegw.privacy.registry import Registry
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.sip.message import SipResponse, new_branch, parse_message
from voicegw.sip.sdp import SessionDescription
from voicegw.sip.transport import ListenAddresses
from voicegw.store import tenants, tokens
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import ConsentCapture, ConsentPrompt, TenantSettings
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

DOMAIN = "voice.test"
NOTIFY_NUMBER = "+442079460123"  # the tenant's default: a notice, then recording
OPT_IN_NUMBER = "+442079460124"  # asks, and waits a minute for the answer
OFF_NUMBER = "+442079460125"  # records nothing
RATE = 8000
SAMPLES = 160
FRAME = SAMPLES / RATE
EPS = 1e-6
GUARD = FlowConfig().open_guard
#: How late a reopening may take effect under load (the flow's tick after the guard).
LATE_OPEN = 5 * FRAME
CALL_FRAMES = 3000  # a minute of distinct caller audio at most
TIMEOUT = 30.0
BASE = "/api/v1/tenants"

Pcm = npt.NDArray[np.int16]


async def within(awaitable: Any, seconds: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


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
class TrunkCaller:
    """A carrier trunk placing one call: INVITE/ACK/BYE, then paced, distinct PCMU frames."""

    sip: Socket
    rtp: Socket
    gateway: tuple[str, int]
    number: str
    call_id: str
    seed: int
    cseq: int = 0
    to_tag: str | None = None
    media_at: tuple[str, int] | None = None
    #: Each frame as the gateway decodes it -> loop time it was sent.
    sent_at: dict[bytes, float] = field(default_factory=dict)
    sent: int = 0
    _frames: list[bytes] = field(default_factory=list)
    _talking: asyncio.Task[None] | None = None
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        pcm = rng.integers(2000, 16000, size=CALL_FRAMES * SAMPLES, dtype=np.int16)
        pcm *= rng.choice(np.array([-1, 1], dtype=np.int16), size=pcm.size)
        self._frames = [
            PCMU.encode(pcm[k * SAMPLES : (k + 1) * SAMPLES].tobytes()) for k in range(CALL_FRAMES)
        ]

    @property
    def uri(self) -> str:
        return f"sip:{self.number}@{DOMAIN}"

    def send(self, method: str, body: str = "", cseq: int | None = None) -> None:
        if cseq is None:
            self.cseq += 1
        to = f"<{self.uri}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            "From: <sip:+14155550123@carrier.test>;tag=trunk",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq or self.cseq} {method}",
            f"Contact: <sip:trunk@127.0.0.1:{self.sip.port}>",
            *(["Content-Type: application/sdp"] if body else []),
            f"Content-Length: {len(body.encode())}",
        ]
        assert self.sip.transport is not None
        self.sip.transport.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.gateway)

    async def call(self) -> None:
        """INVITE, the 200 (ACKed), then audio until hung up."""
        self.send(
            "INVITE",
            "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp.port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendrecv\r\n",
        )
        final = await self._final("INVITE")
        assert final.status == 200, final.status
        self.to_tag = final.to.tag
        self.send("ACK", cseq=final.cseq.seq)
        answer = SessionDescription.parse(final.body)
        assert answer.connection is not None
        self.media_at = (answer.connection.host, answer.media[0].port)
        self._talking = asyncio.create_task(self._talk())

    async def _final(self, method: str) -> SipResponse:
        while True:
            message = parse_message(await within(self.sip.received.get()))
            if (
                isinstance(message, SipResponse)
                and message.status >= 200
                and message.cseq.method == method
            ):
                return message

    async def _talk(self) -> None:
        assert self.rtp.transport is not None and self.media_at is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, payload in enumerate(self._frames):
            packet = RtpPacket(0, n, SAMPLES * n, 0x5EED, payload, n == 0)
            self.rtp.transport.sendto(bytes(packet), self.media_at)
            self.sent_at[PCMU.decode(payload)] = loop.time()
            self.sent = n + 1
            self._progress.set()
            await asyncio.sleep(max(0.0, start + FRAME * (n + 1) - loop.time()))

    async def talk_for(self, frames: int) -> None:
        """Returns once ``frames`` more frames have been sent (20 ms each)."""
        target = self.sent + frames
        async with asyncio.timeout(TIMEOUT):
            while self.sent < target:
                self._progress.clear()
                await self._progress.wait()

    async def hang_up(self) -> None:
        if self._talking is None:
            return
        self._talking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._talking
        self._talking = None
        self.send("BYE")
        assert (await self._final("BYE")).status == 200


@dataclass
class Page:
    """An agent's softphone socket: what the page is told."""

    events: asyncio.Queue[AgentEvent] = field(default_factory=asyncio.Queue)

    def deliver(self, event: AgentEvent) -> None:
        self.events.put_nowait(event)

    def close(self) -> None:
        pass

    async def next_call(self, kind: type[CallOffered] | type[CallStateChanged]) -> CallView:
        async with asyncio.timeout(TIMEOUT):
            while True:
                event = await self.events.get()
                if isinstance(event, kind):
                    return event.call


@dataclass
class Node:
    client: TestClient  # type: ignore[type-arg]
    sessions: async_sessionmaker[AsyncSession]
    agents: AgentDirectory
    sip_at: tuple[str, int]
    agent_ids: dict[str, int]
    tokens: dict[str, str]  # who -> bearer secret
    token_ids: dict[str, str]  # who -> token id (the audit actor)
    states: asyncio.Queue[ConsentStateChanged] = field(default_factory=asyncio.Queue)
    outcomes: asyncio.Queue[tuple[str, ConsentOutcome]] = field(default_factory=asyncio.Queue)
    callers: list[TrunkCaller] = field(default_factory=list)
    sockets: list[Socket] = field(default_factory=list)

    async def request(
        self, method: str, path: str, who: str, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with self.client.request(method, path, headers=headers, **kw) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def pause(self, tenant: str, call_id: str, who: str) -> tuple[int, dict[str, Any]]:
        return await self.request("POST", f"{BASE}/{tenant}/calls/{call_id}/secure-pause", who)

    async def resume(self, tenant: str, call_id: str, who: str) -> tuple[int, dict[str, Any]]:
        return await self.request("POST", f"{BASE}/{tenant}/calls/{call_id}/secure-resume", who)

    async def dial(self, number: str, seed: int) -> TrunkCaller:
        loop = asyncio.get_running_loop()
        _, sip = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        _, rtp = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
        self.sockets += [sip, rtp]
        caller = TrunkCaller(sip, rtp, self.sip_at, number, f"trunk-{seed}@carrier.test", seed)
        self.callers.append(caller)
        await caller.call()
        return caller

    async def state(self, wanted: State) -> ConsentStateChanged:
        """The next change of any call's consent to ``wanted`` (it names the gateway call id)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                change = await self.states.get()
                if change.state is wanted:
                    return change

    def sign_in(self, username: str) -> tuple[AgentSession, Page]:
        page = Page()
        return self.agents.sign_in("acme", self.agent_ids[username], page), page

    async def answered_notify_call(self) -> tuple[TrunkCaller, str, str, Page]:
        """A caller on the notify number, past the notice, connected to agent ann: the
        caller, the gateway's call id, the agent call id and ann's page."""
        session, page = self.sign_in("ann")
        caller = await self.dial(NOTIFY_NUMBER, seed=len(self.callers) + 1)
        call_id = (await self.state(State.NOTICE_ONLY)).call_id
        offered = await page.next_call(CallOffered)
        await self.agents.act(session, offered.call_id, CallAction.ANSWER)
        await page.next_call(CallStateChanged)
        return caller, call_id, offered.call_id, page


@pytest.fixture
async def node(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> AsyncIterator[Node]:
    settings = TenantSettings(
        region="eu",
        recording_mode="notify",
        consent_prompt=ConsentPrompt(text="This call is recorded."),
        consent_capture=ConsentCapture(timeout_seconds=60),
    )
    agent_ids: dict[str, int] = {}
    secrets: dict[str, str] = {}
    token_ids: dict[str, str] = {}
    async with sessions() as s, s.begin():
        for tenant_id in ("acme", "globex"):
            await tenants.create_tenant(
                s, actor="test", tenant_id=tenant_id, name=tenant_id, settings=settings
            )
        for number, mode in ((NOTIFY_NUMBER, None), (OPT_IN_NUMBER, "opt_in"), (OFF_NUMBER, "off")):
            await tenants.add_number(
                s, actor="test", tenant_id="acme", number=number, recording_mode=mode
            )
        for tenant_id, username in (("acme", "ann"), ("acme", "bob"), ("globex", "zed")):
            agent = await tenants.add_agent(
                s, actor="test", tenant_id=tenant_id, username=username,
                display_name=username.title(), skills=[],
            )  # fmt: skip
            agent_ids[username] = agent.id
        grants: tuple[tuple[str, str, str | None, int | None], ...] = (
            ("operator", "operator", None, None),
            ("admin", "tenant_admin", "acme", None),
            ("supervisor", "supervisor", "acme", None),
            ("globex_admin", "tenant_admin", "globex", None),
            ("ann", "agent", "acme", agent_ids["ann"]),
            ("bob", "agent", "acme", agent_ids["bob"]),
            ("zed", "agent", "globex", agent_ids["zed"]),
        )
        for who, role, scope, agent_id in grants:
            row, secrets[who] = await tokens.create_token(
                s, role=role, tenant_id=scope, agent_id=agent_id
            )
            token_ids[who] = row.id

    clock = MediaClock()
    clock.start()
    tts: TtsRegistry = Registry("tts")
    tts.register(EspeakTts())
    service = SipService(
        SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=b"0123456789abcdef-test-secret",
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
        ),
        sessions,
    )
    storage = LocalFilesystemStorage(tmp_path / "recordings")
    keyring = LocalKeyring(tmp_path / "keys")
    agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=0)
    bridge = AgentBridge(
        agents, AgentBridgeConfig(queue=QueueSettings(ring_timeout=60.0, max_wait=120.0))
    )
    live = AgentLiveView(bridge)
    consented = with_consent(
        live,
        ConsentedDeps(
            sessions=sessions,
            storage=storage,
            keys=keyring,
            clock=clock,
            tts=tts,
            prompt_cache=PromptCache(),
        ),
    )
    live.attach(consented)

    async def owner(number: str) -> str | None:
        async with sessions() as s:
            found = await tenants.tenant_for_number(s, number)
            return None if found is None else found.tenant_id

    calls = SipCalls(
        service,
        Router(owner),
        PortAllocator("127.0.0.1", 46000, 46999),
        {Service.AGENT_QUEUE: consented},
    )
    calls.attach()
    # As ``voicegw serve`` wires it: the app first, then bound to the call layer.
    app = create_app(
        sessions,
        tmp_path / "var",
        agents=agents,
        queues=bridge,
        recording_storage=storage,
        recording_keys=keyring,
    )
    app[LIVE_CALLS].attach(calls, bridge=bridge)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await service.start()
    await client.start_server()
    assert service.transports.bound.udp is not None
    node = Node(
        client, sessions, agents, service.transports.bound.udp, agent_ids, secrets, token_ids
    )
    consented.listeners.append(node.states.put_nowait)
    consented.on_outcome = lambda call_id, outcome: node.outcomes.put_nowait((call_id, outcome))
    try:
        yield node
    finally:
        for caller in node.callers:
            with contextlib.suppress(Exception):
                await caller.hang_up()
        await client.close()
        await calls.close()
        await bridge.close()
        await agents.close()
        await service.stop()
        for socket in node.sockets:
            assert socket.transport is not None
            socket.transport.close()
        await clock.stop()


# --- checks --------------------------------------------------------------------------------------


async def recording_of(node: Node, call_id: str) -> tuple[dict[str, Any], Pcm]:
    """The call's one recording: its metadata and its samples (frames x 2), through the API."""
    status, listed = await node.request(
        "GET", f"{BASE}/acme/recordings", "admin", params={"call_id": call_id}
    )
    assert status == 200
    (meta,) = listed["recordings"]
    headers = {"Authorization": f"Bearer {node.tokens['admin']}"}
    async with node.client.get(f"{BASE}/acme/recordings/{meta['id']}/audio", headers=headers) as r:
        assert (r.status, r.content_type) == (200, "audio/wav")
        wav = await r.read()
    data, rate = soundfile.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    assert rate == RATE and data.shape[1] == 2
    return meta, np.asarray(data, dtype=np.int16)


async def secure_actions(node: Node, call_id: str) -> list[tuple[str, str]]:
    async with node.sessions() as s:
        rows = await s.execute(
            select(AuditEvent.action, AuditEvent.actor)
            .where(AuditEvent.target == f"tenant/acme/calls/{call_id}")
            .order_by(AuditEvent.seq)
        )
    return [(a, actor) for a, actor in rows.all() if a.startswith("call.secure")]


def loud_frames(channel: Pcm, start: int, end: int) -> int:
    """How many whole frames in ``[start, end)`` carry sound."""
    return sum(
        bool(channel[k : k + SAMPLES].any()) for k in range(start, end - SAMPLES + 1, SAMPLES)
    )


# --- the tests -----------------------------------------------------------------------------------


async def test_an_admin_pause_and_the_agents_resume_blank_exactly_the_paused_frames_audited(
    node: Node,
) -> None:
    caller, call_id, agent_call_id, page = await node.answered_notify_call()

    # The call is discoverable: by the gateway's call id here, by its agent call id in the
    # supervisor view (both name the same call).
    status, listed = await node.request("GET", f"{BASE}/acme/calls", "supervisor")
    assert status == 200
    assert listed["calls"] == [
        {
            "call_id": call_id,
            "tenant_id": "acme",
            "agent_call_id": agent_call_id,
            "agent_id": node.agent_ids["ann"],
            "consent": {"state": "notice_only", "mode": "notify"},
            "recording": {"state": "recording", "secure_pause": False},
        }
    ]
    status, view = await node.request("GET", f"{BASE}/acme/supervisor", "supervisor")
    assert [c["call_id"] for c in view["calls"]] == [agent_call_id]

    await caller.talk_for(50)
    status, paused = await node.pause("acme", call_id, "admin")
    assert status == 200, paused
    assert paused["consent"] == {"state": "paused", "mode": "notify"}
    assert paused["recording"] == {"state": "paused", "secure_pause": True}
    paused_at = paused["at"]
    # The agent's page shows it (the flow's state is the truth there too).
    while not (shown := await page.next_call(CallStateChanged)).recording.secure_pause:
        pass
    assert shown.consent.state == "paused"

    status, again = await node.pause("acme", agent_call_id, "operator")
    assert (status, again["error"]["code"]) == (409, "already_paused")

    await caller.talk_for(40)
    # The agent on the call resumes by the id its page and the supervisor view show.
    status, resumed = await node.resume("acme", agent_call_id, "ann")
    assert status == 200, resumed
    assert resumed["recording"] == {"state": "recording", "secure_pause": False}
    assert resumed["call_id"] == call_id
    resumed_at = resumed["at"]
    status, again = await node.resume("acme", call_id, "admin")
    assert (status, again["error"]["code"]) == (409, "not_paused")

    await caller.talk_for(60)
    await caller.hang_up()
    call_id, outcome = await within(node.outcomes.get())
    assert call_id == call_id
    # Ended: the same 404 as a call that never was.
    status, gone = await node.pause("acme", call_id, "admin")
    assert (status, gone["error"]["code"]) == (404, "not_found")

    # The gate's account: one paused stretch of the caller, closed on the frame the pause
    # took effect, reopened on the first frame after the resume plus the jitter guard.
    (pause,) = [i for i in outcome.intervals["caller"] if i.reason == "paused"]
    assert paused_at - FRAME - EPS < pause.start_time < paused_at + FRAME + EPS, (pause, paused_at)
    assert resumed_at + GUARD <= pause.end_time + EPS, (pause, resumed_at)
    assert pause.end_time < resumed_at + GUARD + FRAME + LATE_OPEN, (pause, resumed_at)
    # Every sink at once: the agent's channel is paused over the same samples.
    agent_paused = [i for i in outcome.intervals["agent"] if i.reason == "paused"]
    assert [(i.start_sample, i.end_sample) for i in agent_paused] == [
        (pause.start_sample, pause.end_sample)
    ]

    meta, stereo = await recording_of(node, call_id)
    caller_pcm = stereo[:, 0]
    listed_pauses = [
        (i["start_sample"], i["end_sample"])
        for i in meta["intervals"]
        if i["party"] == "caller" and i["reason"] == "paused"
    ]
    assert listed_pauses == [(pause.start_sample, pause.end_sample)]
    # Digital zero over exactly the paused stretch: blank inside, the caller's sound on
    # both sides of it (a frame the jitter buffer slipped may be missing, no more).
    assert pause.end_sample + 10 * SAMPLES <= len(caller_pcm)
    assert not stereo[pause.start_sample : pause.end_sample].any()
    assert loud_frames(caller_pcm, pause.start_sample - 10 * SAMPLES, pause.start_sample) >= 9
    assert loud_frames(caller_pcm, pause.end_sample, pause.end_sample + 10 * SAMPLES) >= 9
    # Every frame with sound is one the caller sent, and none sent during the pause.
    kept = 0
    for k in range(0, len(caller_pcm) - SAMPLES + 1, SAMPLES):
        frame = caller_pcm[k : k + SAMPLES]
        if not frame.any():
            continue
        sent = caller.sent_at.get(frame.tobytes())
        assert sent is not None, ("recorded audio the caller never sent", k)
        assert not paused_at < sent < resumed_at, ("kept a frame sent while paused", k, sent)
        kept += 1
    assert kept >= 80, kept

    assert await secure_actions(node, call_id) == [
        ("call.secure_pause", f"token:{node.token_ids['admin']}"),
        ("call.secure_resume", f"token:{node.token_ids['ann']}"),
    ]


async def test_other_tenants_supervisors_and_agents_not_on_the_call_cannot_pause_it(
    node: Node,
) -> None:
    caller, call_id, agent_call_id, _ = await node.answered_notify_call()
    node.sign_in("bob")  # signed in, but not on this call

    for either in (call_id, agent_call_id):
        # Another tenant: its admin and its agent see the same 404 as for no call at all.
        for who in ("globex_admin", "zed"):
            status, error = await node.pause("acme", either, who)
            assert (status, error["error"]["code"]) == (404, "not_found"), who
            status, error = await node.pause("globex", either, who)
            assert (status, error["error"]["code"]) == (404, "not_found"), who
        # Supervisors watch, they do not act.
        status, error = await node.pause("acme", either, "supervisor")
        assert (status, error["error"]["code"]) == (403, "forbidden")
        status, state = await node.request("GET", f"{BASE}/acme/calls/{either}", "supervisor")
        assert (status, state["consent"]["state"]) == (200, "notice_only")
        # An agent of the tenant who is not on the call.
        status, error = await node.pause("acme", either, "bob")
        assert (status, error["error"]["code"]) == (403, "forbidden")
        status, error = await node.request("GET", f"{BASE}/acme/calls/{either}", "bob")
        assert status == 403
    # Unknown ids; the caller's SIP Call-ID is not how the gateway names its calls.
    for unknown in ("call-999", "0123456789abcdef", caller.call_id):
        status, error = await node.pause("acme", unknown, "admin")
        assert (status, error["error"]["code"]) == (404, "not_found")
    status, _ = await node.request("GET", f"{BASE}/globex/calls", "supervisor")
    assert status == 404

    # Nothing of that paused anything.
    status, state = await node.request("GET", f"{BASE}/acme/calls/{call_id}", "ann")
    assert status == 200 and state["recording"] == {"state": "recording", "secure_pause": False}
    assert await secure_actions(node, call_id) == []
    await caller.hang_up()
    _, outcome = await within(node.outcomes.get())
    assert not [i for i in outcome.intervals["caller"] if i.reason == "paused"]


async def test_a_call_not_recorded_or_not_yet_consented_cannot_be_paused(node: Node) -> None:
    asked = await node.dial(OPT_IN_NUMBER, seed=21)
    asked_id = (await node.state(State.AWAITING_ANSWER)).call_id
    status, error = await node.pause("acme", asked_id, "admin")
    assert (status, error["error"]["code"]) == (409, "consent_not_granted")
    assert error["error"]["message"] == "the caller has not answered yet"
    status, error = await node.resume("acme", asked_id, "admin")
    assert (status, error["error"]["code"]) == (409, "not_paused")

    await node.dial(OFF_NUMBER, seed=22)
    status, listed = await node.request("GET", f"{BASE}/acme/calls", "admin")
    assert status == 200
    states = {c["call_id"]: (c["consent"], c["recording"]["state"]) for c in listed["calls"]}
    (off_id,) = set(states) - {asked_id}
    assert states == {
        asked_id: ({"state": "awaiting_answer", "mode": "opt_in"}, "off"),
        off_id: ({"state": "off", "mode": "off"}, "off"),
    }
    status, error = await node.pause("acme", off_id, "operator")
    assert (status, error["error"]["code"]) == (409, "not_recording")
    status, error = await node.resume("acme", off_id, "operator")
    assert (status, error["error"]["code"]) == (409, "not_recording")
    assert await secure_actions(node, asked_id) == []
    await asked.hang_up()


async def test_the_openapi_document_lists_the_live_call_routes_with_their_conflicts(
    node: Node,
) -> None:
    async with node.client.get("/api/v1/openapi.json") as resp:
        document = json.loads(await resp.text())
    paths = document["paths"]
    pause = paths["/api/v1/tenants/{tenant_id}/calls/{call_id}/secure-pause"]["post"]
    assert "409" in pause["responses"] and "agent" in pause["description"]
    assert "supervisor" not in pause["description"]
    assert "get" in paths["/api/v1/tenants/{tenant_id}/calls/{call_id}"]
    resume = paths["/api/v1/tenants/{tenant_id}/calls/{call_id}/secure-resume"]["post"]
    assert "409" in resume["responses"]
