"""The RFC 3264 offer/answer model over :mod:`voicegw.sip.sdp`, audio only.

:func:`answer_offer`, :func:`create_offer` and :func:`apply_answer` turn
descriptions plus our :class:`MediaCapabilities` into new descriptions and a
:class:`NegotiatedAudio` result for the media layer; failures raise
:class:`~voicegw.sip.sdp.SdpError` (answered with 488).

Codec choice: the first codec *in the offerer's order* that is also in our
list. RFC 3264 §6.1 lets either side's order win; following the offerer
means a carrier gets the codec it priced and routed for (no transcoding on
their side), early media already flowing in the offerer's first codec stays
valid, and our list still decides what is acceptable at all. Our order
decides only in offers we make. The answer lists exactly one audio codec
(plus telephone-event), so both directions use the same codec without the
"answerer may send any listed format" ambiguity (RFC 6337 §5.1).
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from voicegw.sip.sdp import (
    CODECS,
    DEFAULT_CODECS,
    EVENT_RANGE_RE,
    RTP_PROTOCOLS,
    SRTP_SUITES,
    SUPPORTED_PTIMES,
    TELEPHONE_EVENT,
    TELEPHONE_EVENTS,
    Attribute,
    Codec,
    Connection,
    Crypto,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
)


class SrtpPolicy(enum.StrEnum):
    DISABLED = "disabled"  # plain RTP only; an RTP/SAVP stream is rejected
    OPTIONAL = "optional"  # SDES-SRTP when the peer offers it, else RTP
    REQUIRED = "required"  # SDES-SRTP or the stream is rejected


# (policy, offered over RTP/SAVP*, a crypto line we support) -> use SRTP, or why not.
# A crypto line on RTP/AVP is "best effort SRTP" (as baresip and others send it).
_SRTP_DECISIONS: dict[tuple[SrtpPolicy, bool, bool], bool | str] = {
    (SrtpPolicy.DISABLED, False, False): False,
    (SrtpPolicy.DISABLED, False, True): False,
    (SrtpPolicy.DISABLED, True, False): "SRTP is disabled",
    (SrtpPolicy.DISABLED, True, True): "SRTP is disabled",
    (SrtpPolicy.OPTIONAL, False, False): False,
    (SrtpPolicy.OPTIONAL, False, True): True,
    (SrtpPolicy.OPTIONAL, True, False): "no supported SRTP crypto suite offered",
    (SrtpPolicy.OPTIONAL, True, True): True,
    (SrtpPolicy.REQUIRED, False, False): "SRTP is required",
    (SrtpPolicy.REQUIRED, False, True): True,
    (SrtpPolicy.REQUIRED, True, False): "no supported SRTP crypto suite offered",
    (SrtpPolicy.REQUIRED, True, True): True,
}


@dataclass(frozen=True, slots=True)
class MediaCapabilities:
    """What we can do and where we receive; the input to every negotiation.

    ``codecs`` is both the allow-list and the order of our offers.
    ``direction`` is what we want: sendrecv normally, sendonly to hold with
    music, inactive to hold silently (RFC 6337 §5.3).
    """

    address: str
    port: int
    codecs: tuple[str, ...] = DEFAULT_CODECS
    telephone_event_pt: int = 101
    ptime: int = 20
    direction: Direction = Direction.SENDRECV
    srtp: SrtpPolicy = SrtpPolicy.DISABLED
    srtp_suites: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
    rtcp_mux: bool = True
    session_name: str = "voicegw"

    def __post_init__(self) -> None:
        unknown = [c for c in self.codecs if c.lower() not in CODECS]
        if unknown or not self.codecs:
            raise ValueError(f"unknown or no codecs: {unknown}")
        if any(suite not in SRTP_SUITES for suite in self.srtp_suites):
            raise ValueError("unknown SRTP suite")
        if not 96 <= self.telephone_event_pt <= 127:
            raise ValueError("telephone-event needs a dynamic payload type (96-127)")
        if self.ptime not in SUPPORTED_PTIMES or not 0 < self.port <= 65535:
            raise ValueError("unsupported ptime or port out of range")
        ipaddress.ip_address(self.address)  # a literal: SDP must not make peers resolve names

    def allows(self, rtpmap: RtpMap) -> Codec | None:
        codec = CODECS.get(rtpmap.encoding.lower())
        allowed = {c.lower() for c in self.codecs}
        if codec is None or codec.key != rtpmap.key or rtpmap.channels != 1:
            return None
        return codec if codec.name.lower() in allowed else None


@dataclass(frozen=True, slots=True)
class NegotiatedAudio:
    """The agreed audio stream, from our point of view, for the media layer.

    ``direction`` is ours (sendonly = we send, they do not). We encrypt with
    ``local_crypto`` and decrypt with ``remote_crypto`` (both None for RTP).
    """

    media_index: int
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    rtcp_mux: bool
    codec: Codec
    payload_type: int
    telephone_event_pt: int | None
    ptime: int
    direction: Direction
    local_crypto: Crypto | None = field(default=None, repr=False)
    remote_crypto: Crypto | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    sdp: SessionDescription
    audio: NegotiatedAudio


class _StreamRejected(Exception):
    """One m-line cannot be accepted; other streams may still be."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


