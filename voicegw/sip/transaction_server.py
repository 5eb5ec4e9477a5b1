"""Server transactions: INVITE (§17.2.1, Figure 7 + RFC 6026) and non-INVITE (§17.2.2, Figure 8).

The TU's responses go through :meth:`ServerTransaction.send_response`; the
transport's request retransmissions through :meth:`receive_request`, which
answers them with the last response sent and never passes them up.

100 Trying (§17.2.1): an INVITE server transaction waits
``TimerConfig.trying_delay`` (200 ms by default, the RFC's own figure) for the
TU's first response and sends ``100 Trying`` itself only if none came, so a TU
that answers fast costs one datagram less. A retransmitted INVITE arriving
before that sends the 100 at once: the peer is evidently waiting.

RFC 6026 is followed for 2xx: the INVITE transaction moves to Accepted (timer
L) instead of ending, so INVITE retransmissions are absorbed rather than seen
as new requests. Retransmitting the 2xx until the ACK is the TU's (dialog's)
job, as in RFC 3261 §13.3.1.4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voicegw.sip.timers import Timer, TimerConfig
from voicegw.sip.transaction import Destination, Sendable, Signal, State, Transaction
from voicegw.sip.transaction_client import Kind, kind_of

_S = State
_K = Kind

# Which responses the TU may send in which state, and the state that follows.
INVITE_SERVER_RULES: dict[tuple[State, Kind], State] = {
    (_S.PROCEEDING, _K.PROVISIONAL): _S.PROCEEDING,
    (_S.PROCEEDING, _K.SUCCESS): _S.ACCEPTED,
    # RFC 6026 §8.5: the TU's own 2xx retransmissions pass through in Accepted.
    (_S.ACCEPTED, _K.SUCCESS): _S.ACCEPTED,
    (_S.PROCEEDING, _K.FAILURE): _S.COMPLETED,
}

NON_INVITE_SERVER_RULES: dict[tuple[State, Kind], State] = {
    (_S.TRYING, _K.PROVISIONAL): _S.PROCEEDING,
    (_S.PROCEEDING, _K.PROVISIONAL): _S.PROCEEDING,
    (_S.TRYING, _K.SUCCESS): _S.COMPLETED,
    (_S.PROCEEDING, _K.SUCCESS): _S.COMPLETED,
    (_S.TRYING, _K.FAILURE): _S.COMPLETED,
    (_S.PROCEEDING, _K.FAILURE): _S.COMPLETED,
}

# States in which a retransmitted request is answered with the last response.
# (Trying of a non-INVITE has nothing to resend; Accepted/Confirmed absorb.)
RESEND_ON_RETRANSMISSION = frozenset({State.PROCEEDING, State.COMPLETED})


@dataclass(eq=False, slots=True)
class ServerTransaction(Transaction):
    """Common part: the last response sent and the TU response table."""

    rules: dict[tuple[State, Kind], State] = field(default_factory=dict)
    last_response: Sendable | None = None

    def send_response(self, response: Sendable, status: int, now: float) -> bool:
        """Send a TU response; False (nothing sent) when the state forbids it,
        e.g. a 487 after the 200 already went out in a CANCEL race."""
        target = self.rules.get((self.state, kind_of(status)))
        if target is None:
            return False
        self.last_response = response
        self._send(response)
        if target is not self.state:
            self.state = target
            self._enter(now)
        return True

    def receive_request(self, now: float) -> None:
        """A retransmission of the request that created this transaction."""
        if self.state in RESEND_ON_RETRANSMISSION and self.last_response is not None:
            self._send(self.last_response)


@dataclass(eq=False, slots=True)
class InviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.1: timers G (non-2xx retransmit, doubling to T2), H (64*T1), I (T4);
    RFC 6026 timer L (64*T1) in Accepted."""

    trying: Sendable | None = None
    _interval: float = 0.0

    @classmethod
    def start(
        cls, trying: Sendable, destination: Destination, config: TimerConfig, now: float
    ) -> InviteServerTransaction:
        """Create on a new INVITE; ``trying`` is the prepared ``100 Trying``."""
        tx = cls(
            destination=destination,
            config=config,
            state=State.PROCEEDING,
            rules=INVITE_SERVER_RULES,
            trying=trying,
        )
        if config.trying_delay <= 0:
            tx._send_trying()
        else:
            tx._arm(Timer.TRYING, now, config.trying_delay)
        return tx

    def receive_request(self, now: float) -> None:
        if self.state is State.PROCEEDING and self.last_response is None:
            self._send_trying()
            return
        # Two-argument super(): slots=True dataclasses are rebuilt classes, which
        # breaks the zero-argument form on Python 3.11.
        super(InviteServerTransaction, self).receive_request(now)

    def receive_ack(self, now: float) -> bool:
        """An ACK matching this transaction; True when the TU must see it.

        In Completed it is the ACK for our non-2xx and ends retransmission
        (-> Confirmed). RFC 6026 §7.1: in Accepted it belongs to the 2xx and
        goes up to the TU. Anywhere else it is a retransmission, absorbed.
        """
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._enter(now)
            return False
        return self.state is State.ACCEPTED

    def send_response(self, response: Sendable, status: int, now: float) -> bool:
        self.deadlines.cancel(Timer.TRYING)
        return super(InviteServerTransaction, self).send_response(response, status, now)

    def _send_trying(self) -> None:
        self.deadlines.cancel(Timer.TRYING)
        assert self.trying is not None
        self.last_response = self.trying
        self._send(self.trying)

    def _enter(self, now: float) -> None:
        if self.state is State.ACCEPTED:
            self._arm(Timer.L, now, self.config.timeout)
        elif self.state is State.COMPLETED:
            if not self.reliable:
                self._interval = self.config.t1
                self._arm(Timer.G, now, self._interval)
            self._arm(Timer.H, now, self.config.timeout)
        elif self.state is State.CONFIRMED:
            self.deadlines.cancel(Timer.G, Timer.H)
            self._linger(Timer.I, now, self.config.absorb(self.reliable))

    def _fire(self, timer: Timer, now: float) -> Signal | None:
        if timer is Timer.TRYING:
            if self.last_response is None:
                self._send_trying()
            return None
        if timer is Timer.G:
            assert self.last_response is not None
            self._send(self.last_response)
            self._interval = min(2 * self._interval, self.config.t2)
            self._arm(Timer.G, now, self._interval)
            return None
        self._terminate()
        return Signal.TIMEOUT if timer is Timer.H else None


@dataclass(eq=False, slots=True)
class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.2: timer J (64*T1 unreliable, 0 reliable) in Completed."""

    @classmethod
    def start(
        cls, destination: Destination, config: TimerConfig, now: float
    ) -> NonInviteServerTransaction:
        return cls(
            destination=destination,
            config=config,
            state=State.TRYING,
            rules=NON_INVITE_SERVER_RULES,
        )

    def _enter(self, now: float) -> None:
        if self.state is State.COMPLETED:
            self._linger(Timer.J, now, self.config.timer_j(self.reliable))

    def _fire(self, timer: Timer, now: float) -> Signal | None:
        self._terminate()
        return None
