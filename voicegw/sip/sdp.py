"""SDP (RFC 4566) session descriptions, audio only: the format and its tables.

Sans-IO and pure: :meth:`SessionDescription.parse` takes the body bytes,
``bytes(sd)`` gives them back. The RFC 3264 offer/answer model built on it is
:mod:`voicegw.sip.offer_answer`. Anything unacceptable raises the one error
:class:`SdpError`, which the SIP layer answers with ``488 Not Acceptable Here``.

Attributes are kept in order as raw :class:`Attribute` values (unknown ones
included, so an odd carrier attribute survives a round trip); the typed views
(``rtpmaps``, ``ptime``, ``crypto``, ...) are read from them and validated once
at parse time, so after :meth:`~SessionDescription.parse` they never raise.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from dataclasses import dataclass, field

MAX_SDP_BYTES = 65_536
MAX_MEDIA = 32
MAX_FORMATS = 128  # per m= line; the 7-bit RTP payload type space holds no more


class SdpError(ValueError):
    """A description we cannot parse or accept. ``reason`` is static, safe to log."""

    status = 488

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Tables


@dataclass(frozen=True, slots=True)
class Codec:
    """An audio codec as named in ``a=rtpmap`` (``clock_rate``) and as heard (``sample_rate``)."""

    name: str
    clock_rate: int
    static_pt: int | None
    sample_rate: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.name.lower(), self.clock_rate)


PCMU = Codec("PCMU", 8000, 0, 8000)
PCMA = Codec("PCMA", 8000, 8, 8000)
# RFC 3551 §4.5.2: G.722 samples at 16 kHz but is signalled with clock 8000.
G722 = Codec("G722", 8000, 9, 16000)
TELEPHONE_EVENT = Codec("telephone-event", 8000, None, 8000)

CODECS: dict[str, Codec] = {c.name.lower(): c for c in (PCMU, PCMA, G722)}
STATIC_PAYLOAD_TYPES: dict[int, Codec] = {
    c.static_pt: c for c in CODECS.values() if c.static_pt is not None
}
# G.722 is understood in SDP but not offered or accepted by default: the media
# layer has no G.722 codec yet, and answering with one would leave taps deaf.
DEFAULT_CODECS = ("PCMU", "PCMA")
# RFC 4733 named events we relay: DTMF 0-9 * # A-D and flash (16).
TELEPHONE_EVENTS = frozenset(range(17))
SUPPORTED_PTIMES = (10, 20, 30, 40, 50, 60)

# RFC 4568 crypto suites -> length of the inline key||salt in bytes.
SRTP_SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}

# m= transport -> uses SRTP. Transports absent here (UDP/TLS/RTP/SAVPF i.e.
# DTLS-SRTP, TCP/RTP/AVP, ...) are rejected stream by stream.
RTP_PROTOCOLS: dict[str, bool] = {
    "RTP/AVP": False,
    "RTP/AVPF": False,
    "RTP/SAVP": True,
    "RTP/SAVPF": True,
}


class Direction(enum.StrEnum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return _DIRECTION_FLAGS[self][0]

    @property
    def receives(self) -> bool:
        return _DIRECTION_FLAGS[self][1]

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        return _DIRECTION_BY_FLAGS[(sends, receives)]

    def reversed(self) -> Direction:
        """The same stream seen from the other end."""
        return Direction.of(self.receives, self.sends)

    def answer(self, local: Direction) -> Direction:
        """Our answer to an offered direction, given what we want (RFC 3264 §6.1).

        We send only if the offerer receives and we want to send, and likewise
        for receiving: sendonly -> recvonly, recvonly -> sendonly, inactive ->
        inactive, and our own hold (``local`` sendonly/inactive) narrows it.
        """
        return Direction.of(self.receives and local.sends, self.sends and local.receives)


_DIRECTION_FLAGS: dict[Direction, tuple[bool, bool]] = {
    Direction.SENDRECV: (True, True),
    Direction.SENDONLY: (True, False),
    Direction.RECVONLY: (False, True),
    Direction.INACTIVE: (False, False),
}
_DIRECTION_BY_FLAGS = {flags: d for d, flags in _DIRECTION_FLAGS.items()}


# ---------------------------------------------------------------------------
# Value types


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>``."""

    username: str
    session_id: str
    version: int
    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=IN <addrtype> <address>``; ``address`` may carry RFC 4566 ``/ttl`` suffixes."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def is_unspecified(self) -> bool:
        """0.0.0.0 or ::, the RFC 2543 way of saying "do not send to me"."""
        return self.host in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"

    @classmethod
    def for_address(cls, address: str) -> Connection:
        ip = ipaddress.ip_address(address)
        return cls(str(ip), "IP6" if ip.version == 6 else "IP4")


