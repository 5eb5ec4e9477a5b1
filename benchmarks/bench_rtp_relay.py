"""RTP relay on loopback: N calls, each two legs relaying G.711 at real-time pacing.

For each call a "caller" socket sends one 172-byte PCMU packet every 20 ms to
leg A; leg A relays it (same codec: no decode) to leg B, which sends it to a
"callee" socket. The callers and callees live in a subprocess (``--role
peers``) paced by the media clock, so the CPU time measured in this process is
the relay's own: socket reads and writes, the strict-RTP checks, stats and
renumbering. Each run starts a fresh subprocess; figures are medians over runs.

With ``--both-ways`` the callee talks too (leg B relays to the caller through
leg A): a B2BUA-bridged call with G.711 in both directions. With ``--taps``
each call also has a :class:`~voicegw.media.taps.CallTap` on both legs (both
parties decoded to PCM each 20 ms tick as their jitter buffers pop the
frames) drained every 200 ms by one consumer task per call, as the
echo service's meter does; "tap frames" is the share of the expected
received-audio frames the consumers got.

With ``--record`` every round runs the same calls three ways, one after the
other on the same machine state: relay only, taps, and taps feeding the real
recording path (``relay_recording.py``: for each call ``RtpCallMedia`` and a
``ConsentFlow`` as ``serve`` assembles them, opt-in consent granted by the
caller's key press before the window opens, the recorder writing the encrypted
container to a ``LocalFilesystemStorage`` with a ``LocalKeyring``, SQLite, all
in a temporary directory deleted at the end). Ratios are taken within each
round, then the median over rounds. At the end a sample of the recordings is
decrypted through the export reader and checked (length, both channels); the
script exits non-zero if any check fails.

The relay process runs with the garbage-collector settings of ``voicegw serve``
(``voicegw.gc_tuning``). The legs' sockets are read by the media pump
(``voicegw.media.pump``), whose C step relays the common packet; ``--python-step``
turns the step off, so every packet goes through the Python path as before the pump
(for comparison). "relayed by the C step" is the share of relayed packets it took.

The far ends read their sockets once per 20 ms tick instead of sleeping on them. On
loopback the kernel runs the receiver's side of every datagram inside the sender's
``sendto``, wake-up of a sleeping receiver included; a real far end is on another host
and costs the gateway nothing of the kind, so the generator does not make it pay for its
own wake-ups (about 0.1-0.4 ms per call-second on these machines).

Also printed: the sans-IO cost of the hot path alone (``leg.receive`` plus
``peer.relay`` per packet, no sockets), for comparison.

    .venv/bin/python benchmarks/bench_rtp_relay.py [--calls 100] [--duration 10]
        [--runs 3] [--uvloop] [--both-ways] [--taps] [--record [--verify 5]]
        [--python-step]

Traffic goes to 127.0.0.1 only. The sending windows together last about
``--duration`` seconds (with ``--record`` split over 3 × ``--runs`` windows);
``--record`` adds each run's consent set-up and sealing, each bounded by a
timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import math
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
import timeit
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from figures import percentile
from relay_recording import (
    RecordedCall,
    RecordingFigures,
    RecordingNode,
    abandon,
    grant_consent,
    hang_up,
    open_call,
    summarise,
    verify_sample,
)

from voicegw.gc_tuning import tune_for_media
from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.pump import MediaPump
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import LegConfig, MediaLeg, RtpReceived, static_codecs
from voicegw.media.taps import CallTap, TapConsumer
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"


def tone(hz: float) -> bytes:
    """One 20 ms frame of a tone as PCMU: audio a recording can be checked for."""
    t = [n / 8000 for n in range(160)]
    pcm = array("h", (round(6000 * math.sin(2 * math.pi * hz * x)) for x in t))
    return PCMU.encode(pcm.tobytes())


# The two parties say different things, so each channel of a recording can be checked.
PAYLOAD = tone(400.0)  # the caller
CALLEE_PAYLOAD = tone(600.0)


#: Seconds between two recorded calls' arrivals during set-up (100 calls a second).
ARRIVAL_GAP = 0.01
#: Recorded calls whose consent is settled together before the next ones arrive. More at
#: once and SQLite's write lock, held across event-loop turns by each decision's
#: transaction, outlasts some waiters' 5 s busy timeout ("database is locked").
SETUP_BATCH = 10


#: Groups of calls sending at different offsets within each 20 ms frame (1 ms apart).
PHASES = 20

LATENCY_KEYS = ("latency_p50_ms", "latency_p99_ms", "jitter_p50_ms", "jitter_p99_ms")


def clock_skipped(clock: MediaClock) -> int:
    return clock.schedule.skipped if clock.schedule is not None else 0


def loop_thread_cpu() -> float:
    """CPU seconds of this (the event loop's) thread; the others are worker threads."""
    return time.thread_time()


class Variant(enum.Enum):
    RELAY = "relay only"
    TAPS = "taps"
    RECORD = "taps+recording"


#: SO_TIMESTAMPNS (Linux): the kernel's receive time of each datagram, CLOCK_REALTIME.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")


class Sink:
    """A far end's socket, read in each tick of the peers' clock rather than on arrival.

    With ``sent_at`` (the sending peer's send times, by tick index) every packet's
    first 4 payload bytes carry its tick index, and the kernel stamps its arrival, so
    latency and jitter through the gateway are exact however late the tick reads.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.received = 0
        self.sent_at: list[float] | None = None
        self.latencies: list[float] = []
        self.jitters: list[float] = []  # |transit(i) - transit(i-1)|, consecutive packets
        self._last: tuple[int, float] | None = None

    def drain(self) -> None:
        recvmsg, space = self.sock.recvmsg, socket.CMSG_SPACE(_TIMESPEC.size)
        while True:
            try:
                data, ancillary, _, _ = recvmsg(2048, space)
            except BlockingIOError:
                return
            if 192 <= data[1] <= 223:  # RTCP is not counted
                continue
            self.received += 1
            if self.sent_at is None or not ancillary:
                continue
            seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2][: _TIMESPEC.size])
            index = struct.unpack_from("!I", data, 12)[0]
            if index >= len(self.sent_at):
                continue
            transit = seconds + nanoseconds * 1e-9 - self.sent_at[index]
            self.latencies.append(transit)
            if self._last is not None and self._last[0] == index - 1:
                self.jitters.append(abs(transit - self._last[1]))
            self._last = (index, transit)

    def port(self) -> int:
        return int(self.sock.getsockname()[1])


# -- the peers subprocess -------------------------------------------------------------


async def run_peers(calls: int, seconds: float, both_ways: bool, tagged: bool) -> None:
    """Bind callers and callees, learn the legs' ports on stdin, send, report on stdout."""
    loop = asyncio.get_running_loop()

    callers = [Sink() for _ in range(calls)]
    callees = [Sink() for _ in range(calls)]
    hello = {"callers": [c.port() for c in callers], "callees": [c.port() for c in callees]}
    print(json.dumps(hello))
    sys.stdout.flush()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    legs = json.loads(line)
    for peer in callers + callees:
        peer.received = 0  # a recorded call's notice played before: not relayed audio
    talkers = [(callers, callees, legs["a"], PAYLOAD)]
    if both_ways:
        talkers.append((callees, callers, legs["b"], CALLEE_PAYLOAD))
    ssrcs = [random.getrandbits(32) for _ in range(2 * calls)]
    ticks = round(seconds / 0.02)
    if tagged:  # who hears whom: a callee hears its caller, a caller its callee
        for senders, hearers, _, _ in talkers:
            for sender, hearer in zip(senders, hearers, strict=True):
                hearer.sent_at = sender.sent_at = [math.inf] * ticks
    sent = 0

    def send(index: int, phase: int) -> None:
        nonlocal sent
        for side, (senders, _, targets, payload) in enumerate(talkers):
            if tagged:
                payload = struct.pack("!I", index) + payload[4:]
            for i in range(phase, calls, PHASES):
                peer = senders[i]
                ssrc = ssrcs[side * calls + i]
                packet = RtpPacket(0, index & 0xFFFF, (index * 160) & 0xFFFFFFFF, ssrc, payload)
                if peer.sent_at is not None:
                    peer.sent_at[index] = time.time()
                peer.sock.sendto(bytes(packet), (HOST, targets[i]))
                sent += 1

    def tick(index: int, deadline: float) -> None:
        for peer in callers + callees:
            peer.drain()
        # Calls are not in step: each sends at its own phase of the 20 ms frame, as real
        # phones do, rather than all in one burst per tick.
        send(index, 0)
        for phase in range(1, PHASES):
            loop.call_at(deadline + phase * 0.02 / PHASES, send, index, phase)

    clock = MediaClock()
    clock.subscribe(tick)
    await clock.run(ticks=ticks)
    await asyncio.sleep(0.3)  # let the last packets through the relay
    for peer in callers + callees:
        peer.drain()
    skipped = clock.schedule.skipped if clock.schedule else 0
    received = sum(c.received for c in callees + callers)
    latencies = [x for peer in callers + callees for x in peer.latencies]
    jitters = [x for peer in callers + callees for x in peer.jitters]
    report = {"sent": sent, "received": received, "skipped": skipped}
    for name, values in (("latency", latencies), ("jitter", jitters)):
        for q in (0.5, 0.99):
            report[f"{name}_p{round(100 * q)}_ms"] = 1000 * percentile(values, q)
    print(json.dumps(report))
    sys.stdout.flush()


# -- the relay (this process) ---------------------------------------------------------------


async def meter(consumer: TapConsumer, stop: asyncio.Event) -> int:
    """Drain a call's tap every 200 ms (the echo meter's rhythm); received-audio frames.

    Calls do not start in the same millisecond, so neither do their consumers' rhythms:
    each meter starts at a random point of its period."""
    heard = 0
    await asyncio.sleep(random.uniform(0.0, 0.2))
    while not stop.is_set():
        await asyncio.sleep(0.2)
        heard += sum(1 for frame in consumer.drain() if not frame.filled)
    return heard


@dataclass
class RunResult:
    """One window of one variant: the figures, and what the recordings came to."""

    figures: dict[str, float]
    recording: RecordingFigures | None = None


@dataclass
class RecordOptions:
    scratch: Path  # this run's node directory (inside the benchmark's temporary directory)
    verify: int  # recordings to read back
    setup_timeout: float


async def relay_run(
    calls: int,
    seconds: float,
    both_ways: bool,
    variant: Variant,
    record: RecordOptions | None = None,
    c_step: bool = True,
) -> RunResult:
    """One window of ``variant`` with fresh calls (and, recording, a fresh node)."""
    tune_for_media()  # the collector settings `serve` runs with
    node: RecordingNode | None = None
    if variant is Variant.RECORD:
        assert record is not None
        node = await RecordingNode.open(record.scratch)
    try:
        return await _run_calls(calls, seconds, both_ways, variant, record, node, c_step)
    finally:
        if node is not None:
            await node.close()


async def _run_calls(
    calls: int,
    seconds: float,
    both_ways: bool,
    variant: Variant,
    record: RecordOptions | None,
    node: RecordingNode | None,
    c_step: bool,
) -> RunResult:
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 20000, 40000)
    command = [sys.executable, __file__, "--role", "peers"]
    command += ["--calls", str(calls), "--duration", str(seconds)]
    if variant is not Variant.RECORD:
        command.append("--tagged")  # a recording keeps its tones whole for the read-back
    if both_ways:
        command.append("--both-ways")
    child = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    legs: list[LegTransport] = []
    clock = MediaClock()
    stop = asyncio.Event()
    meters: list[asyncio.Task[int]] = []
    call_taps: list[CallTap] = []
    recorded: list[RecordedCall] = []
    sealed = False
    try:
        hello = json.loads(await child.stdout.readline())
        offset = wallclock_offset(loop)
        if node is not None:
            clock.start()  # the node's clock runs before any call: the notice plays on it
        for n, (caller, callee) in enumerate(zip(hello["callers"], hello["callees"], strict=True)):
            pair = []
            for remote in ((HOST, caller), (HOST, callee)):
                config = LegConfig(
                    static_codecs(PCMU), 0, remote_rtp=remote, wallclock_offset=offset
                )
                media_leg = MediaLeg(config, loop.time())
                pair.append(await LegTransport.open(media_leg, allocator.allocate()))
            pair[0].peer, pair[1].peer = pair[1], pair[0]
            legs += pair
            if variant is Variant.TAPS:
                call_tap = CallTap({"caller": pair[0].leg, "callee": pair[1].leg})
                consumer = call_tap.tap.add_consumer(maxsize=100)
                call_tap.attach(clock)
                call_taps.append(call_tap)
                meters.append(asyncio.create_task(meter(consumer, stop)))
            elif node is not None and record is not None:
                recorded.append(open_call(node, clock, pair[0], pair[1], f"bench-call-{n}"))
                await asyncio.sleep(ARRIVAL_GAP)
                if len(recorded) % SETUP_BATCH == 0 or n == calls - 1:
                    batch = recorded[-(len(recorded) % SETUP_BATCH or SETUP_BATCH) :]
                    await grant_consent(batch, record.setup_timeout)
        if variant is Variant.TAPS:
            clock.start()
        ports = {"a": [leg.local_rtp[1] for leg in legs[::2]]}
        ports["b"] = [leg.local_rtp[1] for leg in legs[1::2]]
        child.stdin.write(json.dumps(ports).encode() + b"\n")
        await child.stdin.drain()
        # A recorded call's notice went out on the caller's leg before: not relayed.
        MediaPump.of(loop).relay_in_c = c_step
        before = sum(leg.leg.summary().packets_sent for leg in legs)
        in_c_before = MediaPump.of(loop).counters()["relayed"]
        cpu0, wall0, loop0 = time.process_time(), time.perf_counter(), loop_thread_cpu()
        skipped0 = clock_skipped(clock)
        result = json.loads(await child.stdout.readline())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        loop_cpu = loop_thread_cpu() - loop0
        clock_skips = clock_skipped(clock) - skipped0
        relayed = sum(leg.leg.summary().packets_sent for leg in legs) - before
        relayed_in_c = MediaPump.of(loop).counters()["relayed"] - in_c_before
        if record is not None and recorded:
            await hang_up(recorded, clock, record.setup_timeout)
            sealed = True
    finally:
        stop.set()
        heard = sum(await asyncio.gather(*meters))
        if recorded and not sealed:
            await abandon(recorded)
        for call_tap in call_taps:
            call_tap.detach()
        await clock.stop()
        for leg in legs:
            leg.close()
        if child.returncode is None:
            child.stdin.close()  # a peers process still waiting for ports reads EOF and exits
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
    figures_of_recording: RecordingFigures | None = None
    if node is not None and record is not None:
        figures_of_recording = summarise(node, recorded)
        heard = figures_of_recording.heard
        party_pcm = {"caller": PCMU.decode(PAYLOAD)}
        if both_ways:
            party_pcm["agent"] = PCMU.decode(CALLEE_PAYLOAD)
        await verify_sample(node, recorded, figures_of_recording, record.verify, party_pcm)
    talkers = 2 if both_ways else 1
    tapped = variant is not Variant.RELAY
    return RunResult(
        {
            # Over the sending time: the drain after it adds CPU but no packets.
            "packets_per_s": relayed / seconds,
            "c_step_share": relayed_in_c / max(1, relayed),
            "loss": 1.0 - result["received"] / max(1, result["sent"]),
            "cpu_us_per_packet": 1e6 * cpu / max(1, relayed),
            "cpu_ms_per_call_s": 1e3 * cpu / (calls * wall),
            "cpu_share": cpu / wall,
            # The rest ran on other threads: the recorders' writers (and nothing else here).
            "loop_share": loop_cpu / wall,
            "generator_skipped_ticks": float(result["skipped"]),
            # Through the gateway, far end to far end (kernel stamps); NaN when not tagged.
            **{key: float(result.get(key, math.nan)) for key in LATENCY_KEYS},
            # The gateway's own clock: a skipped tick is 20 ms no tap (or recording) saw.
            "clock_skipped_ticks": float(clock_skips) if tapped else math.nan,
            # Only the talking side's leg receives audio for its tap to decode.
            "tap_frames": heard / (talkers * calls * seconds / 0.02) if tapped else math.nan,
        },
        figures_of_recording,
    )


