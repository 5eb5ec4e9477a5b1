"""A flood of malformed and unauthenticated requests does not stop a real call.

A separate process sends 20,000 datagrams in bursts (about 8,000/s) from 32
loopback sources (127.0.0.2-33): garbage, truncated requests, INVITEs to a
number nobody owns, REGISTER and BYE without credentials, OPTIONS, forged
digest answers. Meanwhile a registered baresip (127.0.0.1) calls the echo
service; the call must connect and echo audio, and the gateway's state (edge
rate limiter and ban list, transaction table, pending requests, RSS) must stay
bounded.

32 sources may hold 32 x 16 pending requests, more than the 256 shared slots:
the phone, which registered, gets its INVITE looked up from the reserve and
ahead of the flood's lookups. Under load the kernel drops much of the flood
(and maybe the INVITE) once the gateway's socket buffer is full; baresip
retransmits the INVITE, and nothing may answer it 503 and end the call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from voicegw.calls.sip_calls import EndReason

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]


def _harness() -> ModuleType:
    # The baresip driver and gateway fixtures live beside the call tests; load that module
    # by path (tests are imported with --import-mode=importlib, not as a package).
    spec = importlib.util.spec_from_file_location(
        "baresip_calls_harness", Path(__file__).with_name("test_baresip_calls.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


harness = _harness()
sessions = harness.sessions
gateway = harness.gateway
source_wav = harness.source_wav
phone = harness.phone

FLOOD_COUNT = 20_000
FLOOD_SOURCES = 32
FLOOD_SECONDS = 15.0

FLOOD = r"""
import os, socket, sys, time
port, count, sources = (int(arg) for arg in sys.argv[1:4])
limit = float(sys.argv[4])
socks = []
for i in range(sources):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"127.0.0.{2 + i}", 0))
    socks.append(s)

def request(method, uri, extra="", to=""):
    n = os.urandom(4).hex()
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK{n};rport\r\n"
        f"From: <sip:x@acme.voice.test>;tag={n}\r\nTo: <{uri}>{to}\r\nCall-ID: {n}@flood\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContact: <sip:x@127.0.0.2:5060>\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()

forged = (
    'Authorization: Digest username="alice", realm="acme.voice.test", nonce="00", '
    'uri="sip:echo@acme.voice.test", response="00000000000000000000000000000000"\r\n'
)
makers = [
    lambda: os.urandom(200),
    lambda: b"INVITE sip:echo@acme.voice.test SIP/2.0\r\nVia: SIP/2.0/UDP",
    lambda: request("INVITE", "sip:+14155550199@voice.test"),
    lambda: request("REGISTER", "sip:acme.voice.test"),
    lambda: request("OPTIONS", "sip:voice.test"),
    lambda: request("BYE", "sip:echo@acme.voice.test", to=";tag=x"),
    lambda: request("INVITE", "sip:echo@acme.voice.test", forged),
]
deadline = time.monotonic() + limit
sent = 0
for i in range(count):
    if time.monotonic() > deadline:
        break
    try:
        socks[i % sources].sendto(makers[i % len(makers)](), ("127.0.0.1", port))
        sent += 1
    except OSError:
        pass
    if i % 100 == 99:
        # Bursts of 100, then a breath: flat out, a loopback flood only measures how fast
        # the kernel drops datagrams once the gateway's socket buffer is full.
        time.sleep(0.01)
print(sent, time.monotonic() - (deadline - limit))
"""


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


async def test_call_completes_with_audio_during_a_flood_and_state_stays_bounded(
    gateway: Any, phone: Any, request: pytest.FixtureRequest
) -> None:
    def figure(name: str, value: object) -> None:
        # Figures for the report (pytest --junitxml ... -o junit_family=legacy shows them).
        request.node.user_properties.append((name, value))

    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        service = gw.service
        counters = service.screen.counters
        before = rss_bytes()
        started = time.monotonic()
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOOD,
            str(gw.port),
            str(FLOOD_COUNT),
            str(FLOOD_SOURCES),
            str(FLOOD_SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            await until(lambda: counters.received > 1000, "the flood reaches the gateway")
            await phone.command("dial", harness.ECHO_URI)
            dialled = time.monotonic()
            # The INVITE may be among datagrams the kernel drops while the flood fills the
            # socket buffer; baresip's timer A retransmits it while the flood goes on.
            call = await asyncio.wait_for(gw.offered.get(), FLOOD_SECONDS + harness.EVENT_TIMEOUT)
            offered = time.monotonic()
            figure("offered_while_flooding", flood.returncode is None)
            established = await phone.event("CALL_ESTABLISHED", "CALL_CLOSED")
            assert established == "CALL_ESTABLISHED"
            await asyncio.wait_for(call.confirmed.wait(), harness.EVENT_TIMEOUT)
            await until(
                lambda: call.transport.leg.summary().packets_sent >= 100, "echo sends 2 s of audio"
            )
            out, _ = await asyncio.wait_for(flood.communicate(), FLOOD_SECONDS + 5)
        finally:
            if flood.returncode is None:
                flood.kill()
                await flood.wait()
        sent, seconds = out.decode().split()
        assert int(sent) == FLOOD_COUNT
        figure("flood_per_second", round(FLOOD_COUNT / float(seconds)))
        figure("flood_read_by_gateway", counters.received)
        figure("invite_offered_after_s", round(offered - dialled, 2))
        figure("pending_refused", service.pending.refused)
        figure("pending_peak", service.pending.peak)

        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), harness.EVENT_TIMEOUT)
        assert call.end_reason is EndReason.REMOTE_BYE
        summary = call.transport.leg.summary()
        assert summary.received is not None and summary.received.packets_received >= 100

        # How much of the flood the gateway reads depends on the load of the machine: once
        # its socket buffer is full the kernel drops the rest. Over 1,000 were read before
        # the call was placed (see above); what matters is what they left behind.
        assert len(service.screen.rate) <= FLOOD_SOURCES + 1
        assert service.bans.banned <= FLOOD_SOURCES and service.bans.tracked <= FLOOD_SOURCES + 1
        assert service.screen.throttled_sources <= FLOOD_SOURCES
        # What got through holds server transactions until their timers end (32 s): no
        # more than were delivered, and the layer's cap was never reached. (The layer
        # exposes no size of its tables: read them directly.)
        assert len(service.layer._servers) <= counters.delivered
        assert len(service.layer._servers) < service.layer.max_server_transactions
        assert service.layer.overload_count == 0
        # Requests being worked on: never more than the shared slots and the reserve, and
        # every slot was given back.
        config = service.config
        assert service.pending.peak <= config.max_pending + config.pending_reserve
        await until(lambda: len(service.pending) == 0, "every pending slot is given back")
        assert service.pending.sources == 0 and len(service._tasks) == 0
        assert gw.calls.calls == {} and gw.calls.ports.in_use == 0
        growth = rss_bytes() - before
        figure("rss_growth_mb", round(growth / 2**20, 1))
        figure("test_seconds", round(time.monotonic() - started, 1))
        assert growth < 64 * 1024 * 1024


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + FLOOD_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.02)