@dataclass(frozen=True, slots=True)
class Attribute:
    """``a=<name>`` (flag, ``value`` None) or ``a=<name>:<value>``."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    @property
    def key(self) -> tuple[str, int]:
        return (self.encoding.lower(), self.clock_rate)


@dataclass(frozen=True, slots=True)
class Crypto:
    """One RFC 4568 SDES ``a=crypto`` line (first key-param only).

    ``key_salt`` is the SRTP master key followed by the master salt; it is
    kept out of ``repr`` so a logged description never carries keys.
    """

    tag: int
    suite: str
    key_salt: bytes = field(repr=False)
    lifetime: str | None = None
    mki: str | None = None
    session_params: tuple[str, ...] = ()

    def __str__(self) -> str:
        key = "inline:" + base64.b64encode(self.key_salt).decode()
        key += "".join(f"|{part}" for part in (self.lifetime, self.mki) if part is not None)
        return " ".join([str(self.tag), self.suite, key, *self.session_params])

    @classmethod
    def parse(cls, value: str) -> Crypto:
        match = _CRYPTO_RE.fullmatch(value)
        if match is None:
            raise SdpError("malformed a=crypto")
        tag, suite, key_params, rest = match.groups()
        first_key = key_params.split(";", 1)[0]
        key_match = _INLINE_KEY_RE.fullmatch(first_key)
        if key_match is None:
            raise SdpError("malformed a=crypto key parameters")
        encoded, lifetime, mki = key_match.groups()
        try:
            key_salt = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise SdpError("a=crypto key is not base64") from None
        expected = SRTP_SUITES.get(suite)
        if expected is not None and len(key_salt) != expected:
            raise SdpError("a=crypto key length does not match its suite")
        return cls(int(tag), suite, key_salt, lifetime, mki, tuple(rest.split()) if rest else ())


_CRYPTO_RE = re.compile(r"(\d{1,9})[ \t]+([A-Za-z0-9_]+)[ \t]+(\S+)(?:[ \t]+(.*))?", re.ASCII)
_INLINE_KEY_RE = re.compile(
    r"inline:([A-Za-z0-9+/=]+)(?:\|((?:2\^)?\d+))?(?:\|(\d+:\d+))?", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Rtcp:
    """RFC 3605 ``a=rtcp:<port> [IN IP4 <address>]``."""

    port: int
    connection: Connection | None = None


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section and everything under it, in order."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    port_count: int | None = None
    other: tuple[tuple[str, str], ...] = ()  # i=, k= and unknown lines, kept verbatim

    def values(self, name: str) -> list[str]:
        """Values of every ``a=<name>:<value>`` (name compared case-insensitively)."""
        lowered = name.lower()
        return [
            a.value for a in self.attributes if a.name.lower() == lowered and a.value is not None
        ]

    def has(self, name: str) -> bool:
        lowered = name.lower()
        return any(a.name.lower() == lowered for a in self.attributes)

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self.proto.upper().split("/")

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """Explicit ``a=rtpmap`` lines, completed by the static table for listed formats."""
        maps: dict[int, RtpMap] = {}
        for value in self.values("rtpmap"):
            match = _RTPMAP_RE.fullmatch(value)
            if match is None:
                raise SdpError("malformed a=rtpmap")
            pt, encoding, clock, channels = match.groups()
            if int(pt) > 127 or int(clock) == 0:
                raise SdpError("a=rtpmap payload type or clock rate out of range")
            maps[int(pt)] = RtpMap(int(pt), encoding, int(clock), int(channels or 1))
        for fmt in self.formats:
            pt = _payload_type(fmt)
            if pt is not None and pt in STATIC_PAYLOAD_TYPES and pt not in maps:
                codec = STATIC_PAYLOAD_TYPES[pt]
                maps[pt] = RtpMap(pt, codec.name, codec.clock_rate)
        return maps

    def fmtp(self, payload_type: int) -> str | None:
        for value in self.values("fmtp"):
            match = _FMTP_RE.fullmatch(value)
            if match is None:
                raise SdpError("malformed a=fmtp")
            if int(match.group(1)) == payload_type:
                return match.group(2)
        return None

    @property
    def ptime(self) -> int | None:
        return _milliseconds(self.values("ptime"))

    @property
    def maxptime(self) -> int | None:
        return _milliseconds(self.values("maxptime"))

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, if any (the last one wins)."""
        found = [Direction(a.name.lower()) for a in self.attributes if a.name.lower() in _DIRS]
        return found[-1] if found else None

    @property
    def rtcp(self) -> Rtcp | None:
        values = self.values("rtcp")
        if not values:
            return None
        match = _RTCP_RE.fullmatch(values[0])
        if match is None or int(match.group(1)) > 65535:
            raise SdpError("malformed a=rtcp")
        port, addrtype, address = match.groups()
        connection = _connection(addrtype, address) if address else None
        return Rtcp(int(port), connection)

    @property
    def rtcp_mux(self) -> bool:
        return self.has("rtcp-mux")

    @property
    def crypto(self) -> tuple[Crypto, ...]:
        return tuple(Crypto.parse(v) for v in self.values("crypto"))

    def validate(self) -> None:
        """Parse every typed view once, so later reads cannot raise."""
        if self.is_rtp and any(_payload_type(f) is None for f in self.formats):
            raise SdpError("RTP payload format is not a number 0-127")
        self.rtpmaps  # noqa: B018 - evaluated for its validation
        self.fmtp(-1)
        self.ptime  # noqa: B018
        self.maxptime  # noqa: B018
        self.rtcp  # noqa: B018
        self.crypto  # noqa: B018


