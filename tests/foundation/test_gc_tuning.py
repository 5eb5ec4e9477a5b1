"""A media process tunes its garbage collector once start-up is done (voicegw/gc_tuning.py)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from voicegw.gc_tuning import YOUNG_THRESHOLD, tune_for_media
built_at_start = [object() for _ in range(1000)]
tune_for_media()
print(gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_freeze_count() >= 1000)
"""


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    # In a child process: the settings are process-wide and must not leak into the suite.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "True"]
