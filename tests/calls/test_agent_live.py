"""Consent state, recording state, live transcript and secure pause on the agent's page.

The real stack on loopback: a scripted trunk caller (speaking eSpeak's voice
over PCMU), the tenant's consent flow (a spoken notice, the recorder behind the
gate), the live view, the agent bridge and an agent's session in a real
:class:`AgentDirectory`. The transcript comes from the local pocketsphinx
engine through the speech policy, as on a production node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import tests.calls.test_agent_bridge as loopback
from voicegw.asr.registry import default_asr_registry
from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig
from voicegw.calls.agent_live import AgentLiveView
from voicegw.calls.agents import (
    AgentDirectory,
    AgentEvent,
    AgentSession,
    CallAction,
    CallStateChanged,
    CallView,
    TranscriptLine,
)
from voicegw.calls.consent_flow import ConsentOutcome
from voicegw.calls.consented import ConsentedDeps, ConsentedService, with_consent
from voicegw.calls.prompts import PromptCache
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import FRAME_BYTES, WebRtcConfig
from voicegw.privacy.registry import Registry
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, tenants
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import ConsentPrompt, TenantSettings
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

AGENT = 7
SAID = "please check the status of my order number"
TIMEOUT = 45.0  # the local recogniser's first decode includes loading its model


@dataclass
class Node:
    agents: AgentDirectory
    consented: ConsentedService
    caller: loopback.Caller
    sessions: async_sessionmaker[AsyncSession]
    session: AgentSession
    page: loopback.Page
    storage: LocalFilesystemStorage
    keys: LocalKeyring
    outcomes: asyncio.Queue[ConsentOutcome]

    @contextlib.asynccontextmanager
    async def answered_talking_caller(self) -> AsyncIterator[CallView]:
        """The caller dials, hears the notice and keeps saying :data:`SAID` while the agent
        answers; yields the call as the ringing page saw it (consent state settled)."""
        speech = await EspeakTts().synthesize(SAID, sample_rate=8000).read_all()
        self.caller.invite()
        assert (await self.caller.final()).status == 200  # the consent flow answers to notify
        speaking = asyncio.create_task(speak(self.caller, speech))
        try:
            ringing = await self.call_where(lambda c: c.consent.state == "notice_only")
            await self.agents.act(self.session, ringing.call_id, CallAction.ANSWER)
            yield ringing
        finally:
            speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaking

    async def hang_up(self) -> ConsentOutcome:
        self.caller.send("BYE")
        return await asyncio.wait_for(self.outcomes.get(), TIMEOUT)

    async def transcript_lines(self, row: store.Transcript) -> list[dict[str, object]]:
        with open_stored(self.storage, row) as handle:
            plaintext = decrypt(handle, self.keys, wrapped_key=wrapped_key_of(row))
        return [json.loads(line) for line in plaintext.decode().splitlines()]

    async def next(self, kind: type, seconds: float = TIMEOUT) -> AgentEvent:
        async with asyncio.timeout(seconds):
            while True:
                event = await self.page.events.get()
                if isinstance(event, kind):
                    return event

    async def call_where(
        self, check: Callable[[CallView], bool], seconds: float = TIMEOUT
    ) -> CallView:
        async with asyncio.timeout(seconds):
            while True:
                event = await self.page.events.get()
                if isinstance(event, CallStateChanged) and check(event.call):
                    return event.call


async def speak(caller: loopback.Caller, pcm: bytes) -> None:
    """The caller says ``pcm`` again and again (with a pause), paced at 20 ms."""
    assert caller.rtp.transport is not None and caller.media_at is not None
    padded = pcm + bytes(-len(pcm) % FRAME_BYTES) + bytes(FRAME_BYTES * 40)
    frames = [padded[i : i + FRAME_BYTES] for i in range(0, len(padded), FRAME_BYTES)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(3000):  # a minute at most
        packet = RtpPacket(0, n, 160 * n, 0x5EED, PCMU.encode(frames[n % len(frames)]), n == 0)
        caller.rtp.transport.sendto(bytes(packet), caller.media_at)
        await asyncio.sleep(max(0.0, start + 0.02 * (n + 1) - loop.time()))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    settings = TenantSettings(
        recording_mode="notify",
        transcription_enabled=True,
        consent_prompt=ConsentPrompt(text="This call is recorded."),
    )
    async with sessions.begin() as s:
        await tenants.create_tenant(
            s, actor="test", tenant_id=loopback.TENANT, name="Acme", settings=settings
        )
        await tenants.add_number(s, actor="test", tenant_id=loopback.TENANT, number=loopback.NUMBER)
    clock = MediaClock()
    clock.start()
    tts: TtsRegistry = Registry("tts")
    tts.register(EspeakTts())
    asr = default_asr_registry()
    service = SipService(
        SipServiceConfig(
            domain=loopback.DOMAIN,
            nonce_secret=b"0123456789abcdef-test-secret",
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
        ),
        sessions,
    )
    agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=0)
    bridge = AgentBridge(agents, AgentBridgeConfig(queue=loopback.QUICK))
    live = AgentLiveView(bridge)
    storage = LocalFilesystemStorage(tmp_path / "recordings")
    keys = LocalKeyring(tmp_path / "keys")
    consented = with_consent(
        live,
        ConsentedDeps(
            sessions=sessions,
            storage=storage,
            keys=keys,
            clock=clock,
            tts=tts,
            prompt_cache=PromptCache(),
            asr=asr,
        ),
    )
    live.attach(consented)
    outcomes: asyncio.Queue[ConsentOutcome] = asyncio.Queue()
    consented.on_outcome = lambda _call_id, outcome: outcomes.put_nowait(outcome)

    async def owner(number: str) -> str | None:
        async with sessions() as s:
            found = await tenants.tenant_for_number(s, number)
            return None if found is None else found.tenant_id

    calls = SipCalls(
        service,
        Router(owner),
        PortAllocator("127.0.0.1", 45000, 45999),
        {Service.AGENT_QUEUE: consented},
    )
    calls.attach()
    await service.start()
    loop = asyncio.get_running_loop()
    _, sip = await loop.create_datagram_endpoint(loopback.Socket, local_addr=("127.0.0.1", 0))
    _, rtp = await loop.create_datagram_endpoint(loopback.Socket, local_addr=("127.0.0.1", 0))
    assert service.transports.bound.udp is not None
    caller = loopback.Caller(sip, rtp, service.transports.bound.udp)
    page = loopback.Page()
    session = agents.sign_in(loopback.TENANT, AGENT, page)
    try:
        yield Node(agents, consented, caller, sessions, session, page, storage, keys, outcomes)
    finally:
        await caller.hang_up()
        await calls.close()
        await bridge.close()
        await agents.close()
        await service.stop()
        for socket in (sip, rtp):
            assert socket.transport is not None
            socket.transport.close()
        for provider in asr.list():
            await provider.aclose()
        await clock.stop()
        await engine.dispose()


async def test_the_page_shows_consent_and_transcript_and_its_secure_pause_reaches_the_flow(
    node: Node,
) -> None:
    async with node.answered_talking_caller() as ringing:
        # The notice had played: the ringing agent already saw the caller's state.
        assert (ringing.consent.mode, ringing.recording.state) == ("notify", "recording")

        line = await node.next(TranscriptLine)
        assert isinstance(line, TranscriptLine)
        assert line.call_id == ringing.call_id and line.speaker == "caller" and line.text

        await node.agents.secure_pause(node.session, ringing.call_id, True)
        paused = await node.call_where(lambda c: c.consent.state == "paused", 5.0)
        assert paused.recording.state == "paused" and paused.recording.secure_pause
        async with node.sessions() as s:
            actions = (
                await s.execute(select(AuditEvent.action).where(AuditEvent.actor == "agent:7"))
            ).scalars()
            assert "call.secure_pause" in list(actions)

        await node.agents.secure_pause(node.session, ringing.call_id, False)
        resumed = await node.call_where(lambda c: c.consent.state == "notice_only", 5.0)
        assert resumed.recording.state == "recording" and not resumed.recording.secure_pause


async def test_the_transcript_is_stored_encrypted_under_the_callers_decision_without_the_pause(
    node: Node,
) -> None:
    async with node.answered_talking_caller() as ringing:
        await node.next(TranscriptLine)  # the recogniser has heard the caller
        await node.agents.secure_pause(node.session, ringing.call_id, True)
        await node.call_where(lambda c: c.consent.state == "paused", 5.0)
        await asyncio.sleep(2.0)  # the caller talks on through the pause
        await node.agents.secure_pause(node.session, ringing.call_id, False)
        await node.call_where(lambda c: c.consent.state == "notice_only", 5.0)
        await asyncio.sleep(3.0)
    outcome = await node.hang_up()

    (transcript_id,) = outcome.transcripts  # the agent said nothing: the caller's only
    (notice,) = [s for s in outcome.stored if s.party == "caller"]
    async with node.sessions() as s:
        row = await store.get_object(s, store.ObjectKind.TRANSCRIPT, loopback.TENANT, transcript_id)
        assert isinstance(row, store.Transcript)
        query = select(AuditEvent.action).where(AuditEvent.target == store.target_of(row))
        actions = set((await s.execute(query)).scalars())
    assert (row.party, row.complete, row.consent_record_id) == ("caller", True, notice.record_id)
    assert row.retain_until - row.created_at == timedelta(
        days=TenantSettings().retention.transcripts_days
    )
    assert {"transcript.start", "transcript.finish"} <= actions

    lines = await node.transcript_lines(row)
    assert lines and row.segments == len(lines)
    assert all(line["text"] and 0 <= line["start"] < line["end"] for line in lines)
    # Times count from the call's first frame; nothing said inside the pause was kept.
    assert outcome.first_frame_time is not None
    paused = [
        (i.start_time - outcome.first_frame_time, i.end_time - outcome.first_frame_time)
        for i in outcome.intervals["caller"]
        if i.reason == "paused"
    ]
    assert paused
    for line in lines:
        for start, end in paused:
            assert line["end"] <= start + 0.02 or line["start"] >= end - 0.02, (line, paused)
    # Only ciphertext on disk: neither the lines' JSON keys nor their words. A word of a
    # few letters turns up in a megabyte of random bytes by chance: only long ones count.
    stored_bytes = b"".join(p.read_bytes() for p in node.storage.root.rglob("*") if p.is_file())
    assert b'"text"' not in stored_bytes and b'"start"' not in stored_bytes
    texts = [str(line["text"]).encode() for line in lines]
    assert all(text not in stored_bytes for text in texts if len(text) >= 8)


async def test_with_transcription_off_nothing_is_transcribed_shown_or_stored(node: Node) -> None:
    async with node.sessions.begin() as s:
        tenant = await tenants.get_tenant(s, loopback.TENANT)
        assert tenant is not None
        await tenants.update_settings(
            s, actor="test", tenant=tenant, patch={"transcription_enabled": False}
        )
    async with node.answered_talking_caller():
        with pytest.raises(TimeoutError):
            await node.next(TranscriptLine, 6.0)  # the sentence takes ~3 s: heard twice
    outcome = await node.hang_up()
    assert outcome.transcripts == () and outcome.recording is not None  # recorded, not transcribed
    async with node.sessions() as s:
        assert await store.list_transcripts(s, loopback.TENANT) == []
