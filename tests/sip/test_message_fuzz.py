"""Property tests. The invariant (STYLE.md item 15): any bytes either parse or raise
SipParseError, nothing else — whole, mutated, truncated, random, or fed to the
stream framer one byte at a time. Whatever parses also round-trips and has
working typed views, and the 400-builder never raises.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicegw.sip.errors import SipParseError
from voicegw.sip.message import (
    SipLimits,
    SipMessage,
    SipRequest,
    build_error_response,
    parse_message,
)
from voicegw.sip.message_framer import (
    FramerEvent,
    FramingError,
    KeepAlivePing,
    MessageReceived,
    MessageRejected,
    StreamFramer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"
CAPTURES = Path(__file__).parent / "fixtures" / "captures"
SEEDS = [p.read_bytes() for p in [*sorted(FIXTURES.glob("*.sip")), *sorted(CAPTURES.glob("*.sip"))]]
SMALL_LIMITS = SipLimits(max_message_size=4096, max_headers=64, max_line_length=1024)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes that matter to the grammar, so mutations hit interesting paths often.
INTERESTING = b'\r\n \t:;,<>"\\%@[]=?/\x00\xff0123456789'


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "interesting", "delete", "insert", "truncate"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "interesting":
            data[pos] = draw(st.sampled_from(INTERESTING))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
    return bytes(data)


def check_parse(data: bytes, *, datagram: bool = True) -> SipMessage | None:
    """Apply the invariant; return the message when it parsed."""
    try:
        message = parse_message(data, datagram=datagram, limits=SMALL_LIMITS)
    except SipParseError as error:
        failure = error
    else:
        return check_parsed(message)
    answer = build_error_response(data, failure, limits=SMALL_LIMITS)
    if answer is not None:
        assert failure.can_respond
        bytes(answer)
    return None


VIEWS = ("via", "from_", "to", "call_id", "cseq", "contact", "route", "record_route")
VIEWS += ("max_forwards", "expires")


def check_parsed(message: SipMessage) -> SipMessage:
    """What parsed has working typed views and survives a round trip."""
    assert message.via
    # The views the parser pre-filled equal the ones computed lazily from raw headers.
    fresh = dataclasses.replace(message)
    for view in VIEWS:
        assert getattr(message, view) == getattr(fresh, view), view
    if isinstance(message, SipRequest):
        assert message.cseq.method == message.method
    assert parse_message(bytes(message), limits=SipLimits(max_message_size=8192)) == message
    return message


@FUZZ
@given(mutated())
def test_mutated_messages_parse_or_raise_sip_parse_error(data: bytes) -> None:
    check_parse(data)
    check_parse(data, datagram=False)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_parse_or_raise_sip_parse_error(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_truncated_messages_parse_or_raise_sip_parse_error(
    seed: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(seed)))
    check_parse(seed[:cut])


@settings(max_examples=60, deadline=None)
@given(mutated())
def test_framer_fed_byte_by_byte_never_raises(data: bytes) -> None:
    framer = StreamFramer(SMALL_LIMITS)
    for i in range(len(data)):
        for event in framer.feed(data[i : i + 1]):
            if isinstance(event, MessageRejected):
                assert isinstance(event.error, SipParseError)
            elif isinstance(event, FramingError):
                assert framer.failed


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(SEEDS), st.booleans()), min_size=1, max_size=4),
    st.data(),
)
def test_framer_output_does_not_depend_on_chunking(
    seeds: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    parsed: list[SipMessage] = []
    stream = b""
    pings = 0
    for seed, ping_first in seeds:
        message = check_parse(seed)
        if message is None:
            continue
        parsed.append(message)
        if ping_first:
            stream += b"\r\n\r\n"
            pings += 1
        stream += bytes(message)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    framer = StreamFramer()
    events: list[FramerEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += framer.feed(stream[start:end])
    assert [e.message for e in events if isinstance(e, MessageReceived)] == parsed
    assert sum(isinstance(e, KeepAlivePing) for e in events) == pings
