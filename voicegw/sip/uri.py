"""sip:, sips: and tel: URIs (RFC 3261 §19.1, §25.1; RFC 3966), and opaque others.

User, password, parameters and URI headers are stored %-decoded, so two
spellings of the same URI compare equal (RFC 3261 §19.1.4: ``%75ser`` is
``user``); ``str()`` escapes again only what the grammar requires. Decoding
uses surrogateescape so an escaped octet that is not UTF-8 (``%00``, ``%FF``)
survives the round trip unchanged.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from typing import ClassVar

from . import grammar
from .errors import SipParseError
from .grammar import Params

_ESCAPE_OK = re.compile("(?:[^%]|%[0-9A-Fa-f]{2})*")
_USER_RE = re.compile(
    "(?:" + grammar.cset(grammar.C_UNRESERVED + grammar.C_USER_UNRESERVED) + "|%[0-9A-Fa-f]{2})+"
)
_PASSWORD_RE = re.compile(
    "(?:" + grammar.cset(grammar.C_UNRESERVED + grammar.C_PASSWORD_EXTRA) + "|%[0-9A-Fa-f]{2})*"
)
_ESC = "|%[0-9A-Fa-f]{2})"
_PARAMCHARS = "(?:" + grammar.cset(grammar.C_UNRESERVED + grammar.C_PARAM_UNRESERVED) + _ESC
_URI_PARAM_RE = re.compile(f"(?P<name>{_PARAMCHARS}+)(?:=(?P<value>{_PARAMCHARS}+))?")
_HNVCHARS = "(?:" + grammar.cset(grammar.C_UNRESERVED + grammar.C_HNV_UNRESERVED) + _ESC
_URI_HEADER_RE = re.compile(f"(?P<name>{_HNVCHARS}+)=(?P<value>{_HNVCHARS}*)")
_HOSTPORT_RE = re.compile(
    rf"(?P<host>{grammar.IPV6REFERENCE}|[A-Za-z0-9.\-]+)(?::(?P<port>\d{{1,5}}))?"
)
_SCHEME_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):(?P<rest>.*)", re.DOTALL)
# Absolute URIs of unknown schemes are opaque to us; only forbid what would break framing.
_OPAQUE_RE = re.compile(r"[^\x00-\x20<>\"\x7f]+")
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#().\-]*[0-9A-Fa-f*#][0-9A-Fa-f*#().\-]*")

_USER_SAFE = grammar.C_UNRESERVED + grammar.C_USER_UNRESERVED
_PASSWORD_SAFE = grammar.C_UNRESERVED + grammar.C_PASSWORD_EXTRA
_PARAM_SAFE = grammar.C_UNRESERVED + grammar.C_PARAM_UNRESERVED
_HEADER_SAFE = grammar.C_UNRESERVED + grammar.C_HNV_UNRESERVED


def _decode(text: str) -> str:
    if _ESCAPE_OK.fullmatch(text) is None:
        raise SipParseError("malformed %-escape in URI")
    return urllib.parse.unquote(text, errors="surrogateescape")


def _encode(text: str, safe: str) -> str:
    return urllib.parse.quote(text, safe=safe, errors="surrogateescape")


def _parse_uri_params(text: str) -> Params:
    items: list[tuple[str, str | None]] = []
    if not text:
        return Params()
    for chunk in text.split(";"):
        m = _URI_PARAM_RE.fullmatch(chunk)
        if m is None:
            raise SipParseError("malformed URI parameter")
        value = m.group("value")
        items.append((_decode(m.group("name")), None if value is None else _decode(value)))
    return Params(tuple(items))


def _format_uri_params(params: Params) -> str:
    return "".join(
        ";" + _encode(k, _PARAM_SAFE) + ("" if v is None else "=" + _encode(v, _PARAM_SAFE))
        for k, v in params.items
    )


@dataclasses.dataclass(frozen=True)
class SipURI:
    """``sip:`` or ``sips:`` URI: ``scheme:user:password@host:port;params?headers``."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = dataclasses.field(default_factory=Params)
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "sip"

    @property
    def transport(self) -> str | None:
        return self.params.get("transport")

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def host_bare(self) -> str:
        """The host without IPv6 brackets, as a socket API wants it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def with_params(self, **params: str | None) -> SipURI:
        updated = self.params
        for name, value in params.items():
            updated = updated.with_param(name, value)
        return dataclasses.replace(self, params=updated)

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += _encode(self.user, _USER_SAFE)
            if self.password is not None:
                out += ":" + _encode(self.password, _PASSWORD_SAFE)
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _format_uri_params(self.params)
        if self.headers:
            out += "?" + "&".join(
                _encode(k, _HEADER_SAFE) + "=" + _encode(v, _HEADER_SAFE) for k, v in self.headers
            )
        return out


@dataclasses.dataclass(frozen=True)
class TelURI:
    """``tel:`` URI (RFC 3966): a global (``+``) or local number with parameters."""

    number: str
    params: Params = dataclasses.field(default_factory=Params)

    scheme: ClassVar[str] = "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def __str__(self) -> str:
        return "tel:" + self.number + _format_uri_params(self.params)


@dataclasses.dataclass(frozen=True)
class AbsoluteURI:
    """Any other scheme (``http:``, ``urn:``, ``isbn:``...), kept opaque (RFC 4475 unksm2)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


