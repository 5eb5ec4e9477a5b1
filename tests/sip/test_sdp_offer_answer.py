"""RFC 3264 offer/answer over real-world offers: codec choice, DTMF, ptime, hold, SRTP, 488s."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.sip.offer_answer import (
    Answer,
    MediaCapabilities,
    RemoteChange,
    SrtpPolicy,
    answer_offer,
    apply_answer,
    create_offer,
    new_origin,
    remote_change,
    with_version,
)
from voicegw.sip.sdp import (
    G722,
    PCMA,
    PCMU,
    Attribute,
    Crypto,
    Direction,
    SdpError,
    SessionDescription,
)


def sdp(text: str) -> SessionDescription:
    return SessionDescription.parse(text.strip("\n").replace("\n", "\r\n") + "\r\n")


KEY_A = base64.b64encode(bytes(range(30))).decode()

# Captured from baresip 1.0.0 (Debian) dialling a loopback socket, account
# option mediaenc=srtp: best-effort SDES, a crypto line on RTP/AVP.
BARESIP_KEY = "3LFAlMXXb59A3r3AsXtYsSXGGTcYdno5fEQw+Khp"
BARESIP = f"""
v=0
o=- 1645633398 1320651996 IN IP4 192.0.2.2
s=-
c=IN IP4 192.0.2.2
t=0 0
a=tool:baresip 1.0.0
m=audio 1298 RTP/AVP 0 8 9 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
a=rtcp-rsize
a=ssrc:1350961991 cname:sip:alice@127.0.0.1
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{BARESIP_KEY}
a=minptime:20
a=ptime:20
"""

# Captured from linphonec 5.1.65: opus/speex first, G.729 without rtpmap,
# telephone-event at three clock rates, RTCP-XR and feedback attributes.
LINPHONE = """
v=0
o=linphone 3618 2759 IN IP4 127.0.0.1
s=Talk
c=IN IP4 127.0.0.1
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 96 97 98 0 8 18 99 100 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:97 speex/16000
a=fmtp:97 vbr=on
a=rtpmap:98 speex/8000
a=fmtp:98 vbr=on
a=fmtp:18 annexb=yes
a=rtpmap:99 telephone-event/48000
a=rtpmap:100 telephone-event/16000
a=rtpmap:101 telephone-event/8000
a=rtcp-fb:* trr-int 5000
a=rtcp-fb:* ccm tmmbr
"""

# Written after a carrier SBC's offers: G.711 + G.729, RFC 4733 events 0-16,
# ptime and maxptime.
CARRIER = """
v=0
o=Sonus_UAC 245078 120431 IN IP4 198.51.100.10
s=SIP Media Capabilities
c=IN IP4 198.51.100.12
t=0 0
m=audio 28734 RTP/AVP 8 0 18 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
a=ptime:20
a=maxptime:150
"""

# Captured from headless Chromium: RTCPeerConnection.createOffer() with one
# audio transceiver. DTLS-SRTP over ICE, which a SIP trunk leg does not speak.
FINGERPRINT = (
    "32:FF:64:58:24:EC:D0:A0:17:1F:08:48:49:79:BC:B6:"
    "9C:4F:AF:5F:82:2D:82:CB:4B:B7:87:88:07:E7:C7:A8"
)
CHROMIUM = f"""
v=0
o=- 148769173234400967 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:f2LG
a=ice-pwd:niu1xqvDLWlHPsiPmGuoiWhQ
a=ice-options:trickle
a=fingerprint:sha-256 {FINGERPRINT}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendrecv
a=msid:- dcd49c20-ac28-4d6e-8c7d-a2b813a4f001
a=rtcp-mux
a=rtcp-rsize
a=rtcp-xr:rcvr-rtt=all
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1182467197 cname:S7zmTWwj8/8KkSFF
a=ssrc:1182467197 msid:- dcd49c20-ac28-4d6e-8c7d-a2b813a4f001
"""

OURS = MediaCapabilities(address="203.0.113.5", port=40000)
ORIGIN = new_origin("203.0.113.5", session_id=42)


def fixed_key(n: int) -> bytes:
    return b"\x07" * n


@pytest.mark.parametrize("fixture", [BARESIP, LINPHONE, CARRIER, CHROMIUM])
def test_real_world_offers_parse_and_round_trip(fixture: str) -> None:
    parsed = sdp(fixture)
    assert SessionDescription.parse(bytes(parsed)) == parsed


def test_carrier_offer_is_answered_in_the_offerers_codec_order_with_its_dtmf_and_ptime() -> None:
    answer = answer_offer(sdp(CARRIER), OURS, ORIGIN)
    audio = answer.audio
    # Our list prefers G722, but the carrier listed PCMA first: its order wins.
    assert (audio.codec, audio.payload_type) == (PCMA, 8)
    assert audio.telephone_event_pt == 101
    assert audio.ptime == 20
    assert (audio.remote_address, audio.remote_port, audio.remote_rtcp_port) == (
        "198.51.100.12",
        28734,
        28735,
    )
    assert audio.direction is Direction.SENDRECV
    assert bytes(answer.sdp) == (
        b"v=0\r\n"
        b"o=- 42 0 IN IP4 203.0.113.5\r\n"
        b"s=voicegw\r\n"
        b"c=IN IP4 203.0.113.5\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 8 101\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )


def test_linphone_offer_skips_opus_and_speex_and_picks_the_8khz_telephone_event() -> None:
    audio = answer_offer(sdp(LINPHONE), OURS, ORIGIN).audio
    assert (audio.codec, audio.payload_type) == (PCMU, 0)
    assert audio.telephone_event_pt == 101
    assert audio.remote_rtcp_port == 7079  # no a=rtcp: RTP port + 1
    assert audio.ptime == OURS.ptime


def test_rfc4733_events_answered_are_those_both_sides_support() -> None:
    answer = answer_offer(sdp(LINPHONE), OURS, ORIGIN)
    # No fmtp on the offered telephone-event means events 0-15 only.
    assert answer.sdp.media[0].fmtp(101) == "0-15"


def test_baresip_best_effort_srtp_is_taken_when_srtp_is_optional() -> None:
    caps = replace(OURS, srtp=SrtpPolicy.OPTIONAL)
    answer = answer_offer(sdp(BARESIP), caps, ORIGIN, random_bytes=fixed_key)
    audio = answer.audio
    assert (audio.codec, audio.payload_type, audio.telephone_event_pt) == (PCMU, 0, 101)
    remote_key = base64.b64decode(BARESIP_KEY)
    assert audio.remote_crypto == Crypto(1, "AES_CM_128_HMAC_SHA1_80", remote_key)
    assert audio.local_crypto == Crypto(1, "AES_CM_128_HMAC_SHA1_80", b"\x07" * 30)
    media = answer.sdp.media[0]
    assert media.proto == "RTP/AVP"
    assert media.crypto == (audio.local_crypto,)


def test_rfc3551_g722_is_signalled_at_8000_but_carries_16khz_audio() -> None:
    offer = sdp(BARESIP.replace("RTP/AVP 0 8 9 101", "RTP/AVP 9 0 8 101"))
    answer = answer_offer(offer, replace(OURS, codecs=("G722", "PCMU")), ORIGIN)
    assert (answer.audio.codec, answer.audio.payload_type) == (G722, 9)
    assert answer.audio.codec.sample_rate == 16000
    assert answer.sdp.media[0].values("rtpmap") == [
        "9 G722/8000",
        "101 telephone-event/8000",
    ]


def test_rtcp_attribute_gives_the_remote_rtcp_port() -> None:
    offer = sdp(CARRIER + "a=rtcp:40000 IN IP4 198.51.100.13\n")
    assert answer_offer(offer, OURS, ORIGIN).audio.remote_rtcp_port == 40000


def test_baresip_crypto_is_ignored_when_srtp_is_disabled() -> None:
    audio = answer_offer(sdp(BARESIP), OURS, ORIGIN).audio
    assert audio.local_crypto is None and audio.remote_crypto is None


def test_chromium_dtls_offer_is_refused_with_488_naming_the_transport() -> None:
    with pytest.raises(SdpError) as caught:
        answer_offer(sdp(CHROMIUM), OURS, ORIGIN)
    assert caught.value.status == 488
    assert caught.value.reason == "transport UDP/TLS/RTP/SAVPF not supported"


def test_rfc3264_answer_keeps_every_m_line_and_rejects_extra_streams_with_port_zero() -> None:
    offer = sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=video 5000 RTP/AVP 96
a=rtpmap:96 H264/90000
m=audio 0 RTP/AVP 0
m=audio 6000 RTP/AVP 0
m=audio 7000 RTP/AVP 8
""")
    answer = answer_offer(offer, OURS, ORIGIN)
    assert [(m.media, m.port, m.formats) for m in answer.sdp.media] == [
        ("video", 0, ("96",)),
        ("audio", 0, ("0",)),
        ("audio", 40000, ("0",)),
        ("audio", 0, ("8",)),
    ]
    assert answer.audio.media_index == 2


