"""Real-time factors of the on-node speech engines (lower is faster; 1.0 = real time).

    .venv/bin/python benchmarks/bench_speech.py [--runs 5]

TTS: wall time of eSpeak NG synthesis (resampled to the telephony rate) over the
seconds of audio produced. ASR: PocketSphinx decode CPU time in the worker process
over seconds of audio, and wall time of flush (queue + IPC + decode), in grammar
mode (consent phrases) and generic mode, for 8 kHz and 16 kHz input. Each figure is
the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.tts.espeak_local import EspeakTts

PROMPT = "This call may be recorded for quality and training. Do you agree to the recording?"
ANSWERS = ["yes i agree", "no thanks", "no", "yes"]
PHRASES = [*ANSWERS, "i do not agree", "stop", "repeat"]


async def bench_tts(tts: EspeakTts, rate: int, runs: int) -> tuple[float, float]:
    factors = []
    seconds = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        pcm = await tts.synthesize(PROMPT, sample_rate=rate).read_all()
        seconds = len(pcm) / 2 / rate
        factors.append((time.perf_counter() - started) / seconds)
    return statistics.median(factors), seconds


async def bench_asr(
    asr: PocketsphinxAsr, clips: list[bytes], rate: int, grammar: bool, runs: int
) -> tuple[float, float, int]:
    cpu, wall, correct = [], [], 0
    for _ in range(runs):
        audio_seconds = decode_seconds = flush_seconds = 0.0
        correct = 0
        for answer, pcm in zip(ANSWERS, clips, strict=True):
            stream = await asr.open_stream(
                language="en-US", sample_rate=rate, party="caller",
                phrases=PHRASES if grammar else None,
            )  # fmt: skip
            frame = rate // 50 * 2
            for i in range(0, len(pcm), frame):
                stream.push(pcm[i : i + frame])
            started = time.perf_counter()
            await stream.flush()
            flush_seconds += time.perf_counter() - started
            await stream.close()
            texts = [event.text async for event in stream]
            correct += texts == [answer]
            audio_seconds += stream.stats.audio_seconds
            decode_seconds += stream.stats.decode_seconds
        cpu.append(decode_seconds / audio_seconds)
        wall.append(flush_seconds / audio_seconds)
    return statistics.median(cpu), statistics.median(wall), correct


async def main(runs: int) -> None:
    tts = EspeakTts()
    asr = PocketsphinxAsr()
    await asr.warm_up()
    print(f"median of {runs} runs; real-time factor = processing time / audio time")
    for rate in (8000, 16000):
        factor, seconds = await bench_tts(tts, rate, runs)
        print(f"tts espeak-ng  {rate:>5} Hz  rtf {factor:.4f}  ({seconds:.1f} s prompt)")
    try:
        for rate in (8000, 16000):
            silence = bytes(rate // 5 * 2)
            clips = [
                silence + await tts.synthesize(a, sample_rate=rate).read_all() + silence
                for a in ANSWERS
            ]
            for grammar in (True, False):
                cpu, wall, correct = await bench_asr(asr, clips, rate, grammar, runs)
                mode = "grammar" if grammar else "generic"
                print(
                    f"asr pocketsphinx {mode:<7} {rate:>5} Hz  rtf cpu {cpu:.4f}  "
                    f"wall {wall:.4f}  exact {correct}/{len(ANSWERS)}"
                )
    finally:
        await asr.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
