"""SIP message parsing, serialising, limits and response builders (RFC 3261 §7, §8.2.6, §18.3)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import Headers
from voicegw.sip.message import (
    SipLimits,
    SipRequest,
    SipResponse,
    build_error_response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    parse_request,
    parse_response,
    reason_phrase,
)
from voicegw.sip.uri import SipURI

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b'P-Carrier-Odd: ;;weird,,value "unbalanced\r\n'
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\r\n"
)


def invite() -> SipRequest:
    return parse_request(INVITE)


def test_parse_request_typed_views() -> None:
    msg = invite()
    assert msg.method == "INVITE"
    assert msg.uri == SipURI(host="biloxi.example.com", user="bob")
    assert [v.host for v in msg.via] == ["pc33.atlanta.example.com", "[2001:db8::1]"]
    assert msg.to.display_name == "Bob"
    assert msg.from_.tag == "1928301774"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq.seq == 314159
    assert msg.max_forwards == 70
    assert msg.expires is None
    assert msg.content_type == "application/sdp"
    # On a datagram, octets beyond Content-Length are dropped (RFC 3261 §18.3).
    assert msg.body == b"v=0\r"


def test_odd_carrier_header_is_kept_verbatim() -> None:
    msg = invite()
    assert msg.headers.get("p-carrier-odd") == ';;weird,,value "unbalanced'
    assert b'P-Carrier-Odd: ;;weird,,value "unbalanced\r\n' in bytes(msg)


def test_method_names_are_case_sensitive() -> None:
    data = INVITE.replace(b"INVITE sip:", b"invite sip:")
    with pytest.raises(SipParseError, match="CSeq method does not match"):
        parse_message(data)


def test_round_trip_is_semantically_equal() -> None:
    msg = invite()
    assert parse_message(bytes(msg)) == msg


def test_serializer_writes_crlf_and_true_content_length_last() -> None:
    msg = dataclasses.replace(invite(), body=b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n")
    wire = bytes(msg)
    head, body = wire.split(b"\r\n\r\n", 1)
    assert body == msg.body
    lines = head.split(b"\r\n")
    assert lines[0] == b"INVITE sip:bob@biloxi.example.com SIP/2.0"
    assert lines[-1] == b"Content-Length: %d" % len(msg.body)
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert sum(line.lower().startswith(b"content-length") for line in lines) == 1


def test_folded_and_compact_headers_serialise_canonically() -> None:
    data = (
        b"OPTIONS sip:a@b.example SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h.example;branch=z9hG4bK1\r\n"
        b"f: <sip:c@d.example>;tag=1\r\n"
        b"t: <sip:a@b.example>\r\n"
        b"i: x@y\r\n"
        b"CSeq: 1\r\n  OPTIONS\r\n"
        b"Subject: one\r\n\ttwo\r\n"
        b"l: 0\r\n\r\n"
    )
    wire = bytes(parse_message(data))
    assert wire == (
        b"OPTIONS sip:a@b.example SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example;branch=z9hG4bK1\r\n"
        b"From: <sip:c@d.example>;tag=1\r\n"
        b"To: <sip:a@b.example>\r\n"
        b"Call-ID: x@y\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Subject: one two\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_leading_empty_lines_are_ignored() -> None:
    assert parse_request(b"\r\n\r\n" + INVITE).method == "INVITE"


def test_missing_content_length_on_datagram_means_rest_of_datagram() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    assert parse_message(data).body == b"v=0\r\n"


def test_missing_content_length_on_stream_is_an_error() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    with pytest.raises(SipParseError, match="missing Content-Length"):
        parse_message(data, datagram=False)


def test_stream_message_must_match_content_length_exactly() -> None:
    with pytest.raises(SipParseError, match="beyond Content-Length"):
        parse_message(INVITE, datagram=False)
    exact = INVITE.replace(b"Content-Length: 4", b"Content-Length: 5")
    assert parse_message(exact, datagram=False).body == b"v=0\r\n"


def test_parse_response() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP h.example;branch=z9hG4bK1\r\n"
        b"From: <sip:c@d.example>;tag=1\r\n"
        b"To: <sip:a@b.example>;tag=2\r\n"
        b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_response(data)
    assert (msg.status, msg.reason, msg.is_provisional) == (180, "Ringing", True)
    assert msg.to.tag == "2"
    with pytest.raises(SipParseError, match="expected a request"):
        parse_request(data)
    with pytest.raises(SipParseError, match="expected a response"):
        parse_response(INVITE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no empty line after headers"),
        (b"INVITE sip:a@b SIP/2.0\r\n", "no empty line after headers"),
        (b"INVITE sip:a@b SIP/2.0\r\nVia\r\n\r\n", "malformed header line"),
        (b"INVITE sip:a@b SIP/2.0\r\n continued\r\n\r\n", "continuation line before first header"),
        (b"INVITE sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n", "bare CR or LF in header section"),
        (b"SIP/2.0 099 Low\r\n\r\n", "status code out of range"),
        (b"SIP/2.0 200 OK\r\n\r\n", "missing Via"),
        (b"SIP/2.0 200 O\x01K\r\n\r\n", "control character in reason phrase"),
        (b"HELLO\r\n\r\n", "malformed request line"),
    ],
)
def test_malformed_messages_raise_sip_parse_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.reason == reason


def test_limit_on_message_size() -> None:
    with pytest.raises(SipParseError, match="message too large") as info:
        parse_message(INVITE, limits=SipLimits(max_message_size=100))
    assert info.value.status == 513


def test_limit_on_header_count() -> None:
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"X-Pad: 1\r\n" * 300)
    with pytest.raises(SipParseError, match="too many headers"):
        parse_message(data)


def test_limit_on_line_length() -> None:
    data = INVITE.replace(b"Timestamp: 54", b"X-Long: " + b"a" * 9000)
    with pytest.raises(SipParseError, match="line too long"):
        parse_message(data)
    assert parse_message(data, limits=SipLimits(max_line_length=10_000)) is not None


def test_default_limits() -> None:
    assert SipLimits() == SipLimits(max_message_size=65536, max_headers=256, max_line_length=8192)


# --- make_response (RFC 3261 §8.2.6) ---------------------------------------------------------


def test_make_response_copies_dialog_and_transaction_headers_and_adds_to_tag() -> None:
    request = invite()
    response = make_response(request, 486, to_tag="abc")
    assert (response.status, response.reason) == (486, "Busy Here")
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("Call-ID") == request.headers.get("Call-ID")
    assert response.cseq == request.cseq
    assert response.to.tag == "abc"
    assert response.to.uri == request.to.uri
    assert "Timestamp" not in response.headers
    assert parse_message(bytes(response)) == response


def test_make_response_generates_a_tag_when_none_given() -> None:
    tag = make_response(invite(), 200).to.tag
    assert tag is not None
    assert len(tag) >= 8


def test_make_response_keeps_an_existing_to_tag() -> None:
    tagged = INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@c>;tag=x")
    request = parse_request(tagged)
    assert make_response(request, 200, to_tag="y").to.tag == "x"


def test_100_trying_has_no_new_tag_and_copies_timestamp() -> None:
    response = make_response(invite(), 100)
    assert response.to.tag is None
    assert response.headers.get("Timestamp") == "54"


def test_make_response_extra_headers_and_body() -> None:
    response = make_response(
        invite(), 200, "Fine", headers=(("Contact", "<sip:gw@192.0.2.9>"),), body=b"v=0\r\n"
    )
    assert response.reason == "Fine"
    assert response.contact is not None
    assert bytes(response).endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")


# --- build_error_response ----------------------------------------------------------------------


def test_error_response_for_a_broken_request_is_400_with_warning() -> None:
    data = INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 700")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    error = info.value
    assert error.can_respond
    answer = build_error_response(data, error)
    assert isinstance(answer, SipResponse)
    assert (answer.status, answer.reason) == (400, "Bad Request")
    assert answer.headers.get("Warning") == '399 voicegw "malformed Max-Forwards"'
    assert answer.headers.get_all("Via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKnashds8;received=192.0.2.1",
    ]
    assert answer.cseq.method == "INVITE"
    assert answer.to.tag is not None
    # The answer itself is a well-formed message.
    assert parse_message(bytes(answer)) == answer


def test_error_response_never_for_responses_or_acks() -> None:
    broken_ack = INVITE
    for old, new in [(b"INVITE sip:", b"ACK sip:"), (b"314159 INVITE", b"1 ACK"), (b"70", b"x")]:
        broken_ack = broken_ack.replace(old, new)
    broken_response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: x\r\n\r\n"
    for data in (broken_ack, broken_response):
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert not info.value.can_respond
        assert build_error_response(data, info.value) is None


def test_error_response_needs_a_usable_via() -> None:
    data = INVITE.replace(b"SIP/2.0/UDP pc33", b"SIP/2.0/UDP pc33 junk").replace(
        b"Max-Forwards: 70", b"Max-Forwards: x"
    )
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert not info.value.can_respond
    assert build_error_response(data, info.value.with_can_respond(True)) is None


def test_error_response_is_not_built_from_header_injection() -> None:
    data = INVITE.replace(b"Call-ID: a84b", b"Call-ID: a\rX-Injected: 1\r\nCall-ID: a84b")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    answer = build_error_response(data, info.value)
    assert answer is not None
    assert b"X-Injected" not in bytes(answer)


def test_error_response_status_comes_from_error() -> None:
    error = SipParseError("message too large", status=513, can_respond=True)
    answer = build_error_response(INVITE, error)
    assert answer is not None
    assert (answer.status, answer.reason) == (513, "Message Too Large")


def test_reason_phrases_come_from_the_table_or_the_status_class() -> None:
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(499) == "Client Failure"
    assert reason_phrase(799) == "Unknown"


# --- identifiers ---------------------------------------------------------------------------------


def test_new_branch_has_magic_cookie_and_is_unique() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(re.fullmatch(r"z9hG4bK[0-9a-f]{20}", b) for b in branches)


def test_new_tag_and_call_id() -> None:
    assert new_tag() != new_tag()
    assert new_call_id("gw.example.com").endswith("@gw.example.com")
    assert "@" not in new_call_id()


def test_built_request_serialises() -> None:
    request = SipRequest(
        method="OPTIONS",
        uri=SipURI(host="192.0.2.1", port=5060),
        headers=Headers.of(
            [
                ("Via", f"SIP/2.0/UDP 192.0.2.9:5060;branch={new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:gw@192.0.2.9>;tag={new_tag()}"),
                ("To", "<sip:192.0.2.1>"),
                ("Call-ID", new_call_id("192.0.2.9")),
                ("CSeq", "1 OPTIONS"),
            ]
        ),
    )
    assert parse_message(bytes(request)) == request
