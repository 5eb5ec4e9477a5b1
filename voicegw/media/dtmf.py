"""DTMF over RTP (RFC 4733 telephone-event): payload, receiver, sender.

Sans-IO. The receiver takes RTP packets and ``now`` and returns finished
digits; the sender returns the packets for a digit with their send offsets.

One key press is one *event*: every packet of it carries the same RTP
timestamp (the event start), the first has the marker bit, updates repeat
the growing duration, and the end packet (E bit) is sent three times. What
real carriers do on top of that, and how the receiver copes:

* end packet repeated (by design) or duplicated -> digits are keyed by
  timestamp and a finished timestamp is remembered, so it yields one digit;
* marker bit missing -> the marker is not relied on: a new timestamp is a new
  event, and it also finishes a previous event whose end packets were lost;
* all end packets lost and nothing follows -> the event finishes ``timeout``
  seconds after its last packet (see :meth:`DtmfReceiver.next_deadline`);
* packets reordered -> durations only grow; packets of an older event than
  the newest one seen are stale and dropped;
* events longer than the 16-bit duration field (~8 s at 8 kHz) are split by
  the sender into segments without marker (RFC 4733 §2.5.1.3), which are
  joined back into one digit.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from .rtp import RtpPacket, timestamp_diff

__all__ = [
    "DtmfDigit",
    "DtmfError",
    "DtmfReceiver",
    "ScheduledEventPacket",
    "TelephoneEvent",
    "digit_packets",
    "digits_packets",
]

TELEPHONE_EVENT: Final = "telephone-event"
#: RFC 4733 §3.2 event codes 0-15, in code order.
EVENT_DIGITS: Final = "0123456789*#ABCD"
EVENT_FLASH: Final = 16
MAX_DURATION: Final = 0xFFFF

_EVENT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A telephone-event payload that cannot be read."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The 4-byte telephone-event payload (RFC 4733 §2.3).

    ``volume`` is the power level in -dBm0 (0-63); ``duration`` in RTP
    timestamp units since the event's timestamp.
    """

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @classmethod
    def parse(cls, data: bytes) -> TelephoneEvent:
        if len(data) < 4:
            raise DtmfError("telephone-event payload is shorter than 4 bytes")
        event, flags, duration = _EVENT.unpack_from(data)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63:
            raise DtmfError("telephone-event field out of range")
        if not 0 <= self.duration <= MAX_DURATION:
            raise DtmfError("telephone-event duration out of range")
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def digit(self) -> str | None:
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A finished key press. ``ended`` is False when it was inferred (end packets lost)."""

    digit: str | None
    event: int
    timestamp: int
    duration: int
    volume: int
    ended: bool


class _Active:
    __slots__ = (
        "duration",
        "event",
        "last_seen",
        "segment_duration",
        "segment_ts",
        "timestamp",
        "volume",
    )

    def __init__(self, timestamp: int, event: TelephoneEvent, now: float) -> None:
        self.timestamp = timestamp
        self.event = event.event
        self.volume = event.volume
        self.segment_ts = timestamp
        self.duration = event.duration
        self.segment_duration = event.duration
        self.last_seen = now


class DtmfReceiver:
    """Turns telephone-event packets into :class:`DtmfDigit`, exactly once per key press."""

    def __init__(self, *, timeout: float = 0.25, history: int = 16) -> None:
        self.timeout = timeout
        self._active: _Active | None = None
        self._newest: int | None = None
        self._finished: deque[int] = deque(maxlen=history)
        self.packets = 0
        self.ignored = 0
        self.malformed = 0

    def receive(self, packet: RtpPacket, now: float) -> list[DtmfDigit]:
        """Feed one telephone-event packet; returns digits finished by it."""
        self.packets += 1
        try:
            event = TelephoneEvent.parse(packet.payload)
        except DtmfError:
            self.malformed += 1
            return []
        ts = packet.timestamp
        done: list[DtmfDigit] = []
        active = self._active
        if active is not None and ts != active.segment_ts:
            if self._continues(active, ts, event, packet.marker):
                active.segment_ts = ts
                active.segment_duration = 0
            elif timestamp_diff(ts, active.segment_ts) > 0:
                done.append(self._finish(ended=False))
                active = None
        if active is None:
            if ts in self._finished or (
                self._newest is not None and timestamp_diff(ts, self._newest) < 0
            ):
                # A repeated end packet, or a straggler from an older event.
                self.ignored += 1
                return done
            active = self._active = _Active(ts, event, now)
            self._newest = ts
        elif ts != active.segment_ts:
            self.ignored += 1
            return done
        if event.duration > active.segment_duration:
            active.duration += event.duration - active.segment_duration
            active.segment_duration = event.duration
        active.last_seen = now
        if event.end:
            done.append(self._finish(ended=True))
        return done

    @staticmethod
    def _continues(active: _Active, ts: int, event: TelephoneEvent, marker: bool) -> bool:
        # RFC 4733 §2.5.1.3: a long event goes on in a new segment that starts
        # where the full previous one ended, with the same code and no marker.
        return (
            not marker
            and event.event == active.event
            and active.segment_duration == MAX_DURATION
            and timestamp_diff(ts, active.segment_ts) == MAX_DURATION
        )

    def poll(self, now: float) -> list[DtmfDigit]:
        """Finish an event whose end packets never came. Call at :meth:`next_deadline`."""
        active = self._active
        if active is not None and now >= active.last_seen + self.timeout:
            return [self._finish(ended=False)]
        return []

    def next_deadline(self) -> float | None:
        active = self._active
        return None if active is None else active.last_seen + self.timeout

    def _finish(self, *, ended: bool) -> DtmfDigit:
        active = self._active
        assert active is not None
        self._active = None
        self._finished.append(active.segment_ts)
        if active.segment_ts != active.timestamp:
            self._finished.append(active.timestamp)
        digit = EVENT_DIGITS[active.event] if active.event < len(EVENT_DIGITS) else None
        return DtmfDigit(
            digit=digit,
            event=active.event,
            timestamp=active.timestamp,
            duration=active.duration,
            volume=active.volume,
            ended=ended,
        )


@dataclass(frozen=True, slots=True)
class ScheduledEventPacket:
    """A telephone-event packet to send ``offset`` seconds after the digit starts.

    The caller adds SSRC and sequence number when sending; all packets of
    one digit share ``timestamp``.
    """

    offset: float
    marker: bool
    timestamp: int
    payload: bytes


def digit_packets(
    digit: str,
    timestamp: int,
    *,
    duration: float = 0.1,
    volume: int = 10,
    clock_rate: int = 8000,
    update_interval: float = 0.05,
    end_repeats: int = 3,
    end_interval: float = 0.02,
) -> list[ScheduledEventPacket]:
    """The packets for one key press (RFC 4733 §2.5.1).

    An update is sent every ``update_interval`` carrying the duration the
    tone will have reached by the next packet (the first packet has the
    marker and already covers one interval, as in RFC 4733 §5's example);
    then ``end_repeats`` end packets with the final duration, ``end_interval``
    apart. Durations longer than the 16-bit field are not split here: keep
    digits under 8 s at 8 kHz.
    """
    code = EVENT_DIGITS.find(digit.upper())
    if len(digit) != 1 or code < 0:
        raise DtmfError("not a DTMF digit")
    total = round(duration * clock_rate)
    step = round(update_interval * clock_rate)
    if total <= 0 or step <= 0 or total > MAX_DURATION:
        raise DtmfError("DTMF duration out of range")
    packets: list[ScheduledEventPacket] = []
    elapsed = 0
    while True:
        reached = min(elapsed + step, total)
        packets.append(
            ScheduledEventPacket(
                offset=elapsed / clock_rate,
                marker=not packets,
                timestamp=timestamp,
                payload=bytes(TelephoneEvent(code, False, volume, reached)),
            )
        )
        elapsed += step
        if elapsed + step >= total:
            break
    end = bytes(TelephoneEvent(code, True, volume, total))
    for i in range(end_repeats):
        packets.append(
            ScheduledEventPacket(
                offset=min(elapsed, total) / clock_rate + i * end_interval,
                marker=False,
                timestamp=timestamp,
                payload=end,
            )
        )
    return packets


def digits_packets(
    digits: str,
    timestamp: int,
    *,
    duration: float = 0.1,
    gap: float = 0.1,
    volume: int = 10,
    clock_rate: int = 8000,
) -> list[ScheduledEventPacket]:
    """Packets for a string of digits, one event per digit, ``gap`` seconds apart."""
    packets: list[ScheduledEventPacket] = []
    start = 0.0
    for digit in digits:
        ts = (timestamp + round(start * clock_rate)) & 0xFFFFFFFF
        for p in digit_packets(digit, ts, duration=duration, volume=volume, clock_rate=clock_rate):
            packets.append(ScheduledEventPacket(start + p.offset, p.marker, p.timestamp, p.payload))
        start += duration + gap
    return packets
