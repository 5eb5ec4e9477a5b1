"""Stream framing for TCP/TLS (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §3.5.1)."""

from __future__ import annotations

from pathlib import Path

from voicegw.sip.message import SipLimits, SipMessage, SipRequest, parse_message
from voicegw.sip.message_framer import (
    FramerEvent,
    FramingError,
    KeepAlivePing,
    KeepAlivePong,
    MessageReceived,
    MessageRejected,
    StreamFramer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"


def wire(name: str) -> bytes:
    """A fixture re-serialised, so it carries an exact Content-Length as a stream needs."""
    return bytes(parse_message((FIXTURES / f"{name}.sip").read_bytes()))


def messages(events: list[FramerEvent]) -> list[SipMessage]:
    return [e.message for e in events if isinstance(e, MessageReceived)]


def feed_bytewise(framer: StreamFramer, data: bytes) -> list[FramerEvent]:
    events: list[FramerEvent] = []
    for i in range(len(data)):
        events += framer.feed(data[i : i + 1])
    return events


STREAM_CASES = ["wsinv", "mpart01", "unreason", "esc01", "longreq"]


def test_messages_in_one_chunk_come_out_in_order() -> None:
    stream = b"".join(wire(n) for n in STREAM_CASES)
    events = StreamFramer().feed(stream)
    assert messages(events) == [parse_message(wire(n)) for n in STREAM_CASES]


def test_messages_fed_byte_by_byte_come_out_the_same() -> None:
    stream = b"".join(wire(n) for n in STREAM_CASES)
    assert messages(feed_bytewise(StreamFramer(), stream)) == messages(StreamFramer().feed(stream))


def test_body_containing_blank_lines_is_framed_by_content_length() -> None:
    data = wire("mpart01")
    assert b"\r\n\r\n" in data[data.index(b"\r\n\r\n") + 4 :]
    (event,) = StreamFramer().feed(data)
    assert isinstance(event, MessageReceived)
    assert event.message.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_double_crlf_between_messages_is_a_ping() -> None:
    events = StreamFramer().feed(b"\r\n\r\n" + wire("esc01") + b"\r\n\r\n")
    assert [type(e) for e in events] == [KeepAlivePing, MessageReceived, KeepAlivePing]


def test_single_crlf_is_a_pong() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [KeepAlivePong()]
    events = framer.feed(wire("esc01"))
    assert [type(e) for e in events] == [MessageReceived]


def test_crlf_before_a_message_in_the_same_chunk_is_a_pong() -> None:
    events = StreamFramer().feed(b"\r\n" + wire("esc01"))
    assert [type(e) for e in events] == [KeepAlivePong, MessageReceived]


def test_ping_split_across_chunks_is_still_reported_as_a_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [KeepAlivePong()]
    assert framer.feed(b"\r\n") == [KeepAlivePing()]


def test_ping_byte_by_byte() -> None:
    events = feed_bytewise(StreamFramer(), b"\r\n\r\n")
    assert KeepAlivePing() in events


def test_well_framed_bad_message_is_rejected_and_stream_goes_on() -> None:
    bad = (FIXTURES / "mismatch01.sip").read_bytes()
    events = StreamFramer().feed(bad + wire("esc01"))
    assert isinstance(events[0], MessageRejected)
    assert events[0].error.reason == "CSeq method does not match request method"
    assert events[0].error.can_respond
    assert events[0].data == bad
    assert isinstance(events[1], MessageReceived)
    assert isinstance(events[1].message, SipRequest)


def test_malformed_header_with_good_length_costs_only_that_message() -> None:
    bad = wire("esc01").replace(b"Max-Forwards: 87\r\n", b"this is not a header\r\n")
    events = StreamFramer().feed(bad + wire("lwsdisp"))
    assert isinstance(events[0], MessageRejected)
    assert events[0].error.reason == "malformed header line"
    assert events[0].error.can_respond
    assert isinstance(events[1], MessageReceived)


def test_folded_content_length_is_understood() -> None:
    data = wire("lwsdisp").replace(b"Content-Length: 0", b"Content-Length:\r\n 0")
    assert [type(e) for e in StreamFramer().feed(data)] == [MessageReceived]


def test_missing_content_length_is_a_framing_error_and_stops_the_framer() -> None:
    data = wire("esc01").replace(b"Content-Length: ", b"X-Length: ")
    framer = StreamFramer()
    events = framer.feed(data)
    assert len(events) == 1
    assert isinstance(events[0], FramingError)
    assert events[0].error.reason == "missing Content-Length on a stream transport"
    assert framer.failed
    assert framer.feed(wire("esc01")) == []
    assert framer.buffered == 0


def test_content_length_beyond_limit_is_a_framing_error() -> None:
    data = wire("esc01").replace(b"Content-Length: 156", b"Content-Length: 999999")
    (event,) = StreamFramer().feed(data)
    assert isinstance(event, FramingError)
    assert event.error.status == 513


def test_negative_content_length_is_a_framing_error() -> None:
    data = wire("esc01").replace(b"Content-Length: 156", b"Content-Length: -1")
    (event,) = StreamFramer().feed(data)
    assert isinstance(event, FramingError)


def test_endless_headers_hit_the_size_limit() -> None:
    framer = StreamFramer(SipLimits(max_message_size=2048, max_line_length=100))
    events: list[FramerEvent] = framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    for _ in range(200):
        events += framer.feed(b"X-Pad: 123456789\r\n")
        if framer.failed:
            break
    assert isinstance(events[-1], FramingError)
    assert events[-1].error.reason == "message too large"


def test_endless_line_hits_the_line_limit() -> None:
    framer = StreamFramer(SipLimits(max_line_length=100))
    events = framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX-Long: " + b"a" * 200)
    assert isinstance(events[-1], FramingError)
    assert events[-1].error.reason == "line too long"


def test_waiting_for_the_body() -> None:
    data = wire("esc01")
    framer = StreamFramer()
    assert framer.feed(data[:-10]) == []
    assert [type(e) for e in framer.feed(data[-10:])] == [MessageReceived]
