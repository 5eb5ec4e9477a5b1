"""Socket adapter for a :class:`~voicegw.media.session.MediaLeg`.

It only moves bytes and time: datagrams from the RTP (and RTCP) socket go
into ``leg.receive`` with the loop time, whatever the leg queues goes out,
and one timer is re-armed at ``leg.next_deadline()``. All decisions are the
leg's. Audio received on a leg that has a ``peer`` is relayed to the peer
as it is read, so the relay path has no queue, task switch or clock tick in
it; everything else goes to ``on_event``.

The sockets are read by the loop's :class:`~voicegw.media.pump.MediaPump`,
which relays the common packet itself (same codec, known source and stream)
on the same objects and hands the rest to :meth:`LegTransport._datagram`.
Sending is a plain non-blocking ``sendto``; a send that fails (a full socket
buffer, an address we cannot reach) is counted in ``socket_errors``, never raised.

With ``srtp`` set (SDES-SRTP), datagrams are authenticated and decrypted before
the leg sees them (so forged packets cannot move the latch either) and
protected just before each ``sendto``. While ``held`` (the far end put us on
hold: RFC 3264 §8.4, no media towards a recvonly or inactive peer) nothing is
sent; ``held_drops`` counts what was not.

Works on the default loop and on uvloop alike (uvloop is optional).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .ports import RtpPorts
from .pump import MediaPump
from .session import Address, MediaEvent, MediaLeg, RtpReceived
from .srtp import SrtpContext

__all__ = ["LegTransport", "wallclock_offset"]

EventHandler = Callable[[MediaEvent], None]


def wallclock_offset(loop: asyncio.AbstractEventLoop) -> float:
    """Unix time minus loop time: ``LegConfig.wallclock_offset`` for RTCP NTP stamps."""
    return time.time() - loop.time()


class LegTransport:
    """One leg's sockets bound to its session. Create with :meth:`open`."""

    def __init__(
        self,
        leg: MediaLeg,
        ports: RtpPorts,
        loop: asyncio.AbstractEventLoop,
        on_event: EventHandler | None = None,
    ) -> None:
        self.leg = leg
        self.on_event = on_event
        self.peer: LegTransport | None = None
        self.socket_errors = 0
        self.unsent = 0  # frames with nowhere to go yet (remote address unknown)
        self.held = False
        self.held_drops = 0
        #: Set when the call negotiated SDES-SRTP; None keeps the plain path untouched.
        self.srtp: SrtpContext | None = None
        self._loop = loop
        self._time = loop.time
        self._pump = MediaPump.of(loop)
        self._ports = ports
        # The pump's relay step sends on the peer's socket by its descriptor.
        self._fd = ports.rtp.fileno()
        self._slots = [self._pump.register(ports.rtp, self, rtcp=False)]
        if ports.rtcp is not None:
            self._slots.append(self._pump.register(ports.rtcp, self, rtcp=True))
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, leg: MediaLeg, ports: RtpPorts, on_event: EventHandler | None = None
    ) -> LegTransport:
        """Take over the bound sockets of ``ports`` (the transport closes them)."""
        self = cls(leg, ports, asyncio.get_running_loop(), on_event)
        self._arm()
        return self

    # -- receive -------------------------------------------------------------

    def _datagram(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram the pump's relay step left to Python, read at ``now``."""
        if self._closed:
            return  # read in the same batch as what closed us
        srtp = self.srtp
        if srtp is not None:
            plain = srtp.unprotect(data)
            if plain is None:
                return  # forged, replayed or garbled: counted in srtp.stats
            data = plain
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
        # The pump's relay step (_pump.c) does the same for the packets it takes.
        if self.held:
            self.held_drops += 1
            return
        addr = self.leg.remote_rtp
        if addr is None or self._closed:
            self.unsent += 1
            return
        self._sendto(data, addr, rtcp=False)

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
        sock = self._ports.rtcp if rtcp and self._ports.rtcp is not None else self._ports.rtp
        if self._closed:
            return
        if self.srtp is not None:
            srtp = self.srtp
            protected = srtp.protect_rtcp(data) if rtcp else srtp.protect_rtp(data)
            if protected is None:
                return
            data = protected
        try:
            sock.sendto(data, addr)
        except OSError:
            # A full socket buffer, an address we cannot reach (another family, no
            # route): counted, never raised; the call decides on its media timeouts.
            self.socket_errors += 1

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
        host, port = self._ports.rtp.getsockname()[:2]
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
        for slot in self._slots:
            self._pump.unregister(slot)
        self._ports.close()
