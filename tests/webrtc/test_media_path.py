"""Our RTP half of a WebRTC leg: what is sent, what is received, what the gate drops."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.webrtc.test_leg import wait_until
from voicegw.calls.agents import AgentCall
from voicegw.media.dtmf import digit_packets
from voicegw.media.opus import OpusDecoder
from voicegw.media.rtp import RtpPacket
from voicegw.media.webrtc import FRAME_BYTES, LiveSource, WebRtcConfig, WebRtcLeg
from voicegw.media.webrtc_rtp import LegCounters, RtpReceiver, RtpSender

LOOPBACK_ONLY = WebRtcConfig(host_addresses=("127.0.0.1",))


def sender_report() -> Any:
    """What aiortc's RTCRtpSender keeps for its sender reports (name-mangled fields)."""
    fields = ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")
    return SimpleNamespace(**{f"_RTCRtpSender__{name}": 0 for name in fields})


def test_packets_count_up_and_a_gap_moves_the_timestamp_on_with_a_new_talkspurt() -> None:
    report = sender_report()
    sender = RtpSender("PCMU", 0, 0x1234, sender_report=report)
    tone = np.full(160, 1000, dtype="<i2").tobytes()
    sent = [RtpPacket.parse(sender.packet(tone, 0.02 * n)) for n in range(3)]
    sent.append(RtpPacket.parse(sender.packet(tone, 0.04 + 0.1)))  # 100 ms later: 5 frames on

    assert [p.sequence_number - sent[0].sequence_number for p in sent] == [0, 1, 2, 3]
    assert [p.timestamp - sent[0].timestamp for p in sent] == [0, 160, 320, 1120]
    assert [p.marker for p in sent] == [True, False, False, True]
    assert {p.ssrc for p in sent} == {0x1234} and {len(p.payload) for p in sent} == {160}
    assert report._RTCRtpSender__packet_count == 4
    assert report._RTCRtpSender__octet_count == 4 * 160
    assert report._RTCRtpSender__rtp_timestamp == sent[-1].timestamp
    ntp_seconds = report._RTCRtpSender__ntp_timestamp / 2**32 - 2208988800
    assert abs(ntp_seconds - time.time()) < 5


def test_opus_runs_on_the_48_khz_rtp_clock_and_digital_silence_stays_silent() -> None:
    sender = RtpSender("opus", 111, 7)
    decoder = OpusDecoder(8000)
    packets = [RtpPacket.parse(sender.packet(bytes(FRAME_BYTES), 0.02 * n)) for n in range(100)]
    assert {b.timestamp - a.timestamp for a, b in itertools.pairwise(packets)} == {960}
    assert {p.payload_type for p in packets} == {111}
    # libopus is given +-1 LSB instead of zeros (all-zero input is its slow path): inaudible.
    heard = np.frombuffer(b"".join(decoder.decode(p.payload) for p in packets), "<i2")
    assert int(np.abs(heard).max()) < 16


def test_a_key_press_in_rtp_reaches_on_digit_once_between_audio_packets() -> None:
    counters = LegCounters()
    digits: list[str] = []
    frames: list[bytes] = []
    now = [0.0]
    receiver = RtpReceiver(
        {0: "PCMU", 101: "telephone-event"}, frames.append, counters, digits.append, lambda: now[0]
    )
    seq = 0

    def send(payload_type: int, payload: bytes, timestamp: int, marker: bool = False) -> None:
        nonlocal seq
        seq += 1
        receiver.packet(RtpPacket(payload_type, seq, timestamp, 9, payload, marker))

    send(0, b"\xff" * 160, 0)
    for key, start in (("5", 800), ("#", 4000)):
        for event in digit_packets(key, start):  # 3 end packets each: one digit
            now[0] = start / 8000 + event.offset
            send(101, event.payload, event.timestamp, event.marker)
        send(0, b"\xff" * 160, start + 1600)
    assert digits == ["5", "#"] and counters.digits == 2
    assert len(frames) == 3  # the events are not audio

    # A press whose end packets were all lost ends on the timeout, at the next packet.
    (first, *_rest) = digit_packets("7", 9000)
    send(101, first.payload, first.timestamp, first.marker)
    now[0] += 1.0
    send(0, b"\xff" * 160, 9800)
    assert digits == ["5", "#", "7"]


