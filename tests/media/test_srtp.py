"""SDES-SRTP contexts: keys from RFC 4568 a=crypto lines, round trips, and what gets dropped."""

from __future__ import annotations

import pytest

from voicegw.media.rtcp import RtcpBye, RtcpReceiverReport, RtcpSdes, serialize_compound
from voicegw.media.rtp import RtpPacket
from voicegw.media.srtp import SrtpContext, is_rtcp
from voicegw.sip.sdp import Crypto

# The example keys of RFC 4568 (its offer and its answer), one per direction.
OFFER = Crypto.parse("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR")
ANSWER = Crypto.parse("1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj")
PAYLOAD = bytes(range(160))


def pair(suite: str = OFFER.suite) -> tuple[SrtpContext, SrtpContext]:
    """The offerer's and the answerer's contexts: each encrypts with its own line's key."""
    offerer = SrtpContext.sdes(suite, OFFER.key_salt, ANSWER.key_salt)
    answerer = SrtpContext.sdes(suite, ANSWER.key_salt, OFFER.key_salt)
    return offerer, answerer


def rtp(seq: int) -> bytes:
    return bytes(RtpPacket(0, seq, seq * 160, 0x5EC2E7, PAYLOAD))


@pytest.mark.parametrize(
    ("suite", "tag_length"), [("AES_CM_128_HMAC_SHA1_80", 10), ("AES_CM_128_HMAC_SHA1_32", 4)]
)
def test_rfc3711_rtp_round_trip_hides_the_payload_and_appends_the_auth_tag(
    suite: str, tag_length: int
) -> None:
    offerer, answerer = pair(suite)
    for seq in range(1, 6):
        plain = rtp(seq)
        protected = offerer.protect_rtp(plain)
        assert protected is not None
        assert len(protected) == len(plain) + tag_length
        assert protected[:12] == plain[:12]  # the header stays readable
        assert PAYLOAD[:16] not in protected
        assert answerer.unprotect(protected) == plain
    assert offerer.stats.dropped == answerer.stats.dropped == 0


def test_rfc3711_srtcp_round_trip_over_a_muxed_port() -> None:
    offerer, answerer = pair()
    ssrc = 0x5EC2E7
    report = serialize_compound(
        [RtcpReceiverReport(ssrc), RtcpSdes.cname_of(ssrc, "voicegw"), RtcpBye((ssrc,))]
    )
    protected = offerer.protect(report)
    assert protected is not None and protected != report
    assert is_rtcp(protected) and not is_rtcp(rtp(1))
    assert answerer.unprotect(protected) == report


def test_each_direction_uses_its_own_key() -> None:
    offerer, _ = pair()
    protected = offerer.protect_rtp(rtp(1))
    assert protected is not None
    assert offerer.unprotect(protected) is None  # our own key does not open what we sent
    assert offerer.stats.auth_failures == 1


def test_tampered_auth_tag_is_dropped_and_counted() -> None:
    offerer, answerer = pair()
    protected = offerer.protect_rtp(rtp(1))
    assert protected is not None
    forged = protected[:-1] + bytes([protected[-1] ^ 0x01])
    assert answerer.unprotect(forged) is None
    assert answerer.stats.auth_failures == 1
    assert answerer.unprotect(protected) == rtp(1)  # the genuine packet still gets through


def test_replayed_packet_is_dropped_and_counted() -> None:
    offerer, answerer = pair()
    protected = offerer.protect_rtp(rtp(7))
    assert protected is not None
    assert answerer.unprotect(protected) == rtp(7)
    assert answerer.unprotect(protected) is None
    assert answerer.stats.replays == 1 and answerer.stats.auth_failures == 0


def test_garbage_never_raises_and_counts_as_malformed() -> None:
    _, answerer = pair()
    for datagram in (b"", b"\x80", b"\x80\x00\x00", bytes(5000)):
        assert answerer.unprotect(datagram) is None
    assert answerer.stats.malformed + answerer.stats.auth_failures == 4
    assert answerer.stats.dropped == 4


def test_suites_without_a_libsrtp_profile_are_refused() -> None:
    key = bytes(46)
    with pytest.raises(ValueError, match="unsupported SRTP suite"):
        SrtpContext.sdes("AES_256_CM_HMAC_SHA1_80", key, key)
