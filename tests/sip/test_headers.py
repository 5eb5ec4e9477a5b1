"""Typed header values and the raw header list (RFC 3261 §7.3, §20, §25.1)."""

from __future__ import annotations

import pytest

from voicegw.sip.errors import SipParseError
from voicegw.sip.grammar import split_commas
from voicegw.sip.headers import (
    CSeq,
    Headers,
    NameAddress,
    Via,
    canonical_name,
    parse_call_id,
    parse_content_length,
    parse_date,
    parse_expires,
    parse_max_forwards,
)
from voicegw.sip.uri import SipURI


# fmt: off
@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("i", "Call-ID"), ("m", "Contact"), ("e", "Content-Encoding"), ("l", "Content-Length"),
        ("f", "From"), ("t", "To"), ("v", "Via"), ("k", "Supported"), ("c", "Content-Type"),
        ("s", "Subject"), ("o", "Event"), ("u", "Allow-Events"), ("r", "Refer-To"),
        ("b", "Referred-By"), ("x", "Session-Expires"), ("I", "Call-ID"),
        ("call-id", "Call-ID"), ("CSEQ", "CSeq"), ("www-authenticate", "WWW-Authenticate"),
        ("X-Carrier-Thing", "X-Carrier-Thing"),
    ],
)
def test_compact_and_case_variant_names_map_to_canonical(sent: str, canonical: str) -> None:
    assert canonical_name(sent) == canonical
# fmt: on


def test_headers_lookup_is_case_insensitive_and_compact_aware() -> None:
    headers = Headers.of([("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b"), ("x-odd", "1")])
    assert headers.get_all("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert headers.get("X-ODD") == "1"
    assert "Via" in headers
    assert "Route" not in headers


def test_list_headers_split_on_commas_outside_quotes_and_angles() -> None:
    headers = Headers.of(
        [("Contact", '"Doe, John" <sip:j@a.example;x=a,b>;q=0.5, <sip:k@b.example>')]
    )
    assert headers.values("Contact") == [
        '"Doe, John" <sip:j@a.example;x=a,b>;q=0.5',
        "<sip:k@b.example>",
    ]


@pytest.mark.parametrize(
    "name",
    ["WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Date", "User-Agent", "X-Own"],
)
def test_headers_where_commas_are_not_separators_stay_whole(name: str) -> None:
    value = 'Digest realm="a,b", nonce="x", algorithm=MD5'
    assert Headers.of([(name, value)]).values(name) == [value]


def test_split_commas_honours_escaped_quotes() -> None:
    assert split_commas(r'"a \", b" <sip:x@y>, <sip:z@w>') == [r'"a \", b" <sip:x@y>', "<sip:z@w>"]


def test_split_commas_rejects_unbalanced_quotes() -> None:
    with pytest.raises(SipParseError):
        split_commas('"unterminated, <sip:x@y>')


def test_header_list_edits_return_new_lists() -> None:
    headers = Headers.of([("Via", "SIP/2.0/UDP a"), ("To", "<sip:b@c>")])
    pushed = headers.add_first("Via", "SIP/2.0/TCP proxy")
    assert pushed.get("Via") == "SIP/2.0/TCP proxy"
    assert headers.get("Via") == "SIP/2.0/UDP a"
    assert headers.set("To", "<sip:d@e>").get_all("To") == ["<sip:d@e>"]
    assert "To" not in headers.remove("to")
    assert len(headers.add("X-A", "1")) == 3


# --- Via --------------------------------------------------------------------------------


def test_via_with_all_parameters() -> None:
    via = Via.parse(
        "SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1;"
        "rport=5067;maddr=224.2.0.1;ttl=16"
    )
    assert via.transport == "UDP"
    assert via.host == "pc33.example.com"
    assert via.port == 5066
    assert via.branch == "z9hG4bK776asdhds"
    assert via.received == "192.0.2.1"
    assert via.rport == 5067
    assert via.maddr == "224.2.0.1"
    assert via.ttl == 16


def test_via_ipv6_sent_by_and_bare_rport() -> None:
    via = Via.parse("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx;rport;received=2001:db8::7")
    assert via.host == "[2001:db8::9]"
    assert via.port == 5061
    assert via.rport is True
    assert via.received == "2001:db8::7"


def test_via_round_trip() -> None:
    via = Via.parse("SIP/2.0/tcp host:5060;branch=z9hG4bKa;rport")
    assert str(via) == "SIP/2.0/TCP host:5060;branch=z9hG4bKa;rport"
    assert Via.parse(str(via)) == via
    assert via.with_param("received", "192.0.2.4").received == "192.0.2.4"


def test_filling_in_rport_keeps_parameter_order() -> None:
    via = Via.parse("SIP/2.0/UDP h;rport;branch=z9hG4bKa").with_param("rport", "5062")
    assert str(via.with_param("received", "192.0.2.4")) == (
        "SIP/2.0/UDP h;rport=5062;branch=z9hG4bKa;received=192.0.2.4"
    )


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host;;branch=z9hG4bKa",
        "SIP/2.0/UDP host;ttl=256",
        "SIP/2.0/UDP host;received=not-an-address!",
        "SIP/2.0/UDP host;branch",
        "SIP/2.0/UDP host;rport=99999",
        "SIP/2.0/UDP [fe80::zz]",
    ],
)
def test_malformed_via_is_rejected(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


# --- NameAddress ------------------------------------------------------------------------


def test_name_addr_with_quoted_display_name_and_escapes() -> None:
    address = NameAddress.parse(r'"Bob \"the\" Builder \\" <sip:bob@example.com>;tag=a6c85cf')
    assert address.display_name == 'Bob "the" Builder \\'
    assert address.tag == "a6c85cf"
    assert isinstance(address.uri, SipURI)
    assert NameAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("display", "written"),
    [
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("bell\x07", '"bell\\\x07"'),
        ("two\r\nlines", '"two  lines"'),
    ],
)
def test_display_names_are_written_as_valid_quoted_strings(display: str, written: str) -> None:
    address = NameAddress(uri=SipURI(host="example.com"), display_name=display)
    assert str(address) == written + " <sip:example.com>"
    assert NameAddress.parse(str(address)).display_name == display.replace("\r\n", "  ")


