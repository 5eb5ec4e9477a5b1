"""Dialogs (RFC 3261 §12-15), 2xx retransmission until ACK (§13.3.1.4) and RFC 4028."""

from __future__ import annotations

import pytest

from voicegw.sip.dialog import (
    AckWait,
    Dialog,
    DialogId,
    DialogState,
    SessionTimer,
    glare_retry_delay,
)
from voicegw.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    parse_request,
    parse_response,
)
from voicegw.sip.timers import TimerConfig
from voicegw.sip.transaction import Destination
from voicegw.sip.transaction_layer import (
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
)

UAC = Destination("127.0.0.1", 5070, "UDP")
UAS = Destination("127.0.0.1", 5080, "UDP")
VIA = "SIP/2.0/UDP 127.0.0.1:5070"


def invite(*, record_route: tuple[str, ...] = (), cseq: int = 314159) -> SipRequest:
    rr = "".join(f"Record-Route: {r}\r\n" for r in record_route)
    text = (
        "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        f"Via: {VIA};branch=z9hG4bKnashds8\r\n"
        "Max-Forwards: 70\r\n"
        f"{rr}"
        "To: Bob <sip:bob@biloxi.example.com>\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_request(text.encode())


def answer(
    request: SipRequest,
    status: int = 200,
    *,
    record_route: tuple[str, ...] = (),
    contact: str = "<sip:bob@127.0.0.1:5080>",
    extra: tuple[tuple[str, str], ...] = (),
) -> SipResponse:
    headers = (*(("Record-Route", r) for r in record_route), ("Contact", contact), *extra)
    return make_response(request, status, to_tag="a6c85cf", headers=headers)


RR = ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
P1, P2 = "sip:p1.example.com;lr", "sip:p2.example.com;lr"


def routes(dialog: Dialog) -> list[str]:
    return [str(r.uri) for r in dialog.route_set]


# --- creation (§12.1) ----------------------------------------------------------------------


def test_rfc3261_12_1_2_uac_route_set_is_record_route_reversed() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request, record_route=RR), now=0.0)
    assert dialog.id == DialogId("a84b4c76e66710", "1928301774", "a6c85cf")
    assert dialog.state is DialogState.CONFIRMED
    assert routes(dialog) == [P2, P1]
    assert str(dialog.remote_target) == "sip:bob@127.0.0.1:5080"
    assert dialog.local_cseq == 314159
    assert dialog.remote_cseq is None


def test_rfc3261_12_1_1_uas_route_set_keeps_record_route_order() -> None:
    request = invite(record_route=RR)
    dialog = Dialog.as_uas(request, answer(request), now=0.0)
    assert dialog.id == DialogId("a84b4c76e66710", "a6c85cf", "1928301774")
    assert routes(dialog) == [P1, P2]
    assert str(dialog.remote_target) == "sip:alice@127.0.0.1:5070"
    assert dialog.remote_cseq == 314159
    assert dialog.local_cseq is None


def test_rfc3261_12_1_2_tagged_provisional_creates_early_dialog_2xx_confirms_it() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request, 180, record_route=RR[:1]), now=0.0)
    assert dialog.state is DialogState.EARLY
    dialog.receive_response(answer(request, 200, record_route=RR), now=1.0)
    assert dialog.state is DialogState.CONFIRMED
    # §13.2.2.4: the route set is recomputed from the 2xx.
    assert routes(dialog) == [P2, P1]


def test_rfc3261_12_1_1_uas_early_dialog_confirmed_by_our_2xx() -> None:
    request = invite(record_route=RR)
    dialog = Dialog.as_uas(request, answer(request, 183), now=0.0)
    assert dialog.state is DialogState.EARLY
    dialog.send_response(
        answer(request, 200, extra=(("Session-Expires", "90;refresher=uas"),)), 1.0
    )
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.session == SessionTimer(90, "uas", True, 1.0)
    rejected = Dialog.as_uas(request, answer(request, 180), now=0.0)
    rejected.send_response(make_response(request, 486, to_tag="a6c85cf"), 1.0)
    assert rejected.state is DialogState.TERMINATED


