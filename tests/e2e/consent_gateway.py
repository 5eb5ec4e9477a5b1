"""The in-process consent gateway the baresip consent tests dial, and what they check with.

The gateway is the real stack in process (SipService + SipCalls + the consent
wrapper around the echo service, eSpeak prompts, the recorder with
LocalFilesystemStorage and LocalKeyring on SQLite), with the admin API bound to
its call layer as ``voicegw serve`` binds it (on loopback, a tenant admin's
token in hand: :meth:`Gateway.secure`). Its fixtures live here so
that every consent test module uses the same gateway; a module takes them by
assigning them to module names (``gateway = consent_gateway.gateway``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from aiohttp.test_utils import TestClient, TestServer

from tests.e2e.peers import (
    DOMAIN,
    EVENT_TIMEOUT,
    RATE,
    SECRET,
    Baresip,
    Sessions,
    loopback_sip_service,
    tone_sequence,
)
from voicegw.api.app import create_app
from voicegw.api.context import LIVE_CALLS
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.consent_flow import ConsentOutcome
from voicegw.calls.consented import (
    ConsentedDeps,
    ConsentedService,
    ConsentStateChanged,
    with_consent,
)
from voicegw.calls.echo import EchoService
from voicegw.calls.prompts import PromptCache
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import InboundCall, SipCalls, SipCallsConfig
from voicegw.calls.sip_service import SipService, tenant_realm
from voicegw.consent import State
from voicegw.consent.gate import SuppressedInterval
from voicegw.media.clock import MediaClock
from voicegw.media.ports import PortAllocator
from voicegw.privacy.registry import Registry
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import migrate, sip_accounts, tenants, tokens
from voicegw.store import recordings as store
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import (
    ConsentCapture,
    ConsentPrompt,
    RecordingMode,
    Retention,
    TenantSettings,
)
from voicegw.tts.espeak_local import EspeakTts
from voicegw.tts.registry import TtsRegistry

requires_baresip = pytest.mark.skipif(
    shutil.which("baresip") is None, reason="baresip is not installed"
)

Pcm = npt.NDArray[np.float32]
TENANT = "acme"
REALM = tenant_realm(TENANT, DOMAIN)
NUMBER = "+4930901820"
NUMBER_URI = f"sip:{NUMBER}@{REALM}"
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than any call here
PROMPT = "Recording. Press 1 or 2."
WPM = 230
ANSWER_TIMEOUT = 2  # seconds after the prompt that settle an unanswered question
FRAME = RATE // 50  # samples
FRAME_SECONDS = FRAME / RATE
EPS = 1e-6
#: How late a reopening may take effect under load (see :func:`opens_at`): 5 frames.
LATE_OPEN = 5 * FRAME_SECONDS
WINDOW = RATE // 10  # samples
RECORDED_PACKETS = 100  # 2 s of echoed audio after the decision before baresip hangs up


# --- baresip ----------------------------------------------------------------------------------


def best_match(needle: Pcm, haystack: Pcm) -> tuple[float, int]:
    """Normalised correlation of ``needle`` with the window of ``haystack`` that fits it best."""
    n = len(needle) + len(haystack)
    xcorr = np.fft.irfft(np.fft.rfft(haystack, n) * np.conj(np.fft.rfft(needle, n)), n)
    lag = int(np.argmax(xcorr[: len(haystack) - len(needle) + 1]))
    window = haystack[lag : lag + len(needle)]
    norm = float(np.linalg.norm(needle) * np.linalg.norm(window)) + 1e-12
    return float(np.dot(needle, window)) / norm, lag


def as_float(pcm: npt.NDArray[np.int16]) -> Pcm:
    return np.asarray(pcm / 32768, dtype=np.float32)


def log_spectrogram(pcm: Pcm, size: int = 256, hop: int = 128) -> Pcm:
    frames = np.lib.stride_tricks.sliding_window_view(pcm, size)[::hop] * np.hanning(size)
    return np.asarray(np.log1p(10 * np.abs(np.fft.rfft(frames, axis=1))), dtype=np.float32)


def spectral_match(needle: Pcm, haystack: Pcm) -> float:
    """Correlation of log spectrograms at the waveforms' best alignment.

    eSpeak does not say the same text twice sample for sample (two syntheses of the
    prompt correlate at only ~0.7 as waveforms), but their spectrograms agree (~0.98,
    against ~0.16 for another sentence): the test compares what a listener hears.
    """
    _, lag = best_match(needle, haystack)
    a = log_spectrogram(needle).ravel()
    b = log_spectrogram(haystack[lag : lag + len(needle)]).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# --- the gateway --------------------------------------------------------------------------------


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    consented: ConsentedService
    sessions: Sessions
    storage: LocalFilesystemStorage
    keyring: LocalKeyring
    #: The admin API of this gateway, and a tenant admin's bearer token and its id.
    api: TestClient  # type: ignore[type-arg]
    admin_token: str
    admin_token_id: str
    states: asyncio.Queue[ConsentStateChanged] = field(default_factory=asyncio.Queue)
    outcomes: asyncio.Queue[tuple[str, ConsentOutcome]] = field(default_factory=asyncio.Queue)
    offered: asyncio.Queue[InboundCall] = field(default_factory=asyncio.Queue)

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]

    async def state(self, *wanted: State) -> ConsentStateChanged:
        """The next consent state change to one of ``wanted`` (others are skipped)."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            left = max(0.01, deadline - time.monotonic())
            change = await asyncio.wait_for(self.states.get(), left)
            if change.state in wanted:
                return change

    async def outcome(self) -> tuple[str, ConsentOutcome]:
        return await asyncio.wait_for(self.outcomes.get(), EVENT_TIMEOUT)

    async def secure(self, action: str, call_id: str) -> tuple[int, dict[str, Any]]:
        """``POST …/calls/{call_id}/secure-{action}`` as the tenant's admin: (status, body)."""
        path = f"/api/v1/tenants/{TENANT}/calls/{call_id}/secure-{action}"
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with self.api.post(path, headers=headers) as resp:
            assert resp.content_type == "application/json", await resp.text()
            body: dict[str, Any] = await resp.json()
            return resp.status, body


