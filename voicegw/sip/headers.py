"""Header names, the header list, and typed header values.

A message keeps every header as received — name and unfolded value — in a
:class:`Headers` sequence; the typed values (:class:`Via`,
:class:`NameAddress`, :class:`CSeq`, ...) are views computed from those raw
values. A header we have no type for is passed on byte for byte, so an odd
carrier header is relayed rather than rejected (STYLE.md item 4).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Iterator

from . import grammar
from .errors import SipParseError
from .grammar import Params
from .uri import URI, parse_uri

# IANA "Header Fields" registry, compact column (RFC 3261 §7.3.3 and later RFCs).
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Canonical spelling of names whose capitals are not simply title case.
_CANONICAL_SPECIAL = ("Call-ID", "CSeq", "WWW-Authenticate", "MIME-Version", "RAck", "RSeq")
# fmt: off
_KNOWN_NAMES = (
    *COMPACT_FORMS.values(),
    *_CANONICAL_SPECIAL,
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
    "Authorization", "Call-Info", "Content-Disposition", "Content-Language", "Date", "Error-Info",
    "Expires", "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "Organization", "Path",
    "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Reason",
    "Record-Route", "Reply-To", "Require", "Retry-After", "Route", "Server", "Service-Route",
    "Timestamp", "Unsupported", "User-Agent", "Warning", "P-Asserted-Identity",
    "P-Preferred-Identity", "Privacy", "Diversion", "Replaces", "Subscription-State",
)
# fmt: on
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1). Everything else —
# notably WWW-Authenticate, Authorization, Date, From, To, User-Agent and any header we
# do not know — is one value even when it contains commas.
# fmt: off
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "Path", "Proxy-Require", "Record-Route", "Require", "Route",
        "Service-Route", "Supported", "Unsupported", "Via", "Warning", "P-Asserted-Identity",
        "Reason", "Accept-Contact", "Reject-Contact", "Request-Disposition",
    )
)
# fmt: on

# Headers that may appear at most once (RFC 4475 §3.3.7 multi01, §3.3.6 mcl01).
# fmt: off
SINGLE_HEADERS = frozenset(
    name.lower()
    for name in (
        "Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type",
        "Expires", "Date", "Min-Expires",
    )
)
# fmt: on

REQUIRED_IN_REQUEST = ("Via", "From", "To", "Call-ID", "CSeq")
REQUIRED_IN_RESPONSE = ("Via", "From", "To", "Call-ID", "CSeq")


def canonical_name(name: str) -> str:
    """Expand a compact form and use the registered spelling; unknown names stay as sent."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return CANONICAL_NAMES.get(lower, name)


