"""RFC 3261 §25 ABNF, as regular-expression fragments named after the rules.

Header values reach these helpers already unfolded (every CRLF + WSP turned
into one SP), so ``LWS`` here is plain ``[ \\t]+``. The helpers raise
:class:`SipParseError`; callers never see ``ValueError`` or ``IndexError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import string

from .errors import SipParseError


def cset(chars: str) -> str:
    """A regular-expression character class holding exactly ``chars``."""
    return "[" + re.escape(chars) + "]"


C_ALPHANUM = string.ascii_letters + string.digits
C_MARK = "-_.!~*'()"
C_UNRESERVED = C_ALPHANUM + C_MARK
C_TOKEN = C_ALPHANUM + "-.!%*_+`'~"
C_WORD = C_TOKEN + '()<>:\\"/[]?{}'
C_USER_UNRESERVED = "&=+$,;?/"
C_PASSWORD_EXTRA = "&=+$,"  # noqa: S105 - a character class, not a secret
C_PARAM_UNRESERVED = "[]/:&+$"
C_HNV_UNRESERVED = "[]/?:+$"

LWS = "[ \t]+"
SWS = "[ \t]*"
SEMI = f"{SWS};{SWS}"
EQUAL = f"{SWS}={SWS}"
SLASH = f"{SWS}/{SWS}"
COLON = f"{SWS}:{SWS}"

TOKEN = cset(C_TOKEN) + "+"
WORD = cset(C_WORD) + "+"
ESCAPED = "%[0-9A-Fa-f]{2}"
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QDTEXT = r"[ \t\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]"
QUOTED_PAIR = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
QUOTED_STRING = f'"(?:{QDTEXT}|{QUOTED_PAIR})*"'

IPV4ADDRESS = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
IPV6REFERENCE = r"\[[0-9A-Fa-f:.]+\]"
DOMAINLABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
TOPLABEL = "[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOSTNAME = rf"(?:{DOMAINLABEL}\.)*{TOPLABEL}\.?"
HOST = f"(?:{IPV6REFERENCE}|{IPV4ADDRESS}|{HOSTNAME})"
PORT = r"\d{1,5}"

# via-received carries a bare IPv6address, which is not a token: try it before token.
IPV6ADDRESS_BARE = r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]+"
GEN_VALUE = f"(?:{QUOTED_STRING}|{IPV6REFERENCE}|{IPV6ADDRESS_BARE}|{TOKEN})"
GENERIC_PARAM = f"(?P<name>{TOKEN})(?:{EQUAL}(?P<value>{GEN_VALUE}))?"

TOKEN_RE = re.compile(f"{TOKEN}")
WORD_RE = re.compile(f"{WORD}")
QUOTED_STRING_RE = re.compile(QUOTED_STRING)
HOST_RE = re.compile(HOST)
IPV4_RE = re.compile(IPV4ADDRESS)
_PARAM_RE = re.compile(f"{SEMI}{GENERIC_PARAM}{SWS}")
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)

MAX_PORT = 65535


def is_token(value: str) -> bool:
    return TOKEN_RE.fullmatch(value) is not None


def validate_host(host: str) -> str:
    """Check ``host`` against the ``host`` rule, verifying addresses numerically."""
    if HOST_RE.fullmatch(host) is None:
        raise SipParseError("malformed host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError("malformed IPv6 reference") from None
    elif IPV4_RE.fullmatch(host) and any(int(octet) > 255 for octet in host.split(".")):
        raise SipParseError("malformed IPv4 address")
    return host


def validate_port(text: str) -> int:
    port = int(text)
    if port > MAX_PORT:
        raise SipParseError("port out of range")
    return port


def parse_bounded_int(text: str, limit: int, reason: str) -> int:
    """``1*DIGIT`` no greater than ``limit``; overlarge scalars are a 400 (RFC 4475 §3.1.2.4)."""
    if not text.isascii() or not text.isdigit():
        raise SipParseError(reason)
    # Leading zeros are legal (RFC 4475 wsinv has "0068"); only the value is bounded.
    stripped = text.lstrip("0") or "0"
    if len(stripped) > len(str(limit)) or int(stripped) > limit:
        raise SipParseError(reason)
    return int(stripped)


def unquote(quoted: str) -> str:
    """The content of a quoted-string, with quoted-pairs resolved."""
    return _QUOTED_PAIR_RE.sub(r"\1", quoted[1:-1])


# Characters qdtext cannot carry but a quoted-pair can; CR and LF can be carried by neither.
_NEEDS_QUOTED_PAIR_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_LINE_BREAK_RE = re.compile(r"[\r\n]")


def quote(value: str) -> str:
    """A quoted-string holding ``value``; CR and LF (unrepresentable) become SP."""
    escaped = _NEEDS_QUOTED_PAIR_RE.sub(lambda m: "\\" + m.group(0), value)
    return '"' + _LINE_BREAK_RE.sub(" ", escaped) + '"'


# One list element: quoted strings (with quoted-pairs), <...> and any other non-comma text.
_LIST_ELEMENT_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*"|<[^>]*>|[^,"<])*', re.DOTALL)


def split_commas(value: str) -> list[str]:
    """Split a list header value on commas outside quoted strings and <> (RFC 3261 §7.3.1)."""
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    parts: list[str] = []
    pos = 0
    while True:
        m = _LIST_ELEMENT_RE.match(value, pos)
        assert m is not None  # the pattern matches the empty string
        parts.append(m.group(0).strip(" \t"))
        pos = m.end()
        if pos == len(value):
            return parts
        if value[pos] != ",":
            raise SipParseError("unterminated quoted string or <")
        pos += 1


@dataclasses.dataclass(frozen=True)
class Params:
    """Ordered ``;name[=value]`` parameters; names match case-insensitively.

    URI parameters hold %-decoded text; header parameters hold the value as
    received (a quoted-string keeps its quotes), so it can be written back unchanged.
    """

    items: tuple[tuple[str, str | None], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for k, v in self.items:
            if k.lower() == key:
                return v
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k, _ in self.items)

    def with_param(self, name: str, value: str | None) -> Params:
        """Set ``name``: replaced where it stands (order is kept), else appended."""
        key = name.lower()
        if key not in {k.lower() for k, _ in self.items}:
            return Params((*self.items, (name, value)))
        return Params(tuple((k, value) if k.lower() == key else (k, v) for k, v in self.items))

    def without(self, name: str) -> Params:
        key = name.lower()
        return Params(tuple((k, v) for k, v in self.items if k.lower() != key))

    def __str__(self) -> str:
        return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.items)


def parse_params(text: str) -> Params:
    """``*( SEMI generic-param )``; an empty parameter (``;;``) is malformed (RFC 4475 badinv01)."""
    params: list[tuple[str, str | None]] = []
    pos = 0
    text = text.rstrip(" \t")
    while pos < len(text):
        m = _PARAM_RE.match(text, pos)
        if m is None:
            raise SipParseError("malformed header parameter")
        params.append((m.group("name"), m.group("value")))
        pos = m.end()
    return Params(tuple(params))