def sans_io_us_per_packet(runs: int) -> float:
    """leg.receive + peer.relay, no sockets: the protocol work per relayed packet."""
    config = LegConfig(static_codecs(PCMU), 0, remote_rtp=("192.0.2.1", 4000))
    a, b = MediaLeg(config, 0.0), MediaLeg(config, 0.0)
    addr = ("192.0.2.1", 4000)
    wires = [bytes(RtpPacket(0, seq, seq * 160, 1, PAYLOAD)) for seq in range(65536)]
    state = {"seq": 0}

    def one() -> None:
        seq = state["seq"] = (state["seq"] + 1) & 0xFFFF
        now = seq * 0.02
        for event in a.receive(wires[seq], addr, now):
            if type(event) is RtpReceived:
                b.relay(event, now)

    timer = timeit.Timer(one)
    return statistics.median(t / 10000 * 1e6 for t in timer.repeat(repeat=runs, number=10000))


def print_single(args: argparse.Namespace, per_run: float, results: list[RunResult]) -> None:
    """The figures of one variant (no ``--record``): medians over runs."""

    def median(key: str) -> float:
        return statistics.median(r.figures[key] for r in results)

    print(f"median of {args.runs} runs of {per_run:.1f} s")
    print(f"{'relayed packets/s':36} {median('packets_per_s'):12.0f}")
    print(f"{'loss (caller -> callee)':36} {100 * median('loss'):11.3f}%")
    print(f"{'relay CPU µs per packet':36} {median('cpu_us_per_packet'):12.1f}")
    print(f"{'relay CPU ms per call-second':36} {median('cpu_ms_per_call_s'):12.2f}")
    if args.taps:
        print(f"{'tap frames delivered':36} {100 * median('tap_frames'):11.1f}%")
    print(f"{'relay CPU share of one core':36} {100 * median('cpu_share'):11.1f}%")
    print(f"{'relayed by the C step':36} {100 * median('c_step_share'):11.1f}%")
    print(f"{'generator ticks skipped (overload)':36} {median('generator_skipped_ticks'):12.0f}")
    for name in ("latency", "jitter"):
        p50, p99 = median(f"{name}_p50_ms"), median(f"{name}_p99_ms")
        print(f"{f'added {name} p50 / p99 ms':36} {p50:6.2f} / {p99:.2f}")


