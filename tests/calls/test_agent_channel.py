"""The recording's agent channel on bridged calls: the browser agent's voice, at its time.

The real stack on loopback: a scripted trunk caller (PCMU over UDP), the tenant's
consent flow in ``notify`` mode (an eSpeak notice, the recorder behind the gate),
the agent bridge, and aiortc peers standing in for agents' browsers. Each check
is on the recording as stored, decrypted: the left channel is the caller, the
right one the agent.

The rule these tests pin down: the agent channel carries what the caller is sent
by a connected agent and nothing else - silence while ringing, on hold or while
two agents consult, the new agent after a transfer from the moment they are
connected, and silence throughout when the tenant keeps agents out of recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from av import AudioFrame

import tests.calls.test_agent_bridge as loopback
from voicegw.asr.registry import default_asr_registry
from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig
from voicegw.calls.agents import AgentDirectory, AgentSession, CallAction
from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.consent_flow import ConsentOutcome
from voicegw.calls.consented import ConsentedDeps, with_consent
from voicegw.calls.prompts import PromptCache
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.session import LegConfig, MediaLeg, static_codecs
from voicegw.media.transport import LegTransport
from voicegw.media.webrtc import WebRtcConfig, offered_host_addresses
from voicegw.privacy.registry import Registry
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.sip.transport import ListenAddresses
from voicegw.store import migrate, tenants
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import ConsentPrompt, TenantSettings
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

RATE = 8000
FRAME = 160
TIMEOUT = 20.0
CALLER_TONE = loopback.CALLER_TONE
FIRST_TONE = loopback.AGENT_TONE
SECOND_TONE = loopback.SECOND_AGENT_TONE
HOLD_MUSIC = loopback.HOLD_MUSIC
#: Frame RMS above which a recorded frame counts as "someone speaks" (the tones are ~9000).
LOUD_RMS = 1500.0
#: How late the agent's voice may land in the file (network, decode, one tick, a loaded box).
MAX_LATE = 0.5
#: A transfer holds the caller at once: what the first agent said before it, and still
#: waits in the agent's feed (3 frames at most), has played out within this.
HELD_AT_ONCE = 0.1

Samples = npt.NDArray[np.int16]


# --- agents' browsers --------------------------------------------------------------------


class Microphone(MediaStreamTrack):
    """48 kHz frames paced at 20 ms; ``talking(n)`` says whether frame ``n`` carries the tone.

    Each frame's loop time is kept: it is when the agent "said" it.
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float,
        talking: Callable[[int], bool] = lambda n: True,
        speech: Samples | None = None,
    ) -> None:
        """``speech`` (48 kHz), when given, is said again and again instead of the tone."""
        super().__init__()
        self.frequency = frequency
        self.talking = talking
        self.speech = speech
        self.said: list[tuple[float, bool]] = []
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        n = len(self.said)
        self._start = self._start or loop.time()
        await asyncio.sleep(max(0.0, self._start + n * 0.02 - loop.time()))
        on = self.talking(n)
        if self.speech is not None:
            at = n * 960 % (len(self.speech) - 960)
            samples = self.speech[at : at + 960] if on else np.zeros(960, np.int16)
        else:
            t = (np.arange(960) + n * 960) / 48000
            level = 0.4 * 32767 if on else 0.0
            samples = (level * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.said.append((loop.time(), on))
        return frame


@contextlib.asynccontextmanager
async def browser(microphone: Microphone) -> AsyncIterator[loopback.Browser]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(microphone)
    with offered_host_addresses(("127.0.0.1",)):
        yield loopback.Browser(pc)
    await pc.close()


# --- the node ----------------------------------------------------------------------------


@dataclass
class Node:
    agents: AgentDirectory
    caller: loopback.Caller
    clock: MediaClock
    storage: LocalFilesystemStorage
    keyring: LocalKeyring
    sessions: Any
    outcomes: asyncio.Queue[ConsentOutcome] = field(default_factory=asyncio.Queue)

    def sign_in(self, agent_id: int) -> tuple[AgentSession, loopback.Page]:
        page = loopback.Page()
        return self.agents.sign_in(loopback.TENANT, agent_id, page), page

    async def answered_call(
        self, microphone: Microphone
    ) -> tuple[AgentSession, str, contextlib.AsyncExitStack, float]:
        """The caller hears the notice, agent 1 answers and their browser connects.

        Returns the session, the agent call id, the browser's exit stack and the
        media time of the answer.
        """
        session, page = self.sign_in(1)
        self.caller.invite()
        assert (await self.caller.final()).status == 200  # the consent flow answers
        self.caller.talk(CALLER_TONE)
        call_id = await asyncio.wait_for(page.rings(), TIMEOUT)
        await self.agents.act(session, call_id, CallAction.ANSWER)
        answered = self.clock.now()
        stack = contextlib.AsyncExitStack()
        peer = await stack.enter_async_context(browser(microphone))
        await peer.connect(self.agents, session, call_id)
        return session, call_id, stack, answered

    async def hang_up(self) -> ConsentOutcome:
        self.caller.send("BYE")
        return await asyncio.wait_for(self.outcomes.get(), TIMEOUT)

    async def channels(self, outcome: ConsentOutcome) -> tuple[Samples, Samples, float]:
        """(caller, agent) of the decrypted recording, and the media time of its sample 0."""
        recording = outcome.recording
        assert recording is not None and recording.complete
        assert outcome.first_frame_time is not None
        async with self.sessions() as session:
            row = await store.get_recording(session, loopback.TENANT, recording.recording_id)
        assert row is not None
        with open_stored(self.storage, row) as handle:
            plaintext = decrypt(handle, self.keyring, wrapped_key=wrapped_key_of(row))
        stereo = np.frombuffer(plaintext, dtype="<i2")
        return stereo[0::2], stereo[1::2], outcome.first_frame_time


NodeFactory = Callable[[TenantSettings], Awaitable[Node]]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    cleanup: list[Callable[[], Awaitable[None]]] = []

    async def start(settings: TenantSettings) -> Node:
        async with sessions.begin() as s:
            await tenants.create_tenant(
                s, actor="test", tenant_id=loopback.TENANT, name="Acme", settings=settings
            )
            await tenants.add_number(
                s, actor="test", tenant_id=loopback.TENANT, number=loopback.NUMBER
            )
        clock = MediaClock()
        clock.start()
        tts: TtsRegistry = Registry("tts")
        tts.register(EspeakTts())
        service = SipService(
            SipServiceConfig(
                domain=loopback.DOMAIN,
                nonce_secret=b"0123456789abcdef-test-secret",
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
            ),
            sessions,
        )
        agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=0)
        bridge = AgentBridge(agents, AgentBridgeConfig(queue=loopback.QUICK), clock=clock)
        storage = LocalFilesystemStorage(tmp_path / "recordings")
        keyring = LocalKeyring(tmp_path / "keys")
        asr = default_asr_registry()
        consented = with_consent(
            bridge,
            ConsentedDeps(
                sessions=sessions,
                storage=storage,
                keys=keyring,
                clock=clock,
                tts=tts,
                prompt_cache=PromptCache(),
                asr=asr,
            ),
        )

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
        await service.start()
        loop = asyncio.get_running_loop()
        _, sip = await loop.create_datagram_endpoint(loopback.Socket, local_addr=("127.0.0.1", 0))
        _, rtp = await loop.create_datagram_endpoint(loopback.Socket, local_addr=("127.0.0.1", 0))
        assert service.transports.bound.udp is not None
        caller = loopback.Caller(sip, rtp, service.transports.bound.udp)
        built = Node(agents, caller, clock, storage, keyring, sessions)
        consented.on_outcome = lambda _call_id, outcome: built.outcomes.put_nowait(outcome)

        async def stop() -> None:
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

        cleanup.append(stop)
        return built

    yield start
    for stop in cleanup:
        await stop()
    await engine.dispose()


