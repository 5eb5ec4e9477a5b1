"""RTP port allocation from a configured range.

RTP takes an even port and RTCP the odd one above it (RFC 3550 §11), or only
the even port under rtcp-mux (RFC 5761). The search starts at a random even
port so that consecutive calls (and a restarted process) do not reuse the
same ports, which makes stray packets of an old call and port guessing less
likely to hit a new one. Whether a port is free is decided by binding it: the
allocator hands out the bound sockets, so nobody can take the port between
the check and its use.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field

__all__ = ["PortAllocator", "PortsExhausted", "RtpPorts"]


class PortsExhausted(RuntimeError):
    """No free even port (pair) is left in the range."""


@dataclass(frozen=True, slots=True)
class RtpPorts:
    """Bound UDP sockets for one media leg; ``rtcp`` is None under rtcp-mux."""

    host: str
    rtp_port: int
    rtcp_port: int | None
    rtp: socket.socket = field(repr=False)
    rtcp: socket.socket | None = field(repr=False)

    def close(self) -> None:
        self.rtp.close()
        if self.rtcp is not None:
            self.rtcp.close()


def _bind(host: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


class PortAllocator:
    """Hands out bound RTP (and RTCP) sockets from ``[low, high]``; bounded by the range."""

    def __init__(
        self,
        host: str,
        low: int,
        high: int,
        *,
        rtcp_mux: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError("port range must be 0 < low <= high <= 65535")
        low += low % 2  # RTP on even ports only
        self.host = host
        self.rtcp_mux = rtcp_mux
        self._low = low
        # The highest even port whose RTCP neighbour (if any) still fits in the range.
        top = high if rtcp_mux else high - 1
        self._high = top - top % 2
        if self._high < low:
            raise ValueError("port range holds no usable port")
        self._rng = rng or random.Random()
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        """How many legs the range can hold at most."""
        return (self._high - self._low) // 2 + 1

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> RtpPorts:
        """Bind the next free even port (and its odd neighbour); raise :class:`PortsExhausted`."""
        slots = self.capacity
        first = self._rng.randrange(slots)
        for i in range(slots):
            port = self._low + 2 * ((first + i) % slots)
            if port in self._in_use:
                continue
            ports = self._try(port)
            if ports is not None:
                self._in_use.add(port)
                return ports
        raise PortsExhausted("no free RTP port in the configured range")

    def _try(self, port: int) -> RtpPorts | None:
        rtp = _bind(self.host, port)
        if rtp is None:
            return None
        if self.rtcp_mux:
            return RtpPorts(self.host, port, None, rtp, None)
        rtcp = _bind(self.host, port + 1)
        if rtcp is None:
            rtp.close()
            return None
        return RtpPorts(self.host, port, port + 1, rtp, rtcp)

    def release(self, ports: RtpPorts) -> None:
        """Close the sockets (if the transport has not) and return the port to the range."""
        ports.close()
        self._in_use.discard(ports.rtp_port)
