"""The echo service's meter: the caller's audio decoded through a tap while it is echoed.

Two SIP services on loopback: one places an authenticated call to the other's
echo service and talks for a second at real-time pacing. With the meter on the
echo still returns every packet, and its ``echo.heard`` figures count the
frames the tap decoded and their level; with it off, nothing is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.peers import REALM, acme_store, loopback_sip_service
from voicegw.calls.echo import EchoConfig, EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import InboundCall, OutboundCall, SipCalls
from voicegw.calls.sip_service import SipService
from voicegw.media.ports import PortAllocator
from voicegw.sip.digest import DigestClient, TrunkCredentials
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import parse_uri

TIMEOUT = 5.0
FRAMES = 50  # one second of talk
AMPLITUDE = 8000  # about -12 dBFS


async def no_owner(number: str) -> str | None:
    return None


class Node:
    def __init__(self, service: SipService, calls: SipCalls) -> None:
        self.service = service
        self.calls = calls
        self.offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = self.offered.put_nowait


StartNode = Callable[[EchoService], Awaitable[Node]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    started: list[Node] = []
    async with acme_store(tmp_path / "voicegw.db", {"alice": "pw"}) as sessions:

        async def start(echo: EchoService) -> Node:
            service = loopback_sip_service(sessions, b"0123456789abcdef-meter-secret")
            calls = SipCalls(
                service,
                Router(no_owner),
                PortAllocator("127.0.0.1", 45000, 45999),
                {Service.ECHO: echo},
            )
            calls.attach()
            await service.start()
            node = Node(service, calls)
            started.append(node)
            return node

        yield start
        for node in started:
            await node.calls.close()
            await node.service.stop()


async def call_echo(start_node: StartNode, echo: EchoService) -> tuple[OutboundCall, InboundCall]:
    """An authenticated call from one node to the other's ``echo``: (our leg, the echo's)."""
    callee = await start_node(echo)
    caller = await start_node(EchoService(EchoConfig()))
    assert callee.service.transports.bound.udp is not None
    host, port = callee.service.transports.bound.udp
    call = await asyncio.wait_for(
        caller.calls.place_call(
            parse_uri(f"sip:echo@{REALM}"),
            Destination(host, port),
            caller=f"sip:alice@{REALM}",
            tenant_id="acme",
            digest=DigestClient(TrunkCredentials("alice", "pw", REALM, host)),
        ),
        TIMEOUT,
    )
    assert isinstance(call, OutboundCall), call
    far = await asyncio.wait_for(callee.offered.get(), TIMEOUT)
    await asyncio.wait_for(far.confirmed.wait(), TIMEOUT)
    return call, far


async def talk(call: OutboundCall) -> int:
    """One second of a loud tone at real-time pacing; how many packets came back."""
    loop = asyncio.get_running_loop()
    tone = (AMPLITUDE * np.sin(2 * np.pi * 440 * np.arange(160) / 8000)).astype("<i2").tobytes()
    start = loop.time()
    for i in range(FRAMES):  # paced like a phone, so the jitter buffer plays every frame
        call.transport.send_pcm(tone)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    leg = call.transport.leg

    def echoed() -> int:
        received = leg.summary().received
        return 0 if received is None else received.packets_received

    for _ in range(int(TIMEOUT / 0.02)):
        if echoed() >= FRAMES:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the jitter buffer plays out its last frames
    return echoed()


async def hang_up(call: OutboundCall, far: InboundCall) -> None:
    call.hang_up()
    await asyncio.wait_for(far.ended.wait(), TIMEOUT)


async def test_metered_echo_returns_every_packet_and_logs_what_the_tap_decoded(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    echo = EchoService(EchoConfig(meter=True))
    with caplog.at_level(logging.INFO, logger="voicegw.calls.echo"):
        call, far = await call_echo(start_node, echo)
        assert far.transport.leg.pcm_enabled
        echoed = await talk(call)
        await hang_up(call, far)
        for _ in range(int(TIMEOUT / 0.02)):  # the meter's last drain follows the BYE
            if echo.last_heard is not None:
                break
            await asyncio.sleep(0.02)

    assert echoed == FRAMES  # the tap never cost the relay a packet
    heard = echo.last_heard
    assert heard is not None
    # Every frame decoded (the jitter buffer may drop one or two to cut its delay).
    assert FRAMES - 2 <= heard.frames <= FRAMES
    assert heard.audible == heard.frames and heard.dropped == 0
    expected_dbfs = 20 * math.log10(AMPLITUDE / 32768)
    assert heard.peak_dbfs is not None and abs(heard.peak_dbfs - expected_dbfs) < 1.0
    [record] = [r for r in caplog.records if r.getMessage() == "echo.heard"]
    assert record.__dict__["call_id"] == far.id and record.__dict__["frames"] == heard.frames


async def test_unmetered_echo_decodes_nothing(start_node: StartNode) -> None:
    echo = EchoService(EchoConfig())
    call, far = await call_echo(start_node, echo)
    echoed = await talk(call)
    assert not far.transport.leg.pcm_enabled  # no tap: the relay alone
    await hang_up(call, far)
    assert echoed == FRAMES
    assert echo.last_heard is None


def test_the_meter_is_switched_on_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_ECHO_METER", "1")
    assert EchoConfig.from_environment().meter
    monkeypatch.setenv("VOICEGW_ECHO_METER", "0")
    assert not EchoConfig.from_environment().meter
    monkeypatch.delenv("VOICEGW_ECHO_METER")
    assert not EchoService().config.meter