def test_rfc3261_12_3_non_2xx_final_ends_early_dialog() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request, 183), now=0.0)
    dialog.receive_response(make_response(request, 486, to_tag="a6c85cf"), now=1.0)
    assert dialog.state is DialogState.TERMINATED


def test_rfc3261_12_1_dialog_needs_a_to_tag() -> None:
    request = invite()
    with pytest.raises(ValueError, match="tags"):
        Dialog.as_uac(request, make_response(request, 100), now=0.0)


# --- in-dialog requests (§12.2) ------------------------------------------------------------


def test_rfc3261_12_2_1_1_bye_uses_remote_target_route_set_and_next_cseq() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request, record_route=RR), now=0.0)
    bye = dialog.create_request("BYE", VIA)
    assert bye.method == "BYE"
    assert str(bye.uri) == "sip:bob@127.0.0.1:5080"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert str(bye.cseq) == "314160 BYE"
    assert bye.from_.tag == "1928301774"
    assert bye.to.tag == "a6c85cf"
    assert bye.call_id == "a84b4c76e66710"
    assert bye.via[0].branch is not None
    assert bye.via[0].branch.startswith("z9hG4bK")
    assert bye.via[0].branch != "z9hG4bKnashds8"
    assert bye.contact == ()  # BYE is no target refresh
    assert dialog.next_hop == dialog.route_set[0].uri
    # Re-INVITE is a target refresh and carries our Contact.
    reinvite = dialog.create_request("INVITE", VIA, body=b"v=0\r\n")
    assert str(reinvite.cseq) == "314161 INVITE"
    assert [str(c.uri) for c in reinvite.contact or ()] == ["sip:alice@127.0.0.1:5070"]


def test_rfc3261_12_2_1_1_strict_router_takes_the_request_uri() -> None:
    request = invite()
    strict = ("<sip:strict.example.com>", "<sip:p2.example.com;lr>")
    dialog = Dialog.as_uac(request, answer(request, record_route=strict), now=0.0)
    info = dialog.create_request("INFO", VIA)
    # Route set (UAC) is [p2, strict]; p2 is a loose router, so the target stays.
    assert str(info.uri) == "sip:bob@127.0.0.1:5080"
    uas_side = Dialog.as_uas(invite(record_route=strict), answer(invite()), now=0.0)
    bye = uas_side.create_request("BYE", "SIP/2.0/UDP 127.0.0.1:5080")
    assert str(bye.uri) == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == [
        "<sip:p2.example.com;lr>",
        "<sip:alice@127.0.0.1:5070>",
    ]


def test_rfc3261_12_2_1_1_uas_local_cseq_starts_when_first_used() -> None:
    request = invite()
    dialog = Dialog.as_uas(request, answer(request), now=0.0)
    assert str(dialog.create_request("BYE", "SIP/2.0/UDP 127.0.0.1:5080").cseq) == "1 BYE"


def test_rfc3261_13_2_2_4_ack_for_2xx_reuses_invite_cseq_number_with_new_branch() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request, record_route=RR), now=0.0)
    ack = dialog.create_ack(request.cseq.seq, VIA)
    assert str(ack.cseq) == "314159 ACK"
    assert ack.via[0].branch != request.via[0].branch
    assert ack.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert dialog.local_cseq == 314159  # an ACK does not consume a number
    with pytest.raises(ValueError, match="ACK and CANCEL"):
        dialog.create_request("ACK", VIA)


