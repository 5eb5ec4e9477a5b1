"""SIP call load: N concurrent authenticated calls to the echo service of a real gateway.

The gateway runs as its own process (``python -m voicegw.cli serve``: temp data
dir, SQLite, free ports, MD5 digest only). The benchmark provisions a SIP login
through the admin API, then for each N a load-generator subprocess (``--role
calls``) places N calls to ``sip:echo@demo.<domain>``: INVITE, 401, INVITE with
digest credentials, 200, ACK. Once all are up, every call sends one 172-byte
PCMU packet each 20 ms (paced by the media clock) for ``--duration`` seconds;
the echo sends each packet back through the gateway; then BYE (also digest
authenticated). Per N it reports:

* loss: packets sent but never echoed back (within a 0.5 s drain);
* round trip through the gateway, p50/p99: send to echo arrival. The echo
  rewrites SSRC, sequence and timestamp, so each payload carries its own
  (call, index) tag; the rest of the payload is PCMU silence;
* added jitter, p50/p99: |transit(i) - transit(i-1)| over consecutive echoed
  packets (RFC 3550 §6.4.1's D), so the generator's own pacing error cancels;
* gateway CPU (``/proc/<pid>/stat`` utime+stime) in ms per call-second over
  the media phase (and its user/system split), in µs per packet echoed, and
  per call for setup plus teardown.

Taps (on by default, ``--no-taps`` to compare): the gateway runs with
``VOICEGW_ECHO_METER=1``, so every echo call also has a
:class:`~voicegw.media.taps.CallTap` on its leg: the caller's audio goes
through the jitter buffer, is decoded to PCM each 20 ms tick (as the buffer
pops it) and drained by a level meter. The gateway logs one ``echo.heard`` line
per call; the table's "tap frames" column is their sum over the expected
frames, so a run without tap decoding cannot pass for one.

An echo call is one leg relayed to itself: the gateway receives and sends 50
packets a second per call and taps one party. A B2BUA-bridged call with both
parties tapped is twice that media work (two legs), so its CPU per
call-second is about twice the echo figure.

The gateway runs as ``voicegw serve`` does: on uvloop.

The generator is Python too (one process, one event loop); its own receive
scheduling is part of the latency and jitter measured, so the figures are an
upper bound for the gateway's share. Each call's signalling comes from one of
several loopback source addresses (127.0.x.y), ten calls per address, because
the gateway rate-limits SIP per source address.

    .venv/bin/python benchmarks/bench_sip_calls.py [--calls 50,100,200,400]
        [--duration 12] [--runs 3] [--uvloop] [--no-taps]

Traffic goes to 127.0.0.1/8 only; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

from figures import percentile

HOST = "127.0.0.1"
DOMAIN = "voice.test"
TENANT = "demo"  # created by the gateway's first-start bootstrap
USERNAME = "loadgen"
PASSWORD = "bench-" + "x" * 12
PTIME = 0.02
CALLS_PER_SOURCE = 10
SIP_TIMEOUT = 15.0
DRAIN = 0.5
# PCMU silence after an 8-byte (call, packet index) tag: 160 bytes, 20 ms at 8 kHz.
TAG = struct.Struct("!II")
FILLER = b"\xff" * (160 - TAG.size)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- SIP user agent (the generator subprocess) ------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


# RFC 3261 §7.3.3 compact header names the gateway might use.
COMPACT = {
    "i": "call-id",
    "t": "to",
    "f": "from",
    "v": "via",
    "m": "contact",
    "l": "content-length",
}


def parse_message(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Start line, headers (lower-case names, first value wins), body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.setdefault(COMPACT.get(key, key), value.strip())
    return lines[0], headers, body


def digest_authorization(challenge: str, method: str, uri: str) -> str:
    from voicegw.sip.digest import compute_response, ha1

    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.partition(" ")[2]))
    qop = "auth" if "auth" in params.get("qop", "").split(",") else None
    cnonce = secrets.token_hex(8)
    algorithm = params.get("algorithm", "MD5")
    response = compute_response(
        ha1(USERNAME, params["realm"], PASSWORD, algorithm),
        algorithm_name=algorithm,
        nonce=params["nonce"],
        method=method,
        uri=uri,
        qop=qop,
        nc=1,
        cnonce=cnonce,
    )
    value = (
        f'Digest username="{USERNAME}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}'
    )
    if qop:
        value += f', qop={qop}, nc=00000001, cnonce="{cnonce}"'
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


class SipSocket(asyncio.DatagramProtocol):
    """One UDP socket shared by a few calls; responses go to the call by Call-ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[str, asyncio.Queue[Response]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        start, headers, body = parse_message(data)
        if start.startswith("SIP/2.0 "):
            queue = self.waiting.get(headers.get("call-id", ""))
            if queue is not None:
                queue.put_nowait(Response(int(start.split()[1]), headers, body))
        elif not start.startswith("ACK "):
            # The gateway ending a call (its length limit) or refreshing it: just agree.
            reply = "SIP/2.0 200 OK\r\n" + "".join(
                f"{name}: {headers[name]}\r\n"
                for name in ("via", "from", "to", "call-id", "cseq")
                if name in headers
            )
            self.send((reply + "Content-Length: 0\r\n\r\n").encode(), addr)

    def send(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def local(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)


class RtpSocket(asyncio.DatagramProtocol):
    """A call's media: records each echoed packet's round trip and transit difference."""

    def __init__(self, sent_at: list[float]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sent_at = sent_at
        self.received: set[int] = set()
        self.round_trips: list[float] = []
        self.transit_deltas: list[float] = []
        self.last_transit: float | None = None
        self.clock = time.perf_counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = self.clock()
        if len(data) < 12 or data[0] >> 6 != 2 or 200 <= data[1] <= 204:
            return  # not RTP, or RTCP
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:  # header extension
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        if len(data) < offset + TAG.size:
            return
        _, index = TAG.unpack_from(data, offset)
        if index >= len(self.sent_at) or index in self.received:
            return
        self.received.add(index)
        transit = now - self.sent_at[index]
        self.round_trips.append(transit)
        if self.last_transit is not None:
            self.transit_deltas.append(abs(transit - self.last_transit))
        self.last_transit = transit

    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


@dataclass
class Call:
    number: int
    sip: SipSocket
    rtp: RtpSocket
    gateway: tuple[str, int]
    call_id: str = field(default_factory=lambda: secrets.token_hex(12) + "@loadgen")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(6))
    to_tag: str = ""
    cseq: int = 0
    remote_target: str = ""
    remote_rtp: tuple[str, int] | None = None
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))

    @property
    def uri(self) -> str:
        return f"sip:echo@{TENANT}.{DOMAIN}"

    def build(self, method: str, ruri: str, branch: str, extra: str = "", body: str = "") -> bytes:
        host, port = self.sip.local()
        to = f"<{self.uri}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        cseq_method = "INVITE" if method == "ACK" else method
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{USERNAME}@{TENANT}.{DOMAIN}>;tag={self.from_tag}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} {cseq_method}\r\n"
            f"Contact: <sip:{USERNAME}@{host}:{port}>\r\n"
            f"{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        ).encode()

    def offer(self) -> str:
        host = self.sip.local()[0]
        return (
            f"v=0\r\no=loadgen {self.number} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\n"
            f"t=0 0\r\nm=audio {self.rtp.port()} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\na=sendrecv\r\n"
        )

    async def transaction(
        self, method: str, ruri: str, extra: str = "", body: str = ""
    ) -> tuple[Response, str]:
        """Send a request until a final response (RFC 3261 timer A/E style, bounded)."""
        self.cseq += 1
        branch = "z9hG4bK" + secrets.token_hex(8)
        message = self.build(method, ruri, branch, extra, body)
        queue = self.sip.waiting[self.call_id]
        interval, provisional = 0.5, False
        deadline = time.monotonic() + SIP_TIMEOUT
        while time.monotonic() < deadline:
            if not provisional:
                self.sip.send(message, self.gateway)
            try:
                response = await asyncio.wait_for(queue.get(), interval)
            except TimeoutError:
                interval = min(interval * 2, 4.0)
                continue
            if not response.headers.get("cseq", "").startswith(f"{self.cseq} "):
                continue  # a retransmitted response to an earlier request
            if response.status < 200:
                provisional = True
                continue
            return response, branch
        raise TimeoutError(f"no final response to {method}")

    async def authenticated(self, method: str, ruri: str, body: str = "") -> Response:
        response, branch = await self.transaction(method, ruri, body=body)
        if response.status == 401:
            if method == "INVITE":
                self.ack(branch, response, ruri)
            challenge = response.headers["www-authenticate"]
            auth = f"Authorization: {digest_authorization(challenge, method, ruri)}\r\n"
            response, branch = await self.transaction(method, ruri, extra=auth, body=body)
        if method == "INVITE" and response.status >= 300:
            self.ack(branch, response, ruri)
        return response

    def ack(self, branch: str, response: Response, ruri: str) -> None:
        """ACK for a non-2xx final response: same branch, the response's To tag."""
        to_tag = self.to_tag
        self.to_tag = _tag(response.headers.get("to", ""))
        self.sip.send(self.build("ACK", ruri, branch), self.gateway)
        self.to_tag = to_tag

    async def setup(self) -> None:
        self.sip.waiting[self.call_id] = asyncio.Queue()
        response = await self.authenticated("INVITE", self.uri, body=self.offer())
        if response.status != 200:
            raise RuntimeError(f"INVITE answered {response.status}")
        self.to_tag = _tag(response.headers.get("to", ""))
        contact = re.search(r"<([^>]+)>", response.headers.get("contact", ""))
        self.remote_target = contact.group(1) if contact else self.uri
        sdp = response.body.decode()
        address = re.search(r"^c=IN IP4 (\S+)", sdp, re.M)
        port = re.search(r"^m=audio (\d+)", sdp, re.M)
        assert address is not None and port is not None, "answer without audio"
        self.remote_rtp = (address.group(1), int(port.group(1)))
        branch = "z9hG4bK" + secrets.token_hex(8)
        self.sip.send(self.build("ACK", self.remote_target, branch), self.gateway)

    async def teardown(self) -> int:
        response = await self.authenticated("BYE", self.remote_target)
        return response.status

    def send_rtp(self, index: int) -> None:
        assert self.remote_rtp is not None and self.rtp.transport is not None
        header = struct.pack(
            "!BBHII", 0x80, 0, index & 0xFFFF, (index * 160) & 0xFFFFFFFF, self.ssrc
        )
        self.rtp.sent_at[index] = time.perf_counter()
        self.rtp.transport.sendto(header + TAG.pack(self.number, index) + FILLER, self.remote_rtp)


