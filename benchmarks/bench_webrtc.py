"""Concurrent WebRTC agent legs bridged to SIP/RTP callers: loss, jitter, latency, CPU.

Three processes, all on 127.0.0.1:

* the **gateway** (``--role gateway``) builds, per leg, exactly what the
  agent bridge builds for a caller answered by a browser agent: the caller's
  RTP leg (:class:`~voicegw.media.session.MediaLeg` with its jitter buffer,
  PCMU, on a :class:`~voicegw.media.transport.LegTransport`), its
  :class:`~voicegw.calls.call_media.RtpCallMedia` on the shared 20 ms
  :class:`~voicegw.media.clock.MediaClock`, the caller's frames pushed into a
  :class:`~voicegw.media.webrtc.LiveSource`, and a
  :class:`~voicegw.media.webrtc.WebRtcLeg` (Opus, DTLS-SRTP) whose decoded
  frames go straight back out on the caller's leg. SIP signalling and the
  queue are left out (``bench_sip_calls.py`` measures SIP); offers and
  answers travel over a JSON-lines control socket instead;
* the **load generator** (``--role load``) plays N callers (plain RTP,
  PCMU, each with its own 20 ms phase) and N browsers. A browser is an aiortc
  peer connection for ICE and DTLS whose RTP runs on the gateway's own media
  path (:class:`~voicegw.media.webrtc_rtp.MediaPath`: SRTP on the keys of
  that handshake), sending pre-encoded Opus and decoding what it hears at
  8 kHz, all on timers: with aiortc's per-packet path a hundred browsers took
  most of a core and their pacing lagged. Real browsers (Chromium and Firefox)
  talk to the same path in ``tests/e2e``. Each source plays a 20 ms 1 kHz
  burst into silence every 0.5 s;
* this script (the orchestrator) runs both per N and reads the gateway's CPU
  from ``/proc``, and the whole machine's, to tell how disturbed a run was.

Per direction it reports:

* loss: RTP sequence numbers never received during the media phase;
* added jitter, p50/p99: RFC 3550's D for consecutive packets,
  |(arrival_i - arrival_i-1) - (rtp_ts_i - rtp_ts_i-1)/rate|, not smoothed.
  The generator's own pacing error is in it (its p99 is printed too), so it
  is an upper bound for the gateway's share;
* one-way latency, p50/p99: burst onset leaving its source to the onset
  arriving at the other side, to the sample (arrival time of the packet plus
  the onset's offset in it; for the browser's Opus, minus where the onset
  sits in the pre-encoded stream, so its encoder's look-ahead is not counted);
  packets are timestamped on arrival (the browser side: once SRTP is
  checked), before decoding;
* gateway CPU per leg-second (utime+stime over the media phase), which stays
  meaningful when other work shares the machine; and "others": the CPU used
  by processes other than the two benchmark processes during the phase;
* from the gateway: how deep the callers' adaptive jitter buffers grew (it
  follows the generator's pacing error and sets most of the SIP -> WebRTC
  latency), media-clock ticks skipped, and how many legs connected (legs that
  never connect are left out of the media figures, and counted).

    .venv/bin/python benchmarks/bench_webrtc.py [--legs 25,50,100] [--duration 20]
        [--runs 3] [--uvloop]

Every wait has a timeout; each run ends after about ``duration`` + set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from figures import percentile

HOST = "127.0.0.1"
LOOPBACK = (HOST,)
PTIME = 0.02
PERIOD_FRAMES = 25  # a burst every 0.5 s
THRESHOLD = 3000  # |sample| of an onset; bursts are at 16384, silence is 0
QUIET = 0.1  # seconds of quiet before an onset counts as a new burst
WARMUP = 2.0


def setup_timeout(legs: int) -> float:
    """Seconds allowed for ``legs`` peer connections to connect (DTLS handshakes queue up)."""
    return 30.0 + 0.6 * legs


CLK_TCK = os.sysconf("SC_CLK_TCK")
RTP_HEADER = struct.Struct("!BBHII")


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


# -- shared: receive statistics ------------------------------------------------------------


@dataclass
class Stream:
    """One direction of one leg as seen by its receiver."""

    rate: int
    first_seq: int | None = None
    last_seq: int | None = None
    received: int = 0
    expected: int = 0
    last_arrival: float | None = None
    last_ts: int | None = None
    jitter: list[float] = field(default_factory=list)
    onsets: list[float] = field(default_factory=list)
    quiet_since: float = 0.0
    counting: bool = False

    def packet(self, seq: int, ts: int, arrival: float) -> None:
        if not self.counting:
            return
        if self.last_seq is not None:
            ahead = (seq - self.last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return
            self.expected += ahead
            if ahead == 1 and self.last_arrival is not None and self.last_ts is not None:
                span = ((ts - self.last_ts) & 0xFFFFFFFF) / self.rate
                self.jitter.append(abs((arrival - self.last_arrival) - span))
        else:
            self.expected += 1
        self.received += 1
        self.last_seq, self.last_ts, self.last_arrival = seq, ts, arrival

    def samples(self, pcm: np.ndarray, arrival: float, rate: int) -> None:
        """Note the onsets in one packet's decoded audio (``arrival`` = its first sample)."""
        loud = np.flatnonzero(np.abs(pcm) > THRESHOLD)
        if len(loud) == 0:
            return
        onset = arrival + loud[0] / rate
        if onset - self.quiet_since > QUIET:
            self.onsets.append(onset)
        self.quiet_since = arrival + loud[-1] / rate


