"""The consent flow end to end: a real RTP caller on loopback, eSpeak prompt, encrypted recording.

Each caller is a UDP socket sending paced G.711 frames (every frame a distinct
burst of noise, so a frame found in the recording tells exactly when it was
sent), RFC 4733 key presses made with ``digit_packets``, and an RTCP BYE to
hang up. The gateway side is the real stack: MediaLeg + LegTransport +
MediaClock + CallTap + Playback under RtpCallMedia, the consent machine and
gate, the recorder with its container, LocalFilesystemStorage and LocalKeyring,
on SQLite and PostgreSQL.

What is checked is on the file as decrypted, sample by sample: every stretch
the gate lists is silence; every other frame is silence or exactly one frame
the caller sent inside the window consent allowed, judged by the caller's own
send times (before the key press, the end of the notice, after a withdrawal or
inside a secure pause: never). Assertions use the gate's intervals, not
wall-clock guesses; the scripts' sleeps only decide when the caller acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import io
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.consent_flow import (
    CallInfo,
    ConsentFlow,
    ConsentOutcome,
    ConsentServices,
    load_consent_policy,
)
from voicegw.calls.prompts import PromptCache, PromptSynthesizer
from voicegw.calls.speech_policy import CallSpeech
from voicegw.consent import RecordingMode
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.dtmf import digit_packets
from voicegw.media.ports import PortAllocator, RtpPorts
from voicegw.media.rtcp import RtcpBye, RtcpReceiverReport, serialize_compound
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import LegConfig, MediaLeg, static_codecs
from voicegw.media.transport import LegTransport
from voicegw.privacy.registry import Registry
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import interval_values, open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import audit, tenants
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent
from voicegw.store.prompt_files import PromptLibrary
from voicegw.tenant_settings import ConsentCapture, ConsentPrompt, Retention, TenantSettings
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

HOST = "127.0.0.1"
TENANT = "acme"
RATE = 8000
SAMPLES = 160
FRAME = SAMPLES / RATE
EVENT_PT = 101
PROMPT = "Recording. Press 1 or 2."
TIMEOUT = 2  # seconds of silence after the prompt that settle the answer
CALLER_US = "+12125550100"  # New York: one-party consent
CALLER_DE = "+493012345678"
CALL_FRAMES = 600  # 12 s of distinct caller audio; every call here is shorter


# --- the caller: a plain UDP endpoint speaking RTP ------------------------------------------


@dataclass
class KeyPressTimes:
    started: float
    finished: float  # first end packet sent: from here on the key press is complete


@dataclass
class LoopbackCaller(asyncio.DatagramProtocol):
    """A phone on loopback: paced audio out, prompt audio in, key presses, RTCP BYE."""

    seed: int
    gateway_rtp: tuple[str, int] = ("", 0)
    ssrc: int = 0x1234ABCD
    transport: asyncio.DatagramTransport | None = None
    sent_at: dict[bytes, float] = field(default_factory=dict)  # decoded frame -> send time
    prompt_packets: int = 0
    prompt_first: float | None = None
    prompt_last: float | None = None
    prompt_started: asyncio.Event = field(default_factory=asyncio.Event)
    prompt_ended: asyncio.Event = field(default_factory=asyncio.Event)
    _frames: list[bytes] = field(default_factory=list)
    _next: int = 0
    _seq: int = 1000
    _events: dict[int, list[tuple[bool, int, bytes, bool]]] = field(default_factory=dict)
    _last_key_end: float | None = None
    _tick: int = 0
    _hung_up: bool = False

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        pcm = rng.integers(2000, 16000, size=CALL_FRAMES * SAMPLES, dtype=np.int16)
        pcm *= rng.choice(np.array([-1, 1], dtype=np.int16), size=pcm.size)
        for k in range(CALL_FRAMES):
            payload = PCMU.encode(pcm[k * SAMPLES : (k + 1) * SAMPLES].tobytes())
            self._frames.append(payload)

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 2 or 192 <= data[1] <= 223:
            return  # RTCP from the gateway
        now = asyncio.get_running_loop().time()
        self.prompt_packets += 1
        self.prompt_first = self.prompt_first or now
        self.prompt_last = now
        self.prompt_started.set()

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def _send(self, packet: RtpPacket) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(packet), self.gateway_rtp)

    # paced by its own media clock
    def on_tick(self, index: int, now: float) -> None:
        if self._hung_up:
            return
        self._tick += 1
        loop_now = asyncio.get_running_loop().time()
        if self._next < CALL_FRAMES:
            payload = self._frames[self._next]
            self._seq += 1
            self._send(RtpPacket(0, self._seq & 0xFFFF, self._next * SAMPLES, self.ssrc, payload))
            self.sent_at[PCMU.decode(payload)] = loop_now
            self._next += 1
        for marker, timestamp, event, ends in self._events.pop(self._tick, []):
            self._seq += 1
            self._send(RtpPacket(EVENT_PT, self._seq & 0xFFFF, timestamp, self.ssrc, event, marker))
            if ends and self._last_key_end is None:
                self._last_key_end = loop_now
        last = self.prompt_last
        # 0.3 s without a prompt packet: the prompt is over. Shorter, a loop starved by other
        # work on the machine (a 2-core CI box) heard a prompt "end" that had only stalled.
        if last is not None and loop_now - last > 0.3 and not self.prompt_ended.is_set():
            self.prompt_ended.set()

    async def press(self, digits: str, gap: float = 0.1) -> KeyPressTimes:
        """Key presses as RFC 4733 events from the next tick; returns once all are sent."""
        started = asyncio.get_running_loop().time()
        self._last_key_end = None
        first_tick = self._tick + 1
        last_tick = first_tick
        offset = 0.0
        for n, digit in enumerate(digits):
            timestamp = (self._next + round(offset / FRAME)) * SAMPLES
            for p in digit_packets(digit, timestamp, duration=0.1, update_interval=0.04):
                tick = first_tick + round((offset + p.offset) / FRAME)
                ends = n == len(digits) - 1 and bool(p.payload[1] & 0x80)
                self._events.setdefault(tick, []).append((p.marker, p.timestamp, p.payload, ends))
                last_tick = max(last_tick, tick)
            offset += 0.1 + gap
        for _ in range(200):  # bounded: the clock sends one tick per 20 ms
            if self._tick >= last_tick:
                break
            await asyncio.sleep(FRAME)
        return KeyPressTimes(started, self._key_end())

    def _key_end(self) -> float:
        assert self._last_key_end is not None, "the last end packet was never sent"
        return self._last_key_end

    def hang_up(self, gateway_rtcp: tuple[str, int]) -> None:
        self._hung_up = True
        assert self.transport is not None
        bye = serialize_compound([RtcpReceiverReport(self.ssrc), RtcpBye((self.ssrc,))])
        self.transport.sendto(bye, gateway_rtcp)


# --- fixtures and set-up ------------------------------------------------------------------


class Behaviour(enum.Enum):
    ACCEPT = "presses the accept key"
    DECLINE = "presses the decline key"
    SILENCE = "stays silent until the timeout"
    HANGUP = "hangs up during the prompt"
    WITHDRAW = "accepts, then withdraws with *9"
    PAUSE = "accepts; the agent pauses then resumes"


NOTIFY, OPT_IN, OPT_OUT = RecordingMode.NOTIFY, RecordingMode.OPT_IN, RecordingMode.OPT_OUT
B = Behaviour

#: (mode, behaviour) -> the caller's stored decisions (decision, reason), in order.
EXPECTED: dict[tuple[RecordingMode, Behaviour], tuple[tuple[str, str], ...]] = {
    (NOTIFY, B.ACCEPT): (("notice-only", "notice_played"),),
    (NOTIFY, B.DECLINE): (("notice-only", "notice_played"),),  # a notice has nothing to decline
    (NOTIFY, B.SILENCE): (("notice-only", "notice_played"),),
    (NOTIFY, B.HANGUP): (("declined", "hangup_before_answer"),),
    (NOTIFY, B.WITHDRAW): (("notice-only", "notice_played"), ("withdrawn", "withdrawn")),
    (NOTIFY, B.PAUSE): (("notice-only", "notice_played"),),
    (OPT_IN, B.ACCEPT): (("granted", "answered_yes"),),
    (OPT_IN, B.DECLINE): (("declined", "answered_no"),),
    (OPT_IN, B.SILENCE): (("declined", "no_answer_timeout"),),
    (OPT_IN, B.HANGUP): (("declined", "hangup_before_answer"),),
    (OPT_IN, B.WITHDRAW): (("granted", "answered_yes"), ("withdrawn", "withdrawn")),
    (OPT_IN, B.PAUSE): (("granted", "answered_yes"),),
    (OPT_OUT, B.ACCEPT): (("granted", "answered_yes"),),
    (OPT_OUT, B.DECLINE): (("declined", "opted_out"),),
    (OPT_OUT, B.SILENCE): (("granted", "no_objection_in_window"),),
    (OPT_OUT, B.HANGUP): (("declined", "hangup_before_answer"),),
    (OPT_OUT, B.WITHDRAW): (("granted", "answered_yes"), ("withdrawn", "withdrawn")),
    (OPT_OUT, B.PAUSE): (("granted", "answered_yes"),),
}


def settings_for(mode: RecordingMode, **more: Any) -> TenantSettings:
    return TenantSettings(
        region="eu",
        recording_mode=mode.value,
        consent_prompt=ConsentPrompt(text=PROMPT, version=3),
        consent_capture=ConsentCapture(timeout_seconds=TIMEOUT),
        retention=Retention(recordings_days=30),
        **more,
    )


async def make_tenant(sessions: async_sessionmaker[AsyncSession], settings: TenantSettings) -> None:
    async with sessions() as session, session.begin():
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name=TENANT, settings=settings
        )


@pytest.fixture
async def clocks() -> AsyncIterator[tuple[MediaClock, MediaClock]]:
    """The gateway's one media clock, and the callers' (another pacing task)."""
    gateway, callers = MediaClock(), MediaClock()
    gateway.start()
    callers.start()
    yield gateway, callers
    await gateway.stop()
    await callers.stop()


@pytest.fixture
def ports() -> PortAllocator:
    return PortAllocator(HOST, 42000, 47999)


@pytest.fixture
def prompt_cache() -> PromptCache:
    return PromptCache()


@dataclass
class CallResult:
    behaviour: Behaviour
    caller: LoopbackCaller
    outcome: ConsentOutcome
    storage: LocalFilesystemStorage
    key_press: KeyPressTimes | None = None
    withdraw_press: KeyPressTimes | None = None
    paused: tuple[float, float] | None = None


@dataclass
class Gateway:
    sessions: async_sessionmaker[AsyncSession]
    keyring: LocalKeyring
    root: Path
    clocks: tuple[MediaClock, MediaClock]
    ports: PortAllocator
    cache: PromptCache
    tts: TtsRegistry
    flow_sessions: async_sessionmaker[AsyncSession]
    prompt_files: PromptLibrary | None = None

    async def call(
        self,
        call_id: str,
        settings: TenantSettings,
        behaviour: Behaviour,
        *,
        caller_number: str = CALLER_US,
        dialled: str | None = None,
        seed: int = 1,
    ) -> CallResult:
        loop = asyncio.get_running_loop()
        gateway_clock, caller_clock = self.clocks
        caller = LoopbackCaller(seed)
        await loop.create_datagram_endpoint(lambda: caller, local_addr=(HOST, 0))
        rtp_ports: RtpPorts = self.ports.allocate()
        leg = MediaLeg(
            LegConfig(
                codecs=static_codecs(PCMU),
                send_payload_type=0,
                telephone_event_payload_type=EVENT_PT,
                remote_rtp=caller.address,
            ),
            loop.time(),
        )
        transport = await LegTransport.open(leg, rtp_ports)
        caller.gateway_rtp = (HOST, rtp_ports.rtp_port)
        assert rtp_ports.rtcp_port is not None
        gateway_rtcp = (HOST, rtp_ports.rtcp_port)
        media = RtpCallMedia(transport, gateway_clock)
        storage = LocalFilesystemStorage(self.root / call_id)
        prompts = PromptSynthesizer.for_call(
            self.tts,
            settings,
            CallSpeech(call_id=call_id, tenant=TENANT),
            cache=self.cache,
            on_record=lambda record: None,
        )
        async with self.sessions() as session:
            policy = await load_consent_policy(session, TENANT, settings)
        flow = ConsentFlow(
            media,
            CallInfo(TENANT, call_id, "eu", caller_number, dialled),
            settings,
            policy,
            ConsentServices(
                self.flow_sessions,
                storage,
                self.keyring,
                prompts=prompts,
                prompt_files=self.prompt_files,
            ),
        )
        subscription = caller_clock.subscribe(caller.on_tick)
        running = asyncio.create_task(flow.run())
        result = CallResult(behaviour, caller, cast(ConsentOutcome, None), storage)
        try:
            await asyncio.wait_for(
                self._behave(caller, flow, settings, result, gateway_rtcp), timeout=20
            )
            result.outcome = await asyncio.wait_for(running, timeout=20)
        finally:
            subscription.cancel()
            if not running.done():
                media.hang_up()  # a failed script: end the call so the flow settles and returns
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, timeout=10)
            transport.close()
            self.ports.release(rtp_ports)
            assert caller.transport is not None
            caller.transport.close()
        return result

    async def _behave(
        self,
        caller: LoopbackCaller,
        flow: ConsentFlow,
        settings: TenantSettings,
        result: CallResult,
        gateway_rtcp: tuple[str, int],
    ) -> None:
        behaviour = result.behaviour
        notify = settings.recording_mode == RecordingMode.NOTIFY.value
        await caller.prompt_started.wait()
        if behaviour is B.HANGUP:
            await asyncio.sleep(0.4)
            caller.hang_up(gateway_rtcp)
            return
        await caller.prompt_ended.wait()
        await asyncio.sleep(0.2)
        if behaviour is B.ACCEPT or (behaviour in (B.WITHDRAW, B.PAUSE) and not notify):
            result.key_press = await caller.press("1")
        elif behaviour is B.DECLINE:
            result.key_press = await caller.press("2")
        elif behaviour is B.SILENCE:
            await asyncio.sleep(TIMEOUT + 0.5)
        await asyncio.sleep(0.8)
        if behaviour is B.WITHDRAW:
            result.withdraw_press = await caller.press("*9")
            await asyncio.sleep(0.6)
        elif behaviour is B.PAUSE:
            paused = await flow.pause(actor="agent:7")
            await asyncio.sleep(0.5)
            resumed = await flow.resume(actor="agent:7")
            result.paused = (paused, resumed)
            await asyncio.sleep(0.8)
        caller.hang_up(gateway_rtcp)


@pytest.fixture
async def gateway(
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    clocks: tuple[MediaClock, MediaClock],
    ports: PortAllocator,
    prompt_cache: PromptCache,
) -> Gateway:
    registry: TtsRegistry = Registry("tts")
    registry.register(EspeakTts(words_per_minute=230))
    # One synthesis before the calls: the node's prompt cache then serves every call, as in
    # production (and eSpeak's one-time initialisation must not be raced, see the report).
    warm = PromptSynthesizer.for_call(
        registry, settings_for(OPT_IN), CallSpeech(call_id="warm-up", tenant=TENANT),
        cache=prompt_cache, on_record=lambda record: None,
    )  # fmt: skip
    assert (await warm.get(PROMPT, language="en-US")).duration > 0.5
    return Gateway(
        sessions,
        LocalKeyring(tmp_path / "keys"),
        tmp_path / "recordings",
        clocks,
        ports,
        prompt_cache,
        registry,
        sessions,
    )


# --- checking what reached the disk ---------------------------------------------------------


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def decrypted_caller_channel(
    sessions: async_sessionmaker[AsyncSession], result: CallResult, keyring: LocalKeyring
) -> tuple[np.ndarray[Any, np.dtype[np.int16]], store.Recording]:
    recording = result.outcome.recording
    assert recording is not None and recording.complete
    async with sessions() as session:
        row = await store.get_recording(session, TENANT, recording.recording_id)
    assert row is not None
    with open_stored(result.storage, row) as handle:
        plaintext = decrypt(handle, keyring, wrapped_key=wrapped_key_of(row))
    stereo = np.frombuffer(plaintext, dtype="<i2")
    return stereo[0::2], row


def consent_instant(result: CallResult, mode: RecordingMode) -> float:
    """The caller-side instant from which its audio may be kept."""
    caller = result.caller
    assert caller.prompt_last is not None
    if mode is NOTIFY:
        return caller.prompt_last  # the notice has been heard to its end
    if result.behaviour is B.SILENCE:
        return caller.prompt_last + TIMEOUT  # an opt-out window that ran out
    assert result.key_press is not None
    return result.key_press.finished


def allowed_send_time(result: CallResult, mode: RecordingMode, sent: float) -> bool:
    """Whether a frame sent at ``sent`` (for ``FRAME`` seconds) may be in the recording."""
    if sent < consent_instant(result, mode):
        return False
    if result.withdraw_press is not None and sent + FRAME > result.withdraw_press.finished:
        return False
    if result.paused is not None:
        paused, resumed = result.paused
        if sent + FRAME > paused and sent < resumed:
            return False
    return True


async def check_call(
    sessions: async_sessionmaker[AsyncSession],
    keyring: LocalKeyring,
    mode: RecordingMode,
    result: CallResult,
    call_id: str,
) -> None:
    label = f"{mode.value}: caller {result.behaviour.value}"
    outcome = result.outcome
    expected = EXPECTED[(mode, result.behaviour)]
    caller_decisions = [
        (d.decision.value, d.evidence.reason) for d in outcome.decisions if d.party == "caller"
    ]
    assert tuple(caller_decisions) == expected, label
    assert result.caller.prompt_packets > 10, label  # the caller heard the prompt

    async with sessions() as session:
        rows = await store.list_consent_records(session, TENANT, call_id)
        stored = [(r.party, r.decision, r.evidence["reason"]) for r in rows]
        assert [s for s in stored if s[0] == "caller"] == [("caller", *e) for e in expected], label
        assert ("agent", "not-required", "agent_party") in stored, label
        for consent in rows:
            assert await store.audited_consent_record(session, TENANT, consent.id) is not None
            assert consent.mode == mode.value, label
            assert consent.prompt_version == ("v3" if consent.party == "caller" else None), label
        recordings = await store.list_recordings(session, TENANT, call_id=call_id)

    if expected[0][0] not in ("granted", "notice-only"):
        assert outcome.recording is None and recordings == [], label
        assert files_under(result.storage.root) == [], label  # not one byte on disk
        return

    left, row = await decrypted_caller_channel(sessions, result, keyring)
    assert len(recordings) == 1 and files_under(result.storage.root) == [
        result.storage.root / row.storage_key
    ], label

    # 1. every stretch the gate blanked is silence, and the metadata lists exactly those
    intervals = outcome.intervals["caller"]
    for interval in intervals:
        assert not left[interval.start_sample : interval.end_sample].any(), (label, interval)
    assert [i for i in row.intervals if i["party"] == "caller"] == interval_values(intervals)
    reasons = [i.reason for i in intervals]
    assert ("paused" in reasons) == (result.behaviour is B.PAUSE), (label, reasons)
    assert ("withdrawn" in reasons) == (result.behaviour is B.WITHDRAW), (label, reasons)

    # 2. every other frame is silence or one the caller sent while consent allowed it
    kept = 0
    for start in range(0, left.size - SAMPLES + 1, SAMPLES):
        frame = left[start : start + SAMPLES]
        if not frame.any():
            continue
        sent = result.caller.sent_at.get(frame.tobytes())
        assert sent is not None, (label, "recorded audio the caller never sent", start)
        assert allowed_send_time(result, mode, sent), (label, "frame sent at", sent, start)
        kept += 1
    assert kept >= 15, (label, kept)  # and the consented audio really is there

    # 3. consent stored and audited before the recording existed; the recording points at it
    granted = next(s for s in outcome.stored if s.party == "caller")
    assert row.consent_record_id == granted.record_id, label
    async with sessions() as session:
        consent_row = await store.get_consent_record(session, TENANT, granted.record_id)
        assert consent_row is not None
        started = (
            await session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "recording.start",
                    AuditEvent.target == store.target_of(row),
                )
            )
        ).scalar_one()
        assert granted.audit_seq < started.seq, label
        assert store.as_utc(consent_row.recorded_at) <= store.as_utc(row.created_at), label
        if result.paused is not None:
            actions = {
                e.action
                for e in (await session.execute(select(AuditEvent))).scalars()
                if e.target.endswith(f"/calls/{call_id}")
            }
            assert {"call.secure_pause", "call.secure_resume"} <= actions, label


async def all_calls(calls: Iterable[Coroutine[Any, Any, CallResult]]) -> list[CallResult]:
    """Run calls side by side; every call has ended (and its recorder closed) before a failure
    is reported."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[CallResult], results)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [NOTIFY, OPT_IN, OPT_OUT], ids=lambda m: m.value)
