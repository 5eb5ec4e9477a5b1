"""The agent softphone in real headless Chromium, in a network namespace of its own.

The scenarios (softphone_scenarios.py) run in a child pytest under
``unshare -n`` with only loopback up: Chromium and aiortc can neither offer
nor reach any address but 127.0.0.1, whatever the machine's interfaces are.
Where namespaces are not available (not root) the scenarios run in this
network; they still bind 127.0.0.1 only, offer only 127.0.0.1 from aiortc, and
Chromium resolves no names but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCENARIOS = HERE / "softphone_scenarios.py"
ROOT = HERE.parent.parent
CHROMIUM = os.environ.get("VOICEGW_CHROMIUM", "/usr/bin/chromium")


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.mark.timeout(115)
def test_softphone_scenarios_in_real_chromium_on_loopback_only() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    child = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SCENARIOS)]
    if namespace_available():
        child = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *child]
    result = subprocess.run(
        child, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