NO_CODEC = """
v=0
o=- 1 1 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=audio 5000 RTP/AVP 18 96
a=rtpmap:18 G729/8000
a=rtpmap:96 opus/48000/2
"""

REFUSALS = {
    "no common codec": (NO_CODEC, OURS, "no common audio codec"),
    "only video": (
        "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\nm=video 5000 RTP/AVP 96",
        OURS,
        "offer has no active audio stream",
    ),
    "SRTP offered, disabled here": (
        "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\n"
        f"m=audio 5000 RTP/SAVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}",
        OURS,
        "SRTP is disabled",
    ),
    "SRTP required, plain offered": (
        CARRIER,
        replace(OURS, srtp=SrtpPolicy.REQUIRED),
        "SRTP is required",
    ),
    "unsupported suite only": (
        "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\n"
        "m=audio 5000 RTP/SAVP 0\na=crypto:1 F8_128_HMAC_SHA1_80 inline:QUJD",
        replace(OURS, srtp=SrtpPolicy.OPTIONAL),
        "no supported SRTP crypto suite offered",
    ),
    "no connection address": (
        "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nt=0 0\nm=audio 5000 RTP/AVP 0",
        OURS,
        "audio stream has no connection address",
    ),
    "host name connection": (
        "v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 media.example.com\nt=0 0\nm=audio 5000 RTP/AVP 0",
        OURS,
        "connection address is not an IP address",
    ),
    "stereo only": (
        "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\n"
        "m=audio 5000 RTP/AVP 96\na=rtpmap:96 PCMU/8000/2",
        OURS,
        "no common audio codec",
    ),
}