async def test_each_caller_behaviour_records_exactly_what_consent_allows(
    mode: RecordingMode, gateway: Gateway
) -> None:
    settings = settings_for(mode)
    await make_tenant(gateway.sessions, settings)
    behaviours = list(Behaviour)
    results = await all_calls(
        gateway.call(f"{mode.value}-{b.name.lower()}", settings, b, seed=n + 1)
        for n, b in enumerate(behaviours)
    )
    for behaviour, result in zip(behaviours, results, strict=True):
        call_id = f"{mode.value}-{behaviour.name.lower()}"
        await check_call(gateway.sessions, gateway.keyring, mode, result, call_id)
    async with gateway.sessions() as session:
        assert (await audit.verify(session)).ok


async def test_all_party_consent_caller_is_asked_under_notify_and_number_override_applies(
    gateway: Gateway,
) -> None:
    settings = settings_for(NOTIFY, all_party_consent_jurisdictions=("DE", "US-CA"))
    await make_tenant(gateway.sessions, settings)
    line = "+441632960001"
    async with gateway.sessions() as session, session.begin():
        await tenants.add_number(
            session, actor="test", tenant_id=TENANT, number="+442079460000", recording_mode="opt_in"
        )
    german_yes, german_silent, override_silent, local_silent = await all_calls(
        (
            gateway.call(
                "de-yes", settings, B.ACCEPT, caller_number=CALLER_DE, dialled=line, seed=7
            ),
            gateway.call("de-silent", settings, B.SILENCE, caller_number=CALLER_DE, seed=8),
            gateway.call("override-silent", settings, B.SILENCE, dialled="+442079460000", seed=9),
            gateway.call("us-silent", settings, B.SILENCE, dialled=line, seed=10),
        )
    )
    for result in (german_yes, german_silent):
        resolution = result.outcome.resolution
        assert (resolution.mode, resolution.rule.value, resolution.jurisdiction) == (
            OPT_IN, "jurisdiction", "DE"
        )  # fmt: skip
    assert override_silent.outcome.resolution.rule.value == "number_override"
    assert local_silent.outcome.resolution.mode is NOTIFY  # New York: the tenant's notice suffices

    # the German callers were asked, and what they answered is what happened
    await check_call(gateway.sessions, gateway.keyring, OPT_IN, german_yes, "de-yes")
    await check_call(gateway.sessions, gateway.keyring, OPT_IN, german_silent, "de-silent")
    await check_call(gateway.sessions, gateway.keyring, OPT_IN, override_silent, "override-silent")
    await check_call(gateway.sessions, gateway.keyring, NOTIFY, local_silent, "us-silent")
    async with gateway.sessions() as session:
        (record,) = [
            r
            for r in await store.list_consent_records(session, TENANT, "de-yes")
            if r.party == "caller"
        ]
        assert (record.mode, record.policy_rule, record.jurisdiction) == (
            "opt_in", "jurisdiction", "DE"
        )  # fmt: skip


