"""The transaction layer: matching (§17.1.3, §17.2.3, RFC 2543), CANCEL (§9), the
server transaction cap, and two layers talking in memory on a virtual clock.

Every message crossing between the two layers goes through ``bytes()`` and the
real parser, as it would on the wire.
"""

from __future__ import annotations

from typing import TypeVar

import pytest

from voicegw.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
    parse_request,
    parse_response,
)
from voicegw.sip.transaction import Destination, State
from voicegw.sip.transaction_layer import (
    CancelReceived,
    Event,
    Outgoing,
    Overload,
    RequestReceived,
    ResponseReceived,
    TransactionId,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    response_destination,
)

UAC = Destination("127.0.0.1", 5070, "UDP")
UAS = Destination("127.0.0.1", 5080, "UDP")
BRANCH = "z9hG4bK776asdhds"


def request(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    transport: str = "UDP",
    sent_by: str = "127.0.0.1:5070",
    cseq: int = 1,
    to_tag: str | None = None,
) -> SipRequest:
    via_params = "" if branch is None else f";branch={branch}"
    to = "<sip:bob@example.com>" + ("" if to_tag is None else f";tag={to_tag}")
    text = (
        f"{method} sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {sent_by}{via_params}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        f"To: {to}\r\n"
        "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_request(text.encode())


def on_wire(out: Outgoing) -> SipRequest | SipResponse:
    return parse_message(bytes(out.message))


def events(layer: TransactionLayer) -> list[Event]:
    found: list[Event] = []
    while (event := layer.next_event()) is not None:
        found.append(event)
    return found


class Pair:
    """A UAC layer and a UAS layer joined by a lossless in-memory wire."""

    def __init__(self, transport: str = "UDP") -> None:
        self.uac = TransactionLayer()
        self.uas = TransactionLayer()
        self.uac_addr = Destination("127.0.0.1", 5070, transport)
        self.uas_addr = Destination("127.0.0.1", 5080, transport)

    def deliver(self, now: float) -> list[SipRequest | SipResponse]:
        """Move everything queued both ways until both sides are quiet."""
        seen: list[SipRequest | SipResponse] = []
        for _ in range(100):
            moved = False
            for sender, receiver, source in (
                (self.uac, self.uas, self.uac_addr),
                (self.uas, self.uac, self.uas_addr),
            ):
                for out in sender.messages_to_send():
                    moved = True
                    message = on_wire(out)
                    seen.append(message)
                    if isinstance(message, SipRequest):
                        receiver.receive_request(message, source, now)
                    else:
                        receiver.receive_response(message, source, now)
            if not moved:
                return seen
        raise AssertionError("messages kept flowing")


E = TypeVar("E")


def only(found: list[Event], kind: type[E]) -> list[E]:
    return [e for e in found if isinstance(e, kind)]


# --- client side ---------------------------------------------------------------------------


def test_rfc3261_17_1_1_2_layer_reports_schedule_timeout_and_termination() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    sent = [0.0] * len(layer.messages_to_send())
    for _ in range(100):
        at = layer.get_timer()
        if at is None:
            break
        layer.handle_timer(at)
        sent += [at] * len(layer.messages_to_send())
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert events(layer) == [TransactionTimedOut(tid), TransactionTerminated(tid)]
    assert layer.state_of(tid) is None


def test_rfc3261_17_1_1_2_reliable_transport_sends_invite_once() -> None:
    layer = TransactionLayer()
    layer.send_request(request(transport="TCP"), Destination("127.0.0.1", 5080, "TCP"), 0.0)
    assert len(layer.messages_to_send()) == 1
    assert layer.get_timer() == pytest.approx(32.0)
    layer.handle_timer(31.0)
    assert layer.messages_to_send() == []


def test_rfc3261_17_1_3_response_matches_on_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    invite = request()
    # Same branch but CSeq method CANCEL: the response of another transaction.
    layer.receive_response(make_response(request("CANCEL"), 200), UAS, now=0.1)
    # Unknown branch: no transaction, dropped.
    layer.receive_response(make_response(request(branch="z9hG4bKother"), 180), UAS, now=0.1)
    assert events(layer) == []
    ringing = make_response(invite, 180, to_tag="a6c85cf")
    layer.receive_response(ringing, UAS, now=0.2)
    assert events(layer) == [ResponseReceived(tid, ringing)]
    assert layer.state_of(tid) is State.PROCEEDING


def test_rfc3261_17_1_1_3_ack_for_non_2xx_reuses_branch_route_and_response_to() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UAS, now=0.0)
    layer.messages_to_send()
    busy = make_response(request(), 486, to_tag="b0b")
    layer.receive_response(busy, UAS, now=0.3)
    (out,) = layer.messages_to_send()
    ack = on_wire(out)
    assert isinstance(ack, SipRequest)
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@127.0.0.1:5080"
    assert [v.branch for v in ack.via] == [BRANCH]
    assert ack.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    assert ack.to.tag == "b0b"
    assert ack.from_.tag == "1928301774"
    assert str(ack.cseq) == "1 ACK"
    assert out.destination == UAS