def pair(sent: list[float], heard: list[float]) -> list[float]:
    """Latency of each sent burst: the first onset heard after it (within 0.4 s)."""
    out = []
    for s in sent:
        later = [h - s for h in heard if -0.005 <= h - s < 0.4]
        if later:
            out.append(min(later))
    return out


# -- the gateway process -------------------------------------------------------------------


async def gateway_main(uvloop_on: bool) -> None:
    from voicegw.calls.call_media import RtpCallMedia
    from voicegw.gc_tuning import tune_for_media
    from voicegw.media.clock import MediaClock
    from voicegw.media.codecs import codec_by_name
    from voicegw.media.jitter import JitterBuffer, repeat_then_silence_concealer
    from voicegw.media.ports import PortAllocator
    from voicegw.media.session import LegConfig, MediaLeg
    from voicegw.media.transport import LegTransport, wallclock_offset
    from voicegw.media.webrtc import FRAME_BYTES, LiveSource, WebRtcConfig, WebRtcLeg

    loop = asyncio.get_running_loop()
    clock = MediaClock()
    clock.start()
    ports = PortAllocator(HOST, 30000, 39999)
    config = WebRtcConfig(host_addresses=LOOPBACK, codecs=("opus",))
    pcmu = codec_by_name("PCMU")
    assert pcmu is not None
    legs: list[tuple[WebRtcLeg, LegTransport, asyncio.Task[None]]] = []
    buffers: list[JitterBuffer] = []

    async def pump(media: RtpCallMedia, source: LiveSource) -> None:
        # The agent bridge's caller pump: decoded caller frames on the media clock.
        async for frame in media.frames():
            if frame.party == media.caller_party and len(frame.pcm) == FRAME_BYTES:
                source.push(frame.pcm)

    async def new_leg(offer: str, caller: tuple[str, int]) -> dict[str, Any]:
        leg_config = LegConfig(
            codecs={0: pcmu},
            send_payload_type=0,
            remote_rtp=caller,
            remote_rtcp=(caller[0], caller[1] + 1),
            wallclock_offset=wallclock_offset(loop),
        )
        leg = MediaLeg(leg_config, loop.time())
        # The caller leg's own adaptive jitter buffer (what enable_pcm would make), kept
        # here to report how deep it grew: it sets most of the SIP -> WebRTC latency.
        buffer = JitterBuffer(conceal=repeat_then_silence_concealer(pcmu.silence()))
        leg.enable_pcm(buffer)
        buffers.append(buffer)
        transport = await LegTransport.open(leg, ports.allocate())
        media = RtpCallMedia(transport, clock)
        source = LiveSource()
        webrtc = WebRtcLeg(config, source, transport.send_pcm)
        task = asyncio.create_task(pump(media, source))
        legs.append((webrtc, transport, task))
        answer = await webrtc.accept_offer(offer)
        return {"answer": answer, "rtp": list(transport.local_rtp)}

    def stats() -> dict[str, Any]:
        return {
            "webrtc_lost": sum(w.counters.lost for w, _, _ in legs),
            "webrtc_late": sum(w.counters.late for w, _, _ in legs),
            "connected": sum(w.connection_state == "connected" for w, _, _ in legs),
            "clock_skipped": clock.schedule.skipped if clock.schedule is not None else 0,
            "sip_jitter_target_ms": {
                "median": round(1000 * statistics.median(b.target_delay for b in buffers), 1),
                "max": round(1000 * max(b.target_delay for b in buffers), 1),
            }
            if buffers
            else None,
        }

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            if request["op"] == "leg":
                reply = await new_leg(request["offer"], tuple(request["caller"]))
            else:
                reply = stats()
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        for webrtc, transport, task in legs:
            task.cancel()
            await webrtc.close()
            transport.close()
        writer.close()
        done.set()

    done = asyncio.Event()
    server = await asyncio.start_server(control, HOST, 0)
    tune_for_media()  # as `voicegw serve` does once it is up
    emit({"control": server.sockets[0].getsockname()[1], "uvloop": uvloop_on})
    await done.wait()
    server.close()
    await clock.stop()


