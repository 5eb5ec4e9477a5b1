"""Adaptive jitter buffer (sans-IO): packets in with ``now``, one frame per tick out.

The caller pushes every RTP packet of one stream as it arrives and calls
``pop(now)`` once per frame (20 ms). ``pop`` returns:

* the next packet's payload, in sequence order;
* a *concealment* frame (``concealed=True``) when the next packet is missing
  at playout time: first while waiting for it (a stall; if it then turns up,
  the buffer has grown one frame deeper), then, once as many later packets
  are queued as the target depth or we waited that long, giving it up as
  lost and playing on: one concealment frame for it, unless we stalled on it
  already and the packet after it is there (that one plays at once: the
  stalls filled the lost one's time);
* ``None`` while (re)buffering, or after ``max_stall`` concealed frames with
  nothing arriving (end of a talkspurt with silence suppression): the caller
  plays its own silence / comfort noise then.

Depth adapts: the target delay follows the measured interarrival jitter
(RFC 3550 A.8 estimator, in seconds) as ``min_delay + 3 x jitter``, jumps up
by one frame whenever a packet arrives too late or after a stall waiting for it, and
decays slowly (``decay`` seconds per second) back to what the jitter asks
for; when more than one frame above target has been queued for
``shrink_after`` ticks in a row, one frame is dropped to cut the latency.

A new SSRC or a sequence jump beyond 3000 (a sender restart) resets the
buffer; counters survive resets.

:class:`JitterBuffer` is a C extension type (``_jitter.c``): it runs per packet and per
tick of every tapped leg, where the Python version cost about 6 µs each.
:class:`ReferenceJitterBuffer` below is its readable specification: the C type does
the same steps in the same order and gives bit-for-bit the same frames, counters and
delays (``tests/media/test_jitter_native.py`` runs both on generated scenarios and
compares them after every operation). Change the behaviour here first, then in C.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._jitter import JitterBuffer, _setup
from .rtp import RtpError, RtpPacket, SequenceUnwrapper

__all__ = [
    "Concealer",
    "JitterBuffer",
    "JitterCounters",
    "JitterFrame",
    "ReferenceJitterBuffer",
    "pcm16_fade_concealer",
    "repeat_then_silence_concealer",
    "silence_concealer",
]

#: (last good payload or None, n-th consecutive concealed frame from 1) -> payload to play.
Concealer = Callable[[bytes | None, int], bytes]

MAX_SEQ_JUMP = 3000


def silence_concealer(silence: bytes) -> Concealer:
    """Conceal with a fixed silent frame (e.g. 160 x 0xFF for PCMU, zeros for PCM)."""

    def conceal(last: bytes | None, count: int) -> bytes:
        return silence

    return conceal


def repeat_then_silence_concealer(silence: bytes, max_repeats: int = 2) -> Concealer:
    """For self-contained codec frames (G.711): repeat the last one, then go silent."""

    def conceal(last: bytes | None, count: int) -> bytes:
        return last if last is not None and count <= max_repeats else silence

    return conceal


def pcm16_fade_concealer(
    frame_bytes: int, attenuation: float = 0.5, max_repeats: int = 3
) -> Concealer:
    """For 16-bit PCM: repeat the last frame, ``attenuation`` times quieter each time."""
    silence = bytes(frame_bytes)

    def conceal(last: bytes | None, count: int) -> bytes:
        if last is None or count > max_repeats:
            return silence
        samples = np.frombuffer(last, dtype="<i2").astype(np.float32)
        return (samples * attenuation**count).astype("<i2").tobytes()

    return conceal


@dataclass(frozen=True, slots=True)
class JitterFrame:
    """One frame of playout. ``sequence_number``/``timestamp`` are the RTP ones (or the
    expected ones for a concealed frame).

    The C buffer builds these by filling the five slots directly (what the dataclass
    ``__init__`` does); it checks at import that this is still a plain slotted
    dataclass with these fields in this order, and calls the class otherwise.
    """

    payload: bytes
    sequence_number: int
    timestamp: int
    concealed: bool = False
    marker: bool = False


@dataclass(slots=True)
class JitterCounters:
    """Running counts for metrics and the call record.

    ``JitterBuffer.counters`` (the C type) is a new snapshot on every access: read it
    again for current values; changing it changes nothing in the buffer.
    """

    received: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    concealed: int = 0
    dropped: int = 0
    resets: int = 0


_setup(JitterFrame, JitterCounters, RtpError)


class ReferenceJitterBuffer:
    """Reorders, de-duplicates and paces one RTP stream; conceals what is missing.

    The specification of the C :class:`JitterBuffer`, which behaves exactly like this
    class (``push_rtp(data, now)`` there is ``push(RtpPacket.parse(data), now)``).
    Production code uses :class:`JitterBuffer`; this one is for reading and for the
    differential tests.
    """

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
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self._conceal = conceal
        self.clock_rate = clock_rate
        self.frame_duration = frame_duration
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.capacity = capacity
        self.max_stall = max_stall
        self.decay = decay
        self.shrink_after = shrink_after
        self._step = round(clock_rate * frame_duration)
        self.counters = JitterCounters()
        self.target_delay = min_delay
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._last_tick: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._packets: dict[int, RtpPacket] = {}
        self._unwrap = SequenceUnwrapper()
        self._ssrc: int | None = None
        self._next: int | None = None  # extended seq to play next; None while buffering
        self._floor: int | None = None  # first extended seq not yet played or given up
        self._highest: int | None = None
        self._first_arrival = 0.0
        self._played: deque[int] = deque(maxlen=self.capacity)
        self._last_payload: bytes | None = None
        self._last_timestamp: int | None = None
        self._concealed_run = 0
        self._stalls = 0
        self._over_target = 0
        self._last_transit = None

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate in seconds."""
        return self._jitter

    @property
    def depth(self) -> int:
        """Frames queued from the playout point to the newest packet."""
        if not self._packets or self._highest is None:
            return 0
        start = self._next if self._next is not None else min(self._packets)
        return self._highest - start + 1

    def _target_frames(self) -> int:
        return max(1, math.ceil(self.target_delay / self.frame_duration - 1e-9))

    def push(self, packet: RtpPacket, now: float) -> None:
        """Queue one received packet."""
        counters = self.counters
        counters.received += 1
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._reset()
            counters.resets += 1
        self._ssrc = packet.ssrc
        ext = self._unwrap.unwrap(packet.sequence_number)
        if self._floor is not None and abs(ext - self._floor) > MAX_SEQ_JUMP:
            self._reset()
            counters.resets += 1
            self._ssrc = packet.ssrc
            ext = self._unwrap.unwrap(packet.sequence_number)
        if ext in self._packets or ext in self._played:
            counters.duplicates += 1
            return
        if self._floor is not None and ext < self._floor:
            counters.late += 1
            self._grow()
            return
        self._update_jitter(packet.timestamp, now)
        if not self._packets and self._next is None:
            self._first_arrival = now
        self._packets[ext] = packet
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if self._floor is None:
            self._floor = ext
        while len(self._packets) > self.capacity:
            oldest = min(self._packets)
            del self._packets[oldest]
            counters.dropped += 1
            self._skip_to(oldest + 1)

    def _skip_to(self, ext: int) -> None:
        if self._floor is not None and ext > self._floor:
            self._floor = ext
        if self._next is not None and ext > self._next:
            self._next = ext

    def _update_jitter(self, timestamp: int, now: float) -> None:
        transit = now - timestamp / self.clock_rate
        last = self._last_transit
        self._last_transit = transit
        if last is None:
            return
        d = abs(transit - last)
        if d > 2**31 / self.clock_rate:  # 32-bit timestamp wrapped between the two packets
            d = abs(d - 2**32 / self.clock_rate)
        if d > 1.0:
            # A timestamp jump (sender clock reset), not network jitter: rebase.
            return
        self._jitter += (d - self._jitter) / 16.0

    def _grow(self) -> None:
        self.target_delay = min(self.max_delay, self.target_delay + self.frame_duration)

    def _adapt(self, now: float) -> None:
        wanted = min(self.max_delay, max(self.min_delay, self.min_delay + 3.0 * self._jitter))
        if self._last_tick is not None and self.target_delay > wanted:
            decayed = self.target_delay - self.decay * max(0.0, now - self._last_tick)
            self.target_delay = max(wanted, decayed)
        else:
            self.target_delay = max(self.target_delay, wanted)
        self._last_tick = now

    def pop_pcm(self, now: float, table: bytes) -> tuple[bytes, bool] | None:
        """:meth:`pop`, its payload decoded through ``table`` (the 256 little-endian
        int16 samples of a G.711 law, one per code), and whether it was concealed."""
        if len(table) != 512:
            raise ValueError("table must be 512 bytes: 256 little-endian int16")
        frame = self.pop(now)
        if frame is None:
            return None
        samples = np.frombuffer(table, "<i2")[np.frombuffer(frame.payload, np.uint8)]
        return samples.tobytes(), frame.concealed

    def pop(self, now: float) -> JitterFrame | None:
        """The frame to play at this tick (call once per ``frame_duration``)."""
        self._adapt(now)
        if self._next is None and not self._start(now):
            return None
        assert self._next is not None
        packet = self._packets.pop(self._next, None)
        if packet is not None:
            return self._play(packet)
        counters = self.counters
        if self._packets:
            assert self._highest is not None
            target = self._target_frames()
            if self._highest - self._next < target and self._stalls < target:
                return self._stall()
            # Enough later packets are queued, or we waited the target delay:
            # the missing one could no longer play in time.
            counters.lost += 1
            missing = self._next
            self._next += 1
            self._floor = self._next
            if self._stalls:
                # Its slot was already filled with concealment while we waited.
                self._stalls = 0
                packet = self._packets.pop(self._next, None)
                if packet is not None:
                    return self._play(packet)
            return self._concealment(missing)
        if self._stalls >= self.max_stall:
            # Nothing arrives: end of talkspurt (or of the stream). Rebuffer on the next packet.
            self._next = None
            self._stalls = 0
            return None
        return self._stall()

    def _start(self, now: float) -> bool:
        if not self._packets or self._highest is None:
            return False
        lowest = min(self._packets)
        span = self._highest - lowest + 1
        if span < self._target_frames() and now - self._first_arrival < self.target_delay - 1e-9:
            return False
        if self._floor is not None and lowest > self._floor:
            self.counters.lost += lowest - self._floor
        self._next = lowest
        self._floor = lowest
        return True

    def _play(self, packet: RtpPacket) -> JitterFrame:
        assert self._next is not None
        if self._stalls:
            # We waited for this packet: it came later than playout wanted.
            self._grow()
        self._stalls = 0
        self._concealed_run = 0
        self._played.append(self._next)
        self._next += 1
        self._floor = self._next
        self._last_payload = packet.payload
        self._last_timestamp = packet.timestamp
        self._maybe_shrink()
        return JitterFrame(
            packet.payload, packet.sequence_number, packet.timestamp, False, packet.marker
        )

    def _maybe_shrink(self) -> None:
        if self.depth > self._target_frames() + 1:
            self._over_target += 1
        else:
            self._over_target = 0
        if self._over_target >= self.shrink_after and self._next in self._packets:
            assert self._next is not None
            del self._packets[self._next]
            self._played.append(self._next)
            self._next += 1
            self._floor = self._next
            self.counters.dropped += 1
            self._over_target = 0

    def _stall(self) -> JitterFrame:
        self._stalls += 1
        assert self._next is not None
        return self._concealment(self._next)

    def _concealment(self, ext: int) -> JitterFrame:
        self.counters.concealed += 1
        self._concealed_run += 1
        payload = self._conceal(self._last_payload, self._concealed_run)
        timestamp = 0
        if self._last_timestamp is not None:
            timestamp = (self._last_timestamp + self._step) & 0xFFFFFFFF
            self._last_timestamp = timestamp
        return JitterFrame(payload, ext & 0xFFFF, timestamp, True, False)