def test_rfc3261_8_1_1_7_send_request_needs_magic_cookie_branch() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="z9hG4bK"):
        layer.send_request(request(branch="1234"), UAS, now=0.0)
    with pytest.raises(ValueError, match="ACK"):
        layer.send_request(request("ACK"), UAS, now=0.0)


def test_rfc3261_17_1_4_transport_error_is_reported_and_terminates() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request("OPTIONS"), UAS, now=0.0)
    (out,) = layer.messages_to_send()
    assert out.transaction == tid
    layer.transport_error(tid, now=0.0)
    assert events(layer) == [TransportFailed(tid), TransactionTerminated(tid)]
    assert layer.get_timer() is None


# --- server side ---------------------------------------------------------------------------


def test_late_wakeup_fires_due_timers_once_without_replaying_missed_ones() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UAS, now=0.0)
    layer.messages_to_send()
    layer.handle_timer(10.0)  # A was due at 0.5: one retransmission, not four
    assert len(layer.messages_to_send()) == 1
    assert layer.get_timer() == pytest.approx(11.0)


def test_rfc3261_17_2_3_retransmitted_invite_is_absorbed_and_answered() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(), UAC, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    layer.receive_request(request(), UAC, now=0.1)
    assert events(layer) == []
    (trying,) = layer.messages_to_send()
    assert isinstance(trying.message, SipResponse)
    assert trying.message.status == 100
    assert trying.destination == UAC
    ringing = make_response(received.request, 180, to_tag="t1")
    assert layer.send_response(received.transaction, ringing, now=0.2)
    layer.receive_request(request(), UAC, now=0.3)
    assert [o.message for o in layer.messages_to_send()] == [ringing, ringing]


def test_rfc3261_17_2_3_same_branch_other_sent_by_is_another_transaction() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(), UAC, now=0.0)
    layer.receive_request(request(sent_by="192.0.2.1:5070"), UAC, now=0.0)
    assert len(only(events(layer), RequestReceived)) == 2


def test_rfc3261_17_2_3_sent_by_default_port_equals_explicit_5060() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(sent_by="Client.Example.com"), UAC, now=0.0)
    layer.receive_request(request(sent_by="client.example.com:5060"), UAC, now=0.0)
    assert len(only(events(layer), RequestReceived)) == 1


def test_rfc3261_17_2_3_ack_for_non_2xx_matches_the_invite_transaction() -> None:
    pair = Pair()
    invite_tid = pair.uac.send_request(request(), pair.uas_addr, now=0.0)
    pair.deliver(now=0.0)
    (received,) = events(pair.uas)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    busy = make_response(received.request, 486, to_tag="b0b")
    pair.uas.send_response(received.transaction, busy, now=0.1)
    wire = pair.deliver(now=0.1)
    assert [getattr(m, "method", getattr(m, "status", None)) for m in wire] == [486, "ACK"]
    # The ACK ended the server's retransmissions (Confirmed) and did not reach the TU.
    assert pair.uas.state_of(received.transaction) is State.CONFIRMED
    assert events(pair.uas) == []
    busy_on_wire = wire[0]
    assert isinstance(busy_on_wire, SipResponse)
    assert only(events(pair.uac), ResponseReceived) == [ResponseReceived(invite_tid, busy_on_wire)]