def test_rfc3261_12_2_2_lower_cseq_is_rejected_with_500() -> None:
    request = invite()
    uas = Dialog.as_uas(request, answer(request), now=0.0)
    uac = Dialog.as_uac(request, answer(request), now=0.0)
    first = uac.create_request("INFO", VIA)
    second = uac.create_request("INFO", VIA)
    assert DialogId.of_request(second) == uas.id
    assert uas.receive_request(second) is None
    assert uas.receive_request(first) == 500  # arrived late: out of order
    assert uas.remote_cseq == 314161
    # ACK carries the INVITE's (lower) number and is not out of order.
    assert uas.receive_request(uac.create_ack(314159, VIA)) is None


def test_rfc3261_12_2_2_target_refresh_replaces_remote_target() -> None:
    request = invite()
    uas = Dialog.as_uas(request, answer(request), now=0.0)
    text = bytes(
        Dialog.as_uac(request, answer(request), now=0.0).create_request("INVITE", VIA)
    ).replace(b"sip:alice@127.0.0.1:5070", b"sip:alice@192.0.2.9:5070")
    assert uas.receive_request(parse_request(text)) is None
    assert str(uas.remote_target) == "sip:alice@192.0.2.9:5070"


def test_rfc3261_12_2_1_2_481_to_in_dialog_request_ends_dialog() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request), now=0.0)
    info = dialog.create_request("INFO", VIA)
    dialog.receive_response(make_response(info, 481), now=1.0)
    assert dialog.state is DialogState.TERMINATED


def test_rfc3261_15_1_2_bye_received_ends_dialog() -> None:
    request = invite()
    uas = Dialog.as_uas(request, answer(request), now=0.0)
    uac = Dialog.as_uac(request, answer(request), now=0.0)
    assert uas.receive_request(uac.create_request("BYE", VIA)) is None
    assert uas.state is DialogState.TERMINATED
    assert uas.receive_request(uac.create_request("INFO", VIA)) == 481


# --- §13.3.1.4: 2xx retransmission until ACK -----------------------------------------------


def run(wait: AckWait, until: float) -> tuple[list[float], bool]:
    sent: list[float] = []
    gave_up = False
    for _ in range(1000):
        at = wait.get_timer()
        if at is None or at > until:
            break
        gave_up = wait.handle_timer(at) or gave_up
        sent += [at] * len(wait.take_sends())
    return sent, gave_up


def test_rfc3261_13_3_1_4_2xx_resent_doubling_to_t2_until_64_t1() -> None:
    request = invite()
    wait = AckWait.start(answer(request), UAC, TimerConfig(), now=0.0)
    sent, gave_up = run(wait, until=100)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert gave_up  # the TU now sends BYE
    assert wait.get_timer() is None


def test_rfc3261_13_3_1_4_ack_stops_2xx_retransmission() -> None:
    request = invite()
    dialog = Dialog.as_uac(request, answer(request), now=0.0)
    wait = AckWait.start(answer(request), UAC, TimerConfig(), now=0.0)
    run(wait, until=2.0)
    assert not wait.receive_ack(dialog.create_ack(1, VIA))  # another INVITE's ACK
    assert wait.receive_ack(dialog.create_ack(314159, VIA))
    assert wait.get_timer() is None
    assert run(wait, until=100) == ([], False)


# --- RFC 4028 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "we_are_uac", "we_refresh", "deadline"),
    [
        ("1800;refresher=uac", True, True, 900.0),
        ("1800;refresher=uac", False, False, 1800.0 - 32.0),
        ("1800;refresher=uas", False, True, 900.0),
        ("90;refresher=uas", True, False, 60.0),  # one third beats 32 s
        ("1800", True, True, 900.0),  # §7.2: no refresher in the 2xx -> the UAC refreshes
    ],
)
def test_rfc4028_session_expires_refresher_and_deadline(
    header: str, we_are_uac: bool, we_refresh: bool, deadline: float
) -> None:
    response = answer(invite(), extra=(("Session-Expires", header),))
    timer = SessionTimer.from_response(response, we_are_uac, now=0.0)
    assert timer is not None
    assert timer.we_refresh is we_refresh
    assert timer.deadline == pytest.approx(deadline)


