"""Types of the C extension behind :class:`voicegw.media.jitter.JitterBuffer` (source:
``_jitter.c``; :class:`voicegw.media.jitter.ReferenceJitterBuffer` is its specification)."""

from typing import Any

from .jitter import Concealer, JitterCounters, JitterFrame
from .rtp import RtpPacket

class JitterBuffer:
    """Reorders, de-duplicates and paces one RTP stream; conceals what is missing."""

    target_delay: float
    def __init__(
        self,
        *,
        conceal: Concealer,
        clock_rate: int = 8000,
        frame_duration: float = 0.02,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        capacity: int = 50,
        max_stall: int = 5,
        decay: float = 0.01,
        shrink_after: int = 50,
    ) -> None: ...
    @property
    def counters(self) -> JitterCounters:
        """A snapshot, built on each access."""
    @property
    def jitter(self) -> float: ...
    @property
    def depth(self) -> int: ...
    @property
    def clock_rate(self) -> int: ...
    @property
    def frame_duration(self) -> float: ...
    @property
    def min_delay(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def capacity(self) -> int: ...
    @property
    def max_stall(self) -> int: ...
    @property
    def decay(self) -> float: ...
    @property
    def shrink_after(self) -> int: ...
    def push(self, packet: RtpPacket, now: float, /) -> None: ...
    def push_rtp(self, data: bytes, now: float, /) -> None: ...
    def pop(self, now: float, /) -> JitterFrame | None: ...

def _setup(frame: Any, counters: Any, rtp_error: Any, /) -> None: ...
def _fast_frames() -> bool: ...
