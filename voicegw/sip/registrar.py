"""The registrar of RFC 3261 §10.3, sans-IO.

:func:`process_register` takes a REGISTER that the caller has already
authenticated (step 3 is the caller's, with :mod:`voicegw.sip.digest`), the
bindings currently stored for the address-of-record, the packet's source and
``now`` (wall-clock seconds: bindings outlive the process, so their expiry
must be absolute), and returns the response together with the binding changes
the caller persists. Nothing is changed unless the whole request succeeds
(§10.3 step 7: "all or nothing").

An authenticated identity registers only its own address-of-record: the To
URI's user must be the authenticated username (403 otherwise), which is what
stops one account from hijacking another's calls.

Not implemented (no client of ours needs them yet): Path (RFC 3327),
SIP Outbound's instance-id/reg-id (RFC 5626) and GRUU (RFC 5627); a Require
naming them is answered 420.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import NameAddress, unsupported_options
from voicegw.sip.message import SipRequest, SipResponse, make_response
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import URI, SipURI, parse_sip_uri


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Expiry bounds (seconds) and the per-AOR binding cap."""

    min_expires: int = 60
    max_expires: int = 3600
    #: §10.2.1.1: what a REGISTER naming no expiry gets (the RFC's suggestion).
    default_expires: int = 3600
    #: A cap per AOR so one account cannot grow the table without bound.
    max_bindings: int = 10
    #: Option-tags a Require header may name (§10.3 step 2).
    supported: frozenset[str] = frozenset()
    #: What a binding store holds per field; longer values are refused up front (400)
    #: rather than failing half-way in the database.
    max_contact_length: int = 1024
    max_call_id_length: int = 255


DEFAULT_POLICY = RegistrarPolicy()


@dataclass(frozen=True, slots=True)
class Binding:
    """One Contact bound to an address-of-record until ``expires_at`` (wall clock)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    #: Where the REGISTER came from: the way back to a UA behind NAT.
    source: Destination
    q: float | None = None

    def remaining(self, now: float) -> int:
        """Whole seconds left, rounded up so a live binding never shows 0."""
        return max(0, math.ceil(self.expires_at - now))

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """The answer to send and what to persist.

    ``saved`` rows are inserted or replaced by (aor, contact); ``removed``
    rows are deleted. On any failure both are empty and ``bindings`` is the
    unchanged live set.
    """

    response: SipResponse
    bindings: tuple[Binding, ...]
    saved: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()
    #: Set when the request failed: why, as a static label.
    refusal: Refusal | None = None


class Refusal(enum.Enum):
    """Why a REGISTER failed: (status, reason phrase or None for the standard one).

    The member name is a static label, safe for logs and metrics.
    """

    MALFORMED = (400, None)
    TOO_LONG = (400, "Contact Or Call-ID Too Long")
    WILDCARD_MISUSED = (400, "Wildcard Contact Needs Expires 0 And No Other Contact")
    CONTACT_NOT_SIP = (400, "Contact Must Be A SIP URI")
    NOT_OUR_DOMAIN = (404, None)
    NOT_YOUR_AOR = (403, None)
    TOO_MANY_BINDINGS = (403, "Too Many Bindings")
    UNSUPPORTED_EXTENSION = (420, None)
    INTERVAL_TOO_BRIEF = (423, None)
    OUT_OF_ORDER = (500, "Out Of Order CSeq")

    @property
    def status(self) -> int:
        status: int = self.value[0]
        return status


class _Refused(Exception):
    def __init__(self, refusal: Refusal, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(refusal.name)
        self.refusal = refusal
        self.headers = headers


# §19.1.4: these URI parameters must match when present in either URI.
_STRICT_URI_PARAMS = ("transport", "user", "ttl", "method", "maddr")


def address_of_record(uri: URI) -> str | None:
    """The canonical AOR ``sip:user@host`` of a To URI, None if it has no user part.

    Parameters, port and header fields are not part of an AOR (§10.3 step 5);
    the host is case-insensitive, the user part is not.
    """
    if not isinstance(uri, SipURI) or not uri.user:
        return None
    return str(SipURI(host=uri.host.lower(), user=uri.user, scheme=uri.scheme.lower()))


def same_uri(a: SipURI, b: SipURI) -> bool:
    """SIP URI equivalence of RFC 3261 §19.1.4 (header fields ignored)."""
    if (a.scheme.lower(), a.user, a.password, a.host.lower(), a.port) != (
        b.scheme.lower(),
        b.user,
        b.password,
        b.host.lower(),
        b.port,
    ):
        return False
    for name in _STRICT_URI_PARAMS:
        if (name in a.params) != (name in b.params) or _lower(a.params.get(name)) != _lower(
            b.params.get(name)
        ):
            return False
    # Any other parameter counts only when both URIs carry it.
    return all(
        _lower(value) == _lower(b.params.get(name))
        for name, value in a.params.items
        if name.lower() not in _STRICT_URI_PARAMS and name in b.params
    )


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def process_register(
    request: SipRequest,
    *,
    username: str,
    domain: str,
    current: Sequence[Binding],
    source: Destination,
    now: float,
    policy: RegistrarPolicy = DEFAULT_POLICY,
) -> RegisterResult:
    """Apply one authenticated REGISTER (§10.3 steps 1, 2, 4-8).

    ``username`` is who the digest check proved the sender to be, ``domain``
    the domain that identity belongs to; ``current`` may include expired
    bindings, which are dropped (and reported in ``removed``) on success.
    """
    live = tuple(b for b in current if not b.expired(now))
    try:
        aor = _check_target(request, username, domain, policy)
        result = _apply_contacts(request, aor, live, source, now, policy)
    except _Refused as refused:
        return _refuse(request, live, refused.refusal, refused.headers)
    except (SipParseError, ValueError):
        # A Contact, Expires or q value the parser only checks on use.
        return _refuse(request, live, Refusal.MALFORMED)
    expired = tuple(b for b in current if b.expired(now))
    return RegisterResult(result.response, result.bindings, result.saved, result.removed + expired)


def _check_target(request: SipRequest, username: str, domain: str, policy: RegistrarPolicy) -> str:
    """Steps 1, 2, 4 and 5: our domain, known extensions, the sender's own AOR."""
    if request.method != "REGISTER":
        raise ValueError("process_register needs a REGISTER")
    if not isinstance(request.uri, SipURI) or request.uri.host.lower() != domain.lower():
        raise _Refused(Refusal.NOT_OUR_DOMAIN)
    unsupported = unsupported_options(request.headers, policy.supported)
    if unsupported:
        raise _Refused(Refusal.UNSUPPORTED_EXTENSION, (("Unsupported", ", ".join(unsupported)),))
    to_uri = request.to.uri
    aor = address_of_record(to_uri)
    if aor is None or not isinstance(to_uri, SipURI) or to_uri.host.lower() != domain.lower():
        raise _Refused(Refusal.NOT_OUR_DOMAIN)
    if to_uri.user != username:
        raise _Refused(Refusal.NOT_YOUR_AOR)
    return aor


