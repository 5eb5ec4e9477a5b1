"""A real baresip dials a tenant's number and reaches an agent in real headless Chromium.

The gateway here is the real call layer with the :class:`AgentBridge` on the
tenant's number, the real softphone page and API, and a real
:class:`AgentDirectory`. baresip (registered as a tenant user) dials the
number; its microphone is a WAV of tones and chirps and ``sndfile`` records
what it hears. Chromium's fake microphone is a looping WAV of tone bursts.
The bridge sits behind the tenant's consent flow (``with_consent``), as on a
node: with recording off it hands calls straight on; in ``notify`` mode the
decrypted recording's agent channel must carry the browser's microphone.

Like ``test_softphone.py``, the scenarios run in a child pytest in a network
namespace with only loopback up (where namespaces are available): the outer
test re-runs this file with ``VOICEGW_INBOUND_SCENARIOS=1``; the scenarios
skip themselves otherwise. Every wait is on an event (page state, baresip's
ctrl_tcp events, call state) bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile

from tests.e2e.peers import DOMAIN

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CHROMIUM = os.environ.get("VOICEGW_CHROMIUM", "/usr/bin/chromium")
IN_CHILD = os.environ.get("VOICEGW_INBOUND_SCENARIOS") == "1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(IN_CHILD, reason="the runner, not a scenario")
@pytest.mark.timeout(175)
def test_inbound_calls_reach_agents_in_chromium_on_loopback_only() -> None:
    child = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    if namespace_available():
        child = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *child]
    env = {**os.environ, "VOICEGW_INBOUND_SCENARIOS": "1"}
    result = subprocess.run(
        child, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


# --- the scenarios (child process only) ----------------------------------------------------

if IN_CHILD:
    import numpy as np
    import soxr
    from aiohttp import web
    from playwright.async_api import Browser, Page, expect

    sys.path.insert(0, str(HERE))
    import softphone_scenarios as softphone
    import test_baresip_calls as phones

    from voicegw.api.app import create_app
    from voicegw.calls.agent_bridge import AgentBridge, AgentBridgeConfig
    from voicegw.calls.agents import AgentCall, AgentDirectory, CallState
    from voicegw.calls.consent_flow import ConsentOutcome
    from voicegw.calls.consented import ConsentedDeps, with_consent
    from voicegw.calls.queues import QueueSettings
    from voicegw.calls.routing import Router, Service
    from voicegw.calls.sip_calls import EndReason, InboundCall, SipCalls, SipCallsConfig
    from voicegw.calls.sip_service import SipService, SipServiceConfig
    from voicegw.media.clock import MediaClock
    from voicegw.media.ports import PortAllocator
    from voicegw.media.webrtc import WebRtcConfig
    from voicegw.privacy.registry import Registry
    from voicegw.recording.container import decrypt
    from voicegw.recording.keys import LocalKeyring
    from voicegw.recording.metadata import open_stored, wrapped_key_of
    from voicegw.recording.storage import LocalFilesystemStorage
    from voicegw.sip.transport import ListenAddresses
    from voicegw.store import migrate, sip_accounts, tenants, tokens
    from voicegw.store import recordings as recordings_store
    from voicegw.store.db import create_engine, session_factory
    from voicegw.tenant_settings import TenantSettings
    from voicegw.tts.espeak_local import EspeakTts
    from voicegw.tts.registry import TtsRegistry

    NUMBER = "+442079460123"
    DIAL = f"sip:{NUMBER}@{DOMAIN}"
    TIMEOUT = 10.0

    @dataclass
    class Node:
        url: str
        agents: AgentDirectory
        calls: SipCalls
        offered: asyncio.Queue[InboundCall]
        sip_port: int
        tokens: dict[str, str]
        agent_ids: dict[str, int]
        sessions: Any
        storage: LocalFilesystemStorage
        keyring: LocalKeyring
        #: Each consent-flow call's outcome as it finishes (recorded calls only).
        outcomes: asyncio.Queue[ConsentOutcome]

        async def inbound(self) -> InboundCall:
            return await asyncio.wait_for(self.offered.get(), TIMEOUT)

        async def agent_channel(self, outcome: ConsentOutcome) -> np.ndarray:
            """The decrypted recording's right (agent) channel, as floats."""
            recording = outcome.recording
            assert recording is not None and recording.complete
            async with self.sessions() as s:
                row = await recordings_store.get_recording(s, "acme", recording.recording_id)
            assert row is not None
            with open_stored(self.storage, row) as handle:
                plaintext = decrypt(handle, self.keyring, wrapped_key=wrapped_key_of(row))
            return np.frombuffer(plaintext, dtype="<i2")[1::2].astype(np.float64) / 32768

        def agent_call(self, agent_id: int) -> AgentCall:
            session = self.agents.session(agent_id)
            assert session is not None and session.call is not None
            return session.call

    @pytest.fixture
    async def node(tmp_path: Path) -> AsyncIterator[Node]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
        await migrate.upgrade(engine)
        sessions = session_factory(engine)
        secrets: dict[str, str] = {}
        agent_ids: dict[str, int] = {}
        async with sessions() as s, s.begin():
            await tenants.create_tenant(
                s, actor="test", tenant_id="acme", name="ACME", settings=TenantSettings()
            )
            await tenants.add_number(s, actor="test", tenant_id="acme", number=NUMBER)
            await sip_accounts.create_credential(
                s,
                actor="test",
                tenant_id="acme",
                username="alice",
                realm=phones.REALM,
                password="secret",
            )
            for name in ("ann", "bob"):
                agent = await tenants.add_agent(
                    s, actor="test", tenant_id="acme", username=name, display_name=name, skills=[]
                )
                agent_ids[name] = agent.id
                _, secrets[name] = await tokens.create_token(
                    s, role="agent", tenant_id="acme", agent_id=agent.id
                )
        agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=60)
        runner = web.AppRunner(create_app(sessions, tmp_path, agents=agents))
        await runner.setup()
        http_port = softphone.free_port()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        service = SipService(
            SipServiceConfig(
                domain=DOMAIN,
                nonce_secret=phones.SECRET,
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
                digest_algorithms=("MD5",),  # baresip 1.0 gives up on SHA-256 challenges
            ),
            sessions,
        )

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        clock = MediaClock()
        clock.start()
        bridge = AgentBridge(
            agents, AgentBridgeConfig(queue=QueueSettings(ring_timeout=20)), clock=clock
        )
        tts: TtsRegistry = Registry("tts")
        tts.register(EspeakTts())
        storage = LocalFilesystemStorage(tmp_path / "recordings")
        keyring = LocalKeyring(tmp_path / "keys")
        consented = with_consent(
            bridge, ConsentedDeps(sessions, storage, keyring, clock=clock, tts=tts)
        )
        outcomes: asyncio.Queue[ConsentOutcome] = asyncio.Queue()
        consented.on_outcome = lambda _call_id, outcome: outcomes.put_nowait(outcome)
        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 42000, 42999),
            {Service.AGENT_QUEUE: consented},
            SipCallsConfig(),
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        bound = service.transports.bound.udp
        assert bound is not None
        try:
            yield Node(
                f"http://127.0.0.1:{http_port}",
                agents,
                calls,
                offered,
                bound[1],
                secrets,
                agent_ids,
                sessions,
                storage,
                keyring,
                outcomes,
            )
        finally:
            await calls.close()
            await bridge.close()
            await clock.stop()
            await service.stop()
            await agents.close()
            await runner.cleanup()
            await engine.dispose()

    @pytest.fixture
    async def phone(tmp_path: Path, node: Node) -> AsyncIterator[phones.Baresip]:
        source = tmp_path / "caller.wav"
        speech = phones.tone_sequence(phones.INPUT_SECONDS)
        soundfile.write(source, speech, phones.RATE, subtype="PCM_16")
        baresip = phones.Baresip(tmp_path / "baresip", source)
        await baresip.start()
        try:
            await baresip.register("alice", "secret", node.sip_port)
            yield baresip
        finally:
            await baresip.stop()

    browser = softphone.browser  # the Chromium fixture with the fake microphone

    async def sign_in(chromium: Browser, node: Node, name: str) -> Page:
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(node.url + "/softphone")
        await page.fill("#token", node.tokens[name])
        await page.click("#signin-button")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
        await expect(page.locator("#presence")).to_have_value("available")
        return page

    async def dial_and_answer(node: Node, baresip: phones.Baresip, page: Page) -> InboundCall:
        await baresip.command("dial", DIAL)
        await expect(page.locator("#ring")).to_be_visible(timeout=TIMEOUT * 1000)
        await page.click("#answer")
        assert await baresip.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await expect(page.locator("#call-state")).to_have_text("active")
        return await node.inbound()

    async def test_agent_answers_both_hear_each_other_and_the_agent_hangs_up(
        node: Node, phone: phones.Baresip, browser: Browser
    ) -> None:
        page = await sign_in(browser, node, "ann")
        inbound = await dial_and_answer(node, phone, page)
        # The caller's WAV reaches the page's WebAudio.
        assert await softphone.heard_rms(page, above=0.05) > 0.05
        # Four seconds of the agent's microphone sent on towards baresip.
        await softphone.eventually(lambda: inbound.transport.leg.summary().packets_sent >= 200)

        await page.click("#hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(inbound.ended.wait(), TIMEOUT)
        assert inbound.end_reason is EndReason.LOCAL_HANGUP
        await expect(page.locator("#presence")).to_have_value("wrap_up")

        heard = phone.recording("dec")
        mic = softphone.tone_bursts(softphone.MIC_TONES, 0.2, softphone.MIC_RATE, 0.5)
        mic_8k = soxr.resample(mic, softphone.MIC_RATE, phones.RATE)
        # Three 0.8 s stretches just before the hang-up: one jitter-buffer glitch on a busy
        # machine may spoil one stretch, not the evidence that the microphone got through.
        rate = phones.RATE
        stretches = [
            heard[-int((0.2 + 0.8 * k) * rate) - int(0.8 * rate) :][: int(0.8 * rate)]
            for k in range(3)
        ]
        correlations = [softphone.best_normalised_correlation(x, mic_8k) for x in stretches]
        assert max(correlations) > 0.8, correlations

    async def test_the_caller_hanging_up_ends_the_call_on_the_page(
        node: Node, phone: phones.Baresip, browser: Browser
    ) -> None:
        page = await sign_in(browser, node, "ann")
        inbound = await dial_and_answer(node, phone, page)
        ann = node.agent_call(node.agent_ids["ann"])
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        async with asyncio.timeout(TIMEOUT):
            await ann.until(lambda c: c.state is CallState.ENDED)
        assert ann.ended_reason == "caller_hangup"
        await asyncio.wait_for(inbound.ended.wait(), TIMEOUT)
        assert inbound.end_reason is EndReason.REMOTE_BYE
        await expect(page.locator("#presence")).to_have_value("wrap_up")

    async def test_a_decline_on_the_first_agent_rings_the_second(
        node: Node, phone: phones.Baresip, browser: Browser
    ) -> None:
        ann = await sign_in(browser, node, "ann")
        bob = await sign_in(browser, node, "bob")
        await phone.command("dial", DIAL)
        # Both equally idle: the lower agent id (ann, added first) rings first.
        await expect(ann.locator("#ring")).to_be_visible(timeout=TIMEOUT * 1000)
        await expect(bob.locator("#ring")).to_be_hidden()
        await ann.click("#decline")
        await expect(bob.locator("#ring")).to_be_visible(timeout=TIMEOUT * 1000)
        await bob.click("#answer")
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await expect(bob.locator("#call-state")).to_have_text("active")
        await expect(ann.locator("#presence")).to_have_value("available")
        assert await softphone.heard_rms(bob, above=0.05) > 0.05
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await expect(bob.locator("#presence")).to_have_value("wrap_up")

    def chime_heard(audio: np.ndarray, rate: int) -> bool:
        """Whether the default hold music's notes (523/659 Hz) are in ``audio`` somewhere."""
        window = rate // 4
        for start in range(0, len(audio) - window, window // 2):
            chunk = audio[start : start + window]
            if float(np.sqrt(np.mean(chunk**2))) < 0.01:
                continue
            spectrum = np.abs(np.fft.rfft(chunk * np.hanning(window)))
            peak = float(np.fft.rfftfreq(window, 1 / rate)[int(np.argmax(spectrum))])
            if min(abs(peak - 523.25), abs(peak - 659.25)) < 10:
                return True
        return False

    async def test_a_warm_transfer_between_browser_agents_keeps_the_callers_audio_flowing(
        node: Node, phone: phones.Baresip, browser: Browser
    ) -> None:
        ann = await sign_in(browser, node, "ann")
        bob = await sign_in(browser, node, "bob")
        inbound = await dial_and_answer(node, phone, ann)  # ann (lower id) rings first
        assert await softphone.heard_rms(ann, above=0.05) > 0.05
        sent = inbound.transport.leg.summary
        caller_shown = await ann.locator("#call-caller").text_content()

        await ann.select_option("#transfer-kind", "agent")
        await ann.fill("#transfer-target", str(node.agent_ids["bob"]))
        await ann.click("#transfer-warm")
        await expect(bob.locator("#ring")).to_be_visible(timeout=TIMEOUT * 1000)
        await expect(bob.locator("#ring-kind")).to_contain_text("Consult from agent")
        await expect(bob.locator("#ring-caller")).to_have_text(caller_shown or "")
        await bob.click("#answer")
        await expect(ann.locator("#transfer-state")).to_have_text(
            "consulting", timeout=TIMEOUT * 1000
        )
        # Consulting: the agents hear each other; the caller's leg keeps sending (hold music).
        assert await softphone.heard_rms(bob, above=0.05) > 0.05
        assert await softphone.heard_rms(ann, above=0.05) > 0.05
        during = sent().packets_sent
        await softphone.eventually(lambda: sent().packets_sent >= during + 100)

        await ann.click("#transfer-complete")
        await expect(ann.locator("#call")).to_be_hidden(timeout=TIMEOUT * 1000)
        await expect(ann.locator("#presence")).to_have_value("wrap_up")
        await expect(bob.locator("#call-caller")).to_have_text(caller_shown or "")
        # Ann is gone: what bob hears now is the caller, and the caller hears bob.
        assert await softphone.heard_rms(bob, above=0.05) > 0.05
        after = sent().packets_sent
        await softphone.eventually(lambda: sent().packets_sent >= after + 200)
        assert not inbound.ended.is_set()

        await bob.click("#hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        heard = phone.recording("dec")
        rate = phones.RATE
        assert chime_heard(heard, rate), "the caller never heard the hold music"
        mic = softphone.tone_bursts(softphone.MIC_TONES, 0.2, softphone.MIC_RATE, 0.5)
        mic_8k = soxr.resample(mic, softphone.MIC_RATE, rate)
        stretches = [
            heard[-int((0.2 + 0.8 * k) * rate) - int(0.8 * rate) :][: int(0.8 * rate)]
            for k in range(3)
        ]
        # Bob's microphone (ann's call had ended) reached the caller after the hand-over.
        correlations = [softphone.best_normalised_correlation(x, mic_8k) for x in stretches]
        assert max(correlations) > 0.8, correlations

    async def test_in_notify_mode_the_recordings_agent_channel_is_the_browsers_microphone(
        node: Node, phone: phones.Baresip, browser: Browser
    ) -> None:
        async with node.sessions() as s, s.begin():
            tenant = await tenants.get_tenant(s, "acme")
            assert tenant is not None
            patch = {
                "recording_mode": "notify",
                "consent_prompt": {"text": "This call is recorded."},
            }
            await tenants.update_settings(s, actor="test", tenant=tenant, patch=patch)
        page = await sign_in(browser, node, "ann")
        # The notice plays first (baresip is answered by the consent flow), then ann rings.
        inbound = await dial_and_answer(node, phone, page)
        sent = inbound.transport.leg.summary
        answered = sent().packets_sent
        # Four seconds of ann's microphone sent on towards the caller (and recorded).
        await softphone.eventually(lambda: sent().packets_sent >= answered + 200)
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        outcome = await asyncio.wait_for(node.outcomes.get(), TIMEOUT)
        assert outcome.resolution.mode.value == "notify"

        agent = await node.agent_channel(outcome)
        rate = phones.RATE
        mic = softphone.tone_bursts(softphone.MIC_TONES, 0.2, softphone.MIC_RATE, 0.5)
        mic_8k = soxr.resample(mic, softphone.MIC_RATE, rate)
        # As for what baresip hears: one glitch on a busy machine may spoil one stretch.
        stretches = [
            agent[-int((0.2 + 0.8 * k) * rate) - int(0.8 * rate) :][: int(0.8 * rate)]
            for k in range(3)
        ]
        correlations = [softphone.best_normalised_correlation(x, mic_8k) for x in stretches]
        assert max(correlations) > 0.8, correlations
