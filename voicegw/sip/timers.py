"""RFC 3261 §17 timer values and a tiny deadline set.

Nothing here reads the clock: a :class:`Deadlines` only stores absolute
times handed in by the caller, so a transaction can be driven through its
whole retransmission schedule with a fake ``now`` in microseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """True for transports that retransmit by themselves (§17.1.1.2: no timer A/E/G there)."""
    return transport.upper() in RELIABLE_TRANSPORTS


class Timer(enum.Enum):
    """The timers of RFC 3261 Table 4, RFC 6026 (L, M) and the 100 Trying delay."""

    A = "A"  # INVITE client: request retransmit (unreliable only)
    B = "B"  # INVITE client: transaction timeout
    D = "D"  # INVITE client: wait for response retransmits after a non-2xx final
    E = "E"  # non-INVITE client: request retransmit (unreliable only)
    F = "F"  # non-INVITE client: transaction timeout
    G = "G"  # INVITE server: non-2xx final retransmit (unreliable only)
    H = "H"  # INVITE server: wait for ACK
    I = "I"  # INVITE server: absorb ACK retransmits  # noqa: E741 - the RFC's name
    J = "J"  # non-INVITE server: absorb request retransmits
    K = "K"  # non-INVITE client: absorb response retransmits
    L = "L"  # INVITE server (RFC 6026): absorb INVITE retransmits after a 2xx
    M = "M"  # INVITE client (RFC 6026): pass 2xx retransmits up after the first
    TRYING = "100"  # INVITE server: send 100 Trying if the TU has not answered


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1, T2, T4 (§17.1.1.1) and the derived durations of Table 4.

    ``trying_delay`` is how long an INVITE server transaction waits for the TU
    before answering ``100 Trying`` itself (§17.2.1 allows skipping it when the
    TU answers within 200 ms); ``0`` sends it at once.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    trying_delay: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 <= 0 or self.trying_delay < 0:
            raise ValueError("timer values must satisfy 0 < T1 <= T2, T4 > 0, trying_delay >= 0")

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        """Timer D: at least 32 s over UDP (§17.1.1.2), zero over reliable transports."""
        return 0.0 if reliable else max(32.0, self.timeout)

    def absorb(self, reliable: bool) -> float:
        """Timers I and K: T4 over unreliable transports, zero otherwise."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Timer J: 64*T1 over unreliable transports, zero otherwise."""
        return 0.0 if reliable else self.timeout


@dataclass(slots=True)
class Deadlines:
    """Armed timers of one transaction as absolute times."""

    _at: dict[Timer, float] = field(default_factory=dict)

    def arm(self, timer: Timer, at: float) -> None:
        self._at[timer] = at

    def cancel(self, *timers: Timer) -> None:
        for timer in timers:
            self._at.pop(timer, None)

    def clear(self) -> None:
        self._at.clear()

    def earliest(self) -> float | None:
        return min(self._at.values(), default=None)

    def pop_expired(self, now: float) -> list[Timer]:
        """Disarm and return the timers due at ``now``, earliest first."""
        due = sorted((at, timer.value, timer) for timer, at in self._at.items() if at <= now)
        for _, _, timer in due:
            del self._at[timer]
        return [timer for _, _, timer in due]

    def __contains__(self, timer: Timer) -> bool:
        return timer in self._at
