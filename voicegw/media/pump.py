"""The media sockets of one event loop, read in batches (:class:`MediaPump`).

Through the event loop's own UDP transport every datagram costs a wake-up, a
callback and a Python frame: about 24 µs of CPU per relayed RTP packet on these
machines, against 2-4 µs of protocol work. The pump puts every leg's sockets in
one epoll set (the C extension :mod:`voicegw.media._pump`) that the loop watches
as a single reader. When it is readable, one call reads every ready socket with
``recvmmsg``; the common packet (from the latched source, a negotiated audio
payload type, the stream already being relayed, to a peer with the same codec)
is accounted and relayed inside that call, on the very Python objects the
sans-IO code keeps, and everything else (RTCP, DTMF, a new source or SSRC,
SRTP, transcoding, the first packets of a call) comes back here and goes to
``LegTransport._datagram`` as before.

Under load the pump reads on a timer, every ``interval`` (1 ms), so one wake-up
serves many packets and the loop's watch on the epoll descriptor is not
changed per read (on uvloop that is two ``epoll_ctl`` calls and a handle); after
``IDLE_READS`` reads in a row found nothing (20 ms: a frame time, so the gaps
between the frames of steady calls do not count) it puts the watch back, so an
idle pump wakes at the first packet. That adds at most ``interval`` to a packet's
way through, well under a 20 ms frame, and the RTP/RTCP arrival times it hands on
are the read's (uvloop's clock has 1 ms steps anyway).
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from typing import TYPE_CHECKING, Final

from ._pump import Pump

if TYPE_CHECKING:
    from .transport import LegTransport

__all__ = ["MediaPump"]

#: Seconds between two reads under load: the batching, and the most it delays a packet.
DEFAULT_INTERVAL: Final = 0.001
#: Empty reads in a row after which the pump waits on the descriptor again.
IDLE_READS: Final = 20


class MediaPump:
    """All media sockets of one loop; get it with :meth:`of`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = DEFAULT_INTERVAL) -> None:
        self._loop = loop
        self._pump = Pump()
        self._fd = self._pump.fileno()
        self.interval = interval
        self._sockets = 0
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None
        self._empty_reads = 0

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> MediaPump:
        """The loop's pump: made when the loop's first media socket registers, dropped
        when its last one goes (so a closed loop is not kept alive by its pump)."""
        pump = _PUMPS.get(loop)
        if pump is None:
            pump = _PUMPS[loop] = MediaPump(loop)
        return pump

    def register(self, sock: socket.socket, owner: LegTransport, *, rtcp: bool) -> int:
        """Read ``sock`` for ``owner`` from now on; the slot is for :meth:`unregister`.

        Register through :meth:`of` (a pump whose last socket went is not the loop's any more).
        """
        sock.setblocking(False)
        slot: int = self._pump.register(sock.fileno(), owner, rtcp)
        self._sockets += 1
        if not self._watching and self._timer is None:
            self._watch()
        return slot

    def unregister(self, slot: int) -> None:
        """Stop reading a socket (before it is closed)."""
        self._pump.unregister(slot)
        self._sockets -= 1
        if self._sockets == 0:
            # Nothing left to read: let go of the loop (the mapping's value holds it, so the
            # entry would never be collected) and of the epoll descriptor with the pump.
            self._unwatch()
            if _PUMPS.get(self._loop) is self:
                del _PUMPS[self._loop]

    @property
    def relay_in_c(self) -> bool:
        """Whether the C step takes the common packet (off: all go through Python, as a
        reference for tests and benchmarks)."""
        return self._pump.step

    @relay_in_c.setter
    def relay_in_c(self, on: bool) -> None:
        self._pump.step = on

    def counters(self) -> dict[str, int]:
        """Datagrams read, relayed in C, returned to Python, truncated; send and tap-push
        errors; polls."""
        counters: dict[str, int] = self._pump.counters()
        return counters

    def _watch(self) -> None:
        if not self._watching:
            self._loop.add_reader(self._fd, self._read)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def read(self, now: float) -> int:
        """Read every ready socket now; the datagrams read. The loop calls this by itself."""
        returned, read = self._pump.poll(now)
        for owner, data, addr in returned:
            try:
                owner._datagram(data, addr, now)
            except Exception as exc:  # one leg's bug must not cost the other legs their packets
                self._loop.call_exception_handler(
                    {"message": "media datagram handler failed", "exception": exc}
                )
        return read

    def _read(self) -> None:
        self._timer = None
        now = self._loop.time()
        read = 0
        try:
            read = self.read(now)
        finally:  # whatever went wrong, the legs are read again
            self._empty_reads = 0 if read else self._empty_reads + 1
            if self._sockets and self._empty_reads < IDLE_READS:
                # Busy: read again after the interval, whatever the descriptor says meanwhile.
                if self._watching:
                    self._loop.remove_reader(self._fd)
                    self._watching = False
                self._timer = self._loop.call_at(now + self.interval, self._read)
            elif self._sockets:
                self._watch()


_PUMPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaPump] = (
    weakref.WeakKeyDictionary()
)
