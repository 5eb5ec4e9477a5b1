"""SIP requests and responses: parse from bytes, write back with ``bytes()``.

Why our own parser and not ``sipmessage`` (installed, by aiortc's author):
checked against the tests this package must pass, sipmessage 1.x does not
unfold continuation lines (RFC 4475 wsinv fails with a bare ``ValueError``),
splits the body at the first blank line instead of framing it by
Content-Length (clerr, ncl, dblreq), lets ``UnicodeDecodeError`` and
``ValueError`` escape instead of one error type, has no size or header-count
limits and keeps headers in a mutable dict. Its idea of grammar fragments
named after the ABNF rules is good and is followed in :mod:`.grammar`.

Model:

* a message is a frozen dataclass; its headers are kept as received
  (canonical name, unfolded value) and typed values are views over them, so a
  header we do not model is relayed unchanged;
* Content-Length is framing, not content: the parser checks it and drops it,
  and ``bytes(msg)`` always writes the true length of ``body`` last;
* every failure is a :class:`SipParseError` whose ``can_respond`` says whether
  :func:`build_error_response` can answer it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import secrets
from collections.abc import Callable
from typing import Final, TypeVar

from . import grammar
from .errors import SipParseError
from .headers import (
    LIST_HEADERS,
    REQUIRED_IN_REQUEST,
    REQUIRED_IN_RESPONSE,
    SINGLE_HEADERS,
    CSeq,
    Header,
    Headers,
    NameAddress,
    Via,
    canonical_name,
    parse_call_id,
    parse_contacts,
    parse_content_length,
    parse_date,
    parse_expires,
    parse_max_forwards,
)
from .uri import URI, SipURI, parse_uri

SIP_VERSION: Final = "SIP/2.0"
ENCODING: Final = "utf-8"
# Non-UTF-8 octets (a carrier's Latin-1 display name) survive decode/encode unchanged.
ERRORS: Final = "surrogateescape"
CRLF: Final = "\r\n"


@dataclasses.dataclass(frozen=True)
class SipLimits:
    """Bounds on what the parser and the stream framer accept."""

    max_message_size: int = 64 * 1024
    max_headers: int = 256
    max_line_length: int = 8 * 1024


DEFAULT_LIMITS: Final = SipLimits()

# RFC 3261 §21 and the registry's common additions.
# fmt: off
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
    423: "Interval Too Brief", 428: "Use Identity Header", 429: "Provide Referrer Identity",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}
# fmt: on


# For codes without a registered phrase: the class name (RFC 3261 §21 headings).
_CLASS_PHRASES: Final[dict[int, str]] = {
    1: "Provisional",
    2: "Successful",
    3: "Redirection",
    4: "Client Failure",
    5: "Server Failure",
    6: "Global Failure",
}


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Unknown")


class _TypedViews:
    """Typed header views shared by requests and responses (computed on first use)."""

    headers: Headers

    @functools.cached_property
    def via(self) -> tuple[Via, ...]:
        return tuple(Via.parse(v) for v in self.headers.values("Via"))

    @functools.cached_property
    def from_(self) -> NameAddress:
        return NameAddress.parse(self._required("From"))

    @functools.cached_property
    def to(self) -> NameAddress:
        return NameAddress.parse(self._required("To"))

    @functools.cached_property
    def call_id(self) -> str:
        return parse_call_id(self._required("Call-ID"))

    @functools.cached_property
    def cseq(self) -> CSeq:
        return CSeq.parse(self._required("CSeq"))

    @functools.cached_property
    def contact(self) -> tuple[NameAddress, ...] | None:
        """Contact addresses; None for the wildcard ``*``; empty when absent."""
        contacts = parse_contacts(self.headers.values("Contact"))
        return None if contacts is None else tuple(contacts)

    @functools.cached_property
    def route(self) -> tuple[NameAddress, ...]:
        return tuple(NameAddress.parse(v) for v in self.headers.values("Route"))

    @functools.cached_property
    def record_route(self) -> tuple[NameAddress, ...]:
        return tuple(NameAddress.parse(v) for v in self.headers.values("Record-Route"))

    @functools.cached_property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else parse_max_forwards(value)

    @functools.cached_property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        return None if value is None else parse_expires(value)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name}")
        return value


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    lines = [start_line]
    lines.extend(f"{h.name}: {h.value}" for h in headers if h.name.lower() != "content-length")
    lines.append(f"Content-Length: {len(body)}")
    return (CRLF.join(lines) + CRLF + CRLF).encode(ENCODING, ERRORS) + body


@dataclasses.dataclass(frozen=True, eq=True)
class SipRequest(_TypedViews):
    method: str
    uri: URI
    headers: Headers = dataclasses.field(default_factory=Headers)
    body: bytes = b""

    @property
    def content_length(self) -> int:
        return len(self.body)

    def __bytes__(self) -> bytes:
        return _serialize(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)


@dataclasses.dataclass(frozen=True, eq=True)
class SipResponse(_TypedViews):
    status: int
    reason: str
    headers: Headers = dataclasses.field(default_factory=Headers)
    body: bytes = b""

    @property
    def content_length(self) -> int:
        return len(self.body)

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    def __bytes__(self) -> bytes:
        return _serialize(f"{SIP_VERSION} {self.status} {self.reason}", self.headers, self.body)


SipMessage = SipRequest | SipResponse
_M = TypeVar("_M", SipRequest, SipResponse)


# --- parsing ---------------------------------------------------------------------------------

_REQUEST_LINE_RE = re.compile(
    rf"(?P<method>{grammar.TOKEN}) (?P<uri>[^ \t]+) (?P<version>SIP/\d+\.\d+)", re.IGNORECASE
)
_RESPONSE_LINE_RE = re.compile(
    r"(?P<version>SIP/\d+\.\d+) (?P<status>\d{3})(?: (?P<reason>.*))?", re.IGNORECASE
)
_VERSION_ONLY_RE = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)
_HEADER_LINE_RE = re.compile(rf"(?P<name>{grammar.TOKEN})[ \t]*:(?P<value>.*)", re.DOTALL)
_CTL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_BREAK_RE = re.compile("[\r\n]")
_SUPPORTED_REQUEST_SCHEMES = frozenset({"sip", "sips", "tel"})

# Headers checked at parse time: header (lower case) -> (typed view it fills, value parser).
# Their parsed values pre-fill the typed views, so nothing is parsed twice.
_TYPED_HEADERS: Final[dict[str, tuple[str | None, Callable[[str], object]]]] = {
    "via": ("via", Via.parse),
    "from": ("from_", NameAddress.parse),
    "to": ("to", NameAddress.parse),
    "route": ("route", NameAddress.parse),
    "record-route": ("record_route", NameAddress.parse),
    "cseq": ("cseq", CSeq.parse),
    "call-id": ("call_id", parse_call_id),
    "max-forwards": ("max_forwards", parse_max_forwards),
    "expires": ("expires", parse_expires),
    "min-expires": (None, parse_expires),
    "date": (None, parse_date),
}
_TUPLE_VIEWS = frozenset({"via", "route", "record_route"})
_OPTIONAL_VIEWS = ("max_forwards", "expires")


def split_head(head: str, limits: SipLimits) -> tuple[str, list[tuple[str, str]]]:
    """Split the header section into the start line and unfolded ``(name, value)`` pairs."""
    physical = head.split(CRLF)
    for line in physical:
        if len(line) > limits.max_line_length:
            raise SipParseError("line too long", status=513)
        if "\r" in line or "\n" in line:
            raise SipParseError("bare CR or LF in header section")
    start, *rest = physical
    if start[:1] in (" ", "\t"):
        raise SipParseError("start line begins with whitespace")
    pairs: list[tuple[str, str]] = []
    for line in rest:
        if line[:1] in (" ", "\t"):
            if not pairs:
                raise SipParseError("continuation line before first header")
            name, value = pairs[-1]
            # RFC 3261 §7.3.1: folding (CRLF + WSP) is equivalent to one SP.
            pairs[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        m = _HEADER_LINE_RE.fullmatch(line)
        if m is None:
            raise SipParseError("malformed header line")
        pairs.append((canonical_name(m.group("name")), m.group("value").strip(" \t")))
        if len(pairs) > limits.max_headers:
            raise SipParseError("too many headers", status=513)
    return start, pairs


def _find_head_end(data: bytes) -> int:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SipParseError("no empty line after headers")
    return end


def _content_length(pairs: list[tuple[str, str]]) -> int | None:
    values = [v for n, v in pairs if n == "Content-Length"]
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("more than one Content-Length")
    return parse_content_length(values[0])


def _parse_request_uri(text: str) -> URI:
    if text.startswith("<"):
        raise SipParseError("Request-URI in <>")
    uri = parse_uri(text)
    if uri.scheme not in _SUPPORTED_REQUEST_SCHEMES:
        raise SipParseError("unsupported Request-URI scheme", status=416)
    if isinstance(uri, SipURI) and uri.headers:
        # RFC 4475 escruri: URI headers are for building requests, never in a Request-URI.
        raise SipParseError("Request-URI carries URI headers")
    return uri


def _check_headers(headers: Headers, required: tuple[str, ...]) -> dict[str, object]:
    """Validate what the stack relies on; return the typed views it parsed on the way."""
    present = {h.name.lower() for h in headers}
    for name in required:
        if name.lower() not in present:
            raise SipParseError(f"missing {name}")
    seen: set[str] = set()
    contacts: list[str] = []
    parsed: dict[str, list[object]] = {}
    for header in headers:
        key = header.name.lower()
        if key in SINGLE_HEADERS:
            if key in seen:
                raise SipParseError(f"more than one {header.name}")
            seen.add(key)
        if key == "contact":
            contacts.extend(v for v in grammar.split_commas(header.value) if v)
            continue
        typed = _TYPED_HEADERS.get(key)
        if typed is None:
            continue
        view, parse = typed
        if key in LIST_HEADERS:
            values = [v for v in grammar.split_commas(header.value) if v]
        else:
            values = [header.value]
        results = [parse(v) for v in values]
        if view is not None:
            parsed.setdefault(view, []).extend(results)
    if "*" in contacts and len(contacts) > 1:
        raise SipParseError("Contact * mixed with addresses")
    parsed_contacts = parse_contacts(contacts)
    views: dict[str, object] = {
        view: tuple(values) if view in _TUPLE_VIEWS else values[0]
        for view, values in parsed.items()
    }
    for view in (*_TUPLE_VIEWS, *_OPTIONAL_VIEWS):
        views.setdefault(view, () if view in _TUPLE_VIEWS else None)
    views["contact"] = None if parsed_contacts is None else tuple(parsed_contacts)
    return views


def _parse_strict(data: bytes, datagram: bool, limits: SipLimits) -> SipMessage:
    if len(data) > limits.max_message_size:
        raise SipParseError("message too large", status=513)
    # RFC 3261 §7.5: ignore empty lines before the start line.
    offset = 0
    while data.startswith(b"\r\n", offset):
        offset += 2
    head_end = _find_head_end(data[offset:]) + offset
    head = data[offset:head_end].decode(ENCODING, ERRORS)
    start, pairs = split_head(head, limits)
    body = data[head_end + 4 :]
    length = _content_length(pairs)
    if length is None:
        if not datagram:
            raise SipParseError("missing Content-Length on a stream transport")
    elif length > len(body):
        raise SipParseError("Content-Length larger than message")
    elif length < len(body):
        if not datagram:
            raise SipParseError("bytes beyond Content-Length")
        # RFC 3261 §18.3: octets past the body in a datagram are discarded (RFC 4475 dblreq).
        body = body[:length]
    # split_head has already put the names in canonical form.
    headers = Headers(tuple(Header(n, v) for n, v in pairs if n != "Content-Length"))

    if m := _RESPONSE_LINE_RE.fullmatch(start):
        # RFC 3261 §7.1: the version string is case-insensitive on receipt.
        if m.group("version").upper() != SIP_VERSION:
            raise SipParseError("unsupported SIP version", status=505)
        status = int(m.group("status"))
        if not 100 <= status <= 699:
            raise SipParseError("status code out of range")
        reason = m.group("reason") or ""
        if _CTL_RE.search(reason):
            raise SipParseError("control character in reason phrase")
        views = _check_headers(headers, REQUIRED_IN_RESPONSE)
        response = SipResponse(status=status, reason=reason, headers=headers, body=body)
        return _with_views(response, views)

    m = _REQUEST_LINE_RE.fullmatch(start)
    if m is None:
        # RFC 4475 lwsstart/trws/lwsruri all land here: exactly one SP between elements.
        if start[:4].upper() == "SIP/":
            raise SipParseError("malformed status line")
        raise SipParseError("malformed request line")
    version = m.group("version").upper()
    if version != SIP_VERSION:
        status = 505 if _VERSION_ONLY_RE.fullmatch(version) else 400
        raise SipParseError("unsupported SIP version", status=status)
    method = m.group("method")
    uri = _parse_request_uri(m.group("uri"))
    views = _check_headers(headers, REQUIRED_IN_REQUEST)
    cseq = views["cseq"]
    assert isinstance(cseq, CSeq)
    if cseq.method != method:
        raise SipParseError("CSeq method does not match request method")
    return _with_views(SipRequest(method=method, uri=uri, headers=headers, body=body), views)


def _with_views(message: _M, views: dict[str, object]) -> _M:
    # Fill the cached_property slots directly: these values came from the very
    # headers the properties would parse.
    message.__dict__.update(views)
    return message


def parse_message(
    data: bytes, *, datagram: bool = True, limits: SipLimits = DEFAULT_LIMITS
) -> SipMessage:
    """Parse one SIP message, or raise :class:`SipParseError` — never anything else.

    ``datagram``: on UDP a missing Content-Length means "the rest of the datagram"
    and trailing octets are dropped; on a stream (the framer hands over exactly one
    message) Content-Length is mandatory and must match.
    """
    try:
        return _parse_strict(data, datagram, limits)
    except SipParseError as exc:
        error = exc
    except Exception:
        # The contract is "a message or SipParseError"; a bug in a grammar helper must
        # not turn hostile input into a crash of the transport.
        error = SipParseError("unparseable message")
    raise error.with_can_respond(_recover_request(data, limits) is not None) from None


def parse_request(data: bytes, **kwargs: bool) -> SipRequest:
    message = parse_message(data, **kwargs)  # type: ignore[arg-type]
    if not isinstance(message, SipRequest):
        raise SipParseError("expected a request")
    return message


def parse_response(data: bytes, **kwargs: bool) -> SipResponse:
    message = parse_message(data, **kwargs)  # type: ignore[arg-type]
    if not isinstance(message, SipResponse):
        raise SipParseError("expected a response")
    return message


# --- answering what could not be parsed ----------------------------------------------------

_LOOSE_REQUEST_LINE_RE = re.compile(rf"\s*(?P<method>{grammar.TOKEN})\s+\S")
_LOOSE_CSEQ_RE = re.compile(rf"\d+{grammar.LWS}{grammar.TOKEN}")


@dataclasses.dataclass(frozen=True)
class _Recovered:
    vias: tuple[str, ...]
    from_: str
    to: str
    call_id: str
    cseq: str


def _recover_request(data: bytes, limits: SipLimits) -> _Recovered | None:
    """Best-effort pick of what RFC 3261 §8.2.6 needs to answer a broken request."""
    try:
        window = data[: limits.max_message_size]
        end = window.find(b"\r\n\r\n")
        head = (window if end < 0 else window[:end]).decode(ENCODING, ERRORS)
        lines = head.split(CRLF)
        m = _LOOSE_REQUEST_LINE_RE.match(lines[0])
        if m is None or lines[0][:4].upper() == "SIP/" or m.group("method") == "ACK":
            # Responses are never answered; neither is an ACK (RFC 3261 §17.2.1).
            return None
        unfolded: list[str] = []
        for line in lines[1 : limits.max_headers * 4]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip(" \t")
            else:
                unfolded.append(line)
        found: dict[str, list[str]] = {}
        for line in unfolded:
            hm = _HEADER_LINE_RE.fullmatch(line)
            if hm is None:
                continue
            name = canonical_name(hm.group("name"))
            value = hm.group("value").strip(" \t")
            if value and not _BREAK_RE.search(value) and len(value) <= limits.max_line_length:
                found.setdefault(name, []).append(value)
        vias = [v for line in found.get("Via", []) for v in grammar.split_commas(line)]
        if not vias or not all(found.get(n) for n in ("From", "To", "Call-ID", "CSeq")):
            return None
        for via in vias:
            Via.parse(via)  # the answer goes where the top Via says: it must make sense
        cseq = found["CSeq"][0]
        # Copied as received; an overlarge number still names the transaction
        # (RFC 4475 scalar02 expects a 400).
        if _LOOSE_CSEQ_RE.fullmatch(cseq) is None:
            return None
        return _Recovered(
            vias=tuple(vias),
            from_=found["From"][0],
            to=found["To"][0],
            call_id=found["Call-ID"][0],
            cseq=cseq,
        )
    except Exception:
        return None


def build_error_response(
    data: bytes, error: SipParseError, *, limits: SipLimits = DEFAULT_LIMITS
) -> SipResponse | None:
    """The response to a request that failed to parse, or None to drop it silently.

    The status comes from the error (400, 416, 505, 513); the parse reason is
    carried in ``Warning: 399`` (RFC 3261 §20.43, "miscellaneous warning").
    """
    if not error.can_respond:
        return None
    recovered = _recover_request(data, limits)
    if recovered is None:
        return None
    to = recovered.to
    try:
        if NameAddress.parse(to).tag is None:
            to = f"{to};tag={new_tag()}"
    except SipParseError:
        pass  # RFC 3261 §8.2.6.2: To is copied; a To we cannot parse is copied as is.
    pairs = [("Via", v) for v in recovered.vias]
    pairs += [
        ("From", recovered.from_),
        ("To", to),
        ("Call-ID", recovered.call_id),
        ("CSeq", recovered.cseq),
        ("Warning", f"399 voicegw {grammar.quote(error.reason)}"),
    ]
    return SipResponse(
        status=error.status, reason=reason_phrase(error.status), headers=Headers.of(pairs)
    )


# --- building ---------------------------------------------------------------------------------


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie, unique per transaction (§8.1.1.7)."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(8)


def new_call_id(host: str | None = None) -> str:
    local = secrets.token_hex(16)
    return local if host is None else f"{local}@{host}"


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to ``request`` per RFC 3261 §8.2.6.

    Via (every value, in order), From, Call-ID and CSeq are copied as received;
    To is copied and, except for 100 Trying, gets ``to_tag`` (or a fresh tag)
    when it has none. A 100 Trying copies Timestamp (§8.2.6.1).
    """
    pairs = [("Via", v) for v in request.headers.get_all("Via")]
    to = request.headers.get("To") or ""
    if status != 100 and request.to.tag is None:
        to = f"{to};tag={to_tag or new_tag()}"
    pairs += [
        ("From", request.headers.get("From") or ""),
        ("To", to),
        ("Call-ID", request.headers.get("Call-ID") or ""),
        ("CSeq", request.headers.get("CSeq") or ""),
    ]
    timestamp = request.headers.get("Timestamp")
    if status == 100 and timestamp is not None:
        pairs.append(("Timestamp", timestamp))
    pairs.extend(headers)
    return SipResponse(
        status=status,
        reason=reason_phrase(status) if reason is None else reason,
        headers=Headers.of(pairs),
        body=body,
    )


__all__ = [
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "SipLimits",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "build_error_response",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "parse_request",
    "parse_response",
    "reason_phrase",
    "split_head",
]
