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
parties decoded to PCM each 20 ms tick, batched across calls, through the
jitter buffers) drained every 200 ms by one consumer task per call, as the
echo service's meter does; "tap frames" is the share of the expected
received-audio frames the consumers got.

Also printed: the sans-IO cost of the hot path alone (``leg.receive`` plus
``peer.relay`` per packet, no sockets), for comparison.

    .venv/bin/python benchmarks/bench_rtp_relay.py [--calls 100] [--duration 10]
        [--runs 3] [--uvloop] [--both-ways] [--taps]

Traffic goes to 127.0.0.1 only; the whole benchmark stops after about
``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import timeit
from typing import Any, cast

from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import LegConfig, MediaLeg, RtpReceived, static_codecs
from voicegw.media.taps import CallTap, TapConsumer
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"
PAYLOAD = PCMU.encode(bytes(320))


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not 192 <= data[1] <= 223:  # RTCP is not counted
            self.received += 1

    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


# -- the peers subprocess -------------------------------------------------------------


async def run_peers(calls: int, seconds: float, both_ways: bool) -> None:
    """Bind callers and callees, learn the legs' ports on stdin, send, report on stdout."""
    loop = asyncio.get_running_loop()

    async def bind() -> Sink:
        return (await loop.create_datagram_endpoint(Sink, local_addr=(HOST, 0)))[1]

    callers = [await bind() for _ in range(calls)]
    callees = [await bind() for _ in range(calls)]
    hello = {"callers": [c.port() for c in callers], "callees": [c.port() for c in callees]}
    print(json.dumps(hello))
    sys.stdout.flush()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    legs = json.loads(line)
    talkers = [(callers, legs["a"])] + ([(callees, legs["b"])] if both_ways else [])
    ssrcs = [random.getrandbits(32) for _ in range(2 * calls)]
    sent = 0

    def tick(index: int, _: float) -> None:
        nonlocal sent
        for side, (peers, targets) in enumerate(talkers):
            for i, peer in enumerate(peers):
                ssrc = ssrcs[side * calls + i]
                packet = RtpPacket(0, index & 0xFFFF, (index * 160) & 0xFFFFFFFF, ssrc, PAYLOAD)
                assert peer.transport is not None
                peer.transport.sendto(bytes(packet), (HOST, targets[i]))
            sent += calls

    clock = MediaClock()
    clock.subscribe(tick)
    await clock.run(ticks=round(seconds / 0.02))
    await asyncio.sleep(0.3)  # let the last packets through the relay
    skipped = clock.schedule.skipped if clock.schedule else 0
    received = sum(c.received for c in callees + callers)
    print(json.dumps({"sent": sent, "received": received, "skipped": skipped}))
    sys.stdout.flush()


# -- the relay (this process) ---------------------------------------------------------------


async def meter(consumer: TapConsumer, stop: asyncio.Event) -> int:
    """Drain a call's tap every 200 ms (the echo meter's rhythm); received-audio frames."""
    heard = 0
    while not stop.is_set():
        await asyncio.sleep(0.2)
        heard += sum(1 for frame in consumer.drain() if not frame.filled)
    return heard


async def relay_run(calls: int, seconds: float, both_ways: bool, taps: bool) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 20000, 40000)
    command = [sys.executable, __file__, "--role", "peers"]
    command += ["--calls", str(calls), "--duration", str(seconds)]
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
    try:
        hello = json.loads(await child.stdout.readline())
        offset = wallclock_offset(loop)
        for caller, callee in zip(hello["callers"], hello["callees"], strict=True):
            pair = []
            for remote in ((HOST, caller), (HOST, callee)):
                config = LegConfig(
                    static_codecs(PCMU), 0, remote_rtp=remote, wallclock_offset=offset
                )
                leg = MediaLeg(config, loop.time())
                pair.append(await LegTransport.open(leg, allocator.allocate()))
            pair[0].peer, pair[1].peer = pair[1], pair[0]
            legs += pair
            if taps:
                call_tap = CallTap({"caller": pair[0].leg, "callee": pair[1].leg})
                consumer = call_tap.tap.add_consumer(maxsize=100)
                call_tap.attach(clock)
                call_taps.append(call_tap)
                meters.append(asyncio.create_task(meter(consumer, stop)))
        if taps:
            clock.start()
        ports = {"a": [leg.local_rtp[1] for leg in legs[::2]]}
        ports["b"] = [leg.local_rtp[1] for leg in legs[1::2]]
        child.stdin.write(json.dumps(ports).encode() + b"\n")
        await child.stdin.drain()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = json.loads(await child.stdout.readline())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        relayed = sum(leg.leg.summary().packets_sent for leg in legs)
    finally:
        stop.set()
        heard = sum(await asyncio.gather(*meters))
        for call_tap in call_taps:
            call_tap.detach()
        await clock.stop()
        for leg in legs:
            leg.close()
        await asyncio.wait_for(child.wait(), 10)
    talkers = 2 if both_ways else 1
    return {
        # Over the sending time: the drain after it adds CPU but no packets.
        "packets_per_s": relayed / seconds,
        "loss": 1.0 - result["received"] / max(1, result["sent"]),
        "cpu_us_per_packet": 1e6 * cpu / max(1, relayed),
        "cpu_ms_per_call_s": 1e3 * cpu / (calls * wall),
        "cpu_share": cpu / wall,
        "generator_skipped_ticks": float(result["skipped"]),
        # Only the talking side's leg receives audio for its tap to decode.
        "tap_frames": heard / (talkers * calls * seconds / 0.02) if taps else float("nan"),
    }


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
        "--role", choices=["relay", "peers"], default="relay", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.role == "peers":
        asyncio.run(run_peers(args.calls, args.duration, args.both_ways))
        return

    # Leave room in the bound for each run's start-up and drain and the sans-IO figure.
    per_run = max(1.0, (args.duration - 1.0) / args.runs - 1.0)
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    results = [
        runner(relay_run(args.calls, per_run, args.both_ways, args.taps)) for _ in range(args.runs)
    ]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    loop_name = "uvloop" if args.uvloop else "asyncio"
    directions = "both ways" if args.both_ways else "caller to callee"
    tapped = ", taps decoding both parties" if args.taps else ""
    print(
        f"RTP relay, {args.calls} calls ({2 * args.calls} legs), PCMU 20 ms {directions}"
        f"{tapped}, {loop_name}"
    )
    print(f"median of {args.runs} runs of {per_run:.1f} s")
    print(f"{'relayed packets/s':36} {median('packets_per_s'):12.0f}")
    print(f"{'loss (caller -> callee)':36} {100 * median('loss'):11.3f}%")
    print(f"{'relay CPU µs per packet':36} {median('cpu_us_per_packet'):12.1f}")
    print(f"{'relay CPU ms per call-second':36} {median('cpu_ms_per_call_s'):12.2f}")
    if args.taps:
        print(f"{'tap frames delivered':36} {100 * median('tap_frames'):11.1f}%")
    print(f"{'relay CPU share of one core':36} {100 * median('cpu_share'):11.1f}%")
    print(f"{'generator ticks skipped (overload)':36} {median('generator_skipped_ticks'):12.0f}")
    print(f"{'sans-IO receive+relay µs per packet':36} {sans_io_us_per_packet(5):12.2f}")


if __name__ == "__main__":
    main()
