"""Smoke run of ``benchmarks/bench_rtp_relay.py --record`` at test size, so the path cannot rot.

The script is run as people run it (a subprocess with its own peers process),
with three bridged calls and one round of short windows. What is checked is
what the figures promise: every call left one complete recording, the
recorders wrote every frame the consent flows handed them, the bytes on disk
are those of encrypted 8 kHz stereo (plain PCM plus the container's framing),
the sampled recordings decrypted through the export reader with the expected
content, and the temporary node directory (database, keys, recordings) is gone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_rtp_relay.py"
CALLS = 3
PCM_BYTES_PER_MINUTE = 8000 * 2 * 2 * 60


def figure(pattern: str, output: str) -> tuple[str, ...]:
    match = re.search(pattern, output, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in the output:\n{output}"
    return match.groups()


@pytest.mark.slow
def test_record_smoke_run_records_every_call_and_reads_them_back(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    command = [sys.executable, str(SCRIPT), "--calls", str(CALLS), "--runs", "1"]
    command += ["--duration", "7", "--record", "--both-ways", "--verify", str(CALLS)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr[-3000:]}"

    stored, calls = figure(r"^recordings \(all rounds\): (\d+) complete of (\d+) calls", output)
    assert int(stored) == int(calls) == CALLS
    written, handed, dropped = figure(
        r"^recorder frames written\s+(\d+) \((\d+) handed over, (\d+) dropped\)", output
    )
    assert int(written) == int(handed) > 0
    assert int(dropped) == 0
    (per_minute,) = figure(r"^bytes on disk per call-minute\s+(\d+)", output)
    # Ciphertext: the PCM plus per-chunk tags and a header, a fraction of a percent more.
    assert PCM_BYTES_PER_MINUTE < int(per_minute) < 1.02 * PCM_BYTES_PER_MINUTE
    checked, sampled = figure(r"^recordings read back and checked\s+(\d+) of (\d+)", output)
    assert int(checked) == int(sampled) == CALLS
    (loss,) = figure(r"^loss \(sent by peers, not received\)(?:\s+\S+%){2}\s+(\S+)%", output)
    assert float(loss) < 5.0
    assert "FAILED" not in output
    assert list(scratch.iterdir()) == []  # the node's database, keys and recordings are gone