def test_rfc3261_13_3_1_4_ack_for_2xx_goes_to_tu_outside_transactions() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(), UAC, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    layer.send_response(received.transaction, make_response(received.request, 200), now=0.1)
    assert layer.state_of(received.transaction) is State.ACCEPTED
    ack = request("ACK", branch="z9hG4bKnewbranch", to_tag="x")
    layer.receive_request(ack, UAC, now=0.2)
    assert events(layer) == [RequestReceived(None, ack, UAC)]


def test_rfc3261_17_2_1_timer_h_reports_missing_ack() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(), UAC, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    layer.send_response(received.transaction, make_response(received.request, 404), now=0.0)
    for _ in range(100):
        at = layer.get_timer()
        if at is None:
            break
        layer.handle_timer(at)
    assert events(layer) == [
        TransactionTimedOut(received.transaction),
        TransactionTerminated(received.transaction),
    ]
    assert len(layer.messages_to_send()) == 1 + 10  # the 404 and its G retransmissions


# --- RFC 2543 fallback (§17.2.3) -----------------------------------------------------------


def test_rfc3261_17_2_3_rfc2543_fallback_matches_without_magic_cookie() -> None:
    layer = TransactionLayer()
    legacy = request(branch=None)
    layer.receive_request(legacy, UAC, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    tid = received.transaction
    layer.receive_request(request(branch=None), UAC, now=0.1)  # retransmission
    assert events(layer) == []
    layer.send_response(tid, make_response(legacy, 486, to_tag="t2543"), now=0.2)
    # An ACK with another To tag is not for our response ...
    stray = request("ACK", branch=None, to_tag="other")
    layer.receive_request(stray, UAC, now=0.3)
    assert events(layer) == [RequestReceived(None, stray, UAC)]
    assert layer.state_of(tid) is State.COMPLETED
    # ... the one carrying our tag is, and confirms the transaction.
    layer.receive_request(request("ACK", branch=None, to_tag="t2543"), UAC, now=0.4)
    assert layer.state_of(tid) is State.CONFIRMED
    assert events(layer) == []


def test_rfc3261_9_2_rfc2543_cancel_matches_invite_by_tuple() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(branch=None), UAC, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    layer.messages_to_send()
    layer.receive_request(request("CANCEL", branch=None), UAC, now=0.1)
    (ok,) = layer.messages_to_send()
    assert isinstance(ok.message, SipResponse)
    assert ok.message.status == 200
    assert only(events(layer), CancelReceived) == [
        CancelReceived(received.transaction, request("CANCEL", branch=None))
    ]


# --- CANCEL (§9) ---------------------------------------------------------------------------


def start_call(pair: Pair) -> tuple[TransactionId, RequestReceived]:
    """UAC sends INVITE, UAS TU answers 180; returns the UAC id and the UAS event."""
    tid = pair.uac.send_request(request(), pair.uas_addr, now=0.0)
    pair.deliver(now=0.0)
    (received,) = events(pair.uas)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    pair.uas.send_response(
        received.transaction, make_response(received.request, 180, to_tag="b0b"), now=0.05
    )
    pair.deliver(now=0.05)
    events(pair.uac)
    return tid, received


def test_rfc3261_9_2_cancel_of_pending_invite_gets_200_then_tu_sends_487() -> None:
    pair = Pair()
    invite_tid, received = start_call(pair)
    assert received.transaction is not None
    assert pair.uac.cancel(invite_tid, now=1.0)
    wire = pair.deliver(now=1.0)
    assert [getattr(m, "method", getattr(m, "status", None)) for m in wire] == ["CANCEL", 200]
    cancel = wire[0]
    assert isinstance(cancel, SipRequest)
    assert [v.branch for v in cancel.via] == [BRANCH]
    assert str(cancel.cseq) == "1 CANCEL"
    assert cancel.to.tag is None
    assert cancel.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    assert only(events(pair.uas), CancelReceived) == [CancelReceived(received.transaction, cancel)]
    terminated = make_response(received.request, 487, to_tag="b0b")
    assert pair.uas.send_response(received.transaction, terminated, now=1.1)
    wire = pair.deliver(now=1.1)
    assert [getattr(m, "method", getattr(m, "status", None)) for m in wire] == [487, "ACK"]
    uac_events = events(pair.uac)
    assert [e.response.status for e in uac_events if isinstance(e, ResponseReceived)] == [200, 487]
    assert pair.uas.state_of(received.transaction) is State.CONFIRMED


def test_rfc3261_9_2_cancel_matching_nothing_gets_481() -> None:
    layer = TransactionLayer()
    layer.receive_request(request("CANCEL"), UAC, now=0.0)
    (out,) = layer.messages_to_send()
    assert isinstance(out.message, SipResponse)
    assert out.message.status == 481
    assert only(events(layer), CancelReceived) == []


def test_rfc3261_9_1_cancel_before_provisional_is_deferred_until_one_arrives() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    layer.messages_to_send()
    assert layer.cancel(tid, now=0.1)
    assert layer.messages_to_send() == []
    layer.receive_response(make_response(request(), 100), UAS, now=0.3)
    (out,) = layer.messages_to_send()
    assert isinstance(out.message, SipRequest)
    assert out.message.method == "CANCEL"
    assert out.destination == UAS
    assert layer.cancel(tid, now=0.4)  # idempotent: no second CANCEL
    assert layer.messages_to_send() == []


def test_rfc3261_9_1_invite_without_final_64_t1_after_cancel_is_destroyed() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    layer.receive_response(make_response(request(), 180, to_tag="t"), UAS, now=0.2)
    assert layer.cancel(tid, now=10.0)
    events(layer)
    assert layer.state_of(tid) is State.PROCEEDING
    layer.handle_timer(10.0 + 32.0)
    # The unanswered CANCEL's own timer F expires at the same instant.
    found = events(layer)
    assert TransactionTimedOut(tid) in found
    assert TransactionTerminated(tid) in found
    assert layer.state_of(tid) is None


def test_rfc3261_9_1_final_response_before_provisional_drops_pending_cancel() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    layer.messages_to_send()
    assert layer.cancel(tid, now=0.1)
    layer.receive_response(make_response(request(), 486, to_tag="t"), UAS, now=0.2)
    sent = [o.message for o in layer.messages_to_send()]
    assert [m.method for m in sent if isinstance(m, SipRequest)] == ["ACK"]
    assert not layer.cancel(tid, now=0.3)


def test_rfc3261_9_1_cancel_only_for_invite() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request("OPTIONS"), UAS, now=0.0)
    assert not layer.cancel(tid, now=0.1)


