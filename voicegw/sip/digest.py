"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Sans-IO: header *values* in, header values out, ``now`` passed in.

Server side (:class:`DigestAuthenticator`): challenges offer SHA-256 then
MD5, ``qop="auth"``. Nonces carry their issue time and an HMAC under the
server secret, so any node holding the secret verifies them without shared
state; an expired nonce with a correct response earns ``stale=true``.
Nonce-counts are remembered per (nonce, cnonce) in a bounded table to refuse
replays. The verifier only ever sees HA1 digests (:func:`ha1`), never
passwords. Every failure is one :class:`Rejection` whose header values
depend on nothing but ``now`` and the nonce entropy: an unknown user is
checked against a dummy HA1 through the same code path as a wrong password,
so the two answers are byte-identical and take the same work.

Client side (:class:`DigestClient`): answers 401/407 for our outgoing
requests, preferring SHA-256, and retries once on ``stale=true``.
:func:`credential_guard` refuses to hand a trunk's credentials to a
challenge from another realm or for a request that is not going to that
trunk (the digest-leak class of bugs where a callee challenges the caller's
outbound INVITE and harvests a response for the trunk's password).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

MAX_HEADER_LENGTH = 4096


class DigestError(Exception):
    """A header value that is not well-formed Digest; the one error this module raises.

    ``reason`` is static text, safe to log: it never echoes header bytes.
    The SIP layer answers a malformed Authorization with 400 (``status``).
    """

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Algorithms (RFC 7616 §6.1, RFC 8760 for SIP)


@dataclass(frozen=True, slots=True)
class Algorithm:
    name: str
    hash: Callable[[bytes], str]
    session: bool  # "-sess": HA1 is re-keyed with the nonce and cnonce

    @property
    def hex_length(self) -> int:
        return len(self.hash(b""))


def _md5(data: bytes) -> str:
    # MD5 here is the protocol's digest function, not our choice of hash.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ALGORITHMS: dict[str, Algorithm] = {
    a.name.upper(): a
    for a in (
        Algorithm("MD5", _md5, False),
        Algorithm("MD5-sess", _md5, True),
        Algorithm("SHA-256", _sha256, False),
        Algorithm("SHA-256-sess", _sha256, True),
    )
}
# What a client picks when a server offers several (strongest first).
CLIENT_PREFERENCE = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")


def algorithm(name: str | None) -> Algorithm:
    """The algorithm named in a header; absent means MD5 (RFC 2617 §3.2.1)."""
    found = ALGORITHMS.get((name or "MD5").upper())
    if found is None:
        raise DigestError("unsupported digest algorithm")
    return found


def ha1(username: str, realm: str, password: str, algorithm_name: str = "MD5") -> str:
    """H(username:realm:password): what a user store keeps instead of the password."""
    alg = algorithm(algorithm_name)
    return alg.hash(f"{username}:{realm}:{password}".encode())


