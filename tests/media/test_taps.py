"""Taps: aligned per-party PCM frames; a slow consumer loses only its own frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy as np
import pytest

from voicegw.media.clock import MediaClock
from voicegw.media.codecs import PCMA, PCMU, Codec
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import Address, LegConfig, MediaLeg, static_codecs
from voicegw.media.taps import CallTap, Tap, TapConsumer, TapFrame, TapHub
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"


def frame(index: int, party: str = "caller") -> TapFrame:
    return TapFrame(party, index, index * 0.02, bytes(320), 8000, False)


def test_a_full_queue_drops_its_oldest_frame_and_counts_it() -> None:
    consumer = TapConsumer(maxsize=3)
    for i in range(5):
        consumer.offer(frame(i))
    assert consumer.dropped == 2
    got = [consumer.get_nowait() for _ in range(4)]
    assert [f.index for f in got if f is not None] == [2, 3, 4]
    assert got[-1] is None


def test_publishing_reaches_every_consumer_and_a_slow_one_costs_the_others_nothing() -> None:
    tap = Tap()
    fast, slow = tap.add_consumer(maxsize=100), tap.add_consumer(maxsize=4)
    for i in range(50):
        tap.publish(frame(i))
        assert fast.get_nowait() == frame(i)
    assert fast.dropped == 0
    assert slow.dropped == 46 and slow.pending == 4


async def test_a_closed_consumer_drains_then_stops_iterating() -> None:
    tap = Tap()
    consumer = tap.add_consumer()
    tap.publish(frame(0))
    tap.publish(frame(1))
    tap.close()
    tap.publish(frame(2))
    assert [f.index async for f in consumer] == [0, 1]


def test_drain_hands_over_every_queued_frame_at_once_and_counts_them() -> None:
    consumer = TapConsumer(maxsize=10)
    for i in range(4):
        consumer.offer(frame(i))
    assert [f.index for f in consumer.drain()] == [0, 1, 2, 3]
    assert consumer.delivered == 4 and consumer.pending == 0 and consumer.drain() == []


class SteppedTime:
    """A clock whose sleep just moves time on: ticks run back to back, exactly on time."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


async def test_taps_of_many_calls_share_one_clock_subscriber_and_decode_exactly() -> None:
    """Batched decoding across calls and laws gives each party what its own decoder would."""
    rng = np.random.default_rng(4)
    source = ("192.0.2.1", 4000)
    laws: list[Codec] = [PCMU, PCMU, PCMA, PCMU, PCMA]
    legs = [
        MediaLeg(LegConfig(static_codecs(c), c.payload_type or 0, remote_rtp=source), 0.0)
        for c in laws
    ]
    time = SteppedTime()
    clock = MediaClock(time=time.time, sleep=time.sleep)
    call_taps = [CallTap({"caller": leg}) for leg in legs]
    consumers = [t.tap.add_consumer(maxsize=100) for t in call_taps]
    for call_tap in call_taps:
        call_tap.attach(clock)
    assert clock.subscribers == 1 and TapHub.of(clock).taps == len(legs)

    sent: list[list[bytes]] = []
    for n, (leg, codec) in enumerate(zip(legs, laws, strict=True)):
        payloads = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(5)]
        for seq, payload in enumerate(payloads):
            packet = RtpPacket(codec.payload_type or 0, seq, seq * 160, n + 1, payload)
            assert leg.receive(bytes(packet), source, 0.0)
        sent.append(payloads)
    await clock.run(ticks=15)

    indexes = None
    for consumer, codec, payloads in zip(consumers, laws, sent, strict=True):
        frames = consumer.drain()
        heard = [f.pcm for f in frames if not f.filled]
        assert heard == [codec.decode(p) for p in payloads]
        # Every call saw every tick, with the same indexes.
        assert indexes is None or [f.index for f in frames] == indexes
        indexes = [f.index for f in frames]
    assert indexes == list(range(15))

    for call_tap in call_taps[:-1]:
        call_tap.detach()
    assert clock.subscribers == 1  # one call is still tapped
    call_taps[-1].detach()
    assert clock.subscribers == 0 and not any(leg.pcm_enabled for leg in legs)


