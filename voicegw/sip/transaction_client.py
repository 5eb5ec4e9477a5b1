"""Client transactions: INVITE (§17.1.1, Figure 5 + RFC 6026) and non-INVITE (§17.1.2, Figure 6).

Each machine takes responses and ``now``, queues what to send and arms
absolute deadlines; the caller fires them with :meth:`handle_timer`. The
response rules are tables keyed by (state, kind of response): a missing entry
means "absorb silently" (a late 1xx in Completed, a 2xx retransmission in
Completed of a non-INVITE, ...).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from voicegw.sip.timers import Timer, TimerConfig
from voicegw.sip.transaction import Destination, Sendable, Signal, State, Transaction


class Kind(enum.Enum):
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"


def kind_of(status: int) -> Kind:
    if status < 200:
        return Kind.PROVISIONAL
    return Kind.SUCCESS if status < 300 else Kind.FAILURE


class Action(enum.Enum):
    FORWARD = "pass to TU"
    ACK_AND_FORWARD = "send ACK, pass to TU"
    RESEND_ACK = "send the same ACK again, absorb"


_S = State
_K = Kind
_A = Action

# RFC 3261 Figure 5 with the RFC 6026 Accepted state: a 2xx ends the INVITE
# transaction's responsibility for ACK (the TU sends it) but the transaction
# lingers so that 2xx retransmissions still reach the TU, which must ACK each.
INVITE_CLIENT_RULES: dict[tuple[State, Kind], tuple[Action, State]] = {
    (_S.CALLING, _K.PROVISIONAL): (_A.FORWARD, _S.PROCEEDING),
    (_S.PROCEEDING, _K.PROVISIONAL): (_A.FORWARD, _S.PROCEEDING),
    (_S.CALLING, _K.SUCCESS): (_A.FORWARD, _S.ACCEPTED),
    (_S.PROCEEDING, _K.SUCCESS): (_A.FORWARD, _S.ACCEPTED),
    (_S.ACCEPTED, _K.SUCCESS): (_A.FORWARD, _S.ACCEPTED),
    (_S.CALLING, _K.FAILURE): (_A.ACK_AND_FORWARD, _S.COMPLETED),
    (_S.PROCEEDING, _K.FAILURE): (_A.ACK_AND_FORWARD, _S.COMPLETED),
    (_S.COMPLETED, _K.FAILURE): (_A.RESEND_ACK, _S.COMPLETED),
}

# RFC 3261 Figure 6.
NON_INVITE_CLIENT_RULES: dict[tuple[State, Kind], tuple[Action, State]] = {
    (_S.TRYING, _K.PROVISIONAL): (_A.FORWARD, _S.PROCEEDING),
    (_S.PROCEEDING, _K.PROVISIONAL): (_A.FORWARD, _S.PROCEEDING),
    (_S.TRYING, _K.SUCCESS): (_A.FORWARD, _S.COMPLETED),
    (_S.PROCEEDING, _K.SUCCESS): (_A.FORWARD, _S.COMPLETED),
    (_S.TRYING, _K.FAILURE): (_A.FORWARD, _S.COMPLETED),
    (_S.PROCEEDING, _K.FAILURE): (_A.FORWARD, _S.COMPLETED),
}


@dataclass(eq=False, slots=True)
class ClientTransaction(Transaction):
    """Common part: the request, its retransmission interval and the response table."""

    request: Sendable | None = None
    rules: dict[tuple[State, Kind], tuple[Action, State]] = field(default_factory=dict)
    _interval: float = 0.0
    _ack: Sendable | None = None

    def receive_response(
        self, status: int, now: float, make_ack: Callable[[], Sendable] | None = None
    ) -> bool:
        """Feed one matching response; True when it must be passed to the TU.

        ``make_ack`` builds the ACK for a non-2xx final response (§17.1.1.3);
        only INVITE transactions call it, and only once.
        """
        rule = self.rules.get((self.state, kind_of(status)))
        if rule is None:
            return False
        action, target = rule
        if action is Action.ACK_AND_FORWARD:
            assert make_ack is not None, "an INVITE client transaction needs make_ack"
            self._ack = make_ack()
        if action in (Action.ACK_AND_FORWARD, Action.RESEND_ACK) and self._ack is not None:
            self._send(self._ack)
        if target is not self.state:
            self.state = target
            self._enter(now)
        return action is not Action.RESEND_ACK

    def _start(self, now: float, retransmit: Timer, timeout: Timer) -> None:
        assert self.request is not None
        self._send(self.request)
        if not self.reliable:
            self._interval = self.config.t1
            self._arm(retransmit, now, self._interval)
        self._arm(timeout, now, self.config.timeout)

    def _retransmit(self, timer: Timer, now: float, next_interval: float) -> None:
        assert self.request is not None
        self._send(self.request)
        self._interval = next_interval
        self._arm(timer, now, self._interval)


@dataclass(eq=False, slots=True)
class InviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.1: timers A (retransmit, doubling), B (64*T1), D; RFC 6026 timer M."""

    @classmethod
    def start(
        cls, request: Sendable, destination: Destination, config: TimerConfig, now: float
    ) -> InviteClientTransaction:
        tx = cls(
            destination=destination,
            config=config,
            state=State.CALLING,
            request=request,
            rules=INVITE_CLIENT_RULES,
        )
        tx._start(now, Timer.A, Timer.B)
        return tx

    def cancel_sent(self, now: float) -> None:
        """§9.1: after sending CANCEL, give the INVITE 64*T1 for its final response;
        timer B is re-used for that wait and ends the transaction as a timeout."""
        if self.state in (State.CALLING, State.PROCEEDING):
            self._arm(Timer.B, now, self.config.timeout)

    def _enter(self, now: float) -> None:
        self.deadlines.cancel(Timer.A, Timer.B)
        if self.state is State.ACCEPTED:
            self._arm(Timer.M, now, self.config.timeout)
        elif self.state is State.COMPLETED:
            self._linger(Timer.D, now, self.config.timer_d(self.reliable))

    def _fire(self, timer: Timer, now: float) -> Signal | None:
        if timer is Timer.A:
            # §17.1.1.2: INVITE keeps doubling (no T2 cap); timer B ends it at 64*T1.
            self._retransmit(Timer.A, now, 2 * self._interval)
            return None
        self._terminate()
        return Signal.TIMEOUT if timer is Timer.B else None


@dataclass(eq=False, slots=True)
class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.2: timers E (doubling up to T2, T2 once Proceeding), F (64*T1), K."""

    @classmethod
    def start(
        cls, request: Sendable, destination: Destination, config: TimerConfig, now: float
    ) -> NonInviteClientTransaction:
        tx = cls(
            destination=destination,
            config=config,
            state=State.TRYING,
            request=request,
            rules=NON_INVITE_CLIENT_RULES,
        )
        tx._start(now, Timer.E, Timer.F)
        return tx

    def _enter(self, now: float) -> None:
        if self.state is State.COMPLETED:
            self.deadlines.cancel(Timer.E, Timer.F)
            self._linger(Timer.K, now, self.config.absorb(self.reliable))

    def _fire(self, timer: Timer, now: float) -> Signal | None:
        if timer is Timer.E:
            if self.state is State.PROCEEDING:
                interval = self.config.t2
            else:
                interval = min(2 * self._interval, self.config.t2)
            self._retransmit(Timer.E, now, interval)
            return None
        self._terminate()
        return Signal.TIMEOUT if timer is Timer.F else None