@dataclasses.dataclass(frozen=True)
class Header:
    """One header line as received: canonical name, unfolded value."""

    name: str
    value: str

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclasses.dataclass(frozen=True)
class Headers:
    """Ordered, immutable header list; lookups ignore the case of names."""

    items: tuple[Header, ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        return cls(tuple(Header(canonical_name(n), v) for n, v in pairs))

    def __iter__(self) -> Iterator[Header]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> str | None:
        """The first raw value of ``name``, or None."""
        key = canonical_name(name).lower()
        for h in self.items:
            if h.name.lower() == key:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every raw header line of ``name``, in order, unsplit."""
        key = canonical_name(name).lower()
        return [h.value for h in self.items if h.name.lower() == key]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``: list headers split on commas outside quotes and <>."""
        key = canonical_name(name).lower()
        raw = self.get_all(name)
        if key not in LIST_HEADERS:
            return raw
        out: list[str] = []
        for line in raw:
            out.extend(v for v in grammar.split_commas(line) if v)
        return out

    def add(self, name: str, value: str) -> Headers:
        return Headers((*self.items, Header(canonical_name(name), value)))

    def add_first(self, name: str, value: str) -> Headers:
        """Prepend, as a proxy does with its own Via (RFC 3261 §16.6 step 8)."""
        return Headers((Header(canonical_name(name), value), *self.items))

    def remove(self, name: str) -> Headers:
        key = canonical_name(name).lower()
        return Headers(tuple(h for h in self.items if h.name.lower() != key))

    def set(self, name: str, value: str) -> Headers:
        """Replace every ``name`` line by one, in the place of the first."""
        key = canonical_name(name).lower()
        out: list[Header] = []
        placed = False
        for h in self.items:
            if h.name.lower() == key:
                if not placed:
                    out.append(Header(canonical_name(name), value))
                    placed = True
            else:
                out.append(h)
        if not placed:
            out.append(Header(canonical_name(name), value))
        return Headers(tuple(out))


# --- Via --------------------------------------------------------------------------------

_VIA_RE = re.compile(
    rf"SIP{grammar.SLASH}2\.0{grammar.SLASH}(?P<transport>{grammar.TOKEN}){grammar.LWS}"
    rf"(?P<host>{grammar.IPV6REFERENCE}|[A-Za-z0-9.\-]+)(?:{grammar.COLON}(?P<port>\d{{1,5}}))?"
    rf"(?P<params>.*)",
    re.IGNORECASE | re.DOTALL,
)
_TTL_MAX = 255


@dataclasses.dataclass(frozen=True)
class Via:
    """``Via: SIP/2.0/UDP host:port;branch=...;received=...;rport`` (RFC 3261 §20.42, RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = dataclasses.field(default_factory=Params)

    @classmethod
    def parse(cls, value: str) -> Via:
        m = _VIA_RE.fullmatch(value.strip(" \t"))
        if m is None:
            raise SipParseError("malformed Via")
        via = cls(
            transport=m.group("transport").upper(),
            host=grammar.validate_host(m.group("host")),
            port=grammar.validate_port(m.group("port")) if m.group("port") else None,
            params=grammar.parse_params(m.group("params")),
        )
        via._check_params()
        return via

    def _check_params(self) -> None:
        branch = self.params.get("branch")
        if "branch" in self.params and (branch is None or not grammar.is_token(branch)):
            raise SipParseError("malformed Via branch")
        received = self.params.get("received")
        if received is not None:
            grammar.validate_host(f"[{received}]" if ":" in received else received)
        ttl = self.params.get("ttl")
        if ttl is not None:
            grammar.parse_bounded_int(ttl, _TTL_MAX, "malformed Via ttl")
        maddr = self.params.get("maddr")
        if maddr is not None:
            grammar.validate_host(maddr)
        rport = self.params.get("rport")
        if rport is not None:
            grammar.parse_bounded_int(rport, grammar.MAX_PORT, "malformed Via rport")

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        ttl = self.params.get("ttl")
        return None if ttl is None else int(ttl)

    @property
    def rport(self) -> int | bool | None:
        """None when absent, True when requested (bare ``;rport``), else the filled-in port."""
        if "rport" not in self.params:
            return None
        value = self.params.get("rport")
        return True if value is None else int(value)

    def with_param(self, name: str, value: str | None) -> Via:
        return dataclasses.replace(self, params=self.params.with_param(name, value))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{self.params}"


# --- name-addr / addr-spec -----------------------------------------------------------------

# display-name = *(token LWS): we also let UTF-8 through unquoted ("Jürgen <sip:...>"),
# which carriers send and which is unambiguous; commas and quotes still fail (RFC 4475 baddn).
_DISPLAY_TOKEN = "[" + re.escape(grammar.C_TOKEN) + r"\x80-\U0010ffff]+"
_DISPLAY_TOKENS_RE = re.compile(f"{_DISPLAY_TOKEN}(?:{grammar.LWS}{_DISPLAY_TOKEN})*")
_LEADING_QUOTED_RE = re.compile(f"{grammar.SWS}{grammar.QUOTED_STRING}")


@dataclasses.dataclass(frozen=True)
class NameAddress:
    """From, To, Contact, Route, Record-Route value: ``"Name" <uri>;tag=...`` (RFC 3261 §20.10).

    ``str()`` always writes the URI in <>, which is equivalent to an addr-spec and avoids
    its ambiguity about whose parameters follow (RFC 3261 §20).
    """

    uri: URI
    display_name: str | None = None
    params: Params = dataclasses.field(default_factory=Params)

    @classmethod
    def parse(cls, value: str) -> NameAddress:
        text = value.strip(" \t")
        display: str | None = None
        if text.startswith('"'):
            m = _LEADING_QUOTED_RE.match(text)
            if m is None:
                raise SipParseError("malformed quoted display name")
            display = grammar.unquote(m.group(0).strip(" \t"))
            text = text[m.end() :].lstrip(" \t")
            if not text.startswith("<"):
                raise SipParseError("display name without <URI>")
        elif "<" in text:
            lt = text.index("<")
            raw_display = text[:lt].strip(" \t")
            if raw_display:
                # RFC 4475 lwsdisp: tokens may run straight into '<'; a comma is not a token
                # char (RFC 4475 baddn).
                if _DISPLAY_TOKENS_RE.fullmatch(raw_display) is None:
                    raise SipParseError("malformed display name")
                display = raw_display
            text = text[lt:]
        if text.startswith("<"):
            gt = text.find(">")
            if gt < 0:
                raise SipParseError("unterminated <URI>")
            raw_uri = text[1:gt]
            if raw_uri != raw_uri.strip(" \t") or not raw_uri:
                # RFC 4475 badaspec: no LWS inside the angle brackets.
                raise SipParseError("whitespace inside <URI>")
            rest = text[gt + 1 :]
        else:
            semi = text.find(";")
            raw_uri, rest = (text, "") if semi < 0 else (text[:semi], text[semi:])
            raw_uri = raw_uri.rstrip(" \t")
            # RFC 3261 §20: a URI with ',', '?' or ';' must be in <> (RFC 4475 regbadct).
            if any(c in raw_uri for c in ',? \t<>"'):
                raise SipParseError("addr-spec needs <> around this URI")
        return cls(uri=parse_uri(raw_uri), display_name=display, params=grammar.parse_params(rest))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddress:
        return dataclasses.replace(self, params=self.params.with_param("tag", tag))

    def with_param(self, name: str, value: str | None) -> NameAddress:
        return dataclasses.replace(self, params=self.params.with_param(name, value))

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        return None if value is None else parse_expires(value)

    @property
    def q(self) -> float | None:
        value = self.params.get("q")
        return None if value is None else float(value)

    def __str__(self) -> str:
        display = "" if self.display_name is None else grammar.quote(self.display_name) + " "
        return f"{display}<{self.uri}>{self.params}"


def parse_name_addresses(values: Iterable[str]) -> list[NameAddress]:
    return [NameAddress.parse(v) for v in values]


# --- scalar headers ------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"(?P<seq>\d+){grammar.LWS}(?P<method>{grammar.TOKEN})")
CSEQ_MAX = 2**31 - 1
MAX_FORWARDS_MAX = 255
DELTA_SECONDS_MAX = 2**32 - 1
CONTENT_LENGTH_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class CSeq:
    """``CSeq: 4711 INVITE``; the number is below 2**31 (RFC 3261 §8.1.1.5)."""

    seq: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        m = _CSEQ_RE.fullmatch(value.strip(" \t"))
        if m is None:
            raise SipParseError("malformed CSeq")
        seq = grammar.parse_bounded_int(m.group("seq"), CSEQ_MAX, "CSeq number out of range")
        return cls(seq=seq, method=m.group("method"))

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def unsupported_options(headers: Headers, supported: Collection[str]) -> list[str]:
    """Option tags in ``Require`` that are not in ``supported`` (lower-case), as sent.

    RFC 3261 §8.2.2.3: a UAS answers such a request 420 (Bad Extension) listing them in
    ``Unsupported``, rather than going on as if it had the extension.
    """
    return [
        tag
        for value in headers.values("Require")
        for tag in (t.strip() for t in value.split(","))
        if tag and tag.lower() not in supported
    ]


def parse_call_id(value: str) -> str:
    """``callid = word [ "@" word ]`` (RFC 3261 §25.1)."""
    call_id = value.strip(" \t")
    word, at, host = call_id.partition("@")
    if grammar.WORD_RE.fullmatch(word) is None or (at and grammar.WORD_RE.fullmatch(host) is None):
        raise SipParseError("malformed Call-ID")
    return call_id


def parse_max_forwards(value: str) -> int:
    return grammar.parse_bounded_int(value.strip(" \t"), MAX_FORWARDS_MAX, "malformed Max-Forwards")


def parse_content_length(value: str) -> int:
    return grammar.parse_bounded_int(
        value.strip(" \t"), CONTENT_LENGTH_MAX, "malformed Content-Length"
    )


def parse_expires(value: str) -> int:
    return grammar.parse_bounded_int(value.strip(" \t"), DELTA_SECONDS_MAX, "malformed Expires")


_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (0[1-9]|[12]\d|3[01]) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d GMT"
)


def parse_date(value: str) -> str:
    """``rfc1123-date``, which must be in GMT (RFC 3261 §20.17, RFC 4475 baddate)."""
    date = value.strip(" \t")
    if _DATE_RE.fullmatch(date) is None:
        raise SipParseError("malformed Date")
    return date


def parse_contacts(values: list[str]) -> list[NameAddress] | None:
    """Contact values; None for the REGISTER wildcard ``Contact: *`` (RFC 3261 §10.2.2)."""
    if values == ["*"]:
        return None
    return parse_name_addresses(values)