async def test_a_waiting_reader_wakes_on_publish() -> None:
    tap = Tap()
    consumer = tap.add_consumer()
    reader = asyncio.create_task(consumer.get())
    await asyncio.sleep(0)
    tap.publish(frame(7))
    assert (await asyncio.wait_for(reader, 1.0)).index == 7


# -- on loopback, with the relay running --------------------------------------------


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not 192 <= data[1] <= 223:
            self.received.append(data)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


@pytest.fixture
async def call() -> AsyncIterator[tuple[Peer, Peer, LegTransport, LegTransport]]:
    """A caller and an agent phone bridged through two legs."""
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 20000, 30000)
    _, caller = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, 0))
    _, agent = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, 0))
    legs = []
    for peer in (caller, agent):
        config = LegConfig(
            static_codecs(PCMU), 0, remote_rtp=peer.address, wallclock_offset=wallclock_offset(loop)
        )
        legs.append(await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate()))
    a, b = legs
    a.peer, b.peer = b, a
    yield caller, agent, a, b
    for item in (a, b):
        item.close()
    for peer in (caller, agent):
        assert peer.transport is not None
        peer.transport.close()


def level(pcm: bytes) -> int:
    return int(np.abs(np.frombuffer(pcm, dtype="<i2")).max())


async def test_slow_tap_consumer_loses_only_its_frames_never_the_calls(
    call: tuple[Peer, Peer, LegTransport, LegTransport],
) -> None:
    caller, agent, a, b = call
    loop = asyncio.get_running_loop()
    clock = MediaClock()
    call_tap = CallTap({"caller": a.leg, "agent": b.leg})
    fast = call_tap.tap.add_consumer(maxsize=1000)
    slow = call_tap.tap.add_consumer(maxsize=5)
    call_tap.attach(clock)
    clock.start()

    async def sluggish() -> None:
        async for _ in slow:
            await asyncio.sleep(0.1)  # e.g. a speech engine that cannot keep up

    reader = asyncio.create_task(sluggish())
    loud = PCMU.encode((np.ones(160) * 8000).astype("<i2").tobytes())
    quiet = PCMU.encode(bytes(320))
    assert caller.transport is not None and agent.transport is not None
    start = loop.time()
    for seq in range(50):  # one second of talk from both sides, paced like a phone
        caller.transport.sendto(bytes(RtpPacket(0, seq, seq * 160, 1, loud)), a.local_rtp)
        agent.transport.sendto(bytes(RtpPacket(0, seq, seq * 160, 2, quiet)), b.local_rtp)
        await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))
    for _ in range(40):  # let the jitter buffers play out (bounded)
        await asyncio.sleep(0.02)
    call_tap.detach()
    await clock.stop()
    reader.cancel()

    # The call: every packet relayed, nothing lost to the tap's slowness.
    assert len(agent.received) == 50 and len(caller.received) == 50
    # The fast consumer: every tick, both parties, same index, nothing dropped.
    frames: list[TapFrame] = []
    while (item := fast.get_nowait()) is not None:
        frames.append(item)
    assert fast.dropped == 0
    by_party: dict[str, list[int]] = {"caller": [], "agent": []}
    for item in frames:
        by_party[item.party].append(item.index)
    assert by_party["caller"] == by_party["agent"]
    first = by_party["caller"][0]
    assert by_party["caller"] == list(range(first, first + len(by_party["caller"])))
    heard = [item for item in frames if item.party == "caller" and not item.filled]
    assert len(heard) >= 40 and all(level(item.pcm) > 7000 for item in heard)
    # The slow consumer: fell behind and lost frames, all counted on it alone.
    assert slow.dropped > 0
    assert slow.dropped + slow.delivered + slow.pending == len(frames)


async def test_legs_decode_only_while_a_tap_is_attached(
    call: tuple[Peer, Peer, LegTransport, LegTransport],
) -> None:
    _, _, a, b = call
    clock = MediaClock()
    call_tap = CallTap({"caller": a.leg, "agent": b.leg})
    assert not a.leg.pcm_enabled
    call_tap.attach(clock)
    assert a.leg.pcm_enabled and b.leg.pcm_enabled and clock.subscribers == 1
    call_tap.detach()
    assert not a.leg.pcm_enabled and clock.subscribers == 0
