"""sip:, sips:, tel: and opaque URIs (RFC 3261 §19.1, §25.1; RFC 3966)."""

from __future__ import annotations

import pytest

from voicegw.sip.errors import SipParseError
from voicegw.sip.grammar import Params
from voicegw.sip.uri import AbsoluteURI, SipURI, TelURI, parse_sip_uri, parse_uri


def test_full_sip_uri_has_every_part() -> None:
    uri = parse_sip_uri(
        "sips:alice:secret@atlanta.example.com:5061;transport=tls;lr?subject=hi&x=1"
    )
    assert uri == SipURI(
        scheme="sips",
        user="alice",
        password="secret",
        host="atlanta.example.com",
        port=5061,
        params=Params((("transport", "tls"), ("lr", None))),
        headers=(("subject", "hi"), ("x", "1")),
    )
    assert uri.transport == "tls"
    assert uri.lr


def test_scheme_is_case_insensitive() -> None:
    assert parse_sip_uri("SIP:bob@example.com").scheme == "sip"


def test_ipv6_reference_with_port() -> None:
    uri = parse_sip_uri("sip:bob@[2001:db8::1]:5060;maddr=[2001:db8::2]")
    assert uri.host == "[2001:db8::1]"
    assert uri.host_bare == "2001:db8::1"
    assert uri.port == 5060
    assert uri.params.get("maddr") == "[2001:db8::2]"
    assert str(uri) == "sip:bob@[2001:db8::1]:5060;maddr=[2001:db8::2]"


def test_ipv6_reference_without_user_or_port() -> None:
    assert parse_sip_uri("sip:[::1]").host == "[::1]"


@pytest.mark.parametrize(
    "text",
    [
        "sip:bob@[2001:db8::zz]",  # not hex
        "sip:bob@[2001:db8::1",  # unclosed
        "sip:bob@2001:db8::1",  # IPv6 must be bracketed
        "sip:bob@300.1.1.1",  # octet out of range
        "sip:bob@example.com:70000",  # port out of range
        "sip:bob@-bad-.example.com",
        "sip:",
        "sip:bob@",
        "sip:bob@exa mple.com",
        "sip:b%zzob@example.com",  # broken escape
        "sip:bob@example.com;;lr",  # empty parameter
        "sip:bob@example.com?noequals",
        "notauri",
        "tel:",
        "tel:+1-800-FLOWERS",
    ],
)
def test_malformed_uris_raise_sip_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_percent_escapes_are_decoded_and_compare_equal_to_plain_form() -> None:
    assert parse_uri("sip:%75se%72@example.com") == parse_uri("sip:user@example.com")


def test_escaped_reserved_characters_stay_escaped_on_output() -> None:
    uri = parse_sip_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips:user@example.com"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"


def test_non_utf8_escapes_survive_round_trip() -> None:
    uri = parse_sip_uri("sip:a%FFb%00@example.com")
    assert str(uri) == "sip:a%FFb%00@example.com"


def test_user_part_may_hold_semicolons_and_question_marks() -> None:
    uri = parse_sip_uri("sip:user;par=u%40example.net?x@example.com;lr")
    assert uri.user == "user;par=u@example.net?x"
    assert uri.host == "example.com"
    assert uri.lr


def test_uri_headers_are_decoded() -> None:
    uri = parse_sip_uri("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert uri.headers == (("Route", "<sip:sip.example.com>"),)
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_parameter_lookup_ignores_case() -> None:
    uri = parse_sip_uri("sip:host;Transport=TCP")
    assert uri.transport == "TCP"
    assert "TRANSPORT" in uri.params


def test_with_params_replaces_and_adds() -> None:
    uri = parse_sip_uri("sip:host;transport=udp").with_params(transport="tcp", lr=None)
    assert str(uri) == "sip:host;transport=tcp;lr"


@pytest.mark.parametrize(
    ("text", "number", "is_global"),
    [
        ("tel:+1-201-555-0123", "+1-201-555-0123", True),
        ("tel:7042;phone-context=example.com", "7042", False),
        ("tel:*86#", "*86#", False),
    ],
)
def test_tel_uris(text: str, number: str, is_global: bool) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, TelURI)
    assert uri.number == number
    assert uri.is_global is is_global
    assert str(uri) == text


def test_unknown_schemes_are_kept_opaque() -> None:
    assert parse_uri("urn:service:sos") == AbsoluteURI("urn", "service:sos")
    assert str(parse_uri("http://www.example.com/x")) == "http://www.example.com/x"


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.example.com",
        "sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr?h=v",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com",
        "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
        "sip:I%20have%20spaces@example.net",
        "tel:+1-201-555-0123;ext=12",
    ],
)
def test_round_trip_parse_of_str_is_equal(text: str) -> None:
    uri = parse_uri(text)
    assert parse_uri(str(uri)) == uri


def test_parse_sip_uri_refuses_tel() -> None:
    with pytest.raises(SipParseError):
        parse_sip_uri("tel:+15551234")