async def test_uploaded_prompt_file_is_played_and_its_hash_is_the_evidence(
    gateway: Gateway, tmp_path: Path
) -> None:
    # A 16 kHz upload: the flow resamples it to the leg's 8 kHz as it plays.
    t = np.arange(16000) / 16000.0
    pcm = (np.sin(2 * np.pi * 440 * t) * 9000).astype(np.int16)
    wav = io.BytesIO()
    soundfile.write(wav, pcm, 16000, subtype="PCM_16", format="WAV")
    library = PromptLibrary(tmp_path / "prompts")
    library.save(TENANT, "notice.wav", wav.getvalue())
    gateway.prompt_files = library
    settings = settings_for(OPT_IN).model_copy(
        update={"consent_prompt": ConsentPrompt(text=None, audio_file="notice.wav", version=3)}
    )
    await make_tenant(gateway.sessions, settings)
    (result,) = await all_calls([gateway.call("file-yes", settings, B.ACCEPT, seed=11)])
    await check_call(gateway.sessions, gateway.keyring, OPT_IN, result, "file-yes")
    assert 45 <= result.caller.prompt_packets <= 55  # one second of prompt, 20 ms packets
    async with gateway.sessions() as session:
        (record,) = [
            r
            for r in await store.list_consent_records(session, TENANT, "file-yes")
            if r.party == "caller"
        ]
    assert record.prompt_sha256 == hashlib.sha256(wav.getvalue()).hexdigest()