def _tag(header: str) -> str:
    found = re.search(r";\s*tag=([^;>\s]+)", header)
    return found.group(1) if found else ""


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


async def wait_for_parent() -> None:
    line = await asyncio.wait_for(
        asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 60
    )
    if line.strip() != "go":
        raise SystemExit("parent went away")


async def run_calls(calls: int, seconds: float, port: int, subnet: int, phases: int) -> None:
    """Place the calls, wait for the go, send media, wait for the go, hang up, report."""
    from voicegw.media.clock import MediaClock

    loop = asyncio.get_running_loop()
    gateway = (HOST, port)
    ticks = round(seconds / PTIME)
    sockets: list[SipSocket] = []
    group: list[Call] = []
    for number in range(calls):
        source_number = number // CALLS_PER_SOURCE
        source = f"127.{subnet}.{source_number // 250}.{2 + source_number % 250}"
        if number % CALLS_PER_SOURCE == 0:
            sip = await loop.create_datagram_endpoint(SipSocket, local_addr=(source, 0))
            sockets.append(sip[1])
        sent_at = [0.0] * ticks
        rtp = (await loop.create_datagram_endpoint(partial(RtpSocket, sent_at), (source, 0)))[1]
        group.append(Call(number, sockets[-1], rtp, gateway))

    async def place(call: Call, delay: float) -> BaseException | None:
        await asyncio.sleep(delay)
        try:
            await call.setup()
        except (TimeoutError, RuntimeError, AssertionError) as exc:
            return exc
        return None

    # About 100 call attempts a second: a burst, but one the per-source limits allow.
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(place(c, i * 0.01) for i, c in enumerate(group)))
    up = [c for c, error in zip(group, outcomes, strict=True) if error is None]
    errors = sorted({repr(e) for e in outcomes if e is not None})
    emit({"established": len(up), "setup_s": time.perf_counter() - started, "errors": errors[:3]})
    await wait_for_parent()

    # Real calls are not phase-aligned: the calls form ``phases`` groups whose packets
    # leave evenly spread over the 20 ms period (1: every call's packet in one burst).
    groups = [up[k::phases] for k in range(phases)]

    def send(group: list[Call], index: int) -> None:
        for call in group:
            call.send_rtp(index)

    def tick(index: int, _: float) -> None:
        if index < ticks:
            send(groups[0], index)
            for k in range(1, phases):
                loop.call_later(k * PTIME / phases, send, groups[k], index)

    clock = MediaClock()
    clock.subscribe(tick)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await clock.run(ticks=ticks)
    await asyncio.sleep(DRAIN)
    generator_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    skipped = clock.schedule.skipped if clock.schedule else 0
    emit({"media_done": True})
    await wait_for_parent()
    statuses = await asyncio.gather(*(c.teardown() for c in up), return_exceptions=True)
    hung_up = sum(1 for s in statuses if s == 200)
    sent = sum(sum(1 for t in c.rtp.sent_at if t > 0) for c in up)
    round_trips = [v for c in up for v in c.rtp.round_trips]
    deltas = [v for c in up for v in c.rtp.transit_deltas]
    emit(
        {
            "calls": calls,
            "established": len(up),
            "hung_up": hung_up,
            "sent": sent,
            "received": sum(len(c.rtp.received) for c in up),
            "rtt_p50_ms": 1e3 * percentile(round_trips, 0.5),
            "rtt_p99_ms": 1e3 * percentile(round_trips, 0.99),
            "jitter_p50_ms": 1e3 * percentile(deltas, 0.5),
            "jitter_p99_ms": 1e3 * percentile(deltas, 0.99),
            "skipped_ticks": skipped,
            "generator_share": generator_share,
        }
    )
    for s in sockets:
        assert s.transport is not None
        s.transport.close()
    for c in group:
        assert c.rtp.transport is not None
        c.rtp.transport.close()