def settings_for(mode: RecordingMode) -> TenantSettings:
    return TenantSettings(
        region="eu",
        recording_mode=mode,
        consent_prompt=ConsentPrompt(text=PROMPT, version=2),
        consent_capture=ConsentCapture(timeout_seconds=ANSWER_TIMEOUT),
        retention=Retention(recordings_days=30),
    )


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def clock() -> AsyncIterator[MediaClock]:
    clock = MediaClock()
    clock.start()
    yield clock
    await clock.stop()


@pytest.fixture
async def tts() -> TtsRegistry:
    registry: TtsRegistry = Registry("tts")
    registry.register(EspeakTts(words_per_minute=WPM))
    return registry


@pytest.fixture
async def prompt_audio() -> Pcm:
    """The prompt as eSpeak says it at 8 kHz, straight from the engine (not the gateway)."""
    pcm = await EspeakTts(words_per_minute=WPM).synthesize(PROMPT, sample_rate=RATE).read_all()
    return as_float(np.frombuffer(pcm, dtype="<i2"))


GatewayFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Gateway]"]


@pytest.fixture
def gateway(
    sessions: Sessions,
    clock: MediaClock,
    tts: TtsRegistry,
    prompt_audio: Pcm,  # eSpeak initialised once before any call (its set-up must not race)
    tmp_path: Path,
) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def start(
        settings: TenantSettings, asr: AsrRegistry | None = None
    ) -> AsyncIterator[Gateway]:
        async with sessions.begin() as session:
            await tenants.create_tenant(
                session, actor="test", tenant_id=TENANT, name="Acme", settings=settings
            )
            await tenants.add_number(session, actor="test", tenant_id=TENANT, number=NUMBER)
            await sip_accounts.create_credential(
                session,
                actor="test",
                tenant_id=TENANT,
                username="alice",
                realm=REALM,
                password="secret",
            )
            token, admin_token = await tokens.create_token(
                session, role="tenant_admin", tenant_id=TENANT
            )
        service = loopback_sip_service(sessions, SECRET)

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        storage = LocalFilesystemStorage(tmp_path / "recordings")
        keyring = LocalKeyring(tmp_path / "keys")
        consented = with_consent(
            EchoService(),
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
        # Whichever service the routing table names for a tenant's own number, it is
        # consent first here.
        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 44000, 44999),
            {kind: consented for kind in Service},
            SipCallsConfig(),
        )
        calls.attach()
        app = create_app(
            sessions, tmp_path / "var", recording_storage=storage, recording_keys=keyring
        )
        app[LIVE_CALLS].attach(calls)
        api = TestClient(TestServer(app, host="127.0.0.1"))
        gw = Gateway(
            service, calls, consented, sessions, storage, keyring, api, admin_token, token.id
        )
        consented.listeners.append(gw.states.put_nowait)
        consented.on_outcome = lambda call_id, outcome: gw.outcomes.put_nowait((call_id, outcome))
        calls.on_call = gw.offered.put_nowait
        await service.start()
        await api.start_server()
        try:
            yield gw
        finally:
            await api.close()
            await calls.close()
            await service.stop()

    return start


@pytest.fixture
def source_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    soundfile.write(path, tone_sequence(INPUT_SECONDS, seed=11), RATE, subtype="PCM_16")
    return path