NOTIFY = TenantSettings(
    recording_mode="notify", consent_prompt=ConsentPrompt(text="This call is recorded.")
)


# --- reading the recording ---------------------------------------------------------------


def span(samples: Samples, zero: float, start: float, end: float) -> Samples:
    """The samples between media times ``start`` and ``end`` (file sample 0 is at ``zero``)."""
    first = max(0, int((start - zero) * RATE))
    last = max(first, int((end - zero) * RATE))
    return samples[first:last]


def frame_rms(samples: Samples) -> npt.NDArray[np.float64]:
    whole = samples[: len(samples) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    rms: npt.NDArray[np.float64] = np.sqrt((whole**2).mean(axis=1))
    return rms


def tone_of(samples: Samples) -> float:
    assert len(samples) >= RATE // 4, "too little audio to tell its tone"
    return loopback.dominant_frequency(samples.astype(np.float64) / 32768, RATE)


def has_tone(samples: Samples, frequency: float) -> bool:
    """Whether any loud 100 ms stretch of ``samples`` has ``frequency`` as its tone."""
    step = RATE // 10
    for start in range(0, len(samples) - step + 1, step):
        chunk = samples[start : start + step]
        if frame_rms(chunk).max(initial=0.0) < LOUD_RMS:
            continue
        heard = loopback.dominant_frequency(chunk.astype(np.float64) / 32768, RATE)
        if abs(heard - frequency) < 40:
            return True
    return False


def said_envelope(microphone: Microphone, zero: float, frames: int) -> npt.NDArray[np.float64]:
    """Where, on the file's 20 ms grid, the agent said something (1) or was silent (0)."""
    envelope = np.zeros(frames)
    for at, on in microphone.said:
        index = round((at - zero) / 0.02)
        if on and 0 <= index < frames:
            envelope[index] = 1.0
    return envelope


def best_lag(recorded: npt.NDArray[np.float64], said: npt.NDArray[np.float64]) -> tuple[int, float]:
    """The shift (in frames, recorded later = positive) that best lines the two up, and the
    correlation there; searched over +-4 s, so a wrong placement shows as a wrong lag."""
    best = (0, -1.0)
    for lag in range(-200, 201):
        if lag >= 0:
            a, b = recorded[lag:], said[: len(said) - lag]
        else:
            a, b = recorded[:lag], said[-lag:]
        if a.std() == 0 or b.std() == 0:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best[1]:
            best = (lag, r)
    return best


# --- the specification -------------------------------------------------------------------


class SteppedTime:
    """Sleeping only moves time on: ticks run back to back, on time."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


async def test_pushed_agent_frames_join_the_calls_frames_as_the_agent_party() -> None:
    loop = asyncio.get_running_loop()
    config = LegConfig(static_codecs(PCMU), 0, remote_rtp=("127.0.0.1", 9))
    allocator = PortAllocator("127.0.0.1", 46000, 46999)
    caller = await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate())
    time = SteppedTime()
    clock = MediaClock(time=time.time, sleep=time.sleep)
    media = RtpCallMedia(caller, clock)
    try:
        frames = media.frames(maxsize=100)
        assert list(media.parties) == ["caller"]
        said = np.full(FRAME, 1234, dtype="<i2").tobytes()
        media.push_agent(said)
        media.push_agent(said)
        assert media.parties == ("caller", "agent")
        with pytest.raises(RuntimeError):
            media.attach_agent(caller)  # one source per party: frames, or an RTP leg
        await clock.run(ticks=3)

        ticks = [(f.index, f.party, f.filled) for f in frames.drain()]
        assert ticks == [
            (0, "caller", True),
            (0, "agent", False),
            (1, "caller", True),
            (1, "agent", False),
            (2, "caller", True),
            (2, "agent", True),  # nothing pushed for this tick: silence, in its place
        ]
        media.hang_up()
        media.push_agent(said)  # too late: the call is over, nothing is tapped
        assert clock.subscribers == 0
    finally:
        media.hang_up()
        caller.close()


async def test_the_browser_agents_voice_is_on_the_agent_channel_at_the_time_it_was_said(
    node: NodeFactory,
) -> None:
    gw = await node(NOTIFY)
    # Irregular bursts: on/off in 200 ms blocks, so only the right placement lines up.
    pattern = np.random.default_rng(7).integers(0, 2, 1000).astype(bool)
    microphone = Microphone(FIRST_TONE, lambda n: bool(pattern[n // 10]))
    _, _, stack, answered = await gw.answered_call(microphone)
    async with stack:
        await loopback.eventually(lambda: sum(on for _, on in microphone.said) >= 100, TIMEOUT)
    outcome = await gw.hang_up()
    caller, agent, zero = await gw.channels(outcome)

    # Nothing of the agent before they answered (the notice, the ring).
    assert frame_rms(span(agent, zero, zero, answered)).max(initial=0.0) < 50
    recorded = (frame_rms(agent) > LOUD_RMS).astype(np.float64)
    said = said_envelope(microphone, zero, len(recorded))
    lag, correlation = best_lag(recorded, said)
    # Chance is ~0 (random 200 ms blocks); a busy loop blurs some block edges.
    assert correlation > 0.6, (lag, correlation)
    assert -5 <= lag <= MAX_LATE / 0.02, (lag, correlation)  # never before it was said
    # It is the agent's voice on their channel, and the caller's on the caller's.
    spoken = agent[: len(recorded) * FRAME][recorded.repeat(FRAME).astype(bool)]
    assert tone_of(spoken) == pytest.approx(FIRST_TONE, abs=15)
    assert tone_of(span(caller, zero, answered, answered + 2.0)) == pytest.approx(
        CALLER_TONE, abs=15
    )
    assert not has_tone(caller, FIRST_TONE)


async def test_with_agent_recording_off_the_agent_channel_is_silence(node: NodeFactory) -> None:
    gw = await node(NOTIFY.model_copy(update={"agent_recording": False}))
    microphone = Microphone(FIRST_TONE)
    _, _, stack, answered = await gw.answered_call(microphone)
    async with stack:
        # The agent is heard by the caller: their audio flows, the gate keeps it out.
        await loopback.eventually(lambda: loopback.hears(gw.caller.heard, FIRST_TONE), TIMEOUT)
        await asyncio.sleep(1.0)
    outcome = await gw.hang_up()
    caller, agent, zero = await gw.channels(outcome)

    assert not agent.any()
    assert tone_of(span(caller, zero, answered, answered + 2.0)) == pytest.approx(
        CALLER_TONE, abs=15
    )


async def test_after_a_blind_transfer_the_agent_channel_carries_the_second_agent(
    node: NodeFactory,
) -> None:
    gw = await node(NOTIFY)
    first = Microphone(FIRST_TONE)
    session, call_id, stack, _ = await gw.answered_call(first)
    second_session, second_page = gw.sign_in(2)
    async with stack:
        await loopback.eventually(lambda: loopback.hears(gw.caller.heard, FIRST_TONE), TIMEOUT)
        talking = gw.clock.now()
        await asyncio.sleep(0.5)
        transferring = gw.clock.now()
        await gw.agents.transfer(session, call_id, "blind", "agent", "2")
        ringing = await loopback.offered(second_page)
        heard_before = len(gw.caller.heard)
        await loopback.eventually(
            lambda: loopback.hold_music_in(gw.caller.heard[heard_before:]), TIMEOUT
        )
        await asyncio.sleep(1.0)  # the second agent lets it ring a while
        await gw.agents.act(second_session, ringing.call_id, CallAction.ANSWER)
        connected = gw.clock.now()
        second = Microphone(SECOND_TONE)
        async with browser(second) as peer:
            await peer.connect(gw.agents, second_session, ringing.call_id)
            await loopback.eventually(lambda: loopback.hears(gw.caller.heard, SECOND_TONE), TIMEOUT)
            await asyncio.sleep(1.0)
    outcome = await gw.hang_up()
    _, agent, zero = await gw.channels(outcome)

    assert tone_of(span(agent, zero, talking, transferring)) == pytest.approx(FIRST_TONE, abs=15)
    # On hold: neither the first agent nor the hold music is on the agent channel.
    held = span(agent, zero, transferring + HELD_AT_ONCE, connected)
    assert len(held) > RATE // 2 and frame_rms(held).max(initial=0.0) < 50
    after = span(agent, zero, transferring + MAX_LATE, zero + len(agent) / RATE)
    assert has_tone(after, SECOND_TONE) and not has_tone(after, FIRST_TONE)
    assert not any(has_tone(agent, f) for f in HOLD_MUSIC)


async def test_a_warm_transfers_consult_is_not_recorded_and_the_second_agent_is_after_it(
    node: NodeFactory,
) -> None:
    gw = await node(NOTIFY)
    first = Microphone(FIRST_TONE)
    session, call_id, stack, _ = await gw.answered_call(first)
    second_session, second_page = gw.sign_in(2)
    async with stack:
        await loopback.eventually(lambda: loopback.hears(gw.caller.heard, FIRST_TONE), TIMEOUT)
        transferring = gw.clock.now()
        await gw.agents.transfer(session, call_id, "warm", "agent", "2")
        consult = await loopback.offered(second_page)
        await gw.agents.act(second_session, consult.call_id, CallAction.ANSWER)
        second = Microphone(SECOND_TONE)
        async with browser(second) as peer:
            await peer.connect(gw.agents, second_session, consult.call_id)
            # The two agents talk for a while; the caller hears hold music.
            await loopback.eventually(lambda: len(second.said) >= 75, TIMEOUT)
            completing = gw.clock.now()
            await gw.agents.transfer_complete(session, call_id)
            await loopback.eventually(lambda: loopback.hears(gw.caller.heard, SECOND_TONE), TIMEOUT)
            await asyncio.sleep(1.0)
    outcome = await gw.hang_up()
    _, agent, zero = await gw.channels(outcome)

    consulting = span(agent, zero, transferring + HELD_AT_ONCE, completing)
    assert len(consulting) > RATE and frame_rms(consulting).max(initial=0.0) < 50
    after = span(agent, zero, completing, zero + len(agent) / RATE)
    assert has_tone(after, SECOND_TONE) and not has_tone(after, FIRST_TONE)


# --- the agent's words in the call's transcript ------------------------------------------


async def agent_transcripts(gw: Node, outcome: ConsentOutcome) -> list[store.Transcript]:
    async with gw.sessions() as session:
        rows = [
            await store.get_object(session, store.ObjectKind.TRANSCRIPT, loopback.TENANT, i)
            for i in outcome.transcripts
        ]
    return [r for r in rows if isinstance(r, store.Transcript) and r.party == "agent"]


async def spoken_at_48k(text: str) -> Samples:
    pcm = await EspeakTts().synthesize(text, sample_rate=8000).read_all()
    said = np.frombuffer(pcm, dtype="<i2")
    return np.concatenate([np.repeat(said, 6), np.zeros(48000, np.int16)])  # and a pause


@pytest.mark.parametrize("agent_recording", [True, False])
async def test_the_agents_words_are_in_the_transcript_only_where_agents_may_be_recorded(
    node: NodeFactory, agent_recording: bool
) -> None:
    settings = NOTIFY.model_copy(
        update={"transcription_enabled": True, "agent_recording": agent_recording}
    )
    gw = await node(settings)
    microphone = Microphone(0.0, speech=await spoken_at_48k("thank you for calling acme"))
    _, _, stack, _ = await gw.answered_call(microphone)
    async with stack:
        await loopback.eventually(lambda: len(microphone.said) >= 300, TIMEOUT)  # 6 s
    outcome = await gw.hang_up()

    rows = await agent_transcripts(gw, outcome)
    if not agent_recording:
        assert rows == []  # the gate kept the agent's audio from the recogniser too
        return
    (row,) = rows
    (informed,) = [d for d in outcome.stored if d.party == "agent"]
    assert (row.consent_record_id, row.complete) == (informed.record_id, True)
    with open_stored(gw.storage, row) as handle:
        plaintext = decrypt(handle, gw.keyring, wrapped_key=wrapped_key_of(row))
    lines = [json.loads(line) for line in plaintext.decode().splitlines()]
    assert lines and all(line["text"] for line in lines)
