"""RTCP packets (RFC 3550 §6): round trips, aiortc interop, malformed input, NTP time."""

from __future__ import annotations

import contextlib

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from voicegw.media.rtcp import (
    NTP_EPOCH_OFFSET,
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    ntp_middle32,
    ntp_to_unix,
    parse_compound,
    serialize_compound,
    unix_to_ntp,
)

BLOCK = ReportBlock(
    ssrc=0x01020304,
    fraction_lost=25,
    packets_lost=-3,
    highest_sequence=0x0001FFFF,
    jitter=80,
    lsr=0xB7052000,
    dlsr=0x00054000,
)
SR = RtcpSenderReport(
    ssrc=0xCAFEBABE,
    ntp_timestamp=0xE0E1E2E3_80000000,
    rtp_timestamp=160000,
    packet_count=1000,
    octet_count=160000,
    reports=(BLOCK,),
)


def test_compound_sr_sdes_bye_round_trip() -> None:
    packets: list[RtcpPacket] = [
        SR,
        RtcpSdes.cname_of(0xCAFEBABE, "voicegw@127.0.0.1"),
        RtcpBye((0xCAFEBABE,), b"hangup"),
    ]
    data = serialize_compound(packets)
    assert len(data) % 4 == 0
    assert parse_compound(data) == packets


def test_receiver_report_round_trip_with_many_blocks() -> None:
    blocks = tuple(ReportBlock(i, i, i * 1000, i << 16, i, i, i) for i in range(1, 32))
    rr = RtcpReceiverReport(0x11, blocks)
    assert parse_compound(bytes(rr)) == [rr]


def test_sdes_chunks_are_each_padded_to_32_bits() -> None:
    sdes = RtcpSdes(
        (
            SdesChunk(1, ((1, b"a"),)),
            SdesChunk(2, ((1, b"bbbb"), (6, b"voicegw"))),
            SdesChunk(3, ()),
        )
    )
    data = bytes(sdes)
    assert parse_compound(data) == [sdes]
    assert sdes.chunks[0].cname == "a"
    assert sdes.chunks[2].cname is None


def test_report_block_saturates_cumulative_loss_at_24_bits() -> None:
    block = ReportBlock(1, 0, 10_000_000, 0, 0, 0, 0)
    (rr,) = parse_compound(bytes(RtcpReceiverReport(2, (block,))))
    assert isinstance(rr, RtcpReceiverReport)
    assert rr.reports[0].packets_lost == 0x7FFFFF


def test_unknown_packet_types_are_kept_verbatim() -> None:
    # A transport-wide feedback packet (RTPFB, PT 205) as sent by a WebRTC peer.
    nack = bytes.fromhex("81cd0003 cafebabe 01020304 00640001")
    packets = parse_compound(bytes(SR) + nack)
    assert packets[1] == RtcpUnknown(205, 1, bytes.fromhex("cafebabe 01020304 00640001"))
    assert serialize_compound(packets) == bytes(SR) + nack


def test_padding_on_last_packet_is_removed() -> None:
    bye = bytes.fromhex("a1cb0002 cafebabe 00000004")
    assert parse_compound(bye) == [RtcpBye((0xCAFEBABE,))]


def test_parses_what_aiortc_serializes() -> None:
    sr = aiortc_rtp.RtcpSrPacket(
        ssrc=SR.ssrc,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=SR.ntp_timestamp,
            rtp_timestamp=SR.rtp_timestamp,
            packet_count=SR.packet_count,
            octet_count=SR.octet_count,
        ),
        reports=[
            aiortc_rtp.RtcpReceiverInfo(
                ssrc=BLOCK.ssrc,
                fraction_lost=BLOCK.fraction_lost,
                packets_lost=BLOCK.packets_lost,
                highest_sequence=BLOCK.highest_sequence,
                jitter=BLOCK.jitter,
                lsr=BLOCK.lsr,
                dlsr=BLOCK.dlsr,
            )
        ],
    )
    sdes = aiortc_rtp.RtcpSdesPacket(
        chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=SR.ssrc, items=[(1, b"agent-7")])]
    )
    bye = aiortc_rtp.RtcpByePacket(sources=[SR.ssrc])
    wire = bytes(sr) + bytes(sdes) + bytes(bye)
    assert parse_compound(wire) == [SR, RtcpSdes.cname_of(SR.ssrc, "agent-7"), RtcpBye((SR.ssrc,))]