@pytest.mark.parametrize("case", REFUSALS.keys())
def test_unacceptable_offers_raise_488_with_the_reason(case: str) -> None:
    body, caps, reason = REFUSALS[case]
    with pytest.raises(SdpError) as caught:
        answer_offer(sdp(body), caps, ORIGIN)
    assert (caught.value.status, caught.value.reason) == (488, reason)


def test_codecs_outside_our_list_are_not_accepted_even_if_we_could() -> None:
    caps = replace(OURS, codecs=("G722",))
    with pytest.raises(SdpError, match="no common audio codec"):
        answer_offer(sdp(CARRIER), caps, ORIGIN)


# RFC 3264 §6.1 and RFC 6337 §5: (offered direction, what we want) -> our answer.
DIRECTION_TABLE = [
    ("sendrecv", "sendrecv", "sendrecv"),
    ("sendrecv", "sendonly", "sendonly"),
    ("sendrecv", "recvonly", "recvonly"),
    ("sendrecv", "inactive", "inactive"),
    ("sendonly", "sendrecv", "recvonly"),  # they hold us with music
    ("sendonly", "sendonly", "inactive"),  # both hold
    ("sendonly", "recvonly", "recvonly"),
    ("sendonly", "inactive", "inactive"),
    ("recvonly", "sendrecv", "sendonly"),
    ("recvonly", "sendonly", "sendonly"),
    ("recvonly", "recvonly", "inactive"),
    ("recvonly", "inactive", "inactive"),
    ("inactive", "sendrecv", "inactive"),  # they hold us silently
    ("inactive", "sendonly", "inactive"),
    ("inactive", "recvonly", "inactive"),
    ("inactive", "inactive", "inactive"),
]


@pytest.mark.parametrize(("offered", "wanted", "answered"), DIRECTION_TABLE)
def test_rfc3264_direction_negotiation_table(offered: str, wanted: str, answered: str) -> None:
    offer = sdp(CARRIER.replace("a=sendrecv", f"a={offered}"))
    answer = answer_offer(offer, replace(OURS, direction=Direction(wanted)), ORIGIN)
    assert answer.audio.direction is Direction(answered)
    assert answer.sdp.media[0].direction is Direction(answered)


def test_rfc3264_section_8_4_legacy_hold_with_zero_address_stops_us_sending() -> None:
    offer = sdp(CARRIER.replace("c=IN IP4 198.51.100.12", "c=IN IP4 0.0.0.0"))
    assert answer_offer(offer, OURS, ORIGIN).audio.direction is Direction.RECVONLY


def test_hold_then_resume_by_reinvite_walks_the_directions_and_bumps_the_version() -> None:
    """We are the offerer: hold with music (sendonly), then resume (sendrecv)."""
    peer = replace(OURS, address="192.0.2.50", port=5004)
    peer_origin = new_origin("192.0.2.50", session_id=7)

    first = create_offer(OURS, ORIGIN)
    peer_answer = answer_offer(first, peer, peer_origin).sdp
    assert apply_answer(first, peer_answer, OURS).direction is Direction.SENDRECV

    hold = create_offer(replace(OURS, direction=Direction.SENDONLY), ORIGIN, previous=first)
    assert hold.origin.version == first.origin.version + 1
    held = answer_offer(hold, peer, peer_origin, previous=peer_answer)
    assert held.audio.direction is Direction.RECVONLY
    assert held.sdp.origin.version == peer_answer.origin.version + 1
    assert apply_answer(hold, held.sdp, OURS).direction is Direction.SENDONLY

    resume = create_offer(OURS, ORIGIN, previous=hold)
    assert resume.origin.version == first.origin.version + 2
    resumed = answer_offer(resume, peer, peer_origin, previous=held.sdp)
    assert resumed.sdp.origin.version == peer_answer.origin.version + 2
    assert apply_answer(resume, resumed.sdp, OURS).direction is Direction.SENDRECV


def test_silent_hold_offer_is_inactive_and_answered_inactive() -> None:
    hold = create_offer(replace(OURS, direction=Direction.INACTIVE), ORIGIN)
    assert hold.media[0].direction is Direction.INACTIVE
    peer = MediaCapabilities("192.0.2.50", 5004)
    held = answer_offer(hold, peer, new_origin("192.0.2.50", 1))
    assert held.sdp.media[0].direction is Direction.INACTIVE
    assert apply_answer(hold, held.sdp, OURS).direction is Direction.INACTIVE


def test_rfc3264_section_8_unchanged_description_keeps_its_version() -> None:
    first = create_offer(OURS, ORIGIN)
    assert create_offer(OURS, replace(ORIGIN, version=99), previous=first) == first
    assert with_version(first, first) == first


def test_rfc3264_section_8_unchanged_reoffer_gets_the_same_answer_and_version() -> None:
    offer = sdp(CARRIER)
    first = answer_offer(offer, OURS, ORIGIN).sdp
    again = answer_offer(offer, OURS, ORIGIN, previous=first).sdp
    assert again == first


def test_remote_reoffer_is_classified_by_its_origin_line() -> None:
    offer = sdp(CARRIER)
    refreshed = replace(offer, media=())
    changed = replace(offer, origin=replace(offer.origin, version=offer.origin.version + 1))
    restarted = replace(offer, origin=replace(offer.origin, session_id="1"))
    assert remote_change(None, offer) is RemoteChange.NEW_SESSION
    assert remote_change(offer, refreshed) is RemoteChange.UNCHANGED
    assert remote_change(offer, changed) is RemoteChange.CHANGED
    assert remote_change(offer, restarted) is RemoteChange.NEW_SESSION


