"""Shared vocabulary of the sans-IO transaction layer (RFC 3261 §17).

The four state machines (:mod:`.transaction_client`,
:mod:`.transaction_server`) hold messages opaquely: all they need from one is
that it can be sent again, so they see it as :class:`Sendable`. Everything that
reads header values lives beside them: matching in :mod:`.transaction_keys`,
CANCEL/ACK building and the routing of messages in :mod:`.transaction_layer`.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Protocol

from voicegw.sip.timers import Deadlines, Timer, TimerConfig, is_reliable


class Sendable(Protocol):
    """A message a transaction may (re)send: anything that serialises to bytes."""

    def __bytes__(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message goes or came from: address plus transport name (``UDP``, ``TCP`` ...)."""

    host: str
    port: int
    transport: str = "UDP"

    @property
    def reliable(self) -> bool:
        return is_reliable(self.transport)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


class State(enum.Enum):
    """Union of the states of the four machines (Figures 5-8, RFC 6026 Accepted)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Signal(enum.Enum):
    """What a state machine reports upward besides messages to send."""

    TIMEOUT = "timeout"  # timer B, F or H fired: the peer never answered / never ACKed


@dataclass(eq=False, slots=True)
class Transaction(abc.ABC):
    """State, armed timers and send queue common to the four machines.

    ``eq=False``: a transaction is an identity, two with equal fields are not
    the same transaction.
    """

    destination: Destination
    config: TimerConfig
    state: State
    deadlines: Deadlines = field(default_factory=Deadlines)
    _outbox: list[Sendable] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        return self.destination.reliable

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def get_timer(self) -> float | None:
        """Absolute time of the next timer, ``None`` when nothing is armed."""
        return self.deadlines.earliest()

    def handle_timer(self, now: float) -> Signal | None:
        """Fire every timer due at ``now``; report a timeout if one ended the transaction."""
        signal = None
        for timer in self.deadlines.pop_expired(now):
            if self.terminated:
                break
            signal = self._fire(timer, now) or signal
        return signal

    def take_sends(self) -> list[Sendable]:
        """Messages queued for ``destination`` since the last call."""
        out, self._outbox = self._outbox, []
        return out

    def transport_error(self) -> None:
        """§17.1.4 / §17.2.4: a failed send ends the transaction at once."""
        self._terminate()

    def _send(self, message: Sendable) -> None:
        self._outbox.append(message)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self.deadlines.clear()

    def _arm(self, timer: Timer, now: float, after: float) -> None:
        self.deadlines.arm(timer, now + after)

    def _linger(self, timer: Timer, now: float, duration: float) -> None:
        """Wait ``duration`` in a final state; zero (reliable transports) ends at once."""
        if duration <= 0:
            self._terminate()
        else:
            self._arm(timer, now, duration)

    @abc.abstractmethod
    def _enter(self, now: float) -> None:
        """Arm or cancel the timers of the state just entered."""

    @abc.abstractmethod
    def _fire(self, timer: Timer, now: float) -> Signal | None:
        """Act on one expired timer."""