def _apply_contacts(
    request: SipRequest,
    aor: str,
    live: tuple[Binding, ...],
    source: Destination,
    now: float,
    policy: RegistrarPolicy,
) -> RegisterResult:
    """Steps 6-8 over the live bindings; raises :class:`_Refused` to abort everything."""
    contacts = request.contact
    call_id, cseq = request.call_id, request.cseq.seq
    if contacts is None:
        return _remove_all(request, live, call_id, cseq, now)

    if len(call_id) > policy.max_call_id_length:
        raise _Refused(Refusal.TOO_LONG)
    bindings = list(live)
    saved: list[Binding] = []
    replaced: list[Binding] = []
    for contact in contacts:
        if not isinstance(contact.uri, SipURI):
            raise _Refused(Refusal.CONTACT_NOT_SIP)
        if len(str(contact.uri)) > policy.max_contact_length:
            raise _Refused(Refusal.TOO_LONG)
        expires = _requested_expiry(contact, request, policy)
        for existing in [b for b in bindings if same_uri(parse_sip_uri(b.contact), contact.uri)]:
            bindings.remove(existing)
            if existing in saved:  # the same contact twice in one request: the last one wins
                saved.remove(existing)
            else:
                _check_order(existing, call_id, cseq)
                replaced.append(existing)
        if expires == 0:
            continue
        binding = Binding(
            aor=aor,
            contact=str(contact.uri),
            expires_at=now + expires,
            call_id=call_id,
            cseq=cseq,
            source=source,
            q=contact.q,
        )
        bindings.append(binding)
        saved.append(binding)
    if len(bindings) > policy.max_bindings:
        raise _Refused(Refusal.TOO_MANY_BINDINGS)
    # A binding rewritten under the same contact string is an update, not a removal.
    rewritten = {b.contact for b in saved}
    removed = tuple(b for b in replaced if b.contact not in rewritten)
    return RegisterResult(_ok(request, bindings, now), tuple(bindings), tuple(saved), removed)


def _remove_all(
    request: SipRequest, live: tuple[Binding, ...], call_id: str, cseq: int, now: float
) -> RegisterResult:
    """``Contact: *`` (§10.3 step 6): only alone and only with ``Expires: 0``."""
    if len(request.headers.values("Contact")) != 1 or request.expires != 0:
        raise _Refused(Refusal.WILDCARD_MISUSED)
    for binding in live:
        _check_order(binding, call_id, cseq)
    return RegisterResult(_ok(request, [], now), (), (), live)


def _requested_expiry(contact: NameAddress, request: SipRequest, policy: RegistrarPolicy) -> int:
    """The contact's ``expires``, else the Expires header, else the default; bounded."""
    asked = contact.expires
    if asked is None:
        asked = request.expires
    if asked is None:
        asked = policy.default_expires
    if asked == 0:
        return 0
    if asked < policy.min_expires:
        raise _Refused(Refusal.INTERVAL_TOO_BRIEF, (("Min-Expires", str(policy.min_expires)),))
    # §10.3 step 7: the registrar may shorten a requested interval, never lengthen it.
    return min(asked, policy.max_expires)


def _check_order(existing: Binding, call_id: str, cseq: int) -> None:
    """§10.3 step 7: within one Call-ID only a higher CSeq may change a binding."""
    if existing.call_id == call_id and cseq <= existing.cseq:
        raise _Refused(Refusal.OUT_OF_ORDER)


def _ok(request: SipRequest, bindings: Sequence[Binding], now: float) -> SipResponse:
    contacts = [("Contact", f"<{b.contact}>;expires={b.remaining(now)}") for b in bindings]
    headers = (*contacts, ("Date", http_date(now)))
    return make_response(request, 200, headers=headers)


def _refuse(
    request: SipRequest,
    live: tuple[Binding, ...],
    refusal: Refusal,
    headers: tuple[tuple[str, str], ...] = (),
) -> RegisterResult:
    status, reason = refusal.value
    response = make_response(request, status, reason, headers=headers)
    return RegisterResult(response, live, refusal=refusal)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float) -> str:
    """``rfc1123-date`` in GMT (§20.17), built by hand so the locale cannot change it."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )
