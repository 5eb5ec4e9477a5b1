"""Real wire bytes from SIPp (see fixtures/captures/README.md) parse, frame and round-trip."""

from __future__ import annotations

from pathlib import Path

from voicegw.sip.message import SipRequest, SipResponse, make_response, parse_message
from voicegw.sip.message_framer import MessageReceived, StreamFramer
from voicegw.sip.uri import SipURI

CAPTURES = Path(__file__).parent / "fixtures" / "captures"


def capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


def test_sipp_uac_invite_over_udp() -> None:
    msg = parse_message(capture("sipp_uac_invite.sip"))
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.via[0].branch == "z9hG4bK-23346-1-0"
    assert msg.from_.display_name == "sipp"
    assert msg.from_.tag == "23346SIPpTag001"
    assert msg.to.tag is None
    contact = msg.contact
    assert contact is not None
    assert contact[0].uri == SipURI(host="127.0.0.1", user="sipp", port=5060)
    assert msg.body.startswith(b"v=0\r\n")
    assert len(msg.body) == 129  # "Content-Length:   129", padded by SIPp
    assert parse_message(bytes(msg)) == msg


def test_sipp_uac_invite_over_tcp_is_framed() -> None:
    stream = capture("sipp_uac_invite_tcp.sip")
    events = StreamFramer().feed(stream)
    assert len(events) == 1
    assert isinstance(events[0], MessageReceived)
    assert events[0].message.via[0].transport == "TCP"


def test_sipp_uas_responses_match_our_own_response_builder() -> None:
    invite = parse_message(capture("sipp_uac_invite.sip"))
    assert isinstance(invite, SipRequest)
    for name, status in [("sipp_uas_180.sip", 180), ("sipp_uas_200.sip", 200)]:
        theirs = parse_message(capture(name))
        assert isinstance(theirs, SipResponse)
        assert theirs.status == status
        assert theirs.to.tag == "23539SIPpTag011"
        ours = make_response(invite, status, to_tag="23539SIPpTag011")
        # SIPp answered an INVITE re-addressed to its port; compare what §8.2.6 copies.
        assert ours.cseq == theirs.cseq
        assert ours.call_id == theirs.call_id
        assert ours.from_.tag == theirs.from_.tag
        assert ours.to.tag == theirs.to.tag
