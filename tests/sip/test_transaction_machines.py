"""The four RFC 3261 §17 state machines, driven on a virtual clock.

The machines only store and resend messages, so the wire bytes themselves
(``bytes`` has ``__bytes__``) stand in for parsed messages here; matching and
message building are exercised in test_transaction_layer.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.sip.timers import Timer, TimerConfig
from voicegw.sip.transaction import Destination, Sendable, Signal, State, Transaction
from voicegw.sip.transaction_client import InviteClientTransaction, NonInviteClientTransaction
from voicegw.sip.transaction_server import InviteServerTransaction, NonInviteServerTransaction

UDP = Destination("127.0.0.1", 5060, "UDP")
TCP = Destination("127.0.0.1", 5060, "TCP")
CONFIG = TimerConfig()

INVITE = b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n"
ACK = b"ACK sip:bob@127.0.0.1 SIP/2.0\r\nCSeq: 1 ACK\r\n\r\n"
OPTIONS = b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nCSeq: 2 OPTIONS\r\n\r\n"
TRYING = b"SIP/2.0 100 Trying\r\n\r\n"
RINGING = b"SIP/2.0 180 Ringing\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\n\r\n"
BUSY = b"SIP/2.0 486 Busy Here\r\n\r\n"


def make_ack() -> Sendable:
    return ACK


def run_clock(tx: Transaction, until: float) -> tuple[list[float], Signal | None]:
    """Fire every deadline up to ``until``; return when something was sent and the last signal."""
    sent: list[float] = []
    signal: Signal | None = None
    for _ in range(1000):
        at = tx.get_timer()
        if at is None or at > until:
            break
        signal = tx.handle_timer(at) or signal
        sent += [round(at, 6)] * len(tx.take_sends())
    return sent, signal


# --- INVITE client (§17.1.1) ---------------------------------------------------------------


def test_rfc3261_17_1_1_2_timer_a_doubles_until_timer_b_over_udp() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=0.0)
    assert tx.take_sends() == [INVITE]
    sent, signal = run_clock(tx, until=100)
    assert sent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert signal is Signal.TIMEOUT
    assert tx.state is State.TERMINATED
    assert tx.get_timer() is None


def test_rfc3261_17_1_1_2_timer_b_fires_at_64_t1() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=10.0)
    tx.take_sends()
    assert tx.handle_timer(41.999) is None
    assert tx.state is State.CALLING
    assert tx.handle_timer(42.0) is Signal.TIMEOUT


def test_rfc3261_17_1_1_2_reliable_transport_sends_invite_once() -> None:
    tx = InviteClientTransaction.start(INVITE, TCP, CONFIG, now=0.0)
    assert tx.take_sends() == [INVITE]
    sent, signal = run_clock(tx, until=100)
    assert sent == []
    assert signal is Signal.TIMEOUT


def test_rfc3261_17_1_1_2_t1_and_t2_are_configurable() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, TimerConfig(t1=0.1, t2=0.4), now=0.0)
    tx.take_sends()
    sent, signal = run_clock(tx, until=100)
    assert sent == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]
    assert signal is Signal.TIMEOUT
    assert tx.state is State.TERMINATED


def test_rfc3261_17_1_1_2_provisional_stops_retransmission_and_timer_b() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=0.0)
    tx.take_sends()
    assert tx.receive_response(180, now=0.7, make_ack=make_ack)
    assert tx.state is State.PROCEEDING
    assert tx.get_timer() is None
    assert tx.receive_response(180, now=5.0, make_ack=make_ack)
    assert tx.take_sends() == []


def test_rfc3261_17_1_1_3_non_2xx_final_is_acked_then_timer_d_absorbs_retransmissions() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=0.0)
    tx.take_sends()
    assert tx.receive_response(180, now=0.1, make_ack=make_ack)
    assert tx.receive_response(486, now=2.0, make_ack=make_ack)
    assert tx.state is State.COMPLETED
    assert tx.take_sends() == [ACK]
    # A retransmitted 486 gets the same ACK again and is not passed up (§17.1.1.2).
    assert not tx.receive_response(486, now=3.0, make_ack=make_ack)
    assert tx.take_sends() == [ACK]
    assert tx.get_timer() == pytest.approx(34.0)
    tx.handle_timer(33.9)
    assert tx.state is State.COMPLETED
    tx.handle_timer(34.0)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_1_1_2_timer_d_is_zero_over_reliable_transport() -> None:
    tx = InviteClientTransaction.start(INVITE, TCP, CONFIG, now=0.0)
    assert tx.receive_response(603, now=1.0, make_ack=make_ack)
    assert tx.take_sends() == [INVITE, ACK]
    assert tx.state is State.TERMINATED


def test_rfc6026_8_4_2xx_moves_invite_client_to_accepted_and_timer_m() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=0.0)
    tx.take_sends()
    assert tx.receive_response(200, now=1.0)
    assert tx.state is State.ACCEPTED
    # The ACK for a 2xx is the TU's job (§13.2.2.4): the transaction sends nothing.
    assert tx.take_sends() == []
    # Retransmitted 2xx (maybe from another fork) still reaches the TU, which ACKs each.
    assert tx.receive_response(200, now=1.5)
    assert not tx.receive_response(180, now=1.6)
    assert tx.get_timer() == pytest.approx(33.0)
    tx.handle_timer(33.0)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_1_4_transport_error_terminates() -> None:
    tx = InviteClientTransaction.start(INVITE, UDP, CONFIG, now=0.0)
    tx.transport_error()
    assert tx.state is State.TERMINATED
    assert tx.get_timer() is None


# --- non-INVITE client (§17.1.2) -----------------------------------------------------------


def test_rfc3261_17_1_2_2_timer_e_doubles_up_to_t2_until_timer_f() -> None:
    tx = NonInviteClientTransaction.start(OPTIONS, UDP, CONFIG, now=0.0)
    assert tx.take_sends() == [OPTIONS]
    sent, signal = run_clock(tx, until=100)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert signal is Signal.TIMEOUT
    assert tx.state is State.TERMINATED


def test_rfc3261_17_1_2_2_proceeding_retransmits_every_t2() -> None:
    tx = NonInviteClientTransaction.start(OPTIONS, UDP, CONFIG, now=0.0)
    tx.take_sends()
    tx.handle_timer(0.5)  # first retransmission, next one armed at 1.5
    tx.take_sends()
    assert tx.receive_response(100, now=0.6)
    assert tx.state is State.PROCEEDING
    sent, signal = run_clock(tx, until=14.0)
    assert sent == [1.5, 5.5, 9.5, 13.5]
    assert signal is None


def test_rfc3261_17_1_2_2_reliable_transport_sends_once_and_times_out() -> None:
    tx = NonInviteClientTransaction.start(OPTIONS, TCP, CONFIG, now=0.0)
    tx.take_sends()
    sent, signal = run_clock(tx, until=100)
    assert sent == []
    assert signal is Signal.TIMEOUT


def test_rfc3261_17_1_2_2_final_then_timer_k_absorbs_retransmissions() -> None:
    tx = NonInviteClientTransaction.start(OPTIONS, UDP, CONFIG, now=0.0)
    tx.take_sends()
    assert tx.receive_response(200, now=0.2)
    assert tx.state is State.COMPLETED
    assert not tx.receive_response(200, now=0.3)
    assert tx.take_sends() == []
    assert tx.get_timer() == pytest.approx(5.2)
    tx.handle_timer(5.2)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_1_2_2_timer_k_is_zero_over_reliable_transport() -> None:
    tx = NonInviteClientTransaction.start(OPTIONS, TCP, CONFIG, now=0.0)
    assert tx.receive_response(404, now=0.2)
    assert tx.state is State.TERMINATED


# --- INVITE server (§17.2.1) ---------------------------------------------------------------


def test_rfc3261_17_2_1_100_trying_sent_when_tu_silent_for_200ms() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    assert tx.take_sends() == []
    tx.handle_timer(0.2)
    assert tx.take_sends() == [TRYING]
    # Retransmitted INVITE gets the 100 again (§17.2.1).
    tx.receive_request(now=0.6)
    assert tx.take_sends() == [TRYING]


def test_rfc3261_17_2_1_no_100_trying_when_tu_answers_within_200ms() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    assert tx.send_response(RINGING, 180, now=0.05)
    assert tx.take_sends() == [RINGING]
    assert tx.get_timer() is None
    tx.receive_request(now=0.5)
    assert tx.take_sends() == [RINGING]


def test_rfc3261_17_2_1_retransmitted_invite_before_200ms_gets_100_at_once() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    tx.receive_request(now=0.1)
    assert tx.take_sends() == [TRYING]
    assert Timer.TRYING not in tx.deadlines


def test_rfc3261_17_2_1_trying_delay_zero_sends_100_immediately() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, TimerConfig(trying_delay=0), now=0.0)
    assert tx.take_sends() == [TRYING]


def test_rfc3261_17_2_1_timer_g_doubles_to_t2_until_timer_h() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    assert tx.send_response(BUSY, 486, now=0.0)
    assert tx.take_sends() == [BUSY]
    assert tx.state is State.COMPLETED
    sent, signal = run_clock(tx, until=100)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert signal is Signal.TIMEOUT  # timer H: the ACK never came
    assert tx.state is State.TERMINATED


def test_rfc3261_17_2_1_retransmitted_invite_in_completed_resends_final() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    tx.take_sends()
    tx.receive_request(now=0.2)
    assert tx.take_sends() == [BUSY]


def test_rfc3261_17_2_1_ack_confirms_and_timer_i_absorbs() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    tx.take_sends()
    assert not tx.receive_ack(now=0.6)
    assert tx.state is State.CONFIRMED
    assert not tx.receive_ack(now=0.7)  # ACK retransmission absorbed
    tx.receive_request(now=0.8)  # so is a late INVITE retransmission
    assert tx.take_sends() == []
    assert tx.get_timer() == pytest.approx(5.6)  # T4, and G/H are gone
    tx.handle_timer(5.6)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_2_1_reliable_transport_no_timer_g_and_timer_i_zero() -> None:
    tx = InviteServerTransaction.start(TRYING, TCP, CONFIG, now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    tx.take_sends()
    assert Timer.G not in tx.deadlines
    assert Timer.H in tx.deadlines
    tx.receive_ack(now=0.1)
    assert tx.state is State.TERMINATED


def test_rfc6026_7_1_2xx_moves_invite_server_to_accepted_and_timer_l() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    assert tx.send_response(OK, 200, now=1.0)
    assert tx.state is State.ACCEPTED
    assert tx.take_sends() == [OK]
    tx.receive_request(now=1.5)  # INVITE retransmission: absorbed, not passed up
    assert tx.take_sends() == []
    assert tx.send_response(OK, 200, now=1.5)  # TU's own 2xx retransmission passes
    assert tx.take_sends() == [OK]
    assert tx.receive_ack(now=1.6)  # the ACK for the 2xx goes to the TU
    assert tx.get_timer() == pytest.approx(33.0)
    tx.handle_timer(33.0)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_2_1_response_after_final_is_refused() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    tx.send_response(OK, 200, now=0.0)
    assert not tx.send_response(b"SIP/2.0 487 Request Terminated\r\n\r\n", 487, now=0.1)
    assert tx.take_sends() == [OK]


# --- non-INVITE server (§17.2.2) -----------------------------------------------------------


def test_rfc3261_17_2_2_trying_absorbs_retransmission_then_resends_provisional() -> None:
    tx = NonInviteServerTransaction.start(UDP, CONFIG, now=0.0)
    tx.receive_request(now=0.5)
    assert tx.take_sends() == []
    tx.send_response(TRYING, 100, now=0.6)
    tx.receive_request(now=1.5)
    assert tx.take_sends() == [TRYING, TRYING]
    assert tx.state is State.PROCEEDING


def test_rfc3261_17_2_2_timer_j_absorbs_request_retransmissions_for_64_t1() -> None:
    tx = NonInviteServerTransaction.start(UDP, CONFIG, now=0.0)
    tx.send_response(OK, 200, now=0.1)
    assert tx.state is State.COMPLETED
    tx.receive_request(now=10.0)
    assert tx.take_sends() == [OK, OK]
    assert not tx.send_response(BUSY, 486, now=10.0)
    tx.handle_timer(32.0)
    assert tx.state is State.COMPLETED
    tx.handle_timer(32.1)
    assert tx.state is State.TERMINATED


def test_rfc3261_17_2_2_timer_j_is_zero_over_reliable_transport() -> None:
    tx = NonInviteServerTransaction.start(TCP, CONFIG, now=0.0)
    tx.send_response(OK, 200, now=0.1)
    assert tx.take_sends() == [OK]
    assert tx.state is State.TERMINATED


def test_rfc3261_17_2_4_transport_error_terminates_server_transaction() -> None:
    tx = InviteServerTransaction.start(TRYING, UDP, CONFIG, now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    tx.transport_error()
    assert tx.state is State.TERMINATED
    assert tx.get_timer() is None


def test_timer_config_rejects_t1_above_t2() -> None:
    with pytest.raises(ValueError, match="T1 <= T2"):
        TimerConfig(t1=5.0, t2=4.0)


# --- invariants under any sequence of inputs -------------------------------------------------

STATUSES = [100, 180, 183, 200, 202, 302, 486, 603]
client_steps = st.lists(
    st.one_of(
        st.tuples(st.just("response"), st.sampled_from(STATUSES)),
        st.tuples(st.just("timer"), st.just(0)),
        st.tuples(st.just("transport_error"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=client_steps, transport=st.sampled_from(["UDP", "TCP"]), invite=st.booleans())
def test_client_transactions_keep_their_invariants(
    steps: list[tuple[str, int]], transport: str, invite: bool
) -> None:
    """Whatever arrives in whatever order: time never runs backwards in get_timer(), a
    Terminated machine is silent, at most one kind of final response reaches the TU
    (2xx may repeat on INVITE, RFC 6026), no 1xx follows a final, ACKs answer only
    non-2xx finals, and a reliable transport carries the request once."""
    destination = TCP if transport == "TCP" else UDP
    machine = InviteClientTransaction if invite else NonInviteClientTransaction
    tx = machine.start(INVITE if invite else OPTIONS, destination, CONFIG, now=0.0)
    requests_sent = len(tx.take_sends())
    now = 0.0
    finals: list[int] = []
    acks = failures_seen = 0
    for kind, status in steps:
        was_terminated = tx.terminated
        before = tx.state
        forwarded = False
        if kind == "timer":
            at = tx.get_timer()
            if at is None:
                continue
            assert at >= now
            now = at
            tx.handle_timer(now)
        elif kind == "response":
            now += 0.01
            forwarded = tx.receive_response(status, now, make_ack=make_ack)
            answerable = {State.CALLING, State.PROCEEDING, State.COMPLETED}
            if invite and status >= 300 and before in answerable:
                failures_seen += 1
        else:
            tx.transport_error()
        sends = tx.take_sends()
        acks += sends.count(ACK)
        requests_sent += len(sends) - sends.count(ACK)
        if was_terminated:
            assert tx.terminated
            assert sends == []
            assert not forwarded
        if forwarded and status >= 200:
            finals.append(status)
        if forwarded and status < 200:
            assert finals == []
        at = tx.get_timer()
        assert at is None or at >= now
    assert len({s >= 300 for s in finals}) <= 1
    if not invite or any(s >= 300 for s in finals):
        assert len(finals) <= 1
    assert acks == failures_seen
    if destination.reliable:
        assert requests_sent == 1


server_steps = st.lists(
    st.one_of(
        st.tuples(st.just("respond"), st.sampled_from(STATUSES)),
        st.tuples(st.just("retransmission"), st.just(0)),
        st.tuples(st.just("ack"), st.just(0)),
        st.tuples(st.just("timer"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=server_steps, transport=st.sampled_from(["UDP", "TCP"]), invite=st.booleans())
def test_server_transactions_keep_their_invariants(
    steps: list[tuple[str, int]], transport: str, invite: bool
) -> None:
    """Only what the TU gave (or the 100 Trying) is ever sent, nothing after the first
    final except that same final again or further 2xx from the TU, and a Terminated
    machine is silent."""
    destination = TCP if transport == "TCP" else UDP
    responses = {s: f"SIP/2.0 {s} X\r\n\r\n".encode() for s in STATUSES}
    tx: InviteServerTransaction | NonInviteServerTransaction
    if invite:
        tx = InviteServerTransaction.start(TRYING, destination, CONFIG, now=0.0)
    else:
        tx = NonInviteServerTransaction.start(destination, CONFIG, now=0.0)
    now = 0.0
    first_final: int | None = None
    for kind, status in steps:
        was_terminated = tx.terminated
        if kind == "timer":
            at = tx.get_timer()
            if at is None:
                continue
            assert at >= now
            now = at
            tx.handle_timer(now)
        else:
            now += 0.01
            if kind == "respond":
                accepted = tx.send_response(responses[status], status, now)
                if accepted and status >= 200 and first_final is None:
                    first_final = status
                if first_final is not None and accepted and status != first_final:
                    assert invite and status < 300 and first_final < 300
            elif kind == "retransmission":
                tx.receive_request(now)
            elif isinstance(tx, InviteServerTransaction):
                tx.receive_ack(now)
        sends = tx.take_sends()
        if was_terminated:
            assert sends == []
        allowed = {TRYING, *responses.values()}
        assert set(sends) <= allowed
        if first_final is not None and first_final >= 300:
            assert set(sends) <= {responses[first_final]}
        at = tx.get_timer()
        assert at is None or at >= now
