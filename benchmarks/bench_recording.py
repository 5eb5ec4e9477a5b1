"""CPU cost per 20 ms frame of the consent gate and the encrypted container.

A frame is two channels (caller, agent) × 160 samples of 16-bit PCM at 8 kHz:
320 bytes per party, 640 bytes interleaved into the recording. Each stage is
timed over ``--frames`` frames, ``--runs`` times; the median per-frame cost is
printed in microseconds.

    .venv/bin/python benchmarks/bench_recording.py [--frames 5000] [--runs 7]
        [--chunk-size 32768] [--file]

``--file`` writes to a real temporary file (one write syscall per chunk)
instead of discarding the ciphertext, to show the I/O share.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from voicegw.consent import (
    CallContext,
    ConsentMachine,
    ConsentPolicy,
    Dtmf,
    PartyRole,
    PromptStarted,
    RecordingGate,
    RecordingMode,
    resolve_mode,
)
from voicegw.recording.container import DEFAULT_CHUNK_SIZE, ContainerWriter, FileSink
from voicegw.recording.keys import LocalKeyring

SAMPLE_RATE = 8000
SAMPLES = 160
FRAME_SECONDS = SAMPLES / SAMPLE_RATE


class DiscardSink:
    """Counts ciphertext bytes and drops them: measures CPU, not the disk."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def sync(self) -> None:
        pass


def make_gate() -> RecordingGate:
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.OPT_IN), CallContext("+12125550100")
    )
    gate = RecordingGate(sample_rate=SAMPLE_RATE)
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0)
    caller.handle(PromptStarted(0.0))
    caller.handle(Dtmf(0.5, "1"))
    gate.add_party(caller)
    gate.add_party(ConsentMachine("agent", PartyRole.AGENT, resolution, now=0.0))
    return gate


def party_frames(count: int) -> list[tuple[bytes, bytes]]:
    # A handful of distinct frames reused: content does not change the cost.
    distinct = [(os.urandom(2 * SAMPLES), os.urandom(2 * SAMPLES)) for _ in range(min(count, 64))]
    return [distinct[i % len(distinct)] for i in range(count)]


def interleave(caller: bytes, agent: bytes) -> bytes:
    stereo = array("h", bytes(4 * SAMPLES))
    stereo[0::2] = array("h", caller)
    stereo[1::2] = array("h", agent)
    return stereo.tobytes()


def time_per_frame(stage: Callable[[list[tuple[bytes, bytes]]], None], frames: int) -> float:
    data = party_frames(frames)
    started = time.perf_counter_ns()
    stage(data)
    return (time.perf_counter_ns() - started) / frames / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--file", action="store_true", help="write ciphertext to a temp file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as files:
        keyring = LocalKeyring(Path(scratch) / "keys")
        keyring.rotate("bench")

        def writer() -> ContainerWriter:
            if args.file:
                handle = files.enter_context(open(Path(scratch) / "bench.vgr", "wb", buffering=0))
                return ContainerWriter.create(
                    FileSink(handle), keyring, "bench", chunk_size=args.chunk_size
                )
            return ContainerWriter.create(
                DiscardSink(), keyring, "bench", chunk_size=args.chunk_size
            )

        def gate_only(data: list[tuple[bytes, bytes]]) -> None:
            gate = make_gate()
            for n, (caller, agent) in enumerate(data):
                t = 1.0 + n * FRAME_SECONDS
                gate.admit("caller", caller, t)
                gate.admit("agent", agent, t)

        def container_only(data: list[tuple[bytes, bytes]]) -> None:
            sink = writer()
            for caller, agent in data:
                sink.write(caller + agent)
            sink.finish()

        def full_path(data: list[tuple[bytes, bytes]]) -> None:
            gate, sink = make_gate(), writer()
            for n, (caller, agent) in enumerate(data):
                t = 1.0 + n * FRAME_SECONDS
                stereo = interleave(gate.admit("caller", caller, t), gate.admit("agent", agent, t))
                sink.write(stereo)
            sink.finish()

        stages: dict[str, Callable[[list[tuple[bytes, bytes]]], None]] = {
            "gate (2 parties)": gate_only,
            "container write (640 B)": container_only,
            "gate + interleave + container": full_path,
        }
        print(
            f"frames/run={args.frames} runs={args.runs} chunk={args.chunk_size} B "
            f"sink={'file' if args.file else 'discard'}"
        )
        print(f"{'stage':32} {'median µs/frame':>16} {'min':>8} {'max':>8}")
        for name, stage in stages.items():
            samples = [time_per_frame(stage, args.frames) for _ in range(args.runs)]
            print(
                f"{name:32} {statistics.median(samples):16.2f} "
                f"{min(samples):8.2f} {max(samples):8.2f}"
            )


if __name__ == "__main__":
    main()
