"""Softphone scenarios in real headless Chromium against the gateway.

Not collected on its own (no ``test_`` prefix): ``test_softphone.py`` runs
this file in a fresh network namespace where only loopback exists, so
neither Chromium nor aiortc can reach or offer any other address.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soxr
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect

from voicegw.api.app import create_app
from voicegw.calls.agents import AgentCall, AgentDirectory, CallState, Presence
from voicegw.media.webrtc import FRAME_BYTES, LiveSource, WebRtcConfig
from voicegw.store import migrate, tenants, tokens
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

CHROMIUM = os.environ.get("VOICEGW_CHROMIUM", "/usr/bin/chromium")
CALLER = "+6591234567"
MIC_RATE = 48000
#: The fake microphone: 2 s of tone bursts Chromium plays in a loop.
MIC_TONES = (400, 700, 1000, 550, 850, 1200, 450, 950, 650, 1100)
#: What the agent hears: alternating 500/800 Hz, 250 ms each.
CALLER_TONES = (500, 800)


def tone_bursts(freqs: tuple[int, ...], burst: float, rate: int, amplitude: float) -> np.ndarray:
    n = int(burst * rate)
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * rate))
    t = np.arange(n) / rate
    return np.concatenate([amplitude * fade * np.sin(2 * np.pi * f * t) for f in freqs])


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype(np.int16).tobytes())


def best_normalised_correlation(captured: np.ndarray, loop: np.ndarray) -> float:
    """Max over alignments of the NCC between ``captured`` and the looping reference."""
    reference = np.tile(loop, int(np.ceil(len(captured) / len(loop))) + 1)
    size = 1 << int(np.ceil(np.log2(len(reference) + len(captured))))
    dot = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(captured, size)), size)
    lags = len(loop)
    window = np.concatenate([[0.0], np.cumsum(reference**2)])
    energy = window[len(captured) : len(captured) + lags] - window[:lags]
    ncc = dot[:lags] / (np.sqrt(energy * float(np.sum(captured**2))) + 1e-12)
    return float(ncc.max())


async def play_caller(source: LiveSource) -> None:
    """The caller's side of the bridge: a frame pushed every 20 ms, as the media clock does."""
    pcm = (tone_bursts(CALLER_TONES, 0.25, 8000, 0.5) * 32767).astype(np.int16).tobytes()
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, frame in enumerate(itertools.cycle(frames)):
        await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
        source.push(frame)


