"""asyncio UDP adapter for a :class:`~voicegw.media.session.MediaLeg`.

It only moves bytes and time: datagrams from the RTP (and RTCP) socket go
into ``leg.receive`` with the loop time, whatever the leg queues goes out,
and one timer is re-armed at ``leg.next_deadline()``. All decisions are the
leg's. Audio received on a leg that has a ``peer`` is relayed to the peer
from inside ``datagram_received``, so the relay path has no queue, task
switch or clock tick in it; everything else goes to ``on_event``.

With ``srtp`` set (SDES-SRTP), datagrams are authenticated and decrypted before
the leg sees them (so forged packets cannot move the latch either) and
protected just before each ``sendto``.

Works on the default loop and on uvloop alike (uvloop is optional).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

from .ports import RtpPorts
from .session import Address, MediaEvent, MediaLeg, RtpReceived
from .srtp import SrtpContext

__all__ = ["LegTransport", "wallclock_offset"]

EventHandler = Callable[[MediaEvent], None]


def wallclock_offset(loop: asyncio.AbstractEventLoop) -> float:
    """Unix time minus loop time: ``LegConfig.wallclock_offset`` for RTCP NTP stamps."""
    return time.time() - loop.time()


class _Socket(asyncio.DatagramProtocol):
    __slots__ = ("_owner", "transport")

    def __init__(self, owner: LegTransport) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not a DatagramTransport subclass on every loop (CPython 3.11's selector one is not).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like, reported on the next send: the far
        # end is gone or not yet listening. Counted; the call decides on timeouts.
        self._owner.socket_errors += 1


class LegTransport:
    """One leg's sockets bound to its session. Create with :meth:`open`."""

    def __init__(
        self,
        leg: MediaLeg,
        loop: asyncio.AbstractEventLoop,
        on_event: EventHandler | None = None,
    ) -> None:
        self.leg = leg
        self.on_event = on_event
        self.peer: LegTransport | None = None
        self.socket_errors = 0
        self.unsent = 0  # frames with nowhere to go yet (remote address unknown)
        #: Set when the call negotiated SDES-SRTP; None keeps the plain path untouched.
        self.srtp: SrtpContext | None = None
        self._loop = loop
        self._time = loop.time
        self._rtp = _Socket(self)
        self._rtcp: _Socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, leg: MediaLeg, ports: RtpPorts, on_event: EventHandler | None = None
    ) -> LegTransport:
        """Take over the bound sockets of ``ports`` (the transport closes them)."""
        loop = asyncio.get_running_loop()
        self = cls(leg, loop, on_event)
        await loop.create_datagram_endpoint(lambda: self._rtp, sock=ports.rtp)
        if ports.rtcp is not None:
            self._rtcp = _Socket(self)
            rtcp = self._rtcp
            await loop.create_datagram_endpoint(lambda: rtcp, sock=ports.rtcp)
        self._arm()
        return self

    # -- receive -------------------------------------------------------------

    def _datagram(self, data: bytes, addr: Any) -> None:
        # The per-packet path: keep it free of allocations and calls it does not need.
        srtp = self.srtp
        if srtp is not None:
            plain = srtp.unprotect(data)
            if plain is None:
                return  # forged, replayed or garbled: counted in srtp.stats
            data = plain
        now = self._time()
        if len(addr) != 2:
            addr = addr[:2]  # IPv6 sources come as 4-tuples; the leg compares (host, port)
        leg = self.leg
        events = leg.receive(data, addr, now)
        if events:
            self._dispatch(events, now)
        # Receiving never queues datagrams (only timers and close do); a DTMF
        # packet may move the deadline, though.
        if leg.deadline_moved:
            leg.deadline_moved = False
            self._arm()

    def _dispatch(self, events: list[MediaEvent], now: float) -> None:
        peer = self.peer
        on_event = self.on_event
        for event in events:
            if peer is not None and type(event) is RtpReceived:
                peer.send_rtp(peer.leg.relay(event, now))
            elif on_event is not None:
                on_event(event)

    # -- send ----------------------------------------------------------------

    def send_rtp(self, data: bytes) -> None:
        addr = self.leg.remote_rtp
        transport = self._rtp.transport
        if addr is None or transport is None or self._closed:
            self.unsent += 1
            return
        if self.srtp is not None:
            protected = self.srtp.protect_rtp(data)
            if protected is None:
                return
            data = protected
        transport.sendto(data, addr)

    def send_pcm(self, pcm: bytes, now: float | None = None) -> None:
        """Encode one 20 ms PCM frame with the leg's codec and send it."""
        self.send_rtp(self.leg.send_pcm(pcm, self._time() if now is None else now))

    def send_payload(self, payload: bytes, now: float | None = None) -> None:
        self.send_rtp(self.leg.send_payload(payload, self._time() if now is None else now))

    def _flush(self) -> None:
        for datagram in self.leg.datagrams_to_send():
            self._sendto(datagram.data, datagram.addr, rtcp=datagram.rtcp)
        self._arm()

    def _sendto(self, data: bytes, addr: Address, *, rtcp: bool) -> None:
        sock = self._rtcp if rtcp and self._rtcp is not None else self._rtp
        if sock.transport is None or self._closed:
            return
        if self.srtp is not None:
            srtp = self.srtp
            protected = srtp.protect_rtcp(data) if rtcp else srtp.protect_rtp(data)
            if protected is None:
                return
            data = protected
        sock.transport.sendto(data, addr)

    # -- timer ---------------------------------------------------------------

    def _arm(self) -> None:
        if self._closed:
            return
        deadline = self.leg.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._time()
        events = self.leg.handle_timer(now)
        if events:
            self._dispatch(events, now)
        self._flush()

    # -- close ---------------------------------------------------------------

    @property
    def local_rtp(self) -> Address:
        transport = self._rtp.transport
        assert transport is not None
        host, port = transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        """Send a final RTCP report with BYE and close the sockets.

        The ports go back to their allocator with ``PortAllocator.release``.
        """
        if self._closed:
            return
        self.leg.close(self._time())
        for datagram in self.leg.datagrams_to_send():
            self._sendto(datagram.data, datagram.addr, rtcp=datagram.rtcp)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer = None
        for sock in (self._rtp, self._rtcp):
            if sock is not None and sock.transport is not None:
                sock.transport.close()
