"""asyncio adapters for SIP over UDP, TCP and TLS: they only move bytes.

Each adapter hands inbound bytes to :class:`~voicegw.sip.edge.InboundScreen`,
sends what it says to send, and passes admitted messages up with their source.
Stream connections are kept by remote address so responses and in-dialog
requests reuse them (RFC 3261 §18.2.2, RFC 5626 keep-alives answered).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from voicegw.sip.edge import Deliver, Dropped, InboundScreen, Reply
from voicegw.sip.message import SipMessage
from voicegw.sip.message_framer import (
    FramingError,
    KeepAlivePing,
    MessageReceived,
    MessageRejected,
    StreamFramer,
)
from voicegw.sip.transaction import Destination

log = logging.getLogger("voicegw.sip.transport")

OnMessage = Callable[[SipMessage, Destination], None]
#: Idle stream connections are closed after this long (seconds) without traffic
#: (a periodic sweep, and at once for the least recent one when the table is full).
STREAM_IDLE_TIMEOUT = 600.0
#: How often the sweep runs, as a fraction of the idle timeout: a connection lives at
#: most this much longer than the timeout.
IDLE_SWEEP_FRACTION = 0.1
MAX_STREAM_CONNECTIONS = 4096


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = Destination(str(addr[0]), int(addr[1]), "UDP")
        verdict = self.owner.screen.screen(data, source, self.owner.clock())
        if isinstance(verdict, Deliver):
            self.owner.deliver(verdict.message, source)
        elif isinstance(verdict, Reply) and self.transport is not None:
            self.transport.sendto(verdict.data, (source.host, source.port))

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable for an earlier send; the transaction times out on its own.
        log.debug("sip.udp.icmp_error", extra={"error": type(exc).__name__})


class _Stream(asyncio.Protocol):
    def __init__(self, owner: SipTransports, name: str) -> None:
        self.owner = owner
        self.name = name
        self.framer = StreamFramer(owner.screen.limits)
        self.transport: asyncio.Transport | None = None
        self.remote: Destination | None = None
        self.last_seen = owner.clock()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an asyncio.Transport subclass on uvloop, which serve runs on.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = Destination(str(peer[0]), int(peer[1]), self.name)
        screen = self.owner.screen
        if screen.admit_connection(
            self.remote, self.owner.clock()
        ) is not None or not self.owner.track(self):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.remote is not None
        screen, now = self.owner.screen, self.owner.clock()
        self.last_seen = now
        if screen.banned(self.remote, now) is not None:
            self.transport.abort()
            return
        for event in self.framer.feed(data):
            if isinstance(event, MessageReceived | MessageRejected):
                # Each framed message is screened like a datagram: counted, ban, rate.
                refused = screen.admit(self.remote, now)
                if refused is not None and refused.reason is Dropped.BANNED:
                    self.transport.abort()
                    return
                if refused is not None:
                    continue
                if isinstance(event, MessageReceived):
                    verdict = screen.accepted(event.message, self.remote)
                    if isinstance(verdict, Deliver):
                        self.owner.deliver(verdict.message, self.remote)
                else:
                    verdict = screen.rejected(event.data, event.error, self.remote)
                    if isinstance(verdict, Reply):
                        self.transport.write(verdict.data)
            elif isinstance(event, KeepAlivePing):
                self.transport.write(b"\r\n")
            elif isinstance(event, FramingError):
                screen.unframeable(self.remote)
                self.transport.abort()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.untrack(self)


@dataclass(frozen=True)
class ListenAddresses:
    udp: tuple[str, int] | None = None
    tcp: tuple[str, int] | None = None
    tls: tuple[str, int] | None = None


class SipTransports:
    """The node's SIP sockets. ``send`` picks the socket or connection by destination."""

    def __init__(
        self,
        screen: InboundScreen,
        on_message: OnMessage,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        client_tls_context: ssl.SSLContext | None = None,
        *,
        idle_timeout: float = STREAM_IDLE_TIMEOUT,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0")
        self.screen = screen
        self.on_message = on_message
        self.tls_context = tls_context
        #: Verifies the peers we connect to over TLS (None: the system's CAs and hostname
        #: checks). A private CA or a pinned trunk certificate goes here; never CERT_NONE.
        self.client_tls_context = client_tls_context
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.Task[None] | None = None
        self._udp: _Udp | None = None
        self._servers: list[asyncio.Server] = []
        self._streams: dict[tuple[str, str, int], _Stream] = {}
        self.bound = ListenAddresses()

    async def start(self, listen: ListenAddresses) -> ListenAddresses:
        """Bind the requested sockets (port 0 picks a free one); returns what was bound."""
        loop = asyncio.get_running_loop()
        udp = tcp = tls = None
        if listen.udp is not None:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=listen.udp
            )
            self._udp = protocol
            udp = _sockname(transport)
        if listen.tcp is not None:
            server = await loop.create_server(lambda: _Stream(self, "TCP"), *listen.tcp)
            self._servers.append(server)
            tcp = _sockname(server.sockets[0])
        if listen.tls is not None:
            if self.tls_context is None:
                raise ValueError("TLS listener needs a TLS context (certificate and key)")
            server = await loop.create_server(
                lambda: _Stream(self, "TLS"), *listen.tls, ssl=self.tls_context
            )
            self._servers.append(server)
            tls = _sockname(server.sockets[0])
        self.bound = ListenAddresses(udp, tcp, tls)
        # Outbound connections (to trunks) idle out too, so the sweep runs with no listener.
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="sip-idle-sweep")
        return self.bound

    def deliver(self, message: SipMessage, source: Destination) -> None:
        try:
            self.on_message(message, source)
        except Exception:
            # One bad call must never take the transport down for all the others.
            log.exception("sip.handler_error", extra={"transport": source.transport})

    def track(self, stream: _Stream) -> bool:
        if len(self._streams) >= MAX_STREAM_CONNECTIONS:
            self.close_idle(force_one=True)
        if len(self._streams) >= MAX_STREAM_CONNECTIONS:
            return False
        assert stream.remote is not None
        self._streams[(stream.name, stream.remote.host, stream.remote.port)] = stream
        return True

    def untrack(self, stream: _Stream) -> None:
        if stream.remote is not None:
            key = (stream.name, stream.remote.host, stream.remote.port)
            if self._streams.get(key) is stream:
                del self._streams[key]

    @property
    def stream_count(self) -> int:
        """Stream connections open now (bounded by ``MAX_STREAM_CONNECTIONS``)."""
        return len(self._streams)

    def close_idle(self, force_one: bool = False) -> int:
        """Close connections idle longer than ``idle_timeout`` (and the least recent one if
        ``force_one``); returns how many were closed."""
        now = self.clock()
        streams = sorted(self._streams.values(), key=lambda s: s.last_seen)
        closed = 0
        for index, stream in enumerate(streams):
            if now - stream.last_seen > self.idle_timeout or (force_one and index == 0):
                if stream.transport is not None:
                    stream.transport.abort()
                self.untrack(stream)
                closed += 1
        return closed

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout * IDLE_SWEEP_FRACTION)
            closed = self.close_idle()
            if closed:
                log.info("sip.stream.idle_closed", extra={"connections": closed})

    async def send(self, data: bytes, destination: Destination) -> None:
        """Send to ``destination``, opening a stream connection if none is open to it."""
        kind = destination.transport.upper()
        if kind == "UDP":
            if self._udp is None or self._udp.transport is None:
                raise ConnectionError("no UDP socket bound")
            self._udp.transport.sendto(data, destination.addr)
            return
        stream = self._streams.get((kind, destination.host, destination.port))
        if stream is None or stream.transport is None or stream.transport.is_closing():
            stream = await self._connect(kind, destination)
        assert stream.transport is not None
        stream.transport.write(data)

    async def _connect(self, kind: str, destination: Destination) -> _Stream:
        loop = asyncio.get_running_loop()
        ssl_ctx: ssl.SSLContext | None = None
        if kind == "TLS":
            ssl_ctx = self.client_tls_context or ssl.create_default_context()
        _, protocol = await loop.create_connection(
            lambda: _Stream(self, kind), destination.host, destination.port, ssl=ssl_ctx
        )
        return protocol

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for server in self._servers:
            server.close()
        for stream in list(self._streams.values()):
            if stream.transport is not None:
                stream.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def _sockname(obj: asyncio.BaseTransport | object) -> tuple[str, int]:
    # uvloop's transports do not subclass asyncio.BaseTransport: test for the method.
    getter = getattr(obj, "get_extra_info", None)
    name = getter("sockname") if getter else obj.getsockname()  # type: ignore[union-attr]
    return str(name[0]), int(name[1])