# -- the load generator process ------------------------------------------------------------


def opus_reference() -> tuple[list[bytes], int, float]:
    """Pre-encoded browser audio (Opus, 48 kHz): one burst per ``PERIOD_FRAMES`` frames.

    Returns the packets of one period (looped), the index of the packet in
    which the decoded onset appears and its offset in seconds: the browser's
    own encoder delay, which the latency figure leaves out.
    """
    from av import AudioFrame, CodecContext, Packet

    encoder: Any = CodecContext.create("libopus", "w")
    encoder.format, encoder.layout, encoder.sample_rate = "s16", "mono", 48000
    encoder.bit_rate = 32000
    encoder.time_base = fractions.Fraction(1, 48000)
    encoder.options = {"application": "voip"}
    decoder: Any = CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 48000
    t = np.arange(960) / 48000
    burst = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16)
    packets: list[bytes] = []
    decoded: list[np.ndarray] = []
    for n in range(3 * PERIOD_FRAMES):
        samples = burst if n % PERIOD_FRAMES == PERIOD_FRAMES - 1 else np.zeros(960, np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, n * 960
        for packet in encoder.encode(frame):
            packets.append(bytes(packet))
            decoded.extend(f.to_ndarray().ravel() for f in decoder.decode(Packet(bytes(packet))))
    # Loop the last full period (the encoder has settled by then).
    period = packets[-PERIOD_FRAMES:]
    pcm = np.concatenate(decoded[-PERIOD_FRAMES:])
    loud = np.flatnonzero(np.abs(pcm) > THRESHOLD)
    # The onset follows a quiet stretch; in a looped period the burst's tail (the
    # encoder's look-ahead) may sit at the very start, so look at the gaps cyclically.
    gaps = np.diff(np.concatenate([[loud[-1] - len(pcm)], loud]))
    onset = int(loud[int(np.argmax(gaps > QUIET * 48000))])
    return period, onset // 960, (onset % 960) / 48000


class Paced:
    """Calls ``step(n, now)`` every 20 ms from a random phase until loop time ``until``.

    A timer chain, not a task: at a hundred sources a task wake-up per packet is
    what made the generator lag behind its own schedule.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, step: Any, until: float) -> None:
        self.loop, self.step, self.until = loop, step, until
        self.start = loop.time() + random.random() * PTIME
        self.n = 0
        self.done: asyncio.Future[None] = loop.create_future()
        loop.call_at(self.start, self._fire)

    def _fire(self) -> None:
        due = self.start + self.n * PTIME
        if due >= self.until:
            self.done.set_result(None)
            return
        self.step(self.n, self.loop.time())
        self.n += 1
        self.loop.call_at(self.start + self.n * PTIME, self._fire)


class Caller(asyncio.DatagramProtocol):
    """One SIP caller's RTP: PCMU, 20 ms, a burst every 0.5 s; listens for the agent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from voicegw.media.g711 import ulaw_encode

        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.stream = Stream(8000)
        self.sent_bursts: list[float] = []
        self.pacing: list[float] = []
        self.ssrc = random.getrandbits(32)
        self.counting_from = 0.0
        self.last: float | None = None
        t = np.arange(160) / 8000
        tone = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16)
        self.burst = ulaw_encode(tone.tobytes())
        self.silence = ulaw_encode(bytes(320))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        arrival = self.loop.time()
        if len(data) < 12 or data[1] & 0x7F != 0:
            return  # RTCP or not PCMU
        from voicegw.media.g711 import ulaw_decode

        _, _, seq, ts, _ = RTP_HEADER.unpack_from(data)
        self.stream.packet(seq, ts, arrival)
        if self.stream.counting:
            pcm = np.frombuffer(ulaw_decode(data[12:]), dtype=np.int16)
            self.stream.samples(pcm, arrival, 8000)

    def play(self, until: float, counting_from: float) -> Paced:
        self.counting_from = counting_from
        return Paced(self.loop, self.send, until)

    def send(self, n: int, now: float) -> None:
        assert self.transport is not None and self.remote is not None
        is_burst = n % PERIOD_FRAMES == PERIOD_FRAMES - 1
        header = RTP_HEADER.pack(0x80, 0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, self.ssrc)
        self.transport.sendto(header + (self.burst if is_burst else self.silence), self.remote)
        if now >= self.counting_from:
            if is_burst:
                self.sent_bursts.append(now)
            if self.last is not None:
                self.pacing.append(abs(now - self.last - PTIME))
        self.last = now