RandomBytes = Callable[[int], bytes]


def new_origin(address: str, session_id: int | None = None, username: str = "-") -> Origin:
    """A fresh o= for a new session (RFC 4566 suggests an NTP-like unique id)."""
    sid = session_id if session_id is not None else secrets.randbelow(2**62)
    return Origin(username, str(sid), 0, *_address_and_type(address))


def with_version(
    previous: SessionDescription | None, new: SessionDescription
) -> SessionDescription:
    """``new`` carrying the right o= version for a description we send again (RFC 3264 §8).

    Same body as last time -> the same version; changed -> previous + 1.
    """
    if previous is None:
        return new
    same_body = replace(new, origin=previous.origin) == previous
    version = previous.origin.version + (0 if same_body else 1)
    return replace(new, origin=replace(previous.origin, version=version))


class RemoteChange(enum.Enum):
    NEW_SESSION = enum.auto()  # first description, or a different session id
    UNCHANGED = enum.auto()  # same version: answer as before (a session refresh)
    CHANGED = enum.auto()


def remote_change(previous: SessionDescription | None, new: SessionDescription) -> RemoteChange:
    """Classify a remote re-offer by its o= line (RFC 3264 §8)."""
    if previous is None or (previous.origin.username, previous.origin.session_id) != (
        new.origin.username,
        new.origin.session_id,
    ):
        return RemoteChange.NEW_SESSION
    if new.origin.version == previous.origin.version:
        return RemoteChange.UNCHANGED
    return RemoteChange.CHANGED