@pytest.mark.parametrize(
    ("offered_ptime", "maxptime", "answered"),
    [(20, None, 20), (30, None, 30), (25, None, 20), (40, 30, 30), (None, 10, 10), (20, 5, 10)],
)
def test_ptime_is_echoed_when_we_can_packetize_it_within_maxptime(
    offered_ptime: int | None, maxptime: int | None, answered: int
) -> None:
    body = CARRIER.replace("a=ptime:20\n", "").replace("a=maxptime:150\n", "")
    if offered_ptime is not None:
        body += f"a=ptime:{offered_ptime}\n"
    if maxptime is not None:
        body += f"a=maxptime:{maxptime}\n"
    answer = answer_offer(sdp(body), OURS, ORIGIN)
    assert answer.audio.ptime == answered
    assert answer.sdp.media[0].ptime == answered


def test_rtcp_mux_is_accepted_only_when_offered() -> None:
    offer = sdp(CARRIER + "a=rtcp-mux\n")
    audio = answer_offer(offer, OURS, ORIGIN).audio
    assert (audio.rtcp_mux, audio.remote_rtcp_port) == (True, 28734)
    assert not answer_offer(sdp(CARRIER), OURS, ORIGIN).audio.rtcp_mux


def test_srtp_required_offer_and_answer_exchange_keys_under_the_same_tag() -> None:
    caller = replace(OURS, srtp=SrtpPolicy.REQUIRED)
    callee = MediaCapabilities("192.0.2.60", 6000, srtp=SrtpPolicy.REQUIRED)
    offer = create_offer(caller, ORIGIN, random_bytes=fixed_key)
    assert offer.media[0].proto == "RTP/SAVP"
    assert [c.tag for c in offer.media[0].crypto] == [1, 2]
    answer = answer_offer(
        offer, callee, new_origin("192.0.2.60", 1), random_bytes=lambda n: b"\x09" * n
    )
    ours = apply_answer(offer, answer.sdp, caller)
    assert ours.local_crypto == answer.audio.remote_crypto
    assert ours.remote_crypto == answer.audio.local_crypto
    assert ours.remote_crypto is not None and ours.remote_crypto.key_salt == b"\x09" * 30


def test_srtp_key_is_kept_across_a_reoffer_when_asked() -> None:
    caps = replace(OURS, srtp=SrtpPolicy.OPTIONAL)
    first = answer_offer(sdp(BARESIP), caps, ORIGIN).audio.local_crypto
    second = answer_offer(sdp(BARESIP), caps, ORIGIN, keep_crypto=first).audio.local_crypto
    assert first == second


APPLY_FAILURES: dict[str, tuple[Callable[[str], str], str]] = {
    "m-line count": (
        lambda a: a.replace("m=audio", "m=audio 0 RTP/AVP 0\nm=audio", 1),
        "answer has a different number of m= lines than the offer",
    ),
    "rejected": (
        lambda a: a.replace("m=audio 5004", "m=audio 0"),
        "audio stream rejected by the answer",
    ),
    "transport": (
        lambda a: a.replace("RTP/AVP", "RTP/SAVP"),
        "answer changed the transport protocol",
    ),
    "codec not offered": (
        lambda a: a.replace("RTP/AVP 0 101", "RTP/AVP 18 101").replace(
            "a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000"
        ),
        "answer has no codec we offered",
    ),
}


@pytest.mark.parametrize("case", APPLY_FAILURES.keys())
def test_answers_that_break_the_offer_are_refused(case: str) -> None:
    edit, reason = APPLY_FAILURES[case]
    offer = create_offer(OURS, ORIGIN)
    peer = MediaCapabilities("192.0.2.50", 5004)
    answer_text = str(answer_offer(offer, peer, new_origin("192.0.2.50", 1)).sdp)
    broken = SessionDescription.parse(edit(answer_text))
    with pytest.raises(SdpError) as caught:
        apply_answer(offer, broken, OURS)
    assert caught.value.reason == reason


