"""RFC 4475 "SIP Torture Test Messages", one test per case, named after the case.

The fixtures in ``fixtures/rfc4475/`` are our own renderings of the messages the
RFC describes (same tricks, exact CRLF bytes). Valid messages must parse into
the right typed values; invalid ones must raise SipParseError with the status
the RFC asks for, and the 400-builder must answer exactly when RFC 3261 allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import NameAddress
from voicegw.sip.message import (
    SipRequest,
    SipResponse,
    build_error_response,
    parse_message,
)
from voicegw.sip.uri import AbsoluteURI, SipURI, TelURI

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"
SDP_LENGTH = 156  # the SDP body every fixture with a body shares


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.sip").read_bytes()


def request(name: str) -> SipRequest:
    message = parse_message(load(name))
    assert isinstance(message, SipRequest)
    return message


def response(name: str) -> SipResponse:
    message = parse_message(load(name))
    assert isinstance(message, SipResponse)
    return message


def rejected(name: str) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    return info.value


def sip_uri(uri: object) -> SipURI:
    assert isinstance(uri, SipURI)
    return uri


# --- 3.1.1 valid messages ---------------------------------------------------------------


def test_rfc4475_wsinv_short_tortuous_invite() -> None:
    msg = request("wsinv")
    assert msg.method == "INVITE"
    assert "unknownparam" in sip_uri(msg.uri).params
    assert sip_uri(msg.to.uri).user == "vivekg"
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq.seq == 9
    assert msg.cseq.method == "INVITE"
    assert [(v.transport, v.host, v.branch) for v in msg.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert sip_uri(msg.route[0].uri).lr
    contact = msg.contact
    assert contact is not None
    assert contact[0].display_name == 'Quoted string ""'
    assert contact[0].params.get("newparam") == "newvalue"
    assert "secondparam" in contact[0].params
    assert contact[0].q == 0.33
    assert len(msg.body) == SDP_LENGTH


def test_rfc4475_intmeth_wide_range_of_valid_characters() -> None:
    msg = request("intmeth")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = sip_uri(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert msg.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params.get("fromParam''~+*_!.-%") == '"ҀЁЂ"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # Writing the display name back escapes the control characters as quoted-pairs.
    assert NameAddress.parse(str(msg.to)) == msg.to


def test_rfc4475_esc01_valid_use_of_percent_escapes() -> None:
    msg = request("esc01")
    uri = sip_uri(msg.uri)
    assert uri.user == "sips:user@example.com"
    assert uri.host == "example.net"
    assert sip_uri(msg.to.uri).user == "user"
    assert sip_uri(msg.from_.uri).user == "I have spaces"
    contact = msg.contact
    assert contact is not None
    curi = sip_uri(contact[0].uri)
    assert curi.user == "caller"
    assert curi.lr
    assert curi.params.get("name") == "value%41"
    assert msg.content_type == "application/sdp"


def test_rfc4475_escnull_escaped_nulls_in_uris() -> None:
    msg = request("escnull")
    assert sip_uri(msg.to.uri).user == "null-\x00-null"
    contact = msg.contact
    assert contact is not None
    assert [sip_uri(c.uri).user for c in contact] == ["\x00", "\x00\x00"]
    assert bytes(msg).count(b"%00") == 5


def test_rfc4475_esc02_use_of_percent_when_it_is_not_an_escape() -> None:
    msg = request("esc02")
    assert msg.method == "RE%47IST%45R"  # not REGISTER: methods are not %-decoded
    assert msg.cseq.method == "RE%47IST%45R"
    assert msg.to.display_name == "%Z%45"
    contact = msg.contact
    assert contact is not None
    # "C%6Fntact" is an extension header, not a Contact.
    assert [sip_uri(c.uri).host for c in contact] == ["host1.example.com", "host3.example.com"]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.via[0].rport is True


def test_rfc4475_lwsdisp_no_lws_between_display_name_and_laquot() -> None:
    msg = request("lwsdisp")
    assert msg.from_.display_name == "caller"
    assert msg.from_.tag == "323"


def test_rfc4475_longreq_long_values_in_header_fields() -> None:
    msg = request("longreq")
    assert msg.to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    to_uri = sip_uri(msg.to.uri)
    assert to_uri.port == 6000
    assert to_uri.params.get("unknownparam1") == "very" + "long" * 20 + "value"
    assert msg.from_.tag == "12" + "982" * 50 + "424"
    assert len(msg.via) == 33
    assert msg.via[0].host == "sip33.example.com"
    assert msg.via[-1].host == "sip1.example.com"
    assert len(msg.record_route) == 3
    assert msg.headers.get("Unknown-" + "Long" * 20 + "-Name") is not None


def test_rfc4475_dblreq_extra_trailing_octets_in_udp_datagram() -> None:
    msg = request("dblreq")
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" not in bytes(msg)


def test_rfc4475_semiuri_semicolon_separated_parameters_in_uri_user_part() -> None:
    msg = request("semiuri")
    uri = sip_uri(msg.uri)
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params.items == ()
    assert msg.headers.values("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_rfc4475_transports_variety_of_transport_types() -> None:
    msg = request("transports")
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_rfc4475_mpart01_multipart_body_passed_through_as_bytes() -> None:
    data = load("mpart01")
    msg = request("mpart01")
    assert msg.content_type == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert msg.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert bytes(range(256)) in msg.body
    assert parse_message(bytes(msg)) == msg


def test_rfc4475_unreason_unusual_reason_phrase() -> None:
    msg = response("unreason")
    assert msg.status == 200
    assert msg.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"


def test_rfc4475_noreason_empty_reason_phrase() -> None:
    msg = response("noreason")
    assert msg.status == 100
    assert msg.reason == ""


# --- 3.1.2 invalid messages ---------------------------------------------------------------

RESPONDABLE_400 = [
    ("clerr", "Content-Length larger than message"),
    ("ncl", "malformed Content-Length"),
    ("scalar02", "CSeq number out of range"),
    ("quotbal", "malformed quoted display name"),
    ("ltgtruri", "Request-URI in <>"),
    ("lwsruri", "malformed request line"),
    ("lwsstart", "malformed request line"),
    ("trws", "malformed request line"),
    ("escruri", "Request-URI carries URI headers"),
    ("baddate", "malformed Date"),
    ("regbadct", "addr-spec needs <> around this URI"),
    ("badaspec", "whitespace inside <URI>"),
    ("baddn", "malformed display name"),
    ("mismatch01", "CSeq method does not match request method"),
    ("mismatch02", "CSeq method does not match request method"),
    ("multi01", "more than one CSeq"),
    ("mcl01", "more than one Content-Length"),
]


@pytest.mark.parametrize(("case", "reason"), RESPONDABLE_400, ids=[c for c, _ in RESPONDABLE_400])
def test_rfc4475_invalid_request_is_answered_with_400(case: str, reason: str) -> None:
    error = rejected(case)
    assert error.reason == reason
    assert error.status == 400
    assert error.can_respond
    answer = build_error_response(load(case), error)
    assert answer is not None
    assert answer.status == 400
    assert answer.reason == "Bad Request"
    assert answer.headers.get("Warning") == f'399 voicegw "{reason}"'


def test_rfc4475_badinv01_extraneous_header_field_separators() -> None:
    error = rejected("badinv01")
    assert error.reason == "malformed header parameter"
    # The only Via is itself broken, so there is nowhere to send a response.
    assert not error.can_respond
    assert build_error_response(load("badinv01"), error) is None


def test_rfc4475_scalarlg_response_scalar_fields_with_overlarge_values() -> None:
    error = rejected("scalarlg")
    assert error.reason == "CSeq number out of range"
    assert not error.can_respond  # responses are never answered


def test_rfc4475_badvers_unknown_protocol_version() -> None:
    error = rejected("badvers")
    assert error.status == 505
    # Its Via says SIP/7.0 as well, so no response can be routed.
    assert not error.can_respond


def test_rfc4475_badvers_with_a_usable_via_gets_505() -> None:
    data = load("badvers").replace(b"Via: SIP/7.0/UDP", b"Via: SIP/2.0/UDP")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    answer = build_error_response(data, info.value)
    assert answer is not None
    assert answer.status == 505
    assert answer.reason == "Version Not Supported"


def test_rfc4475_bigcode_overlarge_response_code() -> None:
    error = rejected("bigcode")
    assert error.reason == "malformed status line"
    assert not error.can_respond


# --- 3.2 transaction layer, 3.3 application layer, 3.4 backward compatibility ---------------


def test_rfc4475_badbranch_cookie_only_branch_is_accepted() -> None:
    msg = request("badbranch")
    assert msg.via[0].branch == "z9hG4bK"


def test_rfc4475_insuf_missing_required_headers_is_rejected() -> None:
    error = rejected("insuf")
    assert error.reason == "missing From"
    # Without From, To and Call-ID no conforming response can be built: drop.
    assert not error.can_respond


@pytest.mark.parametrize("case", ["unkscm", "novelsip"])
def test_rfc4475_unkscm_novelsip_unknown_request_uri_scheme_gets_416(case: str) -> None:
    error = rejected(case)
    assert error.status == 416
    answer = build_error_response(load(case), error)
    assert answer is not None
    assert answer.status == 416
    assert answer.reason == "Unsupported URI Scheme"


def test_rfc4475_unksm2_unknown_uri_schemes_in_header_fields_parse() -> None:
    msg = request("unksm2")
    assert msg.to.uri == AbsoluteURI("isbn", "2983792873")
    assert msg.from_.uri == AbsoluteURI("http", "//www.example.com")
    contact = msg.contact
    assert contact is not None
    assert contact[0].uri == AbsoluteURI("name", "John_Smith")


def test_rfc4475_bext01_unknown_require_and_proxy_require_parse() -> None:
    msg = request("bext01")
    assert msg.headers.values("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert len(msg.headers.values("Proxy-Require")) == 2


def test_rfc4475_invut_unknown_content_type_body_passes_through() -> None:
    msg = request("invut")
    assert msg.content_type == "application/unknownformat"
    assert msg.body.startswith(b"<audio>\r\n")


def test_rfc4475_regaut01_unknown_authorization_scheme_is_one_value() -> None:
    msg = request("regaut01")
    assert msg.headers.values("Authorization") == [
        'NoOneKnowsThisScheme opaque-data=here, more="a,b"'
    ]


def test_rfc4475_bcast_broadcast_via_parses() -> None:
    msg = response("bcast")
    assert msg.via[1].host == "255.255.255.255"


def test_rfc4475_zeromf_zero_max_forwards_parses() -> None:
    assert request("zeromf").max_forwards == 0


def test_rfc4475_cparam01_addr_spec_params_belong_to_the_header() -> None:
    contact = request("cparam01").contact
    assert contact is not None
    assert "unknownparam" in contact[0].params
    assert "unknownparam" not in sip_uri(contact[0].uri).params


def test_rfc4475_cparam02_name_addr_params_belong_to_the_uri() -> None:
    contact = request("cparam02").contact
    assert contact is not None
    assert "unknownparam" not in contact[0].params
    assert "unknownparam" in sip_uri(contact[0].uri).params


def test_rfc4475_regescrt_escaped_headers_in_contact_uri() -> None:
    contact = request("regescrt").contact
    assert contact is not None
    assert sip_uri(contact[0].uri).headers == (("Route", "<sip:sip.example.com>"),)


def test_rfc4475_inv2543_rfc2543_style_invite_without_length_on_udp() -> None:
    msg = request("inv2543")
    assert msg.via[0].branch is None
    assert msg.from_.tag is None
    assert msg.max_forwards is None
    assert len(msg.body) == SDP_LENGTH  # no Content-Length on a datagram: rest of datagram
    # addr-spec form: ";user=phone" is a header parameter (RFC 3261 §20).
    assert msg.to.params.get("user") == "phone"


def test_rfc4475_every_valid_case_round_trips() -> None:
    for path in sorted(FIXTURES.glob("*.sip")):
        try:
            msg = parse_message(path.read_bytes())
        except SipParseError:
            continue
        again = parse_message(bytes(msg))
        assert again == msg, path.stem


def test_tel_uri_in_request_line_is_supported() -> None:
    data = load("zeromf").replace(b"OPTIONS sip:user@example.com", b"OPTIONS tel:+1-201-555-0123")
    assert isinstance(request_from(data).uri, TelURI)


def request_from(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message