def answer_offer(
    offer: SessionDescription,
    caps: MediaCapabilities,
    origin: Origin,
    *,
    previous: SessionDescription | None = None,
    keep_crypto: Crypto | None = None,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> Answer:
    """Answer ``offer``: same m-lines in the same order, the first usable audio one accepted.

    Every other stream (video, a second audio stream, unsupported transport)
    is rejected with port 0. ``keep_crypto`` re-uses our SRTP key across
    re-offers when the suite is unchanged; ``previous`` is the last
    description we sent in this session, whose o= line is then continued
    (:func:`with_version`). Raises :class:`SdpError` when no audio stream is
    acceptable; its reason names the first refusal.
    """
    answered: list[MediaDescription] = []
    audio: NegotiatedAudio | None = None
    refusals: list[str] = []
    for index, media in enumerate(offer.media):
        if audio is None and media.media == "audio" and media.port != 0:
            try:
                audio, accepted = _answer_audio(offer, index, caps, keep_crypto, random_bytes)
            except _StreamRejected as rejected:
                refusals.append(rejected.reason)
            else:
                answered.append(accepted)
                continue
        answered.append(MediaDescription(media.media, 0, media.proto, media.formats))
    if audio is None:
        raise SdpError(refusals[0] if refusals else "offer has no active audio stream")
    sdp = SessionDescription(
        origin=origin,
        session_name=caps.session_name,
        connection=Connection.for_address(caps.address),
        media=tuple(answered),
    )
    return Answer(with_version(previous, sdp), audio)


def _answer_audio(
    offer: SessionDescription,
    index: int,
    caps: MediaCapabilities,
    keep_crypto: Crypto | None,
    random_bytes: RandomBytes,
) -> tuple[NegotiatedAudio, MediaDescription]:
    media = offer.media[index]
    secure = RTP_PROTOCOLS.get(media.proto.upper())
    if secure is None:
        raise _StreamRejected(f"transport {media.proto} not supported")
    connection = offer.connection_of(media)
    if connection is None:
        raise _StreamRejected("audio stream has no connection address")
    _require_ip_literal(connection)

    offered_crypto = next((c for c in media.crypto if c.suite in caps.srtp_suites), None)
    decision = _SRTP_DECISIONS[(caps.srtp, secure, offered_crypto is not None)]
    if isinstance(decision, str):
        raise _StreamRejected(decision)
    remote_crypto = offered_crypto if decision else None
    local_crypto = _local_crypto(remote_crypto, keep_crypto, random_bytes)

    rtpmaps = media.rtpmaps
    chosen = _first_allowed(media.formats, rtpmaps, caps)
    if chosen is None:
        raise _StreamRejected("no common audio codec")
    payload_type, codec = chosen
    event = _telephone_event(media, rtpmaps, codec)
    ptime = _ptime(media.ptime, media.maxptime, caps.ptime)

    offered_direction = offer.direction_of(media)
    if connection.is_unspecified:
        # RFC 3264 §8.4: c=0.0.0.0 is the old way to say "do not send to me".
        offered_direction = Direction.of(offered_direction.sends, False)
    direction = offered_direction.answer(caps.direction)
    mux = media.rtcp_mux and caps.rtcp_mux

    negotiated = NegotiatedAudio(
        media_index=index,
        remote_address=connection.host,
        remote_port=media.port,
        remote_rtcp_port=_rtcp_port(media, mux),
        rtcp_mux=mux,
        codec=codec,
        payload_type=payload_type,
        telephone_event_pt=event[0] if event else None,
        ptime=ptime,
        direction=direction,
        local_crypto=local_crypto,
        remote_crypto=remote_crypto,
    )
    return negotiated, _answer_media(negotiated, media.proto, caps.port, event)


def _answer_media(
    audio: NegotiatedAudio, proto: str, port: int, event: tuple[int, str] | None
) -> MediaDescription:
    """Our m= section for the accepted stream: one codec, DTMF, and every choice explicit."""
    codec = audio.codec
    formats = [str(audio.payload_type)]
    attributes = [Attribute("rtpmap", f"{audio.payload_type} {codec.name}/{codec.clock_rate}")]
    if event is not None:
        event_pt, events = event
        formats.append(str(event_pt))
        attributes += [
            Attribute("rtpmap", f"{event_pt} {TELEPHONE_EVENT.name}/{codec.clock_rate}"),
            Attribute("fmtp", f"{event_pt} {events}"),
        ]
    attributes.append(Attribute("ptime", str(audio.ptime)))
    if audio.rtcp_mux:
        attributes.append(Attribute("rtcp-mux"))
    if audio.local_crypto is not None:
        attributes.append(Attribute("crypto", str(audio.local_crypto)))
    attributes.append(Attribute(audio.direction.value))
    return MediaDescription("audio", port, proto, tuple(formats), attributes=tuple(attributes))


def _rtcp_port(media: MediaDescription, mux: bool) -> int:
    """Where the peer wants RTCP: the RTP port when muxed, else a=rtcp, else RTP + 1."""
    if mux:
        return media.port
    rtcp = media.rtcp
    if rtcp is not None:
        return rtcp.port
    return min(media.port + 1, 65535)


def _require_ip_literal(connection: Connection) -> None:
    try:
        ipaddress.ip_address(connection.host)
    except ValueError:
        raise _StreamRejected("connection address is not an IP address") from None


def _first_allowed(
    formats: Iterable[str], rtpmaps: dict[int, RtpMap], caps: MediaCapabilities
) -> tuple[int, Codec] | None:
    for fmt in formats:
        rtpmap = rtpmaps.get(int(fmt))
        codec = caps.allows(rtpmap) if rtpmap is not None else None
        if codec is not None:
            return int(fmt), codec
    return None


def _telephone_event(
    media: MediaDescription, rtpmaps: dict[int, RtpMap], codec: Codec
) -> tuple[int, str] | None:
    """The offered telephone-event payload type at the codec's clock, and the events we take."""
    for fmt in media.formats:
        rtpmap = rtpmaps.get(int(fmt))
        if rtpmap is None or rtpmap.key != (TELEPHONE_EVENT.name, codec.clock_rate):
            continue
        events = _parse_events(media.fmtp(int(fmt))) & TELEPHONE_EVENTS
        if events:
            return int(fmt), _format_events(events)
    return None


def _parse_events(fmtp: str | None) -> frozenset[int]:
    """RFC 4733 §2.4.1 event list ``0-15,66``; absent means 0-15; malformed means none."""
    if fmtp is None:
        return frozenset(range(16))
    events: set[int] = set()
    for part in fmtp.replace(" ", "").split(","):
        match = EVENT_RANGE_RE.fullmatch(part)
        if match is None:
            return frozenset()
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        events.update(range(low, min(high, 255) + 1))
    return frozenset(events)


def _format_events(events: frozenset[int]) -> str:
    ranges: list[str] = []
    ordered = sorted(events)
    start = previous = ordered[0]
    for event in [*ordered[1:], None]:
        if event is not None and event == previous + 1:
            previous = event
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if event is not None:
            start = previous = event
    return ",".join(ranges)


def _ptime(offered: int | None, maxptime: int | None, default: int) -> int:
    """Echo the offered ptime if we can packetize it, within the offered maxptime."""
    ptime = offered if offered in SUPPORTED_PTIMES else default
    if maxptime is not None and ptime > maxptime:
        fitting = [p for p in SUPPORTED_PTIMES if p <= maxptime]
        ptime = fitting[-1] if fitting else SUPPORTED_PTIMES[0]
    return ptime


def _local_crypto(
    remote: Crypto | None, keep: Crypto | None, random_bytes: RandomBytes
) -> Crypto | None:
    """Our key for the suite the offerer chose, answered under the offerer's tag (RFC 4568 §7.1)."""
    if remote is None:
        return None
    if keep is not None and keep.suite == remote.suite:
        return Crypto(remote.tag, remote.suite, keep.key_salt)
    return Crypto(remote.tag, remote.suite, random_bytes(SRTP_SUITES[remote.suite]))


def create_offer(
    caps: MediaCapabilities,
    origin: Origin,
    *,
    previous: SessionDescription | None = None,
    keep_crypto: Crypto | None = None,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> SessionDescription:
    """Our offer: one audio stream, codecs in our order, telephone-event, our direction.

    For a hold re-INVITE pass ``caps`` with direction sendonly (music on
    hold) or inactive, and as ``previous`` the last description we sent, so
    the o= version goes up by one (RFC 3264 §8). ``keep_crypto`` keeps an
    established SRTP key for its suite (without it a re-offer re-keys).
    """
    codecs = [CODECS[name.lower()] for name in caps.codecs]
    formats: list[str] = []
    attributes: list[Attribute] = []
    for codec in codecs:
        pt = codec.static_pt
        assert pt is not None  # every codec in CODECS has a static payload type
        formats.append(str(pt))
        attributes.append(Attribute("rtpmap", f"{pt} {codec.name}/{codec.clock_rate}"))
    te = caps.telephone_event_pt
    formats.append(str(te))
    attributes += [
        Attribute("rtpmap", f"{te} {TELEPHONE_EVENT.name}/{TELEPHONE_EVENT.clock_rate}"),
        Attribute("fmtp", f"{te} {_format_events(TELEPHONE_EVENTS)}"),
        Attribute("ptime", str(caps.ptime)),
    ]
    if caps.rtcp_mux:
        attributes.append(Attribute("rtcp-mux"))
    if caps.srtp is not SrtpPolicy.DISABLED:
        for tag, suite in enumerate(caps.srtp_suites, start=1):
            if keep_crypto is not None and keep_crypto.suite == suite:
                key = keep_crypto.key_salt
            else:
                key = random_bytes(SRTP_SUITES[suite])
            attributes.append(Attribute("crypto", str(Crypto(tag, suite, key))))
    attributes.append(Attribute(caps.direction.value))
    proto = "RTP/SAVP" if caps.srtp is SrtpPolicy.REQUIRED else "RTP/AVP"
    media = MediaDescription(
        "audio", caps.port, proto, tuple(formats), attributes=tuple(attributes)
    )
    offer = SessionDescription(
        origin=origin,
        session_name=caps.session_name,
        connection=Connection.for_address(caps.address),
        media=(media,),
    )
    return with_version(previous, offer)


def apply_answer(
    offer: SessionDescription, answer: SessionDescription, caps: MediaCapabilities
) -> NegotiatedAudio:
    """Check the peer's answer to our ``offer`` and return what was agreed."""
    if len(answer.media) != len(offer.media):
        raise SdpError("answer has a different number of m= lines than the offer")
    index = next((i for i, m in enumerate(offer.media) if m.media == "audio" and m.port != 0), None)
    if index is None:
        raise SdpError("our offer has no audio stream")
    ours, theirs = offer.media[index], answer.media[index]
    if theirs.media != "audio" or theirs.port == 0:
        raise SdpError("audio stream rejected by the answer")
    if theirs.proto.upper() != ours.proto.upper():
        raise SdpError("answer changed the transport protocol")
    connection = answer.connection_of(theirs)
    if connection is None:
        raise SdpError("answer has no connection address")
    try:
        _require_ip_literal(connection)
    except _StreamRejected as rejected:
        raise SdpError(rejected.reason) from None

    offered_keys = {rtpmap.key for rtpmap in ours.rtpmaps.values()}
    rtpmaps = {pt: m for pt, m in theirs.rtpmaps.items() if m.key in offered_keys}
    chosen = _first_allowed(theirs.formats, rtpmaps, caps)
    if chosen is None:
        raise SdpError("answer has no codec we offered")
    payload_type, codec = chosen
    event = _telephone_event(theirs, theirs.rtpmaps, codec)

    offered_direction = offer.direction_of(ours)
    answered_direction = answer.direction_of(theirs)
    if (answered_direction.sends and not offered_direction.receives) or (
        answered_direction.receives and not offered_direction.sends
    ):
        raise SdpError("answer direction is not allowed by the offer")

    local_crypto, remote_crypto = _match_crypto(ours, theirs, caps)
    mux = theirs.rtcp_mux and ours.rtcp_mux
    return NegotiatedAudio(
        media_index=index,
        remote_address=connection.host,
        remote_port=theirs.port,
        remote_rtcp_port=_rtcp_port(theirs, mux),
        rtcp_mux=mux,
        codec=codec,
        payload_type=payload_type,
        telephone_event_pt=event[0] if event else None,
        ptime=theirs.ptime if theirs.ptime in SUPPORTED_PTIMES else caps.ptime,
        direction=answered_direction.reversed(),
        local_crypto=local_crypto,
        remote_crypto=remote_crypto,
    )


def _match_crypto(
    ours: MediaDescription, theirs: MediaDescription, caps: MediaCapabilities
) -> tuple[Crypto | None, Crypto | None]:
    """Pair the answer's crypto line with ours by tag and suite (RFC 4568 §7.5)."""
    answered = theirs.crypto
    if not answered:
        if RTP_PROTOCOLS.get(ours.proto.upper()) or caps.srtp is SrtpPolicy.REQUIRED:
            raise SdpError("SRTP is required but the answer has no crypto line")
        return None, None
    offered = {c.tag: c for c in ours.crypto}
    remote = answered[0]
    local = offered.get(remote.tag)
    if local is None or local.suite != remote.suite:
        raise SdpError("answer crypto does not match any offered crypto")
    return local, remote


def _address_and_type(address: str) -> tuple[str, str]:
    ip = ipaddress.ip_address(address)
    return str(ip), "IP6" if ip.version == 6 else "IP4"