def test_name_addr_token_display_name() -> None:
    address = NameAddress.parse("Bob Smith <sip:bob@example.com>")
    assert address.display_name == "Bob Smith"
    assert str(address) == '"Bob Smith" <sip:bob@example.com>'


def test_unquoted_utf8_display_name_from_a_carrier_is_accepted() -> None:
    assert NameAddress.parse("Jürgen Müller <sip:j@example.com>").display_name == "Jürgen Müller"


def test_addr_spec_parameters_belong_to_the_header() -> None:
    address = NameAddress.parse("sip:bob@example.com;tag=88sja8x")
    assert address.tag == "88sja8x"
    assert address.uri == SipURI(host="example.com", user="bob")


def test_with_tag_adds_or_replaces() -> None:
    address = NameAddress.parse("<sip:b@example.com>").with_tag("t1")
    assert str(address) == "<sip:b@example.com>;tag=t1"
    assert address.with_tag("t2").tag == "t2"


def test_contact_expires_and_q() -> None:
    address = NameAddress.parse("<sip:b@example.com>;expires=3600;q=0.7")
    assert address.expires == 3600
    assert address.q == 0.7


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated <sip:b@example.com>',
        "< sip:b@example.com>",
        "<sip:b@example.com",
        "Bell, Alexander <sip:b@example.com>",
        "sip:b@example.com?subject=x",
        '"name" sip:b@example.com',
        "<sip:b@example.com>;;tag=1",
        "<>",
        "",
    ],
)
def test_malformed_name_addr_is_rejected(value: str) -> None:
    with pytest.raises(SipParseError):
        NameAddress.parse(value)


# --- scalars ----------------------------------------------------------------------------


def test_cseq() -> None:
    assert CSeq.parse("4711 INVITE") == CSeq(4711, "INVITE")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    assert CSeq.parse("0009\tINVITE").seq == 9


@pytest.mark.parametrize("value", ["INVITE", "1", "-1 INVITE", "2147483648 INVITE", "1 IN VITE"])
def test_malformed_cseq_is_rejected(value: str) -> None:
    with pytest.raises(SipParseError):
        CSeq.parse(value)


def test_scalar_helpers_bounds() -> None:
    assert parse_max_forwards("70") == 70
    assert parse_max_forwards("0068") == 68
    assert parse_content_length(" 0 ") == 0
    assert parse_expires("4294967295") == 2**32 - 1
    assert parse_call_id("a84b4c76e66710@pc33.atlanta.example.com").startswith("a84")
    assert parse_date("Sat, 13 Nov 2010 23:29:00 GMT") == "Sat, 13 Nov 2010 23:29:00 GMT"
    for bad, parse in [
        ("256", parse_max_forwards),
        ("-1", parse_content_length),
        ("1e3", parse_content_length),
        ("4294967296", parse_expires),
        ("has space@host", parse_call_id),
        ("a@b@c", parse_call_id),
        ("Fri, 01 Jan 2010 16:00:00 EST", parse_date),
        ("٣", parse_max_forwards),  # a non-ASCII digit is not DIGIT
    ]:
        with pytest.raises(SipParseError):
            parse(bad)