def compute_response(
    ha1_hex: str,
    *,
    algorithm_name: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: int = 0,
    cnonce: str = "",
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (``qop=auth``) or RFC 2069 (no qop)."""
    alg = algorithm(algorithm_name)
    key = alg.hash(f"{ha1_hex}:{nonce}:{cnonce}".encode()) if alg.session else ha1_hex
    ha2 = alg.hash(f"{method}:{uri}".encode())
    if qop is None:
        return alg.hash(f"{key}:{nonce}:{ha2}".encode())
    return alg.hash(f"{key}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())


# ---------------------------------------------------------------------------
# Header grammar: scheme 1*SP auth-param *(COMMA auth-param)

_TCHARS = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
_SCHEME_RE = re.compile(rf"[ \t]*({_TCHARS})[ \t]+", re.ASCII)
_PARAM_RE = re.compile(rf"({_TCHARS})[ \t]*=[ \t]*({_TCHARS}|{_QUOTED})[ \t]*", re.ASCII)
_SEPARATOR_RE = re.compile(r",[ \t]*", re.ASCII)
_UNESCAPE_RE = re.compile(r"\\(.)", re.ASCII)
_UNSAFE_VALUE_RE = re.compile(r"[\x00-\x1f\x7f]", re.ASCII)


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Split ``Digest a=b, c="d"`` into the scheme and lower-cased parameter names.

    Quoted values are unescaped. Duplicate parameters are refused: two
    ``response=`` values would make "which one did we check" ambiguous.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError("authentication header too long")
    try:
        value.encode("utf-8")  # hashing needs the bytes; lone surrogates have none
    except UnicodeEncodeError:
        raise DigestError("authentication header is not valid UTF-8") from None
    match = _SCHEME_RE.match(value)
    if match is None:
        raise DigestError("authentication header has no scheme")
    scheme, pos = match.group(1), match.end()
    params: dict[str, str] = {}
    while True:
        param = _PARAM_RE.match(value, pos)
        if param is None:
            raise DigestError("malformed authentication parameter")
        name, raw = param.group(1).lower(), param.group(2)
        if name in params:
            raise DigestError("duplicate authentication parameter")
        params[name] = _UNESCAPE_RE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = param.end()
        if pos == len(value):
            return scheme, params
        separator = _SEPARATOR_RE.match(value, pos)
        if separator is None:
            raise DigestError("malformed authentication parameter list")
        pos = separator.end()


def _quote(value: str) -> str:
    if _UNSAFE_VALUE_RE.search(value):
        raise DigestError("control character in authentication value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format(params: Iterable[tuple[str, str, bool]]) -> str:
    return "Digest " + ", ".join(
        f"{name}={_quote(value) if quoted else value}" for name, value, quoted in params
    )


def _digest_params(value: str) -> dict[str, str]:
    scheme, params = parse_auth_header(value)
    if scheme.lower() != "digest":
        raise DigestError("authentication scheme is not Digest")
    return params


@dataclass(frozen=True, slots=True)
class Credentials:
    """A parsed Authorization / Proxy-Authorization value (RFC 3261 §25 ``credentials``)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str = field(repr=False)
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int = 0
    cnonce: str = ""
    opaque: str | None = None


_NC_RE = re.compile(r"[0-9A-Fa-f]{8}", re.ASCII)
_REQUIRED_CREDENTIAL_PARAMS = ("username", "realm", "nonce", "uri", "response")


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization header value; raises :class:`DigestError` and nothing else."""
    params = _digest_params(value)
    if any(name not in params for name in _REQUIRED_CREDENTIAL_PARAMS):
        raise DigestError("digest credentials lack a required parameter")
    alg = algorithm(params.get("algorithm"))
    qop = params.get("qop")
    nc, cnonce = 0, ""
    if qop is not None:
        if "nc" not in params or "cnonce" not in params:
            raise DigestError("qop given without nc and cnonce")
        if not _NC_RE.fullmatch(params["nc"]):
            raise DigestError("nonce-count is not 8 hex digits")
        nc, cnonce = int(params["nc"], 16), params["cnonce"]
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=alg.name,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed WWW-Authenticate / Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    """Parse a Digest challenge; raises :class:`DigestError` and nothing else."""
    params = _digest_params(value)
    if "realm" not in params or "nonce" not in params:
        raise DigestError("digest challenge lacks realm or nonce")
    qop = tuple(q.strip() for q in params["qop"].split(",") if q.strip()) if "qop" in params else ()
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm(params.get("algorithm")).name,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


# ---------------------------------------------------------------------------
# Server side


class RejectReason(enum.StrEnum):
    """Why a request was refused (for metrics; never put on the wire).

    There is deliberately no "unknown user" member: that case *is*
    ``WRONG_RESPONSE``.
    """

    NO_CREDENTIALS = "no-credentials"
    MALFORMED = "malformed"
    BAD_NONCE = "bad-nonce"
    STALE_NONCE = "stale-nonce"
    REPLAY = "replay"
    WRONG_RESPONSE = "wrong-response"


@dataclass(frozen=True, slots=True)
class Accepted:
    username: str
    algorithm: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Answer 401 (or 407) with one header per value in ``challenges``, in order.

    ``counts_as_failure`` is True only when the request carried a valid nonce
    we issued to this client and a wrong response: a guess by a source that
    provably saw our challenge, the only kind worth feeding to a ban list.
    """

    challenges: tuple[str, ...]
    reason: RejectReason
    counts_as_failure: bool = False


HA1Lookup = Callable[[str, str], str | None]
"""(username, algorithm name) -> the stored HA1 hex digest, or None if unknown."""

_NONCE_LAYOUT = struct.Struct(">Q12s16s")  # issue time in ms, entropy, truncated HMAC
_NONCE_LENGTH = 48  # base64 of the 36-byte layout, no padding


class DigestAuthenticator:
    """Challenges and verifies Digest credentials for one realm.

    ``secret`` keys the nonce HMAC; nodes sharing it (and a common clock for
    ``now``, e.g. wall time) accept each other's nonces. ``client_key`` binds
    a nonce to whatever the caller chooses (normally the source IP), so a
    nonce sniffed or fetched from elsewhere is useless and a failure with a
    valid nonce proves the source really is at that address.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_ttl: float = 300.0,
        max_tracked_nonces: int = 10_000,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("digest secret must be at least 16 bytes")
        self.realm = realm
        self.algorithms = tuple(algorithm(name).name for name in algorithms)
        self.nonce_ttl = nonce_ttl
        self._secret = secret
        self._random_bytes = random_bytes
        self._opaque = self._mac(b"opaque", b"")[:16].hex()
        self._counts = _NonceCounts(max_tracked_nonces)

    def challenge(self, now: float, client_key: str = "") -> Rejection:
        """The 401/407 for a request that carried no credentials for our realm."""
        return self._reject(now, client_key, RejectReason.NO_CREDENTIALS)

    def verify(
        self,
        authorization: Sequence[str],
        *,
        method: str,
        now: float,
        lookup: HA1Lookup,
        client_key: str = "",
        request_uri: str | None = None,
    ) -> Accepted | Rejection:
        """Check the request's Authorization values (all of them, any order).

        ``request_uri``, when given, must equal the credentials' ``uri``
        exactly, so a response computed for one URI cannot be replayed
        against another.
        """
        creds: Credentials | None = None
        for value in authorization:
            try:
                parsed = parse_credentials(value)
            except DigestError:
                return self._reject(now, client_key, RejectReason.MALFORMED)
            if parsed.realm == self.realm:
                creds = parsed
                break
        if creds is None:
            return self._reject(now, client_key, RejectReason.NO_CREDENTIALS)
        if (
            creds.algorithm not in self.algorithms
            or creds.qop != "auth"
            or (creds.opaque is not None and creds.opaque != self._opaque)
            or (request_uri is not None and creds.uri != request_uri)
        ):
            return self._reject(now, client_key, RejectReason.MALFORMED)
        issued = self._nonce_issued(creds.nonce, client_key)
        if issued is None or issued > now + 1.0:
            return self._reject(now, client_key, RejectReason.BAD_NONCE)

        stored = lookup(creds.username, creds.algorithm)
        key = stored if stored is not None else self._dummy_ha1(creds.username, creds.algorithm)
        expected = compute_response(
            key,
            algorithm_name=creds.algorithm,
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        matches = hmac.compare_digest(expected.encode(), creds.response.encode("utf-8", "replace"))
        if not matches or stored is None:
            return self._reject(now, client_key, RejectReason.WRONG_RESPONSE, failure=True)
        if now - issued > self.nonce_ttl:
            return self._reject(now, client_key, RejectReason.STALE_NONCE, stale=True)
        verdict = self._counts.use(creds.nonce, creds.cnonce, creds.nc, issued, now, self.nonce_ttl)
        if verdict is _NonceUse.FORGOTTEN:
            return self._reject(now, client_key, RejectReason.STALE_NONCE, stale=True)
        if verdict is _NonceUse.REPLAY:
            return self._reject(now, client_key, RejectReason.REPLAY)
        return Accepted(creds.username, creds.algorithm)

    # -- internals ----------------------------------------------------------

    def _reject(
        self,
        now: float,
        client_key: str,
        reason: RejectReason,
        *,
        stale: bool = False,
        failure: bool = False,
    ) -> Rejection:
        nonce = self._new_nonce(now, client_key)
        headers = tuple(
            _format(
                [
                    ("realm", self.realm, True),
                    ("nonce", nonce, True),
                    ("opaque", self._opaque, True),
                    ("algorithm", name, False),
                    ("qop", "auth", True),
                    *([("stale", "true", False)] if stale else []),
                ]
            )
            for name in self.algorithms
        )
        return Rejection(headers, reason, failure)

    def _mac(self, data: bytes, client_key: bytes) -> bytes:
        return hmac.digest(self._secret, b"voicegw-digest\0" + data + b"\0" + client_key, "sha256")

    def _new_nonce(self, now: float, client_key: str) -> str:
        head = struct.pack(">Q", max(0, int(now * 1000))) + self._random_bytes(12)
        raw = head + self._mac(head, client_key.encode())[:16]
        return base64.urlsafe_b64encode(raw).decode()

    def _nonce_issued(self, nonce: str, client_key: str) -> float | None:
        """Issue time of a nonce we made for ``client_key``, or None."""
        if len(nonce) != _NONCE_LENGTH:
            return None
        try:
            raw = base64.b64decode(nonce.encode("ascii"), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) != _NONCE_LAYOUT.size:
            return None
        millis, _entropy, mac = _NONCE_LAYOUT.unpack(raw)
        head = raw[:20]
        if not hmac.compare_digest(mac, self._mac(head, client_key.encode())[:16]):
            return None
        return float(millis) / 1000.0

    def _dummy_ha1(self, username: str, algorithm_name: str) -> str:
        # Same length as a real HA1 so the hashing work is the same.
        alg = algorithm(algorithm_name)
        return self._mac(b"dummy-ha1", username.encode()).hex()[: alg.hex_length]


class _NonceUse(enum.Enum):
    FRESH = enum.auto()
    REPLAY = enum.auto()
    FORGOTTEN = enum.auto()


class _NonceCounts:
    """Highest nonce-count seen per (nonce, cnonce), bounded.

    Forgetting an entry must not reopen a replay window, so eviction raises
    a floor: an untracked nonce issued at or before the floor is treated as
    stale and the client simply re-authenticates with a fresh nonce.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def use(
        self, nonce: str, cnonce: str, nc: int, issued: float, now: float, ttl: float
    ) -> _NonceUse:
        self._expire(now, ttl)
        key = (nonce, cnonce)
        previous = self._seen.get(key)
        if previous is None:
            if issued <= self._floor:
                return _NonceUse.FORGOTTEN
            if len(self._seen) >= self.capacity:
                _, (evicted_issued, _) = self._seen.popitem(last=False)
                self._floor = max(self._floor, evicted_issued)
        elif nc <= previous[1]:
            return _NonceUse.REPLAY
        self._seen[key] = (issued, nc)
        self._seen.move_to_end(key)
        return _NonceUse.FRESH

    def _expire(self, now: float, ttl: float) -> None:
        # Entries of expired nonces can go: such nonces are answered stale anyway.
        while self._seen:
            key, (issued, _) = next(iter(self._seen.items()))
            if now - issued <= ttl:
                break
            del self._seen[key]


# ---------------------------------------------------------------------------
# Client side


@dataclass(frozen=True, slots=True)
class TrunkCredentials:
    """What we may use to authenticate towards one trunk, and where."""

    username: str
    password: str = field(repr=False)
    realm: str
    host: str


class RefusalReason(enum.StrEnum):
    HOST_MISMATCH = "host-mismatch"
    REALM_MISMATCH = "realm-mismatch"
    NO_USABLE_CHALLENGE = "no-usable-challenge"
    CREDENTIALS_REJECTED = "credentials-rejected"


@dataclass(frozen=True, slots=True)
class Refusal:
    """We will not answer this challenge; the request fails with the 401/407 as is."""

    reason: RefusalReason


def _host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def credential_guard(
    challenge_realm: str, target_host: str, trunk: TrunkCredentials
) -> Refusal | None:
    """None if ``trunk``'s credentials may answer; else why not.

    Both must hold: the request goes to the trunk's host, and the challenge
    is for the trunk's realm. Realm alone is not enough, since any callee
    can claim any realm.
    """
    if _host(target_host) != _host(trunk.host):
        return Refusal(RefusalReason.HOST_MISMATCH)
    if challenge_realm != trunk.realm:
        return Refusal(RefusalReason.REALM_MISMATCH)
    return None


# (status of the challenge) -> (challenge header, the header we answer with)
CHALLENGE_HEADERS: dict[int, tuple[str, str]] = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """What one request (and its re-sends) has answered so far; pass it back next time."""

    answered: frozenset[tuple[int, str]] = frozenset()
    stale_retries: int = 0


@dataclass(frozen=True, slots=True)
class AuthorizationHeader:
    """Add this header to the re-sent request (new CSeq, same Call-ID)."""

    name: str
    value: str
    attempt: AuthAttempt


class DigestClient:
    """Answers challenges for requests we send through one trunk."""

    def __init__(
        self,
        credentials: TrunkCredentials,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        max_nonces: int = 64,
    ) -> None:
        self.credentials = credentials
        self._random_bytes = random_bytes
        self._max_nonces = max_nonces
        self._nc: OrderedDict[str, int] = OrderedDict()

    def respond(
        self,
        status: int,
        challenges: Sequence[str],
        *,
        method: str,
        uri: str,
        target_host: str,
        attempt: AuthAttempt | None = None,
    ) -> AuthorizationHeader | Refusal:
        """The header to retry with after a 401/407, or why we will not.

        A second challenge for a request already answered means the
        credentials were refused, unless it says ``stale=true``: that gets
        exactly one more try.
        """
        attempt = attempt or AuthAttempt()
        header_name = CHALLENGE_HEADERS[status][1]
        usable = _usable_challenges(challenges)
        if not usable:
            return Refusal(RefusalReason.NO_USABLE_CHALLENGE)
        verdicts = [(c, credential_guard(c.realm, target_host, self.credentials)) for c in usable]
        ours = [c for c, refusal in verdicts if refusal is None]
        if not ours:
            first_refusal = verdicts[0][1]
            assert first_refusal is not None
            return first_refusal
        chosen = min(ours, key=lambda c: CLIENT_PREFERENCE.index(c.algorithm))
        stale_retries = attempt.stale_retries
        if (status, chosen.realm) in attempt.answered:
            if not chosen.stale or stale_retries >= 1:
                return Refusal(RefusalReason.CREDENTIALS_REJECTED)
            stale_retries += 1
        value = self._authorization(chosen, method, uri)
        answered = attempt.answered | {(status, chosen.realm)}
        return AuthorizationHeader(header_name, value, AuthAttempt(answered, stale_retries))

    def _authorization(self, challenge: Challenge, method: str, uri: str) -> str:
        creds = self.credentials
        key = ha1(creds.username, creds.realm, creds.password, challenge.algorithm)
        qop = "auth" if "auth" in challenge.qop else None
        nc = self._next_nc(challenge.nonce) if qop else 0
        cnonce = self._random_bytes(12).hex() if qop else ""
        response = compute_response(
            key,
            algorithm_name=challenge.algorithm,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )
        params: list[tuple[str, str, bool]] = [
            ("username", creds.username, True),
            ("realm", challenge.realm, True),
            ("nonce", challenge.nonce, True),
            ("uri", uri, True),
            ("response", response, True),
            ("algorithm", challenge.algorithm, False),
        ]
        if qop:
            params += [("qop", qop, False), ("nc", f"{nc:08x}", False), ("cnonce", cnonce, True)]
        if challenge.opaque is not None:
            params.append(("opaque", challenge.opaque, True))
        return _format(params)

    def _next_nc(self, nonce: str) -> int:
        nc = self._nc.pop(nonce, 0) + 1
        self._nc[nonce] = nc
        if len(self._nc) > self._max_nonces:
            self._nc.popitem(last=False)
        return nc


def _usable_challenges(values: Sequence[str]) -> list[Challenge]:
    """Challenges we can answer: Digest, a known algorithm, qop absent or offering auth."""
    usable = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if challenge.qop and "auth" not in challenge.qop:
            continue
        usable.append(challenge)
    return usable
