"""SDP grammar (RFC 4566): parsing, serializing, typed attribute views, the one error."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.sip.sdp import (
    Attribute,
    Connection,
    Crypto,
    Direction,
    MediaDescription,
    Origin,
    Rtcp,
    RtpMap,
    SdpError,
    SessionDescription,
)


def sdp(text: str) -> bytes:
    """Test bodies are written with LF; the wire uses CRLF."""
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


MINIMAL = sdp("""
v=0
o=- 20518 0 IN IP4 203.0.113.1
s=-
c=IN IP4 203.0.113.1
t=0 0
m=audio 54400 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")


def test_rfc4566_minimal_audio_session_parses_into_typed_views() -> None:
    sd = SessionDescription.parse(MINIMAL)
    assert sd.origin == Origin("-", "20518", 0, "203.0.113.1")
    assert sd.session_name == "-"
    assert sd.connection == Connection("203.0.113.1")
    assert sd.times == ((0, 0),)
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        54400,
        "RTP/AVP",
        ("0", "101"),
    )
    assert audio.rtpmaps == {
        0: RtpMap(0, "PCMU", 8000),
        101: RtpMap(101, "telephone-event", 8000),
    }
    assert audio.fmtp(101) == "0-16"
    assert audio.fmtp(0) is None
    assert audio.ptime == 20
    assert audio.direction is Direction.SENDRECV


def test_serializing_a_parsed_description_gives_the_same_bytes() -> None:
    assert bytes(SessionDescription.parse(MINIMAL)) == MINIMAL


def test_lf_only_line_endings_and_trailing_blank_lines_are_accepted() -> None:
    lf_only = MINIMAL.replace(b"\r\n", b"\n") + b"\n\n"
    assert SessionDescription.parse(lf_only) == SessionDescription.parse(MINIMAL)


def test_unknown_attributes_and_lines_survive_a_round_trip_in_order() -> None:
    body = sdp("""
v=0
o=carrier 1 2 IN IP4 198.51.100.1
s=call
i=session info
c=IN IP4 198.51.100.1
b=AS:84
t=0 0
a=x-carrier-route:east;trunk=7
m=audio 30000 RTP/AVP 8
i=media info
b=TIAS:64000
a=x-flag
a=label:1
""")
    sd = SessionDescription.parse(body)
    assert sd.attributes == (Attribute("x-carrier-route", "east;trunk=7"),)
    assert sd.other == (("i", "session info"),)
    assert sd.bandwidths == ("AS:84",)
    assert sd.media[0].attributes == (Attribute("x-flag"), Attribute("label", "1"))
    assert sd.media[0].bandwidths == ("TIAS:64000",)
    assert bytes(sd) == body


def test_ipv6_connection_lines_at_session_and_media_level() -> None:
    sd = SessionDescription.parse(
        sdp("""
v=0
o=- 1 1 IN IP6 2001:db8::1
s=-
c=IN IP6 2001:db8::1
t=0 0
m=audio 4000 RTP/AVP 0
c=IN IP6 2001:db8::2
a=rtcp:4001 IN IP6 2001:db8::3
""")
    )
    audio = sd.media[0]
    assert sd.connection == Connection("2001:db8::1", "IP6")
    assert sd.connection_of(audio) == Connection("2001:db8::2", "IP6")
    assert audio.rtcp == Rtcp(4001, Connection("2001:db8::3", "IP6"))


