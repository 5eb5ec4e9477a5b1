"""SIP transports on loopback: the edge screens, stamps Via and routes responses (RFC 3261 §18)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from voicegw.sip.edge import InboundScreen, SourceThrottled, stamp_via
from voicegw.sip.message import SipMessage, SipRequest, parse_message
from voicegw.sip.security import BanList, RateLimiter
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import STREAM_IDLE_TIMEOUT, ListenAddresses, SipTransports

OPTIONS = (
    "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} 192.0.2.10:5062;branch=z9hG4bK-{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@example.com>;tag=a{n}\r\n"
    "To: <sip:gw@127.0.0.1>\r\n"
    "Call-ID: probe-{n}@example.com\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def options(n: int, transport: str = "UDP") -> bytes:
    return OPTIONS.format(n=n, transport=transport).encode()


class Node:
    def __init__(
        self,
        rate: RateLimiter | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_timeout: float = STREAM_IDLE_TIMEOUT,
    ) -> None:
        self.bans = BanList(max_failures=3, window=60, ban_for=600)
        limiter = RateLimiter(rate=1000, burst=1000) if rate is None else rate
        self.throttled: list[SourceThrottled] = []
        self.screen = InboundScreen(self.bans, limiter, on_throttled=self.throttled.append)
        self.received: asyncio.Queue[tuple[SipMessage, Destination]] = asyncio.Queue()
        self.transports = SipTransports(
            self.screen,
            lambda m, s: self.received.put_nowait((m, s)),
            clock=clock,
            idle_timeout=idle_timeout,
        )


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = Node()
    await n.transports.start(ListenAddresses(udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0)))
    yield n
    await n.transports.close()


_clients: list[socket.socket] = []


def udp_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    _clients.append(s)
    return s


@pytest.fixture(autouse=True)
def _close_clients() -> object:
    yield
    while _clients:
        _clients.pop().close()


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def recv(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(2):
        return await loop.sock_recv(sock, 65536)


async def test_rfc3581_udp_request_is_delivered_with_received_and_rport(node: Node) -> None:
    client = udp_client()
    assert node.transports.bound.udp is not None
    client.sendto(options(1), node.transports.bound.udp)
    async with asyncio.timeout(2):
        message, source = await node.received.get()
    assert isinstance(message, SipRequest)
    via = message.via[0]
    assert via.received == "127.0.0.1"
    assert via.rport == client.getsockname()[1]
    assert source == Destination("127.0.0.1", client.getsockname()[1], "UDP")
    client.close()


async def test_unparseable_request_with_recoverable_headers_gets_400_with_warning(
    node: Node,
) -> None:
    client = udp_client()
    assert node.transports.bound.udp is not None
    bad = options(2).replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    client.sendto(bad, node.transports.bound.udp)
    reply = parse_message(await recv(client))
    assert not isinstance(reply, SipRequest)
    assert reply.status == 400
    assert reply.headers.get(
        "Warning",
    ).startswith("399 voicegw")  # type: ignore[union-attr]
    assert node.received.empty()
    client.close()


async def test_garbage_is_dropped_silently_and_counted(node: Node) -> None:
    client = udp_client()
    assert node.transports.bound.udp is not None
    client.sendto(b"\x00\xffnot sip at all", node.transports.bound.udp)
    client.sendto(options(3), node.transports.bound.udp)
    async with asyncio.timeout(2):
        await node.received.get()
    assert node.screen.counters.dropped["unparseable"] == 1
    client.close()


async def test_banned_source_is_dropped_before_parsing(node: Node) -> None:
    client = udp_client()
    assert node.transports.bound.udp is not None
    node.bans.ban("127.0.0.1", node.transports.clock(), 600)
    client.sendto(options(4), node.transports.bound.udp)
    client.sendto(b"garbage that would otherwise be answered", node.transports.bound.udp)
    await asyncio.sleep(0.2)
    assert node.received.empty()
    assert node.screen.counters.dropped["banned"] == 2
    client.close()


async def test_rate_limit_drops_the_excess_from_one_source() -> None:
    n = Node(rate=RateLimiter(rate=1, burst=5))
    await n.transports.start(ListenAddresses(udp=("127.0.0.1", 0)))
    client = udp_client()
    assert n.transports.bound.udp is not None
    for i in range(20):
        client.sendto(options(100 + i), n.transports.bound.udp)
    await asyncio.sleep(0.3)
    assert n.received.qsize() == 5
    assert n.screen.counters.dropped["rate_limited"] == 15
    assert n.screen.counters.dropped_by_transport == {"UDP": 15}
    assert n.throttled == [SourceThrottled("127.0.0.1", "UDP", 1)]
    client.close()
    await n.transports.close()


async def test_tcp_rate_limit_drops_are_counted_and_reported_like_udp_drops() -> None:
    n = Node(rate=RateLimiter(rate=1, burst=5))
    await n.transports.start(ListenAddresses(tcp=("127.0.0.1", 0)))
    assert n.transports.bound.tcp is not None
    _, writer = await asyncio.open_connection(*n.transports.bound.tcp)
    # The connection takes one token, as a datagram would; four messages get through.
    writer.write(b"".join(options(200 + i, "TCP") for i in range(20)))
    await writer.drain()
    await until(lambda: n.screen.counters.received == 20)
    await asyncio.sleep(0.1)
    counters = n.screen.counters
    assert n.received.qsize() == 4
    assert (counters.connections, counters.received) == (1, 20)
    assert counters.dropped["rate_limited"] == 16
    assert counters.dropped_by_transport == {"TCP": 16}
    assert n.throttled == [SourceThrottled("127.0.0.1", "TCP", 1)]
    writer.close()
    await n.transports.close()


async def test_a_source_banned_while_connected_is_cut_off_and_counted(node: Node) -> None:
    assert node.transports.bound.tcp is not None
    reader, writer = await asyncio.open_connection(*node.transports.bound.tcp)
    writer.write(options(300, "TCP"))
    async with asyncio.timeout(2):
        await node.received.get()
    node.bans.ban("127.0.0.1", node.transports.clock(), 600)
    writer.write(options(301, "TCP"))
    async with asyncio.timeout(2):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    assert node.received.empty()
    assert node.screen.counters.dropped["banned"] == 1
    assert node.screen.counters.dropped_by_transport == {"TCP": 1}
    writer.close()


async def test_idle_stream_connections_are_swept_and_busy_ones_kept() -> None:
    n = Node(idle_timeout=0.6)
    await n.transports.start(ListenAddresses(tcp=("127.0.0.1", 0)))
    assert n.transports.bound.tcp is not None
    idle_reader, idle_writer = await asyncio.open_connection(*n.transports.bound.tcp)
    busy_reader, busy_writer = await asyncio.open_connection(*n.transports.bound.tcp)
    await until(lambda: n.transports.stream_count == 2)
    async with asyncio.timeout(5):
        # RFC 5626 keep-alives every 0.2 s keep one connection busy for three timeouts.
        for _ in range(9):
            busy_writer.write(b"\r\n\r\n")
            assert await busy_reader.readexactly(2) == b"\r\n"
            await asyncio.sleep(0.2)
        with contextlib.suppress(ConnectionResetError):
            assert await idle_reader.read() == b""
    assert n.transports.stream_count == 1
    busy_writer.write(options(400, "TCP"))
    async with asyncio.timeout(2):
        message, _ = await n.received.get()
    assert message.call_id == "probe-400@example.com"
    idle_writer.close()
    busy_writer.close()
    await n.transports.close()


async def test_the_idle_timeout_is_measured_on_the_transports_clock() -> None:
    now = [1000.0]
    n = Node(clock=lambda: now[0])
    await n.transports.start(ListenAddresses(tcp=("127.0.0.1", 0)))
    assert n.transports.bound.tcp is not None
    _, writer = await asyncio.open_connection(*n.transports.bound.tcp)
    await until(lambda: n.transports.stream_count == 1)
    now[0] += STREAM_IDLE_TIMEOUT - 1
    assert n.transports.close_idle() == 0
    now[0] += 2
    assert n.transports.close_idle() == 1
    assert n.transports.stream_count == 0
    writer.close()
    await n.transports.close()


async def test_tcp_frames_split_and_coalesced_messages_and_answers_keepalive(node: Node) -> None:
    assert node.transports.bound.tcp is not None
    reader, writer = await asyncio.open_connection(*node.transports.bound.tcp)
    a, b = options(5, "TCP"), options(6, "TCP")
    writer.write(a[:30])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(a[30:] + b + b"\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(2):
        first, _ = await node.received.get()
        second, source = await node.received.get()
        pong = await reader.readexactly(2)
    assert [m.call_id for m in (first, second)] == ["probe-5@example.com", "probe-6@example.com"]
    assert source.transport == "TCP"
    assert pong == b"\r\n"
    # A response to a stream request goes back over the same connection.
    await node.transports.send(b"SIP/2.0 200 OK\r\n\r\n", source)
    async with asyncio.timeout(2):
        assert await reader.readexactly(6) == b"SIP/2."
    writer.close()


async def test_tcp_framing_error_closes_only_that_connection(node: Node) -> None:
    assert node.transports.bound.tcp is not None
    reader, writer = await asyncio.open_connection(*node.transports.bound.tcp)
    writer.write(options(7, "TCP").replace(b"Content-Length: 0", b"Content-Length: many"))
    await writer.drain()
    async with asyncio.timeout(2):
        rest = await reader.read()
    assert b"SIP/2.0 200" not in rest
    writer.close()
    # The node still serves others.
    client = udp_client()
    assert node.transports.bound.udp is not None
    client.sendto(options(8), node.transports.bound.udp)
    async with asyncio.timeout(2):
        await node.received.get()
    client.close()


def test_via_from_the_packet_source_is_left_alone() -> None:
    request = parse_message(
        options(9).replace(b"192.0.2.10:5062", b"127.0.0.1:5062").replace(b";rport", b"")
    )
    assert isinstance(request, SipRequest)
    assert stamp_via(request, Destination("127.0.0.1", 5062)) is request