# -- the gateway process and the driver -------------------------------------------------


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    sip_port: int
    http: str
    token: str
    log: Path
    log_read: int = 0  # bytes of the log already looked at

    def heard(self) -> dict[str, int]:
        """The ``echo.heard`` lines logged since the last call: calls, frames, drops."""
        with self.log.open("rb") as f:
            f.seek(self.log_read)
            data = f.read()
        # Only whole lines; a partial last line is read next time.
        data = data[: data.rfind(b"\n") + 1]
        self.log_read += len(data)
        total = {"calls": 0, "frames": 0, "dropped": 0}
        for line in data.splitlines():
            if b'"echo.heard"' in line:
                record = json.loads(line)
                total["calls"] += 1
                total["frames"] += int(record["frames"])
                total["dropped"] += int(record["dropped"])
        return total


async def start_gateway(data_dir: Path, max_seconds: float, taps: bool) -> Gateway:
    sip_port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = dict(
        os.environ,
        VOICEGW_STORAGE__DATA_DIR=str(data_dir),
        VOICEGW_SIP__DOMAIN=DOMAIN,
        VOICEGW_SIP__UDP_PORT=str(sip_port),
        VOICEGW_SIP__TCP_PORT=str(free_port(socket.SOCK_STREAM)),
        VOICEGW_SIP__DIGEST_ALGORITHMS='["MD5"]',
        VOICEGW_HTTP__PORT=str(http_port),
        VOICEGW_MEDIA__RTP_PORT_MIN="30000",
        VOICEGW_MEDIA__RTP_PORT_MAX="39999",
        VOICEGW_MEDIA__MAX_CALL_SECONDS=str(max_seconds),
        # INFO for the echo.heard lines; nothing logs per packet, so the media phase
        # costs the same at WARNING.
        VOICEGW_LOGGING__LEVEL="INFO" if taps else "WARNING",
        VOICEGW_ECHO_METER="1" if taps else "0",
    )
    env.pop("VOICEGW_CONFIG", None)
    log = (data_dir / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicegw.cli", "serve", env=env, stdout=log, stderr=log
    )
    log.close()
    http = f"http://{HOST}:{http_port}"
    token_file = data_dir / "operator-token"
    import aiohttp

    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start; see {data_dir / 'gateway.log'}")
            if token_file.exists():
                token = token_file.read_text().strip()
                try:
                    async with session.get(
                        f"{http}/api/v1/tenants", headers={"Authorization": f"Bearer {token}"}
                    ) as reply:
                        if reply.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.2)
        async with session.post(
            f"{http}/api/v1/tenants/{TENANT}/sip-users",
            headers={"Authorization": f"Bearer {token}"},
            json={"username": USERNAME, "password": PASSWORD},
        ) as reply:
            if reply.status != 201:
                raise RuntimeError(f"creating the SIP login: {reply.status} {await reply.text()}")
    return Gateway(process, sip_port, http, token, data_dir / "gateway.log")