_DIRS = frozenset(d.value for d in Direction)
_RTPMAP_RE = re.compile(r"(\d{1,3})[ \t]+([^/ \t]+)/(\d{1,6})(?:/(\d{1,2}))?[ \t]*", re.ASCII)
_FMTP_RE = re.compile(r"(\d{1,3})(?:[ \t]+(.*))?", re.ASCII)
_RTCP_RE = re.compile(r"(\d{1,5})(?:[ \t]+IN[ \t]+(IP4|IP6)[ \t]+(\S+))?[ \t]*", re.ASCII)
_PTIME_RE = re.compile(r"(\d{1,4})(?:\.\d+)?[ \t]*", re.ASCII)
_PAYLOAD_TYPE_RE = re.compile(r"\d{1,3}", re.ASCII)
EVENT_RANGE_RE = re.compile(r"(\d{1,3})(?:-(\d{1,3}))?", re.ASCII)


def _payload_type(fmt: str) -> int | None:
    """An RTP payload type 0-127 from an m= format, or None."""
    if _PAYLOAD_TYPE_RE.fullmatch(fmt) is None or int(fmt) > 127:
        return None
    return int(fmt)


def _milliseconds(values: list[str]) -> int | None:
    if not values:
        return None
    match = _PTIME_RE.fullmatch(values[0])
    if match is None or int(match.group(1)) == 0:
        raise SdpError("malformed a=ptime or a=maxptime")
    return int(match.group(1))


# ---------------------------------------------------------------------------
# The session description: parse and serialize