def test_rfc3261_9_2_cancel_crossing_200_ok() -> None:
    """The UAS answers 200 while the UAC's CANCEL is in flight: the CANCEL still gets
    200 (it matched a transaction) but has no effect; the UAC sees the 2xx and must
    ACK and then BYE (§9.1), and the TU's 487 is refused."""
    pair = Pair()
    invite_tid, received = start_call(pair)
    assert received.transaction is not None
    ok = make_response(received.request, 200, to_tag="b0b")
    pair.uas.send_response(received.transaction, ok, now=1.0)
    assert pair.uac.cancel(invite_tid, now=1.0)
    wire = pair.deliver(now=1.0)
    assert sorted(str(getattr(m, "method", getattr(m, "status", ""))) for m in wire) == [
        "200",
        "200",
        "CANCEL",
    ]
    assert only(events(pair.uas), CancelReceived) == []
    assert not pair.uas.send_response(
        received.transaction, make_response(received.request, 487, to_tag="b0b"), now=1.1
    )
    statuses = {
        (e.response.cseq.method, e.response.status)
        for e in events(pair.uac)
        if isinstance(e, ResponseReceived)
    }
    assert statuses == {("INVITE", 200), ("CANCEL", 200)}
    assert pair.uac.state_of(invite_tid) is State.ACCEPTED


# --- bounded server state ------------------------------------------------------------------