class Browser:
    """One browser: an aiortc peer connection for ICE and DTLS, its RTP on the gateway's
    own media path (:class:`~voicegw.media.webrtc_rtp.MediaPath`), so that a hundred
    of them fit beside the gateway. Its microphone plays pre-encoded Opus (paced at
    20 ms); what it hears is timestamped on arrival and decoded at 8 kHz for onsets.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, packets: list[bytes]) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from voicegw.media.opus import OpusDecoder
        from voicegw.media.webrtc_rtp import IdleTrack

        self.loop = loop
        self.packets = packets
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.transceiver = self.pc.addTransceiver(IdleTrack(), direction="sendrecv")
        self.stream = Stream(48000)
        self.decoder = OpusDecoder(8000)
        self.sent_at: list[float] = []
        self.path: Any = None
        self.payload_type = 0
        self.ssrc = 0
        self.timestamp = random.getrandbits(32)

    async def offer(self, opus: list[Any]) -> str:
        from voicegw.media.webrtc import offered_host_addresses
        from voicegw.media.webrtc_rtp import LegCounters, MediaPath

        self.transceiver.setCodecPreferences(opus)
        with offered_host_addresses(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = str(self.pc.localDescription.sdp)
        match = re.search(r"a=rtpmap:(\d+) opus/48000", sdp)
        assert match is not None
        self.payload_type = int(match.group(1))
        self.ssrc = self.transceiver.sender._ssrc
        self.path = MediaPath(self.transceiver.sender.transport, self, LegCounters())
        self.pc.on("connectionstatechange", self.path.update)
        return sdp

    def packet(self, packet: Any) -> None:
        """The gateway's audio, authenticated: its arrival, then its onsets."""
        arrival = self.loop.time()
        self.stream.packet(packet.sequence_number, packet.timestamp, arrival)
        if self.stream.counting:
            pcm = np.frombuffer(self.decoder.decode(packet.payload), dtype=np.int16)
            self.stream.samples(pcm, arrival, 8000)

    def speak(self, until: float) -> Paced:
        return Paced(self.loop, self.send, until)

    def send(self, n: int, now: float) -> None:
        header = RTP_HEADER.pack(
            0x80, self.payload_type, n & 0xFFFF, (self.timestamp + n * 960) & 0xFFFFFFFF, self.ssrc
        )
        if self.path.send(header + self.packets[n % len(self.packets)]):
            self.sent_at.append(now)
        else:
            self.sent_at.append(-1.0)  # keeps the index: burst onsets are found by position