@pytest.fixture
async def phone(tmp_path: Path, source_wav: Path) -> AsyncIterator[Baresip]:
    baresip = Baresip(tmp_path / "alice", source_wav, rtp_ports="43000-43999")
    await baresip.start()
    yield baresip
    await baresip.stop()


# --- steps and checks ---------------------------------------------------------------------------


async def dial(gw: Gateway, phone: Baresip) -> InboundCall:
    await phone.register("alice", "secret", gw.port)
    await phone.command("dial", NUMBER_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    return call


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll a gateway-side counter that has no event of its own (packets sent)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def talk_then_hang_up(
    call: InboundCall, phone: Baresip, packets: int = RECORDED_PACKETS
) -> None:
    """Let the echo run for ``packets`` more packets (20 ms each), then baresip hangs up."""
    sent = call.transport.leg.summary().packets_sent
    await until(lambda: call.transport.leg.summary().packets_sent >= sent + packets)
    await phone.command("hangup")
    assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"


async def caller_channel(gw: Gateway, outcome: ConsentOutcome) -> npt.NDArray[np.int16]:
    recording = outcome.recording
    assert recording is not None and recording.complete
    async with gw.sessions() as session:
        row = await store.get_recording(session, TENANT, recording.recording_id)
    assert row is not None
    with open_stored(gw.storage, row) as handle:
        plaintext = decrypt(handle, gw.keyring, wrapped_key=wrapped_key_of(row))
    return np.frombuffer(plaintext, dtype="<i2")[0::2]


async def stored_decisions(gw: Gateway, call_id: str) -> list[tuple[str, str, str]]:
    """(party, decision, reason) of every stored consent record, each checked for its audit."""
    async with gw.sessions() as session:
        rows = await store.list_consent_records(session, TENANT, call_id)
        for row in rows:
            assert await store.audited_consent_record(session, TENANT, row.id) is not None
    return [(r.party, r.decision, r.evidence["reason"]) for r in rows]


def recorded_files(gw: Gateway) -> list[Path]:
    root = gw.storage.root
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def caller_decision_at(outcome: ConsentOutcome) -> float:
    (decision,) = [d for d in outcome.decisions if d.party == "caller"]
    return decision.decided_at


@dataclass(frozen=True)
class Stretch:
    """Contiguous suppressed frames of one party, merged across gate reasons."""

    reasons: tuple[str, ...]
    start_time: float
    end_time: float
    start_sample: int
    end_sample: int


def merged(intervals: tuple[SuppressedInterval, ...]) -> list[Stretch]:
    out: list[Stretch] = []
    for i in intervals:
        if out and out[-1].end_sample == i.start_sample:
            last = out[-1]
            reasons = (*last.reasons, i.reason)
            out[-1] = Stretch(reasons, last.start_time, i.end_time, last.start_sample, i.end_sample)
        else:
            out.append(Stretch((i.reason,), i.start_time, i.end_time, i.start_sample, i.end_sample))
    return out


def opens_at(stretch: Stretch, instant: float) -> None:
    """Recording reopened at ``instant``: the stretch ends on the first frame wholly after it.

    Never earlier (that would keep audio from before consent). Later only if the
    loaded machine fed the decision to the gate after that frame's tick (harmless:
    less is kept), so up to :data:`LATE_OPEN` more is tolerated.
    """
    assert instant <= stretch.end_time + EPS, (stretch, instant)
    assert stretch.end_time < instant + FRAME_SECONDS + LATE_OPEN, (stretch, instant)


async def check_recorded_from(
    gw: Gateway, phone: Baresip, outcome: ConsentOutcome, consent_at: float, skip: int = 0
) -> None:
    """Silence up to ``consent_at`` on the caller channel, baresip's own audio after it
    (measured from ``skip`` samples after the consent instant).

    Where the consent instant falls in the file is read from the gate's own intervals
    (samples), not from the clock: a frame the flow lost under load (its tap queue
    keeps the newest 2 s) shortens the file without moving what the gate decided.
    """
    caller = await caller_channel(gw, outcome)
    lead = merged(outcome.intervals["caller"])[0]
    assert lead.start_sample == 0, lead
    opens_at(lead, consent_at)
    cut = lead.end_sample
    start = cut + FRAME + skip
    assert cut > 0 and start + 10 * WINDOW <= len(caller), (cut, start, len(caller))
    assert not caller[:cut].any(), "caller audio from before the consent instant was kept"
    after = as_float(caller[start : start + 10 * WINDOW])
    assert float(np.abs(after).mean()) > 0.02, "no caller audio after consent"
    # 100 ms windows, each found in what baresip sent: a frame the jitter buffer slipped
    # (clock drift, a late packet) spoils at most the one window it falls in.
    sent = phone.recording("enc")
    matches = [best_match(after[k : k + WINDOW], sent)[0] for k in range(0, len(after), WINDOW)]
    assert sum(m > 0.95 for m in matches) >= 8, matches