@dataclass(frozen=True)
class Options:
    seconds: float  # of media per call
    runs: int
    uvloop: bool  # for the generator
    phases: int
    taps: bool


async def one_load(gw: Gateway, calls: int, subnet: int, options: Options) -> dict[str, Any]:
    seconds = options.seconds
    pid = gw.process.pid
    command = [sys.executable, __file__, "--role", "calls", "--calls", str(calls)]
    command += ["--duration", str(seconds), "--port", str(gw.sip_port), "--subnet", str(subnet)]
    command += ["--phases", str(options.phases)]
    if options.uvloop:
        command.append("--uvloop")
    cpu_start = cpu_seconds(pid)
    gw.heard()  # skip what earlier loads logged
    child = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    async def read(within: float) -> dict[str, Any]:
        line = await asyncio.wait_for(stdout.readline(), within)
        if not line:
            raise RuntimeError("the load generator exited early")
        return cast(dict[str, Any], json.loads(line))

    async def go() -> None:
        stdin.write(b"go\n")
        await stdin.drain()

    try:
        setup = await read(SIP_TIMEOUT * 2 + calls * 0.01 + 30)
        (user0, system0), wall0 = cpu_split(pid), time.perf_counter()
        await go()
        await read(seconds + 30)
        user, system = cpu_split(pid)
        user, system, wall = user - user0, system - system0, time.perf_counter() - wall0
        cpu_media = user + system
        await go()
        result = await read(SIP_TIMEOUT * 2 + 30)
        await asyncio.wait_for(child.wait(), 10)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    # The gateway's CPU outside the media phase: INVITE/auth/answer and BYE per call.
    await asyncio.sleep(0.5)
    cpu_signalling = cpu_seconds(pid) - cpu_start - cpu_media
    up = max(1, result["established"])
    heard = gw.heard()
    expected_frames = result["established"] * seconds / PTIME
    result.update(
        tap_frames=heard["frames"] / expected_frames if options.taps else float("nan"),
        tap_dropped=heard["dropped"],
        cpu_user_share=user / max(1e-9, cpu_media),
        # The machine's 1-minute load average at the end: > 2 on 2 cores means other
        # work competed with the gateway and the generator (latency/loss disturbed).
        loadavg=os.getloadavg()[0],
        # Packets the gateway received and sent back: two socket operations each.
        cpu_us_per_packet=1e6 * cpu_media / max(1, result["received"]),
        setup_s=setup["setup_s"],
        errors=setup["errors"],
        loss=1.0 - result["received"] / max(1, result["sent"]),
        # The media window includes the drain; call-seconds are the calls times the window.
        cpu_ms_per_call_s=1e3 * cpu_media / (up * wall),
        cpu_share=cpu_media / wall,
        signalling_cpu_ms_per_call=1e3 * cpu_signalling / up,
    )
    return result