def test_aiortc_parses_what_we_serialize() -> None:
    wire = serialize_compound([SR, RtcpSdes.cname_of(SR.ssrc, "agent-7"), RtcpBye((SR.ssrc,))])
    sr, sdes, bye = aiortc_rtp.RtcpPacket.parse(wire)
    assert isinstance(sr, aiortc_rtp.RtcpSrPacket)
    assert isinstance(sdes, aiortc_rtp.RtcpSdesPacket)
    assert isinstance(bye, aiortc_rtp.RtcpByePacket)
    assert sr.sender_info.ntp_timestamp == SR.ntp_timestamp
    assert sr.reports[0].packets_lost == -3
    assert sr.reports[0].lsr == BLOCK.lsr
    assert sdes.chunks[0].items == [(1, b"agent-7")]
    assert bye.sources == [SR.ssrc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc8", "RTCP packet length is less than 4 bytes"),
        (bytes.fromhex("40c90001 00000001"), "RTCP packet has invalid version"),
        (bytes.fromhex("80c90002 00000001"), "RTCP packet length exceeds the datagram"),
        (bytes.fromhex("81c90001 00000001"), "RTCP report block list is truncated"),
        (bytes.fromhex("80c80001 00000001"), "RTCP sender report is truncated"),
        (bytes.fromhex("80c90000"), "RTCP receiver report is truncated"),
        (bytes.fromhex("80c90001 00000001 80"), "RTCP packet header is truncated"),
        (bytes.fromhex("81ca0001 00000001"), "RTCP SDES item list is not terminated"),
        (bytes.fromhex("81ca0002 00000001 01090000"), "RTCP SDES item is truncated"),
        (bytes.fromhex("82cb0001 00000001"), "RTCP BYE source list is truncated"),
        (bytes.fromhex("81cb0002 00000001 09610000"), "RTCP BYE reason is truncated"),
        (bytes.fromhex("a0c90001 00000009"), "RTCP packet padding length is invalid"),
        (bytes.fromhex("a0c90001 00000000"), "RTCP packet padding length is invalid"),
        (
            bytes.fromhex("a0c90001 00000004 80c90001 00000001"),
            "RTCP padding is only allowed on the last packet",
        ),
    ],
    ids=[
        "too-short",
        "bad-version",
        "length-beyond-datagram",
        "rr-block-missing",
        "sr-sender-info-missing",
        "rr-ssrc-missing",
        "trailing-partial-header",
        "sdes-unterminated",
        "sdes-item-truncated",
        "bye-sources-truncated",
        "bye-reason-truncated",
        "padding-too-long",
        "padding-zero",
        "padding-not-last",
    ],
)
def test_malformed_rtcp_raises_rtcp_error(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError) as info:
        parse_compound(data)
    assert str(info.value) == message


@given(st.binary(max_size=256))
def test_any_bytes_parse_or_raise_rtcp_error(data: bytes) -> None:
    try:
        packets = parse_compound(data)
    except RtcpError:
        return
    # Whatever parsed can be written back out and parses to the same thing.
    assert parse_compound(serialize_compound(packets)) == packets


@given(st.binary(min_size=4, max_size=128).map(lambda b: b[: len(b) - len(b) % 4]))
def test_well_framed_garbage_bodies_parse_or_raise_rtcp_error(body: bytes) -> None:
    # Valid headers for every type we interpret, random bodies and counts.
    for packet_type in (200, 201, 202, 203):
        for count in (0, 1, 2, 31):
            header = bytes((0x80 | count, packet_type)) + (len(body) // 4).to_bytes(2, "big")
            with contextlib.suppress(RtcpError):
                parse_compound(header + body)


def test_ntp_conversion() -> None:
    assert unix_to_ntp(0.0) == NTP_EPOCH_OFFSET << 32
    assert unix_to_ntp(1.5) == ((NTP_EPOCH_OFFSET + 1) << 32) | 0x80000000
    assert ntp_to_unix(unix_to_ntp(1_763_856_000.25)) == pytest.approx(1_763_856_000.25)
    # RFC 3550 §6.4.1: LSR is the middle 32 bits of the NTP timestamp.
    assert ntp_middle32(0xB44DB705_20000000) == 0xB7052000
