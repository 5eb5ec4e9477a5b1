"""Cost of the media hot path, per 20 ms frame (160 samples at 8 kHz).

Prints, for each G.711 operation, the median over several runs of the time
per frame when called once per frame and when called on a batch of frames,
plus RTP packet parse/serialize for a 172-byte PCMU packet.

    .venv/bin/python benchmarks/bench_codecs.py [--runs 7] [--batch 500]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

import numpy as np

from voicegw.media import g711
from voicegw.media.rtp import RtpPacket

FRAME = 160


def per_call_us(fn: Callable[[], object], runs: int, target_seconds: float = 0.05) -> float:
    """Median over ``runs`` of the time of one call, in µs."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * target_seconds / 0.2))
    return statistics.median(t / number * 1e6 for t in timer.repeat(repeat=runs, number=number))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500, help="frames per batched call")
    args = parser.parse_args()
    runs, batch = args.runs, args.batch

    rng = np.random.default_rng(711)
    pcm = rng.integers(-12000, 12000, FRAME, dtype=np.int16)
    pcm_bytes = pcm.astype("<i2").tobytes()
    codes = g711.ulaw_encode(pcm_bytes)
    pcm_batch = rng.integers(-12000, 12000, (batch, FRAME), dtype=np.int16)
    codes_batch = g711.ulaw_encode_array(pcm_batch)
    pcm_batch_bytes = pcm_batch.astype("<i2").tobytes()
    codes_batch_bytes = codes_batch.tobytes()

    rows: list[tuple[str, float, float]] = [
        (
            "µ-law decode",
            per_call_us(lambda: g711.ulaw_decode(codes), runs),
            per_call_us(lambda: g711.ulaw_decode(codes_batch_bytes), runs) / batch,
        ),
        (
            "A-law decode",
            per_call_us(lambda: g711.alaw_decode(codes), runs),
            per_call_us(lambda: g711.alaw_decode(codes_batch_bytes), runs) / batch,
        ),
        (
            "µ-law encode",
            per_call_us(lambda: g711.ulaw_encode(pcm_bytes), runs),
            per_call_us(lambda: g711.ulaw_encode(pcm_batch_bytes), runs) / batch,
        ),
        (
            "A-law encode",
            per_call_us(lambda: g711.alaw_encode(pcm_bytes), runs),
            per_call_us(lambda: g711.alaw_encode(pcm_batch_bytes), runs) / batch,
        ),
        (
            "µ-law decode (numpy array API)",
            per_call_us(lambda: g711.ulaw_decode_array(codes_batch[0]), runs),
            per_call_us(lambda: g711.ulaw_decode_array(codes_batch), runs) / batch,
        ),
        (
            "µ-law encode (numpy array API)",
            per_call_us(lambda: g711.ulaw_encode_array(pcm_batch[0]), runs),
            per_call_us(lambda: g711.ulaw_encode_array(pcm_batch), runs) / batch,
        ),
        (
            "µ-law -> A-law transcode",
            per_call_us(lambda: g711.ulaw_to_alaw(codes), runs),
            per_call_us(lambda: g711.ulaw_to_alaw(codes_batch_bytes), runs) / batch,
        ),
        (
            "A-law -> µ-law transcode",
            per_call_us(lambda: g711.alaw_to_ulaw(codes), runs),
            per_call_us(lambda: g711.alaw_to_ulaw(codes_batch_bytes), runs) / batch,
        ),
    ]

    packet = RtpPacket(0, 1234, 160_000, 0x1234ABCD, codes, True)
    wire = bytes(packet)
    packet_rows = [
        ("RTP parse (172-byte PCMU)", per_call_us(lambda: RtpPacket.parse(wire), runs)),
        ("RTP serialize (172-byte PCMU)", per_call_us(lambda: bytes(packet), runs)),
    ]

    print(f"G.711, µs per 20 ms frame ({FRAME} samples), median of {runs} runs")
    print(f"{'operation':34} {'per frame':>10} {f'batch of {batch}':>14}")
    for name, single, batched in rows:
        print(f"{name:34} {single:10.2f} {batched:14.3f}")
    print()
    print("RTP, µs per packet")
    for name, cost in packet_rows:
        print(f"{name:34} {cost:10.2f}")


if __name__ == "__main__":
    main()
