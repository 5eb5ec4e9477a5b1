"""RFC 3515 REFER: reading the Refer-To (§2.4.1) and the NOTIFYs of its subscription (§2.4.4-5)."""

from __future__ import annotations

import pytest

from voicegw.sip.message import SipRequest, parse_request
from voicegw.sip.refer import SIPFRAG, ReferError, notify_headers, read_refer, sipfrag


def refer(*headers: str) -> SipRequest:
    text = (
        "REFER sip:gw@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-refer\r\n"
        "From: <sip:alice@acme.voice.test>;tag=a\r\nTo: <sip:gw@voice.test>;tag=g\r\n"
        "Call-ID: refer-1\r\nCSeq: 7 REFER\r\nMax-Forwards: 70\r\n"
        + "".join(f"{h}\r\n" for h in headers)
        + "Content-Length: 0\r\n\r\n"
    )
    return parse_request(text.encode())


def test_rfc3515_blind_transfer_target_and_referred_by() -> None:
    found = read_refer(
        refer("Refer-To: <sip:bob@acme.voice.test>", "Referred-By: <sip:alice@acme.voice.test>")
    )
    assert str(found.target) == "sip:bob@acme.voice.test"
    assert (found.replaces, found.referred_by, found.event_id) == (
        None,
        "<sip:alice@acme.voice.test>",
        7,
    )


def test_rfc3891_attended_transfer_replaces_is_taken_off_the_target() -> None:
    found = read_refer(
        refer("r: <sip:bob@acme.voice.test?Replaces=12345%40192.0.2.4%3Bto-tag%3D1%3Bfrom-tag%3D2>")
    )
    assert str(found.target) == "sip:bob@acme.voice.test"
    assert found.replaces == "12345@192.0.2.4;to-tag=1;from-tag=2"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ((), 400),
        (("Refer-To: <sip:bob@acme.voice.test>", "Refer-To: <sip:carol@acme.voice.test>"), 400),
        (("Refer-To: <sip:bob@acme.voice.test>, <sip:carol@acme.voice.test>",), 400),
        (("Refer-To: <http://example.com/>",), 416),
        (("Refer-To: <sip:bob@acme.voice.test",), 400),
    ],
)
def test_rfc3515_2_4_1_refer_needs_exactly_one_usable_refer_to(
    headers: tuple[str, ...], status: int
) -> None:
    with pytest.raises(ReferError) as raised:
        read_refer(refer(*headers))
    assert raised.value.status == status


def test_rfc3515_2_4_5_notify_carries_a_sipfrag_and_the_last_ends_the_subscription() -> None:
    assert sipfrag(100, "Trying") == b"SIP/2.0 100 Trying\r\n"
    trying, done = dict(notify_headers(7, 100)), dict(notify_headers(7, 486))
    assert trying["Event"] == done["Event"] == "refer;id=7"
    assert trying["Content-Type"] == SIPFRAG
    assert trying["Subscription-State"].startswith("active;expires=")
    assert done["Subscription-State"] == "terminated;reason=noresource"


@pytest.mark.parametrize(("header", "subscription"), [((), True), (("Refer-Sub: false",), False)])
def test_rfc4488_refer_sub_false_asks_for_no_notifys(
    header: tuple[str, ...], subscription: bool
) -> None:
    found = read_refer(refer("Refer-To: <sip:bob@acme.voice.test>", *header))
    assert found.subscription is subscription