async def load_main(legs: int, duration: float, control_port: int) -> None:
    from aiortc import RTCRtpSender, RTCSessionDescription

    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, control_port)

    async def ask(request: dict[str, Any]) -> dict[str, Any]:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await reader.readline())
        return reply

    packets, burst_index, burst_offset = opus_reference()
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "opus"]
    callers: list[Caller] = []
    browsers: list[Browser] = []
    setup_started = time.monotonic()
    for _ in range(legs):
        caller = Caller(loop)
        await loop.create_datagram_endpoint(lambda c=caller: c, local_addr=(HOST, 0))
        assert caller.transport is not None
        browser = Browser(loop, packets)
        reply = await ask(
            {
                "op": "leg",
                "offer": await browser.offer(opus),
                "caller": list(caller.transport.get_extra_info("sockname")[:2]),
            }
        )
        await browser.pc.setRemoteDescription(
            RTCSessionDescription(sdp=reply["answer"], type="answer")
        )
        caller.remote = (reply["rtp"][0], reply["rtp"][1])
        callers.append(caller)
        browsers.append(browser)
    deadline = loop.time() + setup_timeout(legs)
    settled = ("connected", "failed", "closed")
    while loop.time() < deadline:
        if all(b.pc.connectionState in settled for b in browsers):
            break
        await asyncio.sleep(0.1)
    setup = time.monotonic() - setup_started
    # Legs that never connected (ICE or DTLS gave up on a starved machine) are counted,
    # and left out of the media figures.
    up = [i for i, b in enumerate(browsers) if b.pc.connectionState == "connected"]
    if not up:
        raise SystemExit("no peer connection connected")
    callers, browsers = [callers[i] for i in up], [browsers[i] for i in up]
    counting_from = loop.time() + WARMUP
    until = counting_from + duration
    players = [c.play(until, counting_from).done for c in callers]
    players += [b.speak(until).done for b in browsers]
    await asyncio.sleep(WARMUP)
    for c in callers:
        c.stream.counting = True
    for b in browsers:
        b.stream.counting = True
    emit({"phase": "media"})
    await asyncio.sleep(duration)
    emit({"phase": "done"})
    for c in callers:
        c.stream.counting = False
    for b in browsers:
        b.stream.counting = False
    gateway = await ask({"op": "stats"})
    await asyncio.gather(*players)

    # Browser -> gateway -> caller: when each burst's onset left, by the reference stream.
    def mic_bursts(browser: Browser) -> list[float]:
        return [
            t + burst_offset
            for i, t in enumerate(browser.sent_at)
            if i % PERIOD_FRAMES == burst_index and counting_from <= t < until - 0.5
        ]

    to_sip_sent = [mic_bursts(b) for b in browsers]
    to_sip = [
        x for sent, c in zip(to_sip_sent, callers, strict=True) for x in pair(sent, c.stream.onsets)
    ]
    to_webrtc = [
        x
        for c, b in zip(callers, browsers, strict=True)
        for x in pair([s for s in c.sent_bursts if s < until - 0.5], b.stream.onsets)
    ]
    mic_pacing = [
        abs(y - x - PTIME)
        for b in browsers
        for x, y in zip(b.sent_at, b.sent_at[1:], strict=False)
        if x >= counting_from and y >= 0
    ]

    def direction(streams: list[Stream], latency: list[float], bursts: int) -> dict[str, Any]:
        expected = sum(s.expected for s in streams)
        received = sum(s.received for s in streams)
        jitter = [j for s in streams for j in s.jitter]
        return {
            "loss": (expected - received) / expected if expected else 1.0,
            "jitter_p50": percentile(jitter, 0.5),
            "jitter_p99": percentile(jitter, 0.99),
            "latency_p50": percentile(latency, 0.5),
            "latency_p99": percentile(latency, 0.99),
            "bursts_heard": len(latency),
            "bursts_sent": bursts,
        }

    emit(
        {
            "result": {
                "legs": legs,
                "legs_connected": len(up),
                "setup_seconds": setup,
                "to_webrtc": direction(
                    [b.stream for b in browsers],
                    to_webrtc,
                    sum(len([s for s in c.sent_bursts if s < until - 0.5]) for c in callers),
                ),
                "to_sip": direction(
                    [c.stream for c in callers], to_sip, sum(len(x) for x in to_sip_sent)
                ),
                "caller_pacing_p99": percentile([x for c in callers for x in c.pacing], 0.99),
                "mic_pacing_p99": percentile(mic_pacing, 0.99),
                "gateway": gateway,
            }
        }
    )
    writer.close()
    for browser in browsers:
        await browser.pc.close()
    for caller in callers:
        if caller.transport is not None:
            caller.transport.close()


# -- the orchestrator ----------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


async def read_json(stream: asyncio.StreamReader, within: float) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(stream.readline(), within)
        if not line:
            raise SystemExit("a benchmark process ended early")
        with contextlib.suppress(json.JSONDecodeError):
            message: dict[str, Any] = json.loads(line)
            return message


SCRIPT = os.path.abspath(__file__)