@dataclass
class Gateway:
    url: str
    agents: AgentDirectory
    token: str
    tenant_id: str
    agent_id: int
    captured: list[bytes]
    callers: list[asyncio.Task[None]] = field(default_factory=list)

    def offer(self) -> AgentCall:
        self.captured.clear()
        source = LiveSource()
        self.callers.append(asyncio.create_task(play_caller(source)))
        return self.agents.offer_call(
            tenant_id=self.tenant_id,
            agent_id=self.agent_id,
            caller=CALLER,
            source=source,
            sink=self.captured.append,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        await tenants.create_tenant(
            s, actor="test", tenant_id="acme", name="ACME", settings=TenantSettings(region="sg")
        )
        agent = await tenants.add_agent(
            s, actor="test", tenant_id="acme", username="ann", display_name="Ann", skills=[]
        )
        _, secret = await tokens.create_token(s, role="agent", tenant_id="acme", agent_id=agent.id)
    agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=60)
    runner = web.AppRunner(create_app(sessions, tmp_path, agents=agents))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    gateway = Gateway(f"http://127.0.0.1:{port}", agents, secret, "acme", agent.id, [])
    try:
        yield gateway
    finally:
        for caller in gateway.callers:
            caller.cancel()
        await runner.cleanup()
        await engine.dispose()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    mic = tmp_path / "mic.wav"
    write_wav(mic, tone_bursts(MIC_TONES, 0.2, MIC_RATE, 0.5), MIC_RATE)
    args = [
        "--headless=new",
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-gpu",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            await chromium.close()


async def sign_in(browser: Browser, gw: Gateway) -> Page:
    page = await browser.new_page()
    await page.goto(gw.url + "/softphone")
    await page.fill("#token", gw.token)
    await page.click("#signin-button")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    return page


async def eventually(check: Callable[[], bool], within: float = 8.0) -> None:
    for _ in range(int(within / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def heard_rms(page: Page, above: float, within: float = 8.0) -> float:
    """The page's loudest WebAudio RMS since now, once it exceeds ``above``."""
    await page.evaluate("window.voicegwTest.resetPeak()")
    for _ in range(int(within / 0.1)):
        peak = float(await page.evaluate("window.voicegwTest.peakRms()"))
        if peak > above:
            return peak
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page heard nothing above RMS {above}")


async def ringing_then_answered(page: Page, gw: Gateway) -> AgentCall:
    call = gw.offer()
    await expect(page.locator("#ring")).to_be_visible()
    await expect(page.locator("#ring-tenant")).to_have_text("acme")
    await expect(page.locator("#ring-caller")).to_have_text("+65****4567")
    await page.click("#answer")
    async with asyncio.timeout(8):
        await call.until(lambda c: c.state is CallState.ACTIVE and c.leg is not None)
    return call


async def test_agent_answers_hears_the_caller_is_heard_sends_dtmf_and_hangs_up(
    gateway: Gateway, browser: Browser
) -> None:
    page = await sign_in(browser, gateway)
    await expect(page.locator("#presence")).to_have_value("available")

    call = await ringing_then_answered(page, gateway)
    await expect(page.locator("#call-state")).to_have_text("active")
    await expect(page.locator("#ring")).to_be_hidden()
    assert await heard_rms(page, above=0.05) > 0.05

    await eventually(lambda: len(gateway.captured) >= 150)  # 3 s of the agent's voice
    captured = np.frombuffer(b"".join(gateway.captured[-100:]), dtype=np.int16) / 32768
    mic_8k = soxr.resample(tone_bursts(MIC_TONES, 0.2, MIC_RATE, 0.5), MIC_RATE, 8000)
    assert best_normalised_correlation(captured, mic_8k) > 0.8

    await page.click("#keypad button:text-is('5')")
    await page.click("#keypad button:text-is('#')")
    async with asyncio.timeout(5):
        await call.until(lambda c: c.dtmf == ["5", "#"])
    # They came in the call's audio (RFC 4733, the browser's RTCDTMFSender), not signalled.
    assert call.leg is not None and call.leg.counters.digits == 2

    gateway.agents.push_transcript(call.call_id, speaker="caller", text="my order", final=False)
    gateway.agents.push_transcript(
        call.call_id, speaker="caller", text="my order is late", final=True
    )
    await expect(page.locator("#transcript li")).to_have_text(["caller: my order is late"])
    await expect(page.locator("#consent-state")).to_have_text("unknown")

    await page.click("#secure-pause")
    await expect(page.locator("#secure-pause")).to_have_attribute("aria-pressed", "true")

    await page.click("#hangup")
    async with asyncio.timeout(5):
        await call.until(lambda c: c.state is CallState.ENDED)
    assert call.ended_reason == "agent_hangup"
    await expect(page.locator("#presence")).to_have_value("wrap_up")
    session = gateway.agents.session(gateway.agent_id)
    assert session is not None and session.presence is Presence.WRAP_UP


async def test_network_loss_and_reload_keep_the_call_and_a_second_sign_in_takes_over(
    gateway: Gateway, browser: Browser
) -> None:
    page = await sign_in(browser, gateway)
    call = await ringing_then_answered(page, gateway)
    first_leg = call.leg
    await heard_rms(page, above=0.05)

    # Network loss: a new socket signs in again; the peer connection and its leg carry on.
    session = gateway.agents.session(gateway.agent_id)
    assert session is not None
    old_socket = session.outbox
    await page.evaluate("window.voicegwTest.dropSocket()")
    await eventually(lambda: session.outbox not in (None, old_socket))
    await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    heard_before = len(gateway.captured)
    await eventually(lambda: len(gateway.captured) >= heard_before + 25)
    assert call.leg is first_leg and call.state is CallState.ACTIVE

    await page.reload()
    await expect(page.locator("#call-state")).to_have_text("active")
    async with asyncio.timeout(8):
        await call.until(lambda c: c.leg is not None and c.leg is not first_leg)
    assert call.state is CallState.ACTIVE
    assert await heard_rms(page, above=0.05) > 0.05
    heard_before = len(gateway.captured)
    await eventually(lambda: len(gateway.captured) >= heard_before + 50)

    other = await sign_in(browser, gateway)
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#error")).to_contain_text("signed in elsewhere")
    await expect(other.locator("#call-state")).to_have_text("active")
    assert call.state is CallState.ACTIVE
