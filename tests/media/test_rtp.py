"""RTP packets (RFC 3550 §5.1): round trips, malformed input, sequence arithmetic."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from voicegw.media.rtp import (
    RtpError,
    RtpPacket,
    SequenceUnwrapper,
    is_rtcp,
    seq_diff,
    seq_newer,
    timestamp_diff,
)

PCMU_20MS = bytes(range(160))


def pcmu_packet(**overrides: object) -> RtpPacket:
    fields: dict[str, object] = {
        "payload_type": 0,
        "sequence_number": 4660,
        "timestamp": 0x12345678,
        "ssrc": 0xDEADBEEF,
        "payload": PCMU_20MS,
        "marker": True,
    }
    fields.update(overrides)
    return RtpPacket(**fields)  # type: ignore[arg-type]


def test_pcmu_packet_wire_layout() -> None:
    data = bytes(pcmu_packet())
    assert len(data) == 172
    assert data[:12] == bytes.fromhex("80 80 1234 12345678 deadbeef")
    assert data[12:] == PCMU_20MS


def test_round_trip_minimal() -> None:
    packet = pcmu_packet()
    assert RtpPacket.parse(bytes(packet)) == packet


def test_round_trip_with_csrcs_extension_and_padding() -> None:
    packet = pcmu_packet(
        csrc=(1, 2, 0xFFFFFFFF),
        extension_profile=0xBEDE,
        extension=bytes.fromhex("10ff0000"),
        padding_size=4,
        marker=False,
        payload_type=127,
    )
    data = bytes(packet)
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-1] == 4
    assert RtpPacket.parse(data) == packet


def test_parses_what_aiortc_serializes() -> None:
    theirs = aiortc_rtp.RtpPacket(
        payload_type=8, marker=1, sequence_number=65535, timestamp=4294967295, ssrc=42
    )
    theirs.csrc = [7, 8]
    theirs.payload = PCMU_20MS
    wire = theirs.serialize(aiortc_rtp.HeaderExtensionsMap())
    ours = RtpPacket.parse(wire)
    assert (ours.payload_type, ours.marker, ours.sequence_number) == (8, True, 65535)
    assert (ours.timestamp, ours.ssrc, ours.csrc) == (4294967295, 42, (7, 8))
    assert ours.payload == PCMU_20MS
    assert bytes(ours) == wire


def test_aiortc_parses_what_we_serialize() -> None:
    wire = bytes(pcmu_packet(csrc=(9,), padding_size=3))
    theirs = aiortc_rtp.RtpPacket.parse(wire)
    assert (theirs.payload_type, theirs.marker, theirs.sequence_number) == (0, 1, 4660)
    assert (theirs.csrc, theirs.padding_size, theirs.payload) == ([9], 3, PCMU_20MS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "RTP packet length is less than 12 bytes"),
        (bytes.fromhex("40000000000000000000000000"), "RTP packet has invalid version"),
        (bytes.fromhex("c0000000000000000000000000"), "RTP packet has invalid version"),
        (bytes.fromhex("81000000000000000000000000"), "RTP packet has truncated CSRC list"),
        (bytes.fromhex("8f00000000000000000000000000000000"), "RTP packet has truncated CSRC list"),
        (
            bytes.fromhex("9000000000000000000000000000"),
            "RTP packet has truncated extension header",
        ),
        (
            bytes.fromhex("90000000000000000000000000000002aabbccdd"),
            "RTP packet has truncated extension",
        ),
        (bytes.fromhex("a00000000000000000000000aabb05"), "RTP packet padding length is invalid"),
        (bytes.fromhex("a00000000000000000000000aabb00"), "RTP packet padding length is invalid"),
    ],
    ids=[
        "truncated",
        "version-1",
        "version-3",
        "csrc-count-1-without-csrc",
        "csrc-count-15-with-one",
        "extension-header-missing",
        "extension-longer-than-packet",
        "padding-longer-than-payload",
        "padding-zero",
    ],
)
def test_malformed_packets_raise_rtp_error(data: bytes, message: str) -> None:
    with pytest.raises(RtpError) as info:
        RtpPacket.parse(data)
    assert str(info.value) == message


def test_padding_may_consume_whole_payload() -> None:
    data = bytes.fromhex("a0000000000000000000000000000004")
    packet = RtpPacket.parse(data)
    assert packet.payload == b""
    assert packet.padding_size == 4


def test_serialize_rejects_what_cannot_be_encoded() -> None:
    with pytest.raises(RtpError, match="more than 15 CSRCs"):
        bytes(pcmu_packet(csrc=tuple(range(16))))
    with pytest.raises(RtpError, match="multiple of 4"):
        bytes(pcmu_packet(extension_profile=1, extension=b"abc"))
    with pytest.raises(RtpError, match="payload type is out of range"):
        bytes(pcmu_packet(payload_type=128))
    with pytest.raises(RtpError, match="header field is out of range"):
        bytes(pcmu_packet(sequence_number=65536))


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    # What parses re-serializes to the same bytes (padding octets aside).
    again = bytes(packet)
    assert len(again) == len(data)
    assert again[: len(data) - packet.padding_size] == data[: len(data) - packet.padding_size]


@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=64),
    st.booleans(),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.binary(max_size=16).map(lambda b: b[: len(b) - len(b) % 4]),
    st.integers(0, 255),
)
def test_any_packet_round_trips(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    marker: bool,
    csrc: list[int],
    profile: int | None,
    extension: bytes,
    padding: int,
) -> None:
    packet = RtpPacket(
        pt,
        seq,
        ts,
        ssrc,
        payload,
        marker,
        tuple(csrc),
        profile,
        extension if profile is not None else b"",
        padding,
    )
    assert RtpPacket.parse(bytes(packet)) == packet


def test_rfc5761_demultiplexing() -> None:
    assert not is_rtcp(bytes(pcmu_packet(marker=False, payload_type=0)))
    assert not is_rtcp(bytes(pcmu_packet(marker=True, payload_type=96)))
    assert is_rtcp(struct.pack("!BBH", 0x80, 200, 6))
    assert is_rtcp(struct.pack("!BBH", 0x80, 201, 1))
    assert not is_rtcp(b"\x80")


def test_sequence_arithmetic_across_wrap() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 100) == 0
    assert seq_newer(2, 65530)
    assert not seq_newer(65530, 2)
    assert timestamp_diff(10, 0xFFFFFFF0) == 26
    assert timestamp_diff(0xFFFFFFF0, 10) == -26


def test_unwrapper_extends_across_wrap_with_reordering() -> None:
    unwrap = SequenceUnwrapper().unwrap
    seqs = [65533, 65535, 65534, 0, 2, 1, 65535, 3]
    assert [unwrap(s) for s in seqs] == [65533, 65535, 65534, 65536, 65538, 65537, 65535, 65539]


def test_unwrapper_counts_many_cycles() -> None:
    unwrapper = SequenceUnwrapper()
    extended = [unwrapper.unwrap(i & 0xFFFF) for i in range(0, 5 * 65536, 1000)]
    assert extended == list(range(0, 5 * 65536, 1000))