def test_session_level_direction_applies_to_media_without_their_own() -> None:
    sd = SessionDescription.parse(
        sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
a=sendonly
m=audio 4000 RTP/AVP 0
m=audio 4002 RTP/AVP 0
a=inactive
""")
    )
    assert [sd.direction_of(m) for m in sd.media] == [Direction.SENDONLY, Direction.INACTIVE]


def test_static_payload_types_need_no_rtpmap_and_dynamic_ones_do() -> None:
    media = MediaDescription("audio", 1, "RTP/AVP", ("8", "9", "96"))
    assert media.rtpmaps == {8: RtpMap(8, "PCMA", 8000), 9: RtpMap(9, "G722", 8000)}


def test_rfc4568_crypto_attribute_parses_and_round_trips() -> None:
    key_salt = bytes(range(30))
    value = f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key_salt).decode()}|2^20|1:4"
    crypto = Crypto.parse(value)
    assert crypto == Crypto(1, "AES_CM_128_HMAC_SHA1_80", key_salt, "2^20", "1:4")
    assert str(crypto) == value
    assert Crypto.parse(str(crypto)) == crypto


def test_rfc4568_crypto_session_parameters_are_kept() -> None:
    value = "2 AES_CM_128_HMAC_SHA1_32 inline:" + base64.b64encode(b"k" * 30).decode()
    crypto = Crypto.parse(value + " KDR=1 UNENCRYPTED_SRTCP")
    assert crypto.session_params == ("KDR=1", "UNENCRYPTED_SRTCP")
    assert str(crypto) == value + " KDR=1 UNENCRYPTED_SRTCP"


def test_crypto_keys_never_appear_in_repr() -> None:
    crypto = Crypto(1, "AES_CM_128_HMAC_SHA1_80", b"\x01" * 30)
    assert "AQEB" not in repr(crypto)
    assert "\\x01" not in repr(crypto)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 20,
            "a=crypto key length does not match its suite",
        ),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:@@@@", "malformed a=crypto key parameters"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJD=A==", "a=crypto key is not base64"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:QUJD", "malformed a=crypto"),
        ("1 AES_CM_128_HMAC_SHA1_80", "malformed a=crypto"),
    ],
)
def test_malformed_crypto_attributes_raise_sdp_error(value: str, reason: str) -> None:
    with pytest.raises(SdpError) as caught:
        Crypto.parse(value)
    assert caught.value.reason == reason
    assert caught.value.status == 488


BAD_BODIES = {
    "empty": (b"", "session description does not start with v=0"),
    "wrong version": (b"v=1\r\n", "session description does not start with v=0"),
    "no origin": (sdp("v=0\ns=-\nt=0 0"), "session description lacks o= or s="),
    "bad origin": (sdp("v=0\no=- x 1 IN IP4 1.2.3.4\ns=-"), "malformed or repeated o= line"),
    "not a line": (sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nhello"), "malformed SDP line"),
    "bad c": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4"),
        "malformed c= line",
    ),
    "family mismatch": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 2001:db8::1"),
        "connection address does not match its address type",
    ),
    "two c in a section": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nc=IN IP4 1.2.3.5"),
        "more than one c= line in a section",
    ),
    "port too big": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 70000 RTP/AVP 0"),
        "m= port out of range",
    ),
    "m without formats": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP"),
        "malformed m= line",
    ),
    "RTP format not a number": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP PCMU"),
        "RTP payload format is not a number 0-127",
    ),
    "non-ASCII digit format": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP \u00b2"),
        "RTP payload format is not a number 0-127",
    ),
    "bad rtpmap": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP 96\na=rtpmap:96 opus"),
        "malformed a=rtpmap",
    ),
    "zero ptime": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP 0\na=ptime:0"),
        "malformed a=ptime or a=maxptime",
    ),
    "o= inside media": (
        sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP 0\no=- 1 1 IN IP4 1.2.3.4"),
        "misplaced or repeated v=, o=, s= or t= line",
    ),
    "not utf-8": (b"v=0\r\ns=\xff\r\n", "session description is not UTF-8"),
    "NUL byte": (sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=a\x00b"), "malformed SDP line"),
    "too large": (b"v=0\r\n" + b"a=x\r\n" * 20000, "session description too large"),
}


@pytest.mark.parametrize("case", BAD_BODIES.keys())
def test_malformed_descriptions_raise_sdp_error_with_an_exact_reason(case: str) -> None:
    body, reason = BAD_BODIES[case]
    with pytest.raises(SdpError) as caught:
        SessionDescription.parse(body)
    assert caught.value.reason == reason
    assert caught.value.status == 488


def test_too_many_media_sections_are_refused() -> None:
    body = sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-" + "\nm=audio 0 RTP/AVP 0" * 33)
    with pytest.raises(SdpError, match="too many m= lines"):
        SessionDescription.parse(body)


def test_too_many_formats_on_one_m_line_are_refused() -> None:
    body = sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 4000 RTP/AVP" + " 0" * 129)
    with pytest.raises(SdpError, match="too many formats on an m= line"):
        SessionDescription.parse(body)


def test_fqdn_connection_address_is_kept_not_resolved() -> None:
    sd = SessionDescription.parse(sdp("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 media.example.com"))
    assert sd.connection == Connection("media.example.com")


_LINE_KINDS = st.sampled_from("vosciumtabkrzex")  # v, o, s again must be refused
_LINE_VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "- 1 2 IN IP4 192.0.2.1",
            "IN IP4 192.0.2.1",
            "IN IP6 ::1",
            "0 0",
            "audio 4000 RTP/AVP 0 8 101",
            "audio 0 RTP/SAVP 96",
            "rtpmap:101 telephone-event/8000",
            "rtpmap:96 opus/48000/2",
            "fmtp:101 0-16",
            "ptime:20",
            "maxptime:150",
            "rtcp:4001 IN IP4 192.0.2.1",
            "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40,
            "rtcp-mux",
            "AS:64",
            "sendonly",
            "inactive",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_LINE_KINDS, _LINE_VALUES), max_size=14))
def test_any_sdp_like_input_either_parses_and_round_trips_or_raises_sdp_error(
    lines: list[tuple[str, str]],
) -> None:
    header = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\n"
    body = header + "".join(f"{kind}={value}\r\n" for kind, value in lines)
    try:
        sd = SessionDescription.parse(body.encode("utf-8", "surrogatepass"))
    except SdpError:
        return
    again = SessionDescription.parse(bytes(sd))
    assert again == sd
    for media in sd.media:  # typed views never raise after a successful parse
        media.validate()
        sd.direction_of(media)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_sdp_error(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        SessionDescription.parse(b"v=0\r\n" + data)
