"""The agent softphone in real headless Firefox (ESR), driven over WebDriver BiDi.

Firefox's fake microphone plays a 1 kHz tone; the caller is the in-process
RTP caller of the Chromium scenarios (``softphone_scenarios.gateway``: the
real API, softphone page and :class:`AgentDirectory`, a caller source of
alternating 500/800 Hz tones and a sink that keeps what the agent says).

Like ``test_softphone.py``, the scenario runs in a child pytest in a network
namespace with only loopback up (where namespaces are available): the outer
test re-runs this file with ``VOICEGW_FIREFOX_SCENARIOS=1``; the scenario
skips itself otherwise. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FIREFOX = os.environ.get("VOICEGW_FIREFOX", "/usr/bin/firefox-esr")
IN_CHILD = os.environ.get("VOICEGW_FIREFOX_SCENARIOS") == "1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(FIREFOX).exists(),
        reason=f"Firefox not installed at {FIREFOX} (apt-get install firefox-esr)",
    ),
]


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(IN_CHILD, reason="the runner, not a scenario")
@pytest.mark.timeout(115)
def test_softphone_scenarios_in_real_firefox_on_loopback_only() -> None:
    child = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    if namespace_available():
        child = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *child]
    env = {**os.environ, "VOICEGW_FIREFOX_SCENARIOS": "1"}
    result = subprocess.run(
        child, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


# --- the scenario (child process only) -----------------------------------------------------

if IN_CHILD:
    sys.path.insert(0, str(HERE))
    import bidi
    import softphone_scenarios as softphone

    from voicegw.calls.agents import CallState, Presence

    gateway = softphone.gateway  # the API, page and agent directory on loopback

    def by_id(element: str) -> str:
        return f"document.getElementById({json.dumps(element)})"

    def dominant_frequency(samples: np.ndarray, rate: int) -> float:
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])

    async def page_hears(fx: bidi.Firefox, above: float, within: float = 10.0) -> float:
        """The page's loudest WebAudio RMS from now on, once it exceeds ``above``."""
        await fx.evaluate("window.voicegwTest.resetPeak()")
        peak = await fx.wait_for(
            f"window.voicegwTest.peakRms() > {above} && window.voicegwTest.peakRms()", within
        )
        return float(peak)

    async def test_agent_in_firefox_answers_hears_the_caller_is_heard_and_hangs_up(
        gateway: softphone.Gateway, tmp_path: Path
    ) -> None:
        async with bidi.firefox(tmp_path / "profile") as fx:
            await fx.goto(gateway.url + "/softphone")
            await fx.evaluate(
                f"{by_id('token')}.value = {json.dumps(gateway.token)};"
                f"{by_id('signin-form')}.requestSubmit()"
            )
            await fx.wait_for(f"{by_id('connection')}.dataset.state === 'online'")
            await fx.wait_for(f"{by_id('presence')}.value === 'available'")

            call = gateway.offer()
            await fx.wait_for(f"!{by_id('ring')}.hidden")
            assert await fx.evaluate(f"{by_id('ring-tenant')}.textContent") == "acme"
            assert await fx.evaluate(f"{by_id('ring-caller')}.textContent") == "+65****4567"
            await fx.evaluate(f"{by_id('answer')}.click()")
            async with asyncio.timeout(15):
                await call.until(lambda c: c.state is CallState.ACTIVE and c.leg is not None)
            await fx.wait_for(f"{by_id('call-state')}.textContent === 'active'")
            await fx.wait_for("window.voicegwTest.snapshot().media === 'connected'", 15)

            # The caller's tones reach the page's WebAudio.
            assert await page_hears(fx, above=0.05) > 0.05

            # Firefox's fake microphone (a 1 kHz tone) reaches the caller's side.
            await softphone.eventually(lambda: len(gateway.captured) >= 100, within=15)
            heard = np.frombuffer(b"".join(gateway.captured[-50:]), dtype=np.int16) / 32768
            assert float(np.sqrt(np.mean(heard**2))) > 0.02
            assert dominant_frequency(heard, 8000) == pytest.approx(1000, abs=20)

            await fx.evaluate(f"{by_id('hangup')}.click()")
            async with asyncio.timeout(10):
                await call.until(lambda c: c.state is CallState.ENDED)
            assert call.ended_reason == "agent_hangup"
            await fx.wait_for(f"{by_id('presence')}.value === 'wrap_up'")
            session = gateway.agents.session(gateway.agent_id)
            assert session is not None and session.presence is Presence.WRAP_UP