def test_rfc4028_dialog_stores_negotiated_session_timer() -> None:
    request = invite()
    ok = answer(request, extra=(("Session-Expires", "600;refresher=uas"),))
    dialog = Dialog.as_uac(request, ok, now=100.0)
    assert dialog.session == SessionTimer(600, "uas", False, 100.0)
    reinvite = dialog.create_request("INVITE", VIA)
    refreshed = make_response(reinvite, 200, headers=(("Session-Expires", "600;refresher=uac"),))
    dialog.receive_response(refreshed, now=400.0)
    assert dialog.session == SessionTimer(600, "uac", True, 400.0)
    assert dialog.session.deadline == pytest.approx(700.0)


# --- a whole call through two transaction layers --------------------------------------------


def test_rfc3261_13_invite_200_ack_bye_through_two_layers() -> None:
    uac_layer, uas_layer = TransactionLayer(), TransactionLayer()

    def deliver(now: float) -> None:
        for _ in range(20):
            moved = False
            for out in uac_layer.messages_to_send():
                moved = True
                message = parse_request(bytes(out.message))
                uas_layer.receive_request(message, UAC, now)
            for out in uas_layer.messages_to_send():
                moved = True
                uac_layer.receive_response(parse_response(bytes(out.message)), UAS, now)
            if not moved:
                return

    def drain(layer: TransactionLayer) -> list[object]:
        found: list[object] = []
        while (event := layer.next_event()) is not None:
            found.append(event)
        return found

    request = invite()
    uac_layer.send_request(request, UAS, now=0.0)
    deliver(0.0)
    (incoming,) = drain(uas_layer)
    assert isinstance(incoming, RequestReceived)
    assert incoming.transaction is not None
    ok = answer(incoming.request)
    uas_dialog = Dialog.as_uas(incoming.request, ok, now=0.1)
    uas_layer.send_response(incoming.transaction, ok, now=0.1)
    wait = AckWait.start(ok, incoming.source, TimerConfig(), now=0.1)
    deliver(0.1)
    (response_event,) = drain(uac_layer)
    assert isinstance(response_event, ResponseReceived)
    uac_dialog = Dialog.as_uac(request, response_event.response, now=0.1)

    uac_layer.send_stateless(uac_dialog.create_ack(request.cseq.seq, VIA), UAS)
    deliver(0.2)
    (ack_event,) = drain(uas_layer)
    assert isinstance(ack_event, RequestReceived)
    assert ack_event.transaction is None  # the 2xx's ACK lives outside transactions
    assert DialogId.of_request(ack_event.request) == uas_dialog.id
    assert wait.receive_ack(ack_event.request)

    uac_layer.send_request(uac_dialog.create_request("BYE", VIA), UAS, now=5.0)
    deliver(5.0)
    (bye_event,) = drain(uas_layer)
    assert isinstance(bye_event, RequestReceived)
    assert bye_event.transaction is not None
    assert uas_dialog.receive_request(bye_event.request) is None
    uas_layer.send_response(bye_event.transaction, make_response(bye_event.request, 200), 5.0)
    deliver(5.0)
    assert [e.response.status for e in drain(uac_layer) if isinstance(e, ResponseReceived)] == [200]
    assert uas_dialog.state is DialogState.TERMINATED


@pytest.mark.parametrize(
    ("owns_call_id", "fraction", "delay"),
    [(True, 0.0, 2.1), (True, 1.0, 4.0), (False, 0.0, 0.0), (False, 0.5, 1.0), (False, 1.0, 2.0)],
)
def test_rfc3261_14_1_glare_retry_waits_longer_for_the_call_id_owner(
    owns_call_id: bool, fraction: float, delay: float
) -> None:
    assert glare_retry_delay(owns_call_id, fraction) == pytest.approx(delay)