URI = SipURI | TelURI | AbsoluteURI


def _parse_sip(scheme: str, rest: str) -> SipURI:
    user: str | None = None
    password: str | None = None
    # '@' cannot appear unescaped in hostport, params or URI headers, so the first one
    # ends the userinfo even when the user part holds ';', '?' or '/' (RFC 4475 semiuri).
    if "@" in rest:
        userinfo, rest = rest.split("@", 1)
        raw_user, sep, raw_password = userinfo.partition(":")
        if _USER_RE.fullmatch(raw_user) is None:
            raise SipParseError("malformed URI user part")
        user = _decode(raw_user)
        if sep:
            if _PASSWORD_RE.fullmatch(raw_password) is None:
                raise SipParseError("malformed URI password")
            password = _decode(raw_password)
    rest, qmark, raw_headers = rest.partition("?")
    m = _HOSTPORT_RE.match(rest)
    if m is None:
        raise SipParseError("malformed URI host")
    host = grammar.validate_host(m.group("host"))
    port = grammar.validate_port(m.group("port")) if m.group("port") else None
    tail = rest[m.end() :]
    if tail and not tail.startswith(";"):
        raise SipParseError("malformed URI after host")
    params = _parse_uri_params(tail[1:])
    headers: list[tuple[str, str]] = []
    if qmark:
        for chunk in raw_headers.split("&"):
            hm = _URI_HEADER_RE.fullmatch(chunk)
            if hm is None:
                raise SipParseError("malformed URI header")
            headers.append((_decode(hm.group("name")), _decode(hm.group("value"))))
    return SipURI(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=tuple(headers),
    )


def _parse_tel(rest: str) -> TelURI:
    number, _, raw_params = rest.partition(";")
    if _TEL_NUMBER_RE.fullmatch(number) is None:
        raise SipParseError("malformed tel URI number")
    return TelURI(number=number, params=_parse_uri_params(raw_params))


def parse_uri(text: str) -> URI:
    """Parse a URI; sip/sips/tel are parsed fully, other schemes kept opaque."""
    m = _SCHEME_RE.fullmatch(text)
    if m is None:
        raise SipParseError("malformed URI")
    scheme = m.group("scheme").lower()
    rest = m.group("rest")
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if _OPAQUE_RE.fullmatch(rest) is None:
        raise SipParseError("malformed URI")
    return AbsoluteURI(scheme=scheme, opaque=rest)


def parse_sip_uri(text: str) -> SipURI:
    uri = parse_uri(text)
    if not isinstance(uri, SipURI):
        raise SipParseError("not a sip or sips URI")
    return uri