async def drive(loads: list[int], options: Options) -> None:
    with tempfile.TemporaryDirectory(prefix="voicegw-bench-") as tmp:
        gw = await start_gateway(Path(tmp), options.seconds + 60, options.taps)
        try:
            rows = []
            subnet = 1
            for calls in loads:
                results = []
                for run in range(options.runs):
                    result = await one_load(gw, calls, subnet, options)
                    results.append(result)
                    print(
                        f"  N={calls} run {run + 1}: loss {result['loss']:.3%}, RTT p99 "
                        f"{result['rtt_p99_ms']:.1f} ms, jitter p99 {result['jitter_p99_ms']:.1f}"
                        f" ms, CPU {result['cpu_ms_per_call_s']:.2f} ms/call-s, tap frames "
                        f"{result['tap_frames']:.1%}, generator skipped "
                        f"{result['skipped_ticks']}, load average {result['loadavg']:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    # Fresh source addresses: the rate limiter's buckets are per address.
                    subnet += 1
                rows.append((calls, results))
                for r in results:
                    if r["errors"] or r["established"] < calls:
                        print(
                            f"  N={calls}: {r['established']} up; errors {r['errors']}",
                            file=sys.stderr,
                        )
        finally:
            gw.process.terminate()
            try:
                await asyncio.wait_for(gw.process.wait(), 20)
            except TimeoutError:
                gw.process.kill()
                await gw.process.wait()
            # The temp dir goes with the run: surface the gateway's errors before it does.
            problems = [
                line
                for line in (Path(tmp) / "gateway.log").read_text(errors="replace").splitlines()
                if '"error"' in line or "Traceback" in line
            ]
            if problems:
                print(f"gateway logged {len(problems)} error(s); first: {problems[0][:300]}")
    report(rows, options)


COLUMNS = (
    # (heading, key, format): the rules of the table, one row each.
    ("calls up", "established", "{:8.0f}"),
    ("BYE 200", "hung_up", "{:7.0f}"),
    ("loss %", "loss", "{:8.3%}"),
    ("RTT p50 ms", "rtt_p50_ms", "{:10.2f}"),
    ("RTT p99 ms", "rtt_p99_ms", "{:10.2f}"),
    ("jit p50 ms", "jitter_p50_ms", "{:10.3f}"),
    ("jit p99 ms", "jitter_p99_ms", "{:10.3f}"),
    ("CPU ms/call-s", "cpu_ms_per_call_s", "{:13.2f}"),
    ("µs/packet", "cpu_us_per_packet", "{:9.1f}"),
    ("user %", "cpu_user_share", "{:6.0%}"),
    ("tap frames", "tap_frames", "{:10.1%}"),
    ("GW core %", "cpu_share", "{:9.1%}"),
    ("sig CPU ms/call", "signalling_cpu_ms_per_call", "{:15.1f}"),
    ("setup s", "setup_s", "{:7.2f}"),
    ("gen skipped", "skipped_ticks", "{:11.0f}"),
    ("gen core %", "generator_share", "{:10.1%}"),
    ("load avg", "loadavg", "{:8.1f}"),
)


def report(rows: list[tuple[int, list[dict[str, Any]]]], options: Options) -> None:
    loop_name = "uvloop" if options.uvloop else "asyncio"
    print(
        "SIP echo calls through the gateway process: PCMU 20 ms both ways, "
        f"{options.seconds:g} s of media per call, median of {options.runs} run(s); "
        f"gateway on uvloop, generator on {loop_name}, sends in {options.phases} phase(s) "
        "per 20 ms; " + ("taps decoding the caller each tick" if options.taps else "no taps")
    )
    print("RTT = generator -> gateway -> echo -> generator (a round trip); jitter = |D(i-1,i)|")
    widths = [max(len(h), len(f.format(0.0))) for h, _, f in COLUMNS]
    print(f"{'N':>5} " + " ".join(h.rjust(w) for (h, _, _), w in zip(COLUMNS, widths, strict=True)))
    for calls, results in rows:
        cells = []
        for (_, key, fmt), width in zip(COLUMNS, widths, strict=True):
            value = statistics.median(float(r[key]) for r in results)
            cells.append(fmt.format(value).rjust(width))
        print(f"{calls:>5} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", default="25,50", help="comma-separated N (e.g. 25,50,100,200)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of media per load")
    parser.add_argument("--runs", type=int, default=1, help="runs per N (median)")
    parser.add_argument("--uvloop", action="store_true", help="run the load generator on uvloop")
    parser.add_argument(
        "--no-taps",
        dest="taps",
        action="store_false",
        help="echo without the tap and level meter (relay only)",
    )
    parser.add_argument(
        "--role", choices=["driver", "calls"], default="driver", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--subnet", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--phases",
        type=int,
        default=10,
        help="groups of calls spread over the 20 ms period (1: all packets in one burst)",
    )
    args = parser.parse_args()
    if args.role == "calls":
        runner = asyncio.run
        if args.uvloop:
            import uvloop

            runner = uvloop.run
        runner(run_calls(int(args.calls), args.duration, args.port, args.subnet, args.phases))
        return
    loads = [int(n) for n in args.calls.split(",") if n.strip()]
    if not loads or min(loads) < 1 or max(loads) > 2500 or not 1 <= args.duration <= 600:
        parser.error("N in 1..2500 and a duration of 1..600 s")
    if not 1 <= args.phases <= 20:
        parser.error("--phases in 1..20")
    options = Options(args.duration, max(1, args.runs), args.uvloop, args.phases, args.taps)
    asyncio.run(drive(loads, options))


if __name__ == "__main__":
    main()