def test_a_live_source_hands_frames_to_its_listener_instead_of_queueing_them() -> None:
    source = LiveSource()
    heard: list[bytes] = []
    source.push(bytes([1]) * FRAME_BYTES)
    source.listen(heard.append)
    source.push(bytes([2]) * FRAME_BYTES)
    assert heard == [bytes([2]) * FRAME_BYTES] and source.next_frame() is None
    source.listen(None)
    source.push(bytes([3]) * FRAME_BYTES)
    assert source.next_frame() == bytes([3]) * FRAME_BYTES and len(heard) == 1


def test_an_agent_calls_listener_follows_a_transfer_re_route() -> None:
    caller, consult = LiveSource(), LiveSource()
    call = AgentCall("c1", "acme", 1, "+6591234567", caller, print)
    heard: list[bytes] = []
    call.listen(heard.append)
    call.route(consult, print)
    caller.push(bytes([1]) * FRAME_BYTES)  # queued: nobody plays the old source now
    consult.push(bytes([2]) * FRAME_BYTES)
    assert heard == [bytes([2]) * FRAME_BYTES]
    assert caller.next_frame() == bytes([1]) * FRAME_BYTES


async def connected(browser: Any, leg: WebRtcLeg) -> int:
    """Connect ``leg`` to the stand-in browser; our socket's port."""
    answer = await leg.accept_offer(await browser.offer())
    await browser.answered(answer)
    await wait_until(lambda: leg.connection_state == "connected")
    found = re.findall(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", answer)
    return int(found[0])


async def test_datagrams_from_an_address_no_ice_check_validated_are_dropped_at_the_gate(
    browser: Any,
) -> None:
    received: list[bytes] = []
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), received.append)
    try:
        port = await connected(browser, leg)
        rtp = struct.pack("!BBHII", 0x80, 0, 1, 0, 0x1234) + bytes(160)
        dtls_hello = bytes([22, 0xFE, 0xFD]) + bytes(60)  # a DTLS handshake record
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(20):
                stranger.sendto(rtp, ("127.0.0.1", port))
                stranger.sendto(dtls_hello, ("127.0.0.1", port))
        await wait_until(lambda: leg.counters.unvalidated >= 40)
        before = len(received)
        await wait_until(lambda: len(received) >= before + 25)  # the browser's audio goes on
        assert leg.connection_state == "connected"
        assert leg.counters.unauthenticated == 0  # none of it got as far as SRTP
    finally:
        await leg.close()


async def test_our_sender_reports_count_the_packets_we_sent(browser: Any) -> None:
    source = LiveSource()
    leg = WebRtcLeg(LOOPBACK_ONLY, source, lambda _frame: None)
    try:
        await connected(browser, leg)
        await asyncio.sleep(2.5)  # aiortc sends a report every 0.5-1.5 s

        def reported() -> int:
            return next(
                (s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"), -1
            )

        stats = await browser.pc.getStats()
        sent = leg.counters.packets_sent
    finally:
        await leg.close()
    assert sent > 60
    assert 0 < reported() <= sent and reported() > sent - 80  # at most ~1.5 s old


async def test_our_receiver_reports_tell_the_browser_what_arrived_and_the_round_trip(
    browser: Any,
) -> None:
    """aiortc never sees our RTP, so we hand it the reception statistics its reports use."""
    leg = WebRtcLeg(LOOPBACK_ONLY, LiveSource(), lambda _frame: None)
    seen: list[Any] = []

    async def round_trip_known() -> bool:
        stats = await browser.pc.getStats()
        seen[:] = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
        return bool(seen) and seen[0].roundTripTime is not None

    try:
        await connected(browser, leg)
        for _ in range(40):  # up to 8 s: reports come every 0.5-1.5 s
            if await round_trip_known():
                break
            await asyncio.sleep(0.2)
    finally:
        await leg.close()
    (report,) = seen
    assert report.packetsLost == 0 and report.packetsReceived > 25
    assert 0 <= report.roundTripTime < 0.5  # loopback


@pytest.mark.parametrize("codec", ["opus", "PCMU"])
def test_senders_only_exist_for_codecs_we_encode(codec: str) -> None:
    RtpSender(codec, 0, 1)
    with pytest.raises(ValueError, match="G722"):
        RtpSender("G722", 9, 1)