@dataclass(frozen=True, slots=True)
class SessionDescription:
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    times: tuple[tuple[int, int], ...] = ((0, 0),)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    bandwidths: tuple[str, ...] = ()
    other: tuple[tuple[str, str], ...] = ()  # i= u= e= p= r= z= k= and unknown lines

    @property
    def direction(self) -> Direction | None:
        found = [Direction(a.name.lower()) for a in self.attributes if a.name.lower() in _DIRS]
        return found[-1] if found else None

    def direction_of(self, media: MediaDescription) -> Direction:
        """Media-level direction, else session-level, else sendrecv (RFC 4566 §6)."""
        return media.direction or self.direction or Direction.SENDRECV

    def connection_of(self, media: MediaDescription) -> Connection | None:
        return media.connection or self.connection

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; raises :class:`SdpError` and nothing else."""
        return _Parser(data).parse()

    def __str__(self) -> str:
        lines = [("v", "0"), ("o", str(self.origin)), ("s", self.session_name)]
        lines += self.other
        if self.connection is not None:
            lines.append(("c", str(self.connection)))
        lines += [("b", b) for b in self.bandwidths]
        lines += [("t", f"{start} {stop}") for start, stop in self.times]
        lines += [("a", str(a)) for a in self.attributes]
        out = [f"{t}={v}\r\n" for t, v in sorted(lines, key=_session_order)]
        for m in self.media:
            count = "" if m.port_count is None else f"/{m.port_count}"
            out.append(f"m={m.media} {m.port}{count} {m.proto} {' '.join(m.formats)}\r\n")
            body = list(m.other)
            if m.connection is not None:
                body.append(("c", str(m.connection)))
            body += [("b", b) for b in m.bandwidths]
            body += [("a", str(a)) for a in m.attributes]
            out += [f"{t}={v}\r\n" for t, v in sorted(body, key=_media_order)]
        return "".join(out)

    def __bytes__(self) -> bytes:
        return str(self).encode()


# RFC 4566 §5 line order; letters we do not know sort just before a=.
_SESSION_ORDER = "vosiuepcbtrzka"
_MEDIA_ORDER = "icbka"


def _session_order(line: tuple[str, str]) -> int:
    index = _SESSION_ORDER.find(line[0])
    return index if index >= 0 else _SESSION_ORDER.index("k")


def _media_order(line: tuple[str, str]) -> int:
    index = _MEDIA_ORDER.find(line[0])
    return index if index >= 0 else _MEDIA_ORDER.index("k")


_LINE_RE = re.compile(r"([a-z])=(.*)", re.ASCII)
_ORIGIN_RE = re.compile(r"(\S+) (\d{1,20}) (\d{1,20}) (\S+) (\S+) (\S+)", re.ASCII)
_CONNECTION_RE = re.compile(r"IN (IP4|IP6) (\S+)", re.ASCII)
_TIME_RE = re.compile(r"(\d{1,20}) (\d{1,20})", re.ASCII)
_MEDIA_RE = re.compile(r"([A-Za-z0-9_.-]+) (\d{1,5})(?:/(\d{1,5}))? (\S+)((?: \S+)+)", re.ASCII)
_ATTRIBUTE_RE = re.compile(r"([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?::(.*))?", re.ASCII)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?", re.ASCII)
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00\r]", re.ASCII)


def _connection(addrtype: str, address: str) -> Connection:
    host = address.split("/", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # RFC 4566 allows an FQDN here; we keep it but never resolve it.
        if _HOSTNAME_RE.fullmatch(host) is None:
            raise SdpError("connection address is neither an IP address nor a host name") from None
        return Connection(address, addrtype)
    if (ip.version == 6) != (addrtype == "IP6"):
        raise SdpError("connection address does not match its address type")
    return Connection(address, addrtype)


@dataclass
class _Section:
    """Lines gathered for the session or one media section while parsing."""

    media_line: tuple[str, int, int | None, str, tuple[str, ...]] | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[str] = field(default_factory=list)
    times: list[tuple[int, int]] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)

    def media_description(self) -> MediaDescription:
        assert self.media_line is not None
        media, port, count, proto, formats = self.media_line
        return MediaDescription(
            media=media,
            port=port,
            proto=proto,
            formats=formats,
            connection=self.connections[0] if self.connections else None,
            bandwidths=tuple(self.bandwidths),
            attributes=tuple(self.attributes),
            port_count=count,
            other=tuple(sorted(self.other, key=_media_order)),
        )


class _Parser:
    """One pass over the lines; ``m=`` opens a media section, everything after belongs to it."""

    def __init__(self, data: bytes | str) -> None:
        if len(data) > MAX_SDP_BYTES:
            raise SdpError("session description too large")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            raise SdpError("session description is not UTF-8") from None
        self.lines = [line.removesuffix("\r") for line in text.split("\n")]
        self.origin: Origin | None = None
        self.session_name: str | None = None
        self.session = _Section()
        self.media: list[_Section] = []

    def parse(self) -> SessionDescription:
        lines = [line for line in self.lines if line.strip()]
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("session description does not start with v=0")
        for line in lines[1:]:
            match = _LINE_RE.fullmatch(line)
            if match is None or _FORBIDDEN_CHARS_RE.search(line):
                raise SdpError("malformed SDP line")
            self._line(match.group(1), match.group(2).strip())
        if self.origin is None or self.session_name is None:
            raise SdpError("session description lacks o= or s=")
        media = tuple(section.media_description() for section in self.media)
        session = self.session
        sd = SessionDescription(
            origin=self.origin,
            session_name=self.session_name,
            connection=session.connections[0] if session.connections else None,
            times=tuple(session.times) or ((0, 0),),
            attributes=tuple(session.attributes),
            media=media,
            bandwidths=tuple(session.bandwidths),
            # Kept in the order they will be written (RFC 4566 §5), so that
            # parse(bytes(sd)) == sd even for a peer that wrote them out of order.
            other=tuple(sorted(session.other, key=_session_order)),
        )
        for m in media:
            m.validate()
        sd.direction  # noqa: B018 - validates session-level direction attributes too
        return sd

    def _line(self, kind: str, value: str) -> None:
        section = self.media[-1] if self.media else self.session
        if kind == "m":
            self._open_media(value)
        elif kind == "o" and not self.media:
            self._origin(value)
        elif kind == "s" and not self.media and self.session_name is None:
            self.session_name = value
        elif kind == "c":
            match = _CONNECTION_RE.fullmatch(value)
            if match is None:
                raise SdpError("malformed c= line")
            if section.connections:
                raise SdpError("more than one c= line in a section")
            section.connections.append(_connection(match.group(1), match.group(2)))
        elif kind == "t" and not self.media:
            match = _TIME_RE.fullmatch(value)
            if match is None:
                raise SdpError("malformed t= line")
            self.session.times.append((int(match.group(1)), int(match.group(2))))
        elif kind == "a":
            match = _ATTRIBUTE_RE.fullmatch(value)
            if match is None:
                raise SdpError("malformed a= line")
            section.attributes.append(Attribute(match.group(1), match.group(2)))
        elif kind == "b":
            section.bandwidths.append(value)
        elif kind in "vost":
            raise SdpError("misplaced or repeated v=, o=, s= or t= line")
        else:
            section.other.append((kind, value))

    def _origin(self, value: str) -> None:
        match = _ORIGIN_RE.fullmatch(value)
        if match is None or self.origin is not None:
            raise SdpError("malformed or repeated o= line")
        user, sess_id, version, nettype, addrtype, address = match.groups()
        self.origin = Origin(user, sess_id, int(version), address, addrtype, nettype)

    def _open_media(self, value: str) -> None:
        match = _MEDIA_RE.fullmatch(value)
        if match is None:
            raise SdpError("malformed m= line")
        if len(self.media) >= MAX_MEDIA:
            raise SdpError("too many m= lines")
        media, port, count, proto, formats = match.groups()
        if int(port) > 65535:
            raise SdpError("m= port out of range")
        fmts = tuple(formats.split())
        if len(fmts) > MAX_FORMATS:
            raise SdpError("too many formats on an m= line")
        number = int(count) if count else None
        self.media.append(_Section((media, int(port), number, proto, fmts)))