def test_server_transaction_cap_answers_503_with_retry_after() -> None:
    layer = TransactionLayer(max_server_transactions=2, retry_after=7)
    layer.receive_request(request("OPTIONS", branch="z9hG4bK1"), UAC, now=0.0)
    layer.receive_request(request("OPTIONS", branch="z9hG4bK2"), UAC, now=0.0)
    layer.receive_request(request("OPTIONS", branch="z9hG4bK3"), UAC, now=0.0)
    assert len(only(events(layer), RequestReceived)) == 2
    (busy,) = layer.messages_to_send()
    assert isinstance(busy.message, SipResponse)
    assert busy.message.status == 503
    assert busy.message.headers.get("Retry-After") == "7"
    assert busy.transaction is None
    assert layer.overload_count == 1
    # Retransmissions of admitted transactions and ACKs are still handled.
    layer.receive_request(request("OPTIONS", branch="z9hG4bK1"), UAC, now=0.1)
    assert layer.overload_count == 1


def test_server_transaction_cap_can_drop_silently_and_frees_on_termination() -> None:
    layer = TransactionLayer(max_server_transactions=1, overload=Overload.DROP)
    layer.receive_request(request("OPTIONS", branch="z9hG4bK1"), UAC, now=0.0)
    (first,) = events(layer)
    assert isinstance(first, RequestReceived)
    assert first.transaction is not None
    layer.receive_request(request("OPTIONS", branch="z9hG4bK2"), UAC, now=0.0)
    assert layer.messages_to_send() == []
    assert layer.overload_count == 1
    layer.send_response(first.transaction, make_response(first.request, 200), now=0.1)
    layer.handle_timer(0.1 + 32.0)  # timer J
    assert layer.state_of(first.transaction) is None
    layer.receive_request(request("OPTIONS", branch="z9hG4bK2"), UAC, now=33.0)
    assert len(only(events(layer), RequestReceived)) == 1


def test_parsed_response_round_trip_keeps_matching() -> None:
    layer = TransactionLayer()
    tid = layer.send_request(request("OPTIONS"), UAS, now=0.0)
    (out,) = layer.messages_to_send()
    wire_ok = bytes(make_response(parse_request(bytes(out.message)), 200))
    layer.receive_response(parse_response(wire_ok), UAS, now=0.1)
    assert only(events(layer), ResponseReceived)[0].transaction == tid
    assert layer.state_of(tid) is State.COMPLETED


def test_rfc3261_17_2_1_layer_sends_100_trying_after_200ms_of_tu_silence() -> None:
    layer = TransactionLayer()
    layer.receive_request(request(), UAC, now=0.0)
    assert layer.messages_to_send() == []
    assert layer.get_timer() == pytest.approx(0.2)
    layer.handle_timer(0.2)
    (trying,) = layer.messages_to_send()
    assert isinstance(trying.message, SipResponse)
    assert trying.message.status == 100
    assert trying.message.to.tag is None  # §8.2.6.2: a 100 needs no tag
    assert layer.get_timer() is None


def test_send_response_to_unknown_transaction_is_refused() -> None:
    layer = TransactionLayer()
    assert not layer.send_response(TransactionId(99), make_response(request(), 200), now=0.0)
    assert layer.state_of(TransactionId(99)) is None


def test_invite_flood_is_bounded_by_the_server_transaction_cap() -> None:
    layer = TransactionLayer(max_server_transactions=50)
    for n in range(2000):
        layer.receive_request(request(branch=f"z9hG4bKflood{n}"), UAC, now=n * 0.001)
    assert len(only(events(layer), RequestReceived)) == 50
    assert layer.overload_count == 1950
    sent = [o.message for o in layer.messages_to_send()]
    assert [m.status for m in sent if isinstance(m, SipResponse)] == [503] * 1950


