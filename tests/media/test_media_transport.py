"""LegTransport on loopback with real UDP sockets: relay, RTP bleed, NAT latching, RTCP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from voicegw.media.codecs import PCMU
from voicegw.media.dtmf import digit_packets
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import (
    Address,
    DropReason,
    DtmfReceived,
    LegConfig,
    MediaEvent,
    MediaLeg,
    SourceLatched,
    static_codecs,
)
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"
INJECTED = b"\xee" * 160  # no payload of audio() looks like this


class Peer(asyncio.DatagramProtocol):
    """A plain UDP endpoint standing in for a phone or a carrier's media server."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, float]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, asyncio.get_running_loop().time()))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def packets(self) -> list[RtpPacket]:
        return [RtpPacket.parse(data) for data, _ in self.received if not 192 <= data[1] <= 223]


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    """Wait (bounded) for what the sockets will deliver."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


@dataclass
class Net:
    allocator: PortAllocator
    peers: list[Peer] = field(default_factory=list)
    legs: list[LegTransport] = field(default_factory=list)

    async def peer(self) -> Peer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, 0))
        self.peers.append(peer)
        return peer

    async def leg(self, remote: Address | None, **overrides: Any) -> LegTransport:
        loop = asyncio.get_running_loop()
        settings: dict[str, Any] = {
            "codecs": static_codecs(PCMU),
            "send_payload_type": 0,
            "remote_rtp": remote,
            "wallclock_offset": wallclock_offset(loop),
        }
        settings.update(overrides)
        ports = self.allocator.allocate()
        leg = await LegTransport.open(MediaLeg(LegConfig(**settings), loop.time()), ports)
        self.legs.append(leg)
        return leg


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    world = Net(PortAllocator(HOST, 20000, 30000))
    yield world
    for leg in world.legs:
        leg.close()
    for peer in world.peers:
        assert peer.transport is not None
        peer.transport.close()


def audio(seq: int, ssrc: int = 0xCA11E2) -> bytes:
    return bytes(RtpPacket(0, seq, seq * 160, ssrc, bytes([seq % 200]) * 160, seq == 0))


def bridge(a: LegTransport, b: LegTransport) -> None:
    a.peer, b.peer = b, a


async def test_two_legs_relay_audio_untouched_in_both_directions(net: Net) -> None:
    caller, callee = await net.peer(), await net.peer()
    a, b = await net.leg(caller.address), await net.leg(callee.address)
    bridge(a, b)
    for seq in range(50):
        caller.send(audio(seq), a.local_rtp)
        callee.send(audio(seq, ssrc=0xA6E47), b.local_rtp)
        await asyncio.sleep(0.001)
    await until(lambda: len(callee.packets()) == 50 and len(caller.packets()) == 50)
    to_callee = callee.packets()
    assert [p.payload for p in to_callee] == [bytes([s % 200]) * 160 for s in range(50)]
    assert {p.ssrc for p in to_callee} == {b.leg.sender.ssrc}
    first = to_callee[0].sequence_number
    assert [(p.sequence_number - first) & 0xFFFF for p in to_callee] == list(range(50))
    assert len(caller.packets()) == 50


async def test_rtp_bleed_injection_after_latching_is_dropped_while_the_call_goes_on(
    net: Net,
) -> None:
    caller, callee, attacker = await net.peer(), await net.peer(), await net.peer()
    a, b = await net.leg(caller.address), await net.leg(callee.address)
    bridge(a, b)
    caller.send(audio(0), a.local_rtp)
    await until(lambda: a.leg.latched == caller.address)
    for seq in range(1, 41):
        caller.send(audio(seq), a.local_rtp)
        # Valid RTP with the negotiated payload type, aimed at the leg's port.
        attacker.send(bytes(RtpPacket(0, seq, seq * 160, 0xBAD, INJECTED)), a.local_rtp)
        await asyncio.sleep(0.001)
    dropped = a.leg.dropped
    await until(lambda: len(callee.packets()) == 41 and dropped[DropReason.UNEXPECTED_SOURCE] == 40)
    assert all(p.payload != INJECTED for p in callee.packets())
    assert a.leg.latched == caller.address
    assert attacker.received == []  # nothing of the call leaked back to the attacker


async def test_symmetric_rtp_latches_onto_the_nated_source_port_and_answers_there(
    net: Net,
) -> None:
    caller, callee = await net.peer(), await net.peer()
    # The caller's SDP names a port it does not send from (its NAT rewrote it).
    signalled = (HOST, caller.address[1] ^ 2)
    a = await net.leg(signalled, latch_packets=3)
    b = await net.leg(callee.address)
    bridge(a, b)
    for seq in range(10):
        caller.send(audio(seq), a.local_rtp)
        await asyncio.sleep(0.001)
    await until(lambda: len(callee.packets()) == 8)
    assert a.leg.latched == caller.address
    assert a.leg.dropped[DropReason.LEARNING] == 2
    callee.send(audio(0, ssrc=7), b.local_rtp)
    await until(lambda: len(caller.packets()) == 1)  # our audio goes to the NATed port


async def test_malformed_datagrams_are_counted_and_do_not_disturb_the_call(net: Net) -> None:
    caller, callee = await net.peer(), await net.peer()
    a, b = await net.leg(caller.address), await net.leg(callee.address)
    bridge(a, b)
    rng = random.Random(4733)
    for seq in range(20):
        caller.send(audio(seq), a.local_rtp)
        caller.send(b"\x80" + rng.randbytes(rng.randrange(0, 11)), a.local_rtp)  # short header
        caller.send(b"\x00" + rng.randbytes(30), a.local_rtp)  # version 0
        await asyncio.sleep(0.001)
    dropped = a.leg.dropped
    # Random second bytes sometimes look like RTCP packet types: those count as bad RTCP.
    await until(
        lambda: (
            len(callee.packets()) == 20
            and dropped[DropReason.MALFORMED] + dropped[DropReason.MALFORMED_RTCP] == 40
        )
    )


async def test_rfc4733_digits_reach_the_event_handler_and_not_the_other_leg(net: Net) -> None:
    caller, callee = await net.peer(), await net.peer()
    a = await net.leg(caller.address, telephone_event_payload_type=101)
    b = await net.leg(callee.address)
    bridge(a, b)
    events: list[MediaEvent] = []
    a.on_event = events.append
    for seq, scheduled in enumerate(digit_packets("9", timestamp=0), start=1):
        packet = RtpPacket(101, seq, scheduled.timestamp, 5, scheduled.payload, scheduled.marker)
        caller.send(bytes(packet), a.local_rtp)
    await until(lambda: any(isinstance(e, DtmfReceived) for e in events))
    digits = [e.digit.digit for e in events if isinstance(e, DtmfReceived)]
    assert digits == ["9"]
    assert SourceLatched(caller.address, signalled=True) in events
    assert callee.packets() == []


async def test_a_digit_whose_end_packets_are_lost_is_reported_by_the_legs_timer(
    net: Net,
) -> None:
    """Audio does not re-arm the leg's timer per packet; a DTMF packet must, or a digit
    without its end packets would wait for the next RTCP report (seconds)."""
    caller, callee = await net.peer(), await net.peer()
    a = await net.leg(caller.address, telephone_event_payload_type=101, rtcp_interval=60.0)
    b = await net.leg(callee.address)
    bridge(a, b)
    events: list[MediaEvent] = []
    a.on_event = events.append
    caller.send(audio(1), a.local_rtp)
    # A 300 ms press whose end packets (E bit, RFC 4733 §2.3.4) never come.
    updates = [p for p in digit_packets("7", timestamp=160, duration=0.3) if p.payload[1] < 0x80]
    assert len(updates) >= 2
    for seq, packet in enumerate(updates, start=2):
        wire = RtpPacket(101, seq, packet.timestamp, 0xCA11E2, packet.payload, packet.marker)
        caller.send(bytes(wire), a.local_rtp)
    sent_at = asyncio.get_running_loop().time()
    await until(lambda: any(isinstance(e, DtmfReceived) for e in events), seconds=2.0)
    waited = asyncio.get_running_loop().time() - sent_at
    [digit] = [e.digit for e in events if isinstance(e, DtmfReceived)]
    assert digit.digit == "7" and not digit.ended
    assert waited < 1.5  # the DTMF timeout (0.25 s), not the RTCP interval (30-90 s)


async def test_rtcp_on_its_own_port_gives_each_side_an_rtt(net: Net) -> None:
    a = await net.leg(None, rtcp_interval=0.1)
    b = await net.leg(a.local_rtp, rtcp_interval=0.1)
    a.leg.relearn(asyncio.get_running_loop().time(), remote_rtp=b.local_rtp)
    for _ in range(100):  # bounded: 2 s
        a.send_payload(PCMU.silence())
        b.send_payload(PCMU.silence())
        if a.leg.rtt is not None and b.leg.rtt is not None:
            break
        await asyncio.sleep(0.02)
    assert a.leg.rtt is not None and 0 <= a.leg.rtt < 0.5
    assert b.leg.rtt is not None and 0 <= b.leg.rtt < 0.5
    received = b.leg.summary().received
    assert received is not None and received.packets_received > 0


async def test_relay_over_ipv6_loopback() -> None:
    loop = asyncio.get_running_loop()
    try:
        _, caller = await loop.create_datagram_endpoint(Peer, local_addr=("::1", 0))
        _, callee = await loop.create_datagram_endpoint(Peer, local_addr=("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    world = Net(PortAllocator("::1", 20000, 30000))
    world.peers += [caller, callee]
    try:
        a, b = await world.leg(caller.address), await world.leg(callee.address)
        bridge(a, b)
        for seq in range(10):
            caller.send(audio(seq), a.local_rtp)
            await asyncio.sleep(0.001)
        await until(lambda: len(callee.packets()) == 10)
        assert a.leg.latched == caller.address
    finally:
        for leg in world.legs:
            leg.close()
        for peer in world.peers:
            assert peer.transport is not None
            peer.transport.close()