@dataclass
class Rounds:
    """Every round's result per variant, in run order."""

    by_variant: dict[Variant, list[RunResult]] = field(default_factory=dict)

    def add(self, variant: Variant, result: RunResult) -> None:
        self.by_variant.setdefault(variant, []).append(result)

    def median(self, variant: Variant, key: str) -> float:
        return statistics.median(r.figures[key] for r in self.by_variant[variant])

    def ratio(self, over: Variant, under: Variant, key: str = "cpu_ms_per_call_s") -> float:
        """Median over rounds of the within-round ratio: both windows saw the same load."""
        pairs = zip(self.by_variant[over], self.by_variant[under], strict=True)
        return statistics.median(a.figures[key] / b.figures[key] for a, b in pairs)

    def delta(self, over: Variant, under: Variant, key: str = "cpu_ms_per_call_s") -> float:
        pairs = zip(self.by_variant[over], self.by_variant[under], strict=True)
        return statistics.median(a.figures[key] - b.figures[key] for a, b in pairs)


def print_rounds(args: argparse.Namespace, per_run: float, rounds: Rounds) -> bool:
    """The three variants side by side, ratios, and the recordings; False if a check failed."""
    variants = list(Variant)
    print(f"median of {args.runs} rounds; each round: {', '.join(v.value for v in variants)}")
    print(f"windows of {per_run:.1f} s, one fresh set of calls per window")
    print(f"{'':36} " + " ".join(f"{v.value:>14}" for v in variants))
    rows = [
        ("relayed packets/s", "packets_per_s", 1.0, "{:14.0f}"),
        ("loss (sent by peers, not received)", "loss", 100.0, "{:13.3f}%"),
        ("gateway CPU µs per relayed packet", "cpu_us_per_packet", 1.0, "{:14.1f}"),
        ("gateway CPU ms per call-second", "cpu_ms_per_call_s", 1.0, "{:14.2f}"),
        ("gateway CPU share of one core", "cpu_share", 100.0, "{:13.1f}%"),
        ("  of which the event-loop thread", "loop_share", 100.0, "{:13.1f}%"),
        ("tap frames delivered", "tap_frames", 100.0, "{:13.1f}%"),
        ("generator ticks skipped (overload)", "generator_skipped_ticks", 1.0, "{:14.0f}"),
        ("gateway clock ticks skipped", "clock_skipped_ticks", 1.0, "{:14.0f}"),
    ]
    for label, key, scale, fmt in rows:
        cells = []
        for variant in variants:
            value = rounds.median(variant, key)
            cells.append(f"{'-':>14}" if math.isnan(value) else fmt.format(scale * value))
        print(f"{label:36} " + " ".join(cells))
    relay, taps, rec = Variant.RELAY, Variant.TAPS, Variant.RECORD
    print("CPU per call-second, within-round ratios (median):")
    print(f"  {'taps / relay only':34} {rounds.ratio(taps, relay):8.2f}")
    print(f"  {'taps+recording / relay only':34} {rounds.ratio(rec, relay):8.2f}")
    print(f"  {'taps+recording / taps':34} {rounds.ratio(rec, taps):8.2f}")
    # One stereo frame per call per 20 ms: ms per call-second × 20 = µs per frame.
    flow_us = 20 * rounds.delta(rec, taps)
    print(f"{'consent flow + recorder µs per call per 20 ms frame':52} {flow_us:8.1f}")
    print("  (taps+recording − taps, within-round; includes the flow's per-tick pump)")

    recordings = [r.recording for r in rounds.by_variant[rec] if r.recording is not None]
    calls = sum(f.calls for f in recordings)
    stored = sum(f.recordings for f in recordings)
    written = sum(f.frames_written for f in recordings)
    given = sum(f.frames_given for f in recordings)
    dropped = sum(f.dropped_frames for f in recordings)
    minutes = sum(f.recorded_seconds for f in recordings) / 60
    on_disk = sum(f.bytes_on_disk for f in recordings)
    verified = sum(f.verified for f in recordings)
    problems = [p for f in recordings for p in f.problems]
    print(f"recordings (all rounds): {stored} complete of {calls} calls")
    print(f"{'recorder frames written':36} {written:14d} ({given} handed over, {dropped} dropped)")
    per_minute = on_disk / minutes if minutes else math.nan
    print(f"{'bytes on disk per call-minute':36} {per_minute:14.0f}  (plain PCM: 1920000)")
    print(f"{'recordings read back and checked':36} {verified:14d} of {verified + len(problems)}")
    shortfalls = [s for f in recordings for s in f.shortfalls]
    if shortfalls:
        print(
            f"{'call time not in the file (checked)':36} {statistics.median(shortfalls):13.2f}s"
            f"  (max {max(shortfalls):.2f} s: last frame to hang-up)"
        )
    for problem in problems:
        print(f"  FAILED {problem}")
    return not problems and stored == calls and given == written


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="calls (pairs of legs)")
    parser.add_argument("--duration", type=float, default=10.0, help="total seconds (bound)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run the relay on uvloop")
    parser.add_argument(
        "--both-ways", action="store_true", help="the callee talks too (a bridged call)"
    )
    parser.add_argument("--taps", action="store_true", help="tap and decode both parties")
    parser.add_argument(
        "--record",
        action="store_true",
        help="rounds of relay only / taps / taps feeding the consent flow and recorder",
    )
    parser.add_argument(
        "--verify", type=int, default=5, help="recordings per round read back (--record)"
    )
    parser.add_argument(
        "--python-step",
        action="store_true",
        help="every packet through the Python path (the pump's C step off), for comparison",
    )
    parser.add_argument("--tagged", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--role", choices=["relay", "peers"], default="relay", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.role == "peers":
        asyncio.run(run_peers(args.calls, args.duration, args.both_ways, args.tagged))
        return
    if not 1 <= args.calls <= 1000 or not 1 <= args.runs <= 20:
        parser.error("--calls must be 1..1000 and --runs 1..20")

    variants = list(Variant) if args.record else [Variant.TAPS if args.taps else Variant.RELAY]
    # Leave room in the bound for each run's start-up and drain and the sans-IO figure.
    per_run = max(1.0, (args.duration - 1.0) / (args.runs * len(variants)) - 1.0)
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    loop_name = "uvloop" if args.uvloop else "asyncio"
    directions = "both ways" if args.both_ways else "caller to callee"
    tapped = ", taps decoding both parties" if args.taps and not args.record else ""
    print(
        f"RTP relay, {args.calls} calls ({2 * args.calls} legs), PCMU 20 ms {directions}"
        f"{tapped}, {loop_name}"
    )
    print(f"load average at start: {load_average()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="voicegw-bench-relay-") as scratch:
        rounds = Rounds()
        for run in range(args.runs):
            for variant in variants:
                record = None
                if variant is Variant.RECORD:
                    record = RecordOptions(
                        Path(scratch) / f"node-{run}", args.verify, 30.0 + 0.2 * args.calls
                    )
                result = runner(
                    relay_run(
                        args.calls,
                        per_run,
                        args.both_ways,
                        variant,
                        record,
                        c_step=not args.python_step,
                    )
                )
                rounds.add(variant, result)
        if args.record:
            ok = print_rounds(args, per_run, rounds)
        else:
            print_single(args, per_run, rounds.by_variant[variants[0]])
    print(f"{'sans-IO receive+relay µs per packet':36} {sans_io_us_per_packet(5):12.2f}")
    print(f"load average at end: {load_average()}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