def test_lossy_wire_invite_and_final_recovered_by_timers_a_and_g() -> None:
    """INVITE lost twice, the 486 lost once: timer A and timer G carry the call through."""
    pair = Pair()
    losses: dict[str | int, int] = {"INVITE": 2, 486: 1}
    invite_tid = pair.uac.send_request(request(), pair.uas_addr, now=0.0)
    uas_tids: list[TransactionId] = []

    def settle(now: float) -> None:
        """Deliver (minus the losses) and let the UAS TU answer 486, until quiet."""
        for _ in range(20):
            moved = False
            for sender, receiver, source in (
                (pair.uac, pair.uas, pair.uac_addr),
                (pair.uas, pair.uac, pair.uas_addr),
            ):
                for out in sender.messages_to_send():
                    moved = True
                    message = on_wire(out)
                    if isinstance(message, SipRequest):
                        label: str | int = message.method
                    else:
                        label = message.status
                    if losses.get(label, 0) > 0:
                        losses[label] -= 1
                    elif isinstance(message, SipRequest):
                        receiver.receive_request(message, source, now)
                    else:
                        receiver.receive_response(message, source, now)
            for event in events(pair.uas):
                if isinstance(event, RequestReceived) and event.transaction is not None:
                    uas_tids.append(event.transaction)
                    busy = make_response(event.request, 486, to_tag="b0b")
                    pair.uas.send_response(event.transaction, busy, now)
            if not moved:
                return

    now = 0.0
    settle(now)
    for _ in range(100):
        if uas_tids and pair.uas.state_of(uas_tids[0]) is State.CONFIRMED:
            break
        deadlines = [t for t in (pair.uac.get_timer(), pair.uas.get_timer()) if t is not None]
        assert deadlines, "the call stalled with no timer armed"
        now = min(deadlines)
        pair.uac.handle_timer(now)
        pair.uas.handle_timer(now)
        settle(now)
    assert losses == {"INVITE": 0, 486: 0}
    assert len(uas_tids) == 1
    assert pair.uas.state_of(uas_tids[0]) is State.CONFIRMED
    assert pair.uac.state_of(invite_tid) is State.COMPLETED
    # INVITE got through at t=1.5 (third send); its 486 was lost and timer G resent it at 2.0.
    assert now == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("via", "transport", "expected"),
    [
        ("SIP/2.0/UDP 192.0.2.4:5070;branch=z9hG4bK1;rport", "UDP", ("10.0.0.9", 40000)),
        ("SIP/2.0/UDP 192.0.2.4:5070;branch=z9hG4bK1", "UDP", ("10.0.0.9", 5070)),
        ("SIP/2.0/UDP 192.0.2.4;branch=z9hG4bK1", "UDP", ("10.0.0.9", 5060)),
        ("SIP/2.0/TCP 192.0.2.4:5070;branch=z9hG4bK1", "TCP", ("10.0.0.9", 40000)),
    ],
)
def test_rfc3261_18_2_2_and_rfc3581_responses_go_to_source_host_and_via_or_rport_port(
    via: str, transport: str, expected: tuple[str, int]
) -> None:
    text = bytes(request("OPTIONS")).replace(
        b"SIP/2.0/UDP 127.0.0.1:5070;branch=" + BRANCH.encode(), via.encode()
    )
    options = parse_request(text)
    assert options.headers.get("Via") == via
    source = Destination("10.0.0.9", 40000, transport)
    assert response_destination(options, source) == Destination(*expected, transport)
    layer = TransactionLayer()
    layer.receive_request(options, source, now=0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    assert received.transaction is not None
    layer.send_response(received.transaction, make_response(options, 200), now=0.0)
    (out,) = layer.messages_to_send()
    assert out.destination.addr == expected


def test_rfc6026_forked_2xx_from_two_branches_both_reach_the_tu() -> None:
    """A forking proxy may deliver 2xx from two UASs; each must reach the TU, which
    ACKs both and keeps one dialog (§13.2.2.4). So do 2xx retransmissions."""
    layer = TransactionLayer()
    tid = layer.send_request(request(), UAS, now=0.0)
    layer.messages_to_send()
    first = make_response(request(), 200, to_tag="fork-a")
    second = make_response(request(), 200, to_tag="fork-b")
    for at, response in ((0.1, first), (0.2, second), (0.6, first)):
        layer.receive_response(response, UAS, now=at)
    assert only(events(layer), ResponseReceived) == [
        ResponseReceived(tid, first),
        ResponseReceived(tid, second),
        ResponseReceived(tid, first),
    ]
    assert layer.messages_to_send() == []  # the transaction never ACKs a 2xx itself