async def one_run(legs: int, duration: float, use_uvloop: bool) -> dict[str, Any]:
    script = SCRIPT
    extra = ["--uvloop"] if use_uvloop else []
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, script, "--role", "gateway", *extra, stdout=subprocess.PIPE
    )
    load = None
    try:
        assert gateway.stdout is not None
        port = (await read_json(gateway.stdout, 30))["control"]
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "--role",
            "load",
            "--legs",
            str(legs),
            "--duration",
            str(duration),
            "--control",
            str(port),
            *extra,
            stdout=subprocess.PIPE,
        )
        assert load.stdout is not None
        timeout = setup_timeout(legs) + WARMUP + 30
        assert (await read_json(load.stdout, timeout)).get("phase") == "media"
        began = (time.monotonic(), process_cpu(gateway.pid), process_cpu(load.pid), machine_cpu())
        assert (await read_json(load.stdout, duration + 30)).get("phase") == "done"
        ended = (time.monotonic(), process_cpu(gateway.pid), process_cpu(load.pid), machine_cpu())
        result = (await read_json(load.stdout, 60))["result"]
        wall = ended[0] - began[0]
        gateway_cpu = ended[1] - began[1]
        load_cpu = ended[2] - began[2]
        result["gateway_cpu_ms_per_leg_second"] = (
            1000 * gateway_cpu / (result["legs_connected"] * wall)
        )
        result["gateway_cores"] = gateway_cpu / wall
        result["load_cores"] = load_cpu / wall
        result["others_cores"] = max(0.0, (ended[3] - began[3] - gateway_cpu - load_cpu) / wall)
        await asyncio.wait_for(load.wait(), 60)
        await asyncio.wait_for(gateway.wait(), 30)
        return result
    finally:
        for process in (load, gateway):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def report(legs: int, runs: list[dict[str, Any]]) -> None:
    def ms(*path: str) -> str:
        return f"{median_of(runs, *path) * 1000:.1f}"

    print(f"\n{legs} legs, median of {len(runs)} run(s):")
    for key, label in (("to_webrtc", "SIP -> WebRTC"), ("to_sip", "WebRTC -> SIP")):
        print(
            f"  {label}: loss {median_of(runs, key, 'loss') * 100:.2f} %, "
            f"added jitter p50/p99 {ms(key, 'jitter_p50')} / {ms(key, 'jitter_p99')} ms, "
            f"latency p50/p99 {ms(key, 'latency_p50')} / {ms(key, 'latency_p99')} ms"
        )
    print(
        f"  gateway CPU {median_of(runs, 'gateway_cpu_ms_per_leg_second'):.2f} ms per "
        f"leg-second ({median_of(runs, 'gateway_cores') * 100:.0f} % of a core); "
        f"load generator {median_of(runs, 'load_cores') * 100:.0f} %; "
        f"others on the machine {median_of(runs, 'others_cores') * 100:.0f} %"
    )
    print(
        f"  generator pacing p99: callers {ms('caller_pacing_p99')} ms, "
        f"browsers {ms('mic_pacing_p99')} ms; set-up {median_of(runs, 'setup_seconds'):.1f} s; "
        f"legs connected per run {[run['legs_connected'] for run in runs]}"
    )
    for n, run in enumerate(runs):
        a, b = run["to_webrtc"], run["to_sip"]
        print(
            f"    run {n + 1}: ->webrtc loss {a['loss'] * 100:.2f} % jitter p99 "
            f"{a['jitter_p99'] * 1000:.1f} latency p50/p99 {a['latency_p50'] * 1000:.1f}/"
            f"{a['latency_p99'] * 1000:.1f} ({a['bursts_heard']}/{a['bursts_sent']}); "
            f"->sip loss {b['loss'] * 100:.2f} % jitter p99 {b['jitter_p99'] * 1000:.1f} "
            f"latency p50/p99 {b['latency_p50'] * 1000:.1f}/{b['latency_p99'] * 1000:.1f} "
            f"({b['bursts_heard']}/{b['bursts_sent']}); gateway "
            f"{run['gateway_cpu_ms_per_leg_second']:.2f} ms/leg-s, others "
            f"{run['others_cores'] * 100:.0f} %; gateway {run['gateway']}"
        )


async def orchestrate(loads: list[int], duration: float, runs: int, use_uvloop: bool) -> None:
    for legs in loads:
        results = []
        for _ in range(runs):
            try:
                results.append(await one_run(legs, duration, use_uvloop))
            except (TimeoutError, SystemExit, AssertionError) as failure:
                # A load the node cannot set up in time is a result too, not a crash.
                print(f"\n{legs} legs: a run failed ({type(failure).__name__}: {failure})")
        if results:
            report(legs, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--role", choices=("orchestrator", "gateway", "load"), default="orchestrator"
    )
    parser.add_argument("--legs", default="25,50,100")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--control", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.role == "gateway":
        asyncio.run(gateway_main(args.uvloop))
    elif args.role == "load":
        asyncio.run(load_main(int(args.legs), args.duration, args.control))
    else:
        loads = [int(n) for n in args.legs.split(",")]
        asyncio.run(orchestrate(loads, args.duration, args.runs, args.uvloop))


if __name__ == "__main__":
    main()
