"""RTP port allocation: even ports, RTCP = RTP + 1, randomised start, in-use skipping, bounds."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from voicegw.media.ports import PortAllocator, PortsExhausted, RtpPorts

HOST = "127.0.0.1"


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


@pytest.fixture
def free_range() -> Iterator[tuple[int, int]]:
    """Twelve consecutive free UDP ports starting at an even port.

    Chosen below Linux's ephemeral range (32768+), so sockets bound to port 0
    elsewhere cannot land in it while the test runs.
    """
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 30000, 2)
        held = [_bind(port) for port in range(base, base + 12)]
        ok = all(s is not None for s in held)
        for sock in held:
            if sock is not None:
                sock.close()
        if ok:
            yield base, base + 11
            return
    pytest.skip("no free block of UDP ports found")


def test_rtp_gets_an_even_port_and_rtcp_the_next_odd_one(free_range: tuple[int, int]) -> None:
    low, high = free_range
    allocator = PortAllocator(HOST, low, high, rng=random.Random(3))
    ports = allocator.allocate()
    try:
        assert low <= ports.rtp_port < high and ports.rtp_port % 2 == 0
        assert ports.rtcp_port == ports.rtp_port + 1
        assert ports.rtp.getsockname() == (HOST, ports.rtp_port)
        assert ports.rtcp is not None and ports.rtcp.getsockname() == (HOST, ports.rtcp_port)
        assert not ports.rtp.getblocking()
    finally:
        allocator.release(ports)


def test_rfc5761_rtcp_mux_takes_a_single_port(free_range: tuple[int, int]) -> None:
    low, high = free_range
    allocator = PortAllocator(HOST, low, high, rtcp_mux=True, rng=random.Random(3))
    ports = allocator.allocate()
    try:
        assert ports.rtcp_port is None and ports.rtcp is None
        assert ports.rtp_port % 2 == 0
    finally:
        allocator.release(ports)


def test_the_search_starts_at_a_random_port(free_range: tuple[int, int]) -> None:
    low, high = free_range
    firsts = set()
    for seed in range(8):
        allocator = PortAllocator(HOST, low, high, rng=random.Random(seed))
        ports = allocator.allocate()
        firsts.add(ports.rtp_port)
        allocator.release(ports)
    assert len(firsts) > 1


def test_range_exhaustion_and_release(free_range: tuple[int, int]) -> None:
    low, high = free_range
    allocator = PortAllocator(HOST, low, high)
    assert allocator.capacity == 6
    held: list[RtpPorts] = [allocator.allocate() for _ in range(6)]
    try:
        assert sorted(p.rtp_port for p in held) == list(range(low, high, 2))
        with pytest.raises(PortsExhausted):
            allocator.allocate()
        allocator.release(held.pop(2))
        again = allocator.allocate()
        held.append(again)
        assert allocator.in_use == 6
    finally:
        for ports in held:
            allocator.release(ports)
    assert allocator.in_use == 0


def test_ports_bound_by_someone_else_are_skipped(free_range: tuple[int, int]) -> None:
    low, _ = free_range
    # A range of two pairs where another process holds the RTCP port of the first.
    squatter = _bind(low + 1)
    assert squatter is not None
    try:
        allocator = PortAllocator(HOST, low, low + 3)
        ports = allocator.allocate()
        assert ports.rtp_port == low + 2
        with pytest.raises(PortsExhausted):
            allocator.allocate()
        allocator.release(ports)
        # The half-taken pair was not left half-bound by us.
        probe = _bind(low)
        assert probe is not None
        probe.close()
    finally:
        squatter.close()


@pytest.mark.parametrize(
    ("low", "high", "mux", "capacity"),
    [(10000, 10001, False, 1), (10001, 10004, False, 1), (10000, 10004, True, 3)],
)
def test_capacity_counts_only_pairs_that_fit(low: int, high: int, mux: bool, capacity: int) -> None:
    assert PortAllocator(HOST, low, high, rtcp_mux=mux).capacity == capacity


def test_a_range_without_room_for_a_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="no usable port"):
        PortAllocator(HOST, 10001, 10002)