def test_answer_sending_to_a_party_that_only_sends_is_refused() -> None:
    offer = create_offer(replace(OURS, direction=Direction.SENDONLY), ORIGIN)
    peer = MediaCapabilities("192.0.2.50", 5004)
    answer = answer_offer(offer, peer, new_origin("192.0.2.50", 1)).sdp
    media = answer.media[0]
    attributes = (*(a for a in media.attributes if a.name != "recvonly"), Attribute("sendrecv"))
    bad = replace(answer, media=(replace(media, attributes=attributes),))
    with pytest.raises(SdpError, match="answer direction is not allowed by the offer"):
        apply_answer(offer, bad, OURS)


def test_srtp_offer_answered_without_crypto_is_refused() -> None:
    caller = replace(OURS, srtp=SrtpPolicy.OPTIONAL)
    offer = create_offer(caller, ORIGIN)
    plain_answer = answer_offer(
        offer, MediaCapabilities("192.0.2.50", 5004), new_origin("192.0.2.50", 1)
    )
    assert apply_answer(offer, plain_answer.sdp, caller).local_crypto is None
    with pytest.raises(SdpError, match="SRTP is required"):
        apply_answer(offer, plain_answer.sdp, replace(caller, srtp=SrtpPolicy.REQUIRED))


def test_offer_lists_our_codecs_in_our_order_with_telephone_event() -> None:
    offer = create_offer(replace(OURS, codecs=("PCMA", "PCMU")), ORIGIN)
    media = offer.media[0]
    assert media.formats == ("8", "0", "101")
    assert media.fmtp(101) == "0-16"
    assert media.direction is Direction.SENDRECV


@settings(max_examples=200, deadline=None)
@given(
    codecs=st.lists(st.sampled_from(["0", "8", "9", "18", "96", "101"]), min_size=1, max_size=6),
    direction=st.sampled_from(list(Direction)),
    proto=st.sampled_from(["RTP/AVP", "RTP/SAVP", "RTP/AVPF", "UDP/TLS/RTP/SAVPF"]),
    policy=st.sampled_from(list(SrtpPolicy)),
)
def test_any_parsed_offer_is_answered_or_refused_with_sdp_error(
    codecs: list[str], direction: Direction, proto: str, policy: SrtpPolicy
) -> None:
    body = "\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.9",
            "s=-",
            "c=IN IP4 192.0.2.9",
            "t=0 0",
            f"m=audio 5000 {proto} {' '.join(codecs)}",
            "a=rtpmap:96 opus/48000/2",
            "a=rtpmap:101 telephone-event/8000",
            f"a={direction}",
            f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}",
        ]
    )
    result: Answer | SdpError
    try:
        result = answer_offer(sdp(body), replace(OURS, srtp=policy), ORIGIN)
    except SdpError as error:
        result = error
    if isinstance(result, SdpError):
        assert result.status == 488
        return
    answer = result
    assert SessionDescription.parse(bytes(answer.sdp)) == answer.sdp
    assert answer.audio.direction is direction.answer(Direction.SENDRECV)


def test_direction_table_covers_every_pair() -> None:
    pairs = {(offered, wanted) for offered, wanted, _ in DIRECTION_TABLE}
    assert pairs == {(a.value, b.value) for a, b in itertools.product(Direction, Direction)}


@pytest.mark.parametrize(
    "bad",
    [
        {"codecs": ("OPUS",)},
        {"codecs": ()},
        {"telephone_event_pt": 8},
        {"ptime": 25},
        {"port": 0},
        {"address": "media.example.com"},
        {"srtp_suites": ("F8_128_HMAC_SHA1_80",)},
    ],
)
def test_capabilities_refuse_what_we_cannot_do(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        replace(OURS, **bad)  # type: ignore[arg-type]
