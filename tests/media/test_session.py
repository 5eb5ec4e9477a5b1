"""MediaLeg, sans-IO: strict RTP and latching, drops, SSRC changes, DTMF, relay, RTCP."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.media.codecs import PCMA, PCMU
from voicegw.media.dtmf import digit_packets
from voicegw.media.rtcp import (
    RtcpBye,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    parse_compound,
)
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import (
    Address,
    DropReason,
    DtmfReceived,
    LegConfig,
    MediaLeg,
    RemoteBye,
    RtpReceived,
    SourceLatched,
    SsrcChanged,
    static_codecs,
)

SIGNALLED: Address = ("192.0.2.10", 40000)  # private address in the caller's SDP
NATED: Address = ("198.51.100.7", 61234)  # where the caller's packets really come from
ATTACKER: Address = ("203.0.113.66", 5555)
TICK = 0.02


def config(**overrides: object) -> LegConfig:
    settings_: dict[str, object] = {
        "codecs": static_codecs(PCMU, PCMA),
        "send_payload_type": 0,
        "telephone_event_payload_type": 101,
        "remote_rtp": SIGNALLED,
    }
    settings_.update(overrides)
    return LegConfig(**settings_)  # type: ignore[arg-type]


def leg(**overrides: object) -> MediaLeg:
    return MediaLeg(config(**overrides), now=0.0, rng=random.Random(7))


def rtp(seq: int, *, pt: int = 0, ssrc: int = 0x1234, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes([seq & 0xFF]) * 160
    return bytes(RtpPacket(pt, seq & 0xFFFF, seq * 160, ssrc, body))


def feed(m: MediaLeg, addr: Address, seqs: range, start: float = 0.0, **kw: object) -> list[object]:
    events: list[object] = []
    for i, seq in enumerate(seqs):
        events += m.receive(rtp(seq, **kw), addr, start + i * TICK)  # type: ignore[arg-type]
    return events


def relayed(events: Sequence[object]) -> list[RtpPacket]:
    return [e.packet for e in events if isinstance(e, RtpReceived)]


# -- who may send ------------------------------------------------------------------


def test_packet_from_signalled_address_latches_at_once() -> None:
    m = leg()
    events = m.receive(rtp(1), SIGNALLED, 0.01)
    assert events[0] == SourceLatched(SIGNALLED, signalled=True)
    assert [p.sequence_number for p in relayed(events)] == [1]
    assert m.latched == SIGNALLED
    assert m.remote_rtp == SIGNALLED


def test_rfc4961_symmetric_rtp_latches_onto_nated_source_after_probation() -> None:
    m = leg(latch_packets=3)
    events = feed(m, NATED, range(100, 110))
    latched = [e for e in events if isinstance(e, SourceLatched)]
    assert latched == [SourceLatched(NATED, signalled=False)]
    # The first two packets were probation; from the third on audio flows.
    assert [p.sequence_number for p in relayed(events)] == list(range(102, 110))
    assert m.dropped[DropReason.LEARNING] == 2
    # Our RTP now goes back where the caller's comes from, not to the SDP address.
    assert m.remote_rtp == NATED
    assert m.remote_rtcp == (NATED[0], NATED[1] + 1)


def test_probation_restarts_when_another_source_interleaves() -> None:
    m = leg(latch_packets=3)
    m.receive(rtp(1), NATED, 0.0)
    m.receive(rtp(2), NATED, 0.02)
    m.receive(rtp(900, ssrc=9), ATTACKER, 0.03)
    m.receive(rtp(3), NATED, 0.04)  # candidate is the attacker now: NATED starts over
    assert m.latched is None
    m.receive(rtp(4), NATED, 0.06)
    events = m.receive(rtp(5), NATED, 0.08)
    assert SourceLatched(NATED, signalled=False) in events
    assert m.dropped[DropReason.LEARNING] == 5


def test_rtp_bleed_after_latching_is_dropped_and_counted() -> None:
    m = leg()
    feed(m, SIGNALLED, range(1, 5))
    # Valid RTP, negotiated payload type, from a stranger: the RTP-bleed attack.
    bleed = feed(m, ATTACKER, range(5000, 5050), start=0.1, ssrc=0xBAD)
    assert bleed == []
    assert m.dropped[DropReason.UNEXPECTED_SOURCE] == 50
    more = feed(m, SIGNALLED, range(5, 10), start=0.1)
    assert [p.sequence_number for p in relayed(more)] == list(range(5, 10))
    assert m.latched == SIGNALLED
    assert m.last_received == pytest.approx(0.1 + 4 * TICK)  # bleed does not keep a call alive
    summary = m.summary()
    assert summary.received is not None
    assert summary.received.packets_received == 9
    assert summary.dropped["unexpected_source"] == 50


def test_unsignalled_source_is_not_learnt_after_the_latching_window() -> None:
    m = leg(latch_window=5.0, latch_packets=1)
    assert feed(m, NATED, range(1, 4), start=5.5) == []
    assert m.dropped[DropReason.UNEXPECTED_SOURCE] == 3
    # The signalled address is still accepted: SDP is the one thing we trust.
    assert SourceLatched(SIGNALLED, signalled=True) in m.receive(rtp(9), SIGNALLED, 6.0)


def test_strict_rtp_without_symmetric_latching_only_accepts_the_signalled_address() -> None:
    m = leg(symmetric=False)
    assert feed(m, NATED, range(1, 10)) == []
    assert m.dropped[DropReason.UNEXPECTED_SOURCE] == 9
    assert m.latched is None


def test_relearn_opens_a_new_window_for_a_new_address() -> None:
    m = leg(latch_packets=1)
    feed(m, SIGNALLED, range(1, 3))
    new: Address = ("192.0.2.99", 42000)
    m.relearn(now=30.0, remote_rtp=new)
    assert m.latched is None
    events = m.receive(rtp(3), new, 30.01)
    assert SourceLatched(new, signalled=True) in events
    assert m.receive(rtp(4), SIGNALLED, 30.03) == []


# -- what we accept -------------------------------------------------------------------


def test_unnegotiated_payload_type_is_dropped_and_counted() -> None:
    m = leg()
    feed(m, SIGNALLED, range(1, 3))
    assert m.receive(rtp(3, pt=18), SIGNALLED, 0.1) == []  # G.729 was not in our SDP
    assert m.dropped[DropReason.PAYLOAD_TYPE] == 1


def test_unnegotiated_payload_type_does_not_latch() -> None:
    m = leg(latch_packets=1)
    assert m.receive(rtp(1, pt=96), NATED, 0.0) == []
    assert m.latched is None
    assert m.dropped[DropReason.PAYLOAD_TYPE] == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80", b"\x80\x00\x00", bytes(11), b"\x40" + bytes(20), b"\x8f\x00" + bytes(10)],
    ids=["empty", "one-byte", "three-bytes", "short-header", "version-1", "truncated-csrc"],
)
def test_malformed_rtp_is_dropped_and_counted(data: bytes) -> None:
    m = leg()
    assert m.receive(data, SIGNALLED, 0.0) == []
    assert m.dropped[DropReason.MALFORMED] == 1
    assert m.latched is None


def test_malformed_rtcp_is_dropped_and_counted() -> None:
    m = leg()
    assert m.receive(b"\x80\xc8\x00\x40" + bytes(8), SIGNALLED, 0.0) == []
    assert m.dropped[DropReason.MALFORMED_RTCP] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_bytes_are_taken_or_counted_never_raised(datagrams: list[bytes]) -> None:
    m = leg(latch_packets=1)
    for i, data in enumerate(datagrams):
        m.receive(data, NATED if i % 2 else SIGNALLED, i * TICK)
        m.handle_timer(i * TICK)


def test_ssrc_change_is_reported_and_the_old_stream_kept_for_the_record() -> None:
    m = leg()
    first = feed(m, SIGNALLED, range(1, 11), ssrc=1)
    second = feed(m, SIGNALLED, range(7000, 7005), start=0.3, ssrc=2)
    assert SsrcChanged(None, 1) in first
    assert SsrcChanged(1, 2) in second
    assert len(relayed(second)) == 5
    summary = m.summary()
    assert summary.received is not None and summary.received.ssrc == 2
    assert summary.received.packets_received == 5
    assert [s.packets_received for s in summary.previous] == [10]


def test_rfc4733_events_go_to_the_dtmf_receiver_and_are_not_relayed() -> None:
    m = leg()
    feed(m, SIGNALLED, range(1, 4))
    events: list[object] = []
    for seq, scheduled in enumerate(digit_packets("7", timestamp=4 * 160), start=4):
        ts, payload, marker = scheduled.timestamp, scheduled.payload, scheduled.marker
        packet = RtpPacket(101, seq, ts, 0x1234, payload, marker)
        events += m.receive(bytes(packet), SIGNALLED, 0.1 + scheduled.offset)
    digits = [e.digit.digit for e in events if isinstance(e, DtmfReceived)]
    assert digits == ["7"]
    assert relayed(events) == []


def test_dtmf_whose_end_packets_were_lost_finishes_at_the_deadline() -> None:
    m = leg()
    first = digit_packets("5", timestamp=0)[0]
    m.receive(bytes(RtpPacket(101, 1, 0, 9, first.payload, True)), SIGNALLED, 1.0)
    deadline = m.next_deadline()
    assert deadline <= 1.0 + m.dtmf.timeout
    events = m.handle_timer(deadline)
    assert [e.digit.digit for e in events if isinstance(e, DtmfReceived)] == ["5"]
    assert not events[0].digit.ended  # type: ignore[union-attr]


# -- relay and sending ----------------------------------------------------------------


def test_same_codec_relay_passes_the_payload_untouched() -> None:
    a, b = leg(), leg()
    payload = bytes(range(160))
    (received,) = relayed(a.receive(rtp(1, payload=payload), SIGNALLED, 0.0))
    out = RtpPacket.parse(b.relay(RtpReceived(received, PCMU), 0.0))
    assert out.payload == payload
    assert out.ssrc == b.sender.ssrc != received.ssrc


def test_relay_to_a_leg_without_the_codec_transcodes_through_pcm() -> None:
    b = leg(codecs=static_codecs(PCMA), send_payload_type=8)
    ulaw = PCMU.encode(np.full(160, 1000, dtype="<i2").tobytes())
    out = RtpPacket.parse(b.relay(RtpReceived(RtpPacket(0, 1, 0, 5, ulaw), PCMU), 0.0))
    assert out.payload_type == 8
    assert out.payload == PCMA.encode(PCMU.decode(ulaw))


def test_sender_numbers_stay_continuous_across_prompt_and_relay() -> None:
    m = leg()
    sent = [RtpPacket.parse(m.send_payload(PCMU.silence(), i * TICK)) for i in range(3)]
    # Relay from another source: renumbered to continue our stream, marker on the switch.
    for i, seq in enumerate(range(5000, 5003)):
        incoming = RtpPacket(0, seq, 777_000 + i * 160, 42, PCMU.silence())
        sent.append(RtpPacket.parse(m.relay(RtpReceived(incoming, PCMU), (3 + i) * TICK)))
    # A pause of 10 frames, then a prompt again: timestamps jump with the pause.
    sent.append(RtpPacket.parse(m.send_payload(PCMU.silence(), 15 * TICK)))
    seqs = [(p.sequence_number - sent[0].sequence_number) & 0xFFFF for p in sent]
    steps = [(p.timestamp - sent[0].timestamp) & 0xFFFFFFFF for p in sent]
    assert seqs == [0, 1, 2, 3, 4, 5, 6]
    assert steps == [0, 160, 320, 480, 640, 800, 2400]
    assert [p.marker for p in sent] == [True, False, False, True, False, False, True]
    assert {p.ssrc for p in sent} == {m.sender.ssrc}


def test_relayed_upstream_loss_stays_visible_in_sequence_numbers() -> None:
    m = leg()
    out = [
        RtpPacket.parse(m.relay(RtpReceived(RtpPacket(0, seq, seq * 160, 42, b"x"), PCMU), 0.0))
        for seq in (10, 11, 13)
    ]
    assert [(p.sequence_number - out[0].sequence_number) & 0xFFFF for p in out] == [0, 1, 3]


def test_pcm_is_decoded_only_while_enabled() -> None:
    m = leg()
    tone = PCMU.encode(np.full(160, 2000, dtype="<i2").tobytes())
    feed(m, SIGNALLED, range(1, 4), payload=tone)
    assert m.playout_pcm(0.1) is None  # no consumer: nothing buffered, nothing decoded
    m.enable_pcm()
    frames = []
    for i, seq in enumerate(range(4, 10)):
        m.receive(rtp(seq, payload=tone), SIGNALLED, 0.2 + i * TICK)
        frames.append(m.playout_pcm(0.2 + i * TICK))
    played = [pcm for pcm, concealed in filter(None, frames) if not concealed]
    assert played
    assert all(pcm == PCMU.decode(tone) for pcm in played)


# -- RTCP -------------------------------------------------------------------------


def run_rtcp_exchange(one_way: float) -> tuple[MediaLeg, MediaLeg]:
    """Two legs facing each other; A sends audio to B; each datagram takes ``one_way`` s."""
    a_addr: Address = ("192.0.2.1", 20000)
    b_addr: Address = ("192.0.2.2", 30000)
    a = MediaLeg(
        config(remote_rtp=b_addr, rtcp_interval=1.0, wallclock_offset=1.7e9),
        0.0,
        rng=random.Random(1),
    )
    b = MediaLeg(
        config(remote_rtp=a_addr, rtcp_interval=1.0, wallclock_offset=1.7e9),
        0.0,
        rng=random.Random(2),
    )
    in_flight: list[tuple[float, MediaLeg, bytes, Address]] = []
    for n in range(400):  # 8 s of 20 ms steps
        now = n * TICK
        in_flight.append((now + one_way, b, a.send_payload(PCMU.silence(), now), a_addr))
        for m, peer, src in ((a, b, a_addr), (b, a, b_addr)):
            if now >= m.next_deadline():
                m.handle_timer(now)
            for d in m.datagrams_to_send():
                in_flight.append((now + one_way, peer, d.data, (src[0], src[1] + 1)))
        due = [item for item in in_flight if item[0] <= now]
        in_flight = [item for item in in_flight if item[0] > now]
        for _, m, data, src in due:
            m.receive(data, src, now)
    return a, b


def test_rtcp_reports_go_out_at_intervals_and_give_the_sender_its_rtt() -> None:
    a, b = run_rtcp_exchange(one_way=0.06)
    assert a.rtt == pytest.approx(0.12, abs=0.025)
    summary_b = b.summary()
    assert summary_b.received is not None
    assert summary_b.received.packets_lost == 0
    assert summary_b.received.packets_received > 350
    assert a.summary().packets_sent == 400


def test_sender_report_when_sending_receiver_report_when_silent() -> None:
    m = leg(rtcp_interval=1.0)
    feed(m, SIGNALLED, range(1, 5))
    m.handle_timer(m.next_deadline())
    (rr,) = m.datagrams_to_send()
    head, sdes = parse_compound(rr.data)
    assert isinstance(head, RtcpReceiverReport) and head.reports[0].ssrc == 0x1234
    assert isinstance(sdes, RtcpSdes) and sdes.chunks[0].cname == "voicegw"
    assert rr.addr == (SIGNALLED[0], SIGNALLED[1] + 1)
    m.send_payload(PCMU.silence(), 3.0)
    m.handle_timer(m.next_deadline())
    (sr,) = m.datagrams_to_send()
    head = parse_compound(sr.data)[0]
    assert isinstance(head, RtcpSenderReport) and head.packet_count == 1


def test_rfc3605_signalled_rtcp_address_is_used_until_a_nat_source_is_learnt() -> None:
    rtcp: Address = (SIGNALLED[0], 40111)
    m = leg(remote_rtcp=rtcp, latch_packets=1)
    assert m.remote_rtcp == rtcp
    m.receive(rtp(1), SIGNALLED, 0.0)
    assert m.remote_rtcp == rtcp
    m.relearn(1.0)
    m.receive(rtp(2), NATED, 1.0)
    assert m.remote_rtcp == (NATED[0], NATED[1] + 1)
    # Symmetric RTCP: once the NATed RTCP source is heard, answer there.
    m.receive(bytes(RtcpReceiverReport(0x1234)), (NATED[0], 3333), 1.1)
    assert m.remote_rtcp == (NATED[0], 3333)


def test_close_sends_bye_and_a_remote_bye_is_reported() -> None:
    a, b = leg(rtcp_mux=True), leg()
    a.close(1.0, reason=b"hangup")
    (bye,) = a.datagrams_to_send()
    assert bye.addr == SIGNALLED  # rtcp-mux: the RTP address
    assert isinstance(parse_compound(bye.data)[-1], RtcpBye)
    assert b.receive(bye.data, SIGNALLED, 1.0) == [RemoteBye((a.sender.ssrc,))]


def test_rtcp_from_a_foreign_host_is_dropped() -> None:
    m = leg()
    feed(m, SIGNALLED, range(1, 3))
    report = bytes(RtcpReceiverReport(99))
    assert m.receive(report, ATTACKER, 0.1) == []
    assert m.dropped[DropReason.UNEXPECTED_SOURCE] == 1
