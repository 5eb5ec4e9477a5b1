"""Which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3, §9.2).

Keys are frozen dataclasses used as dict keys, so matching is one lookup.
A request whose top Via branch lacks the ``z9hG4bK`` magic cookie came from
an RFC 2543 element and is matched on the older tuple (Request-URI, tags,
Call-ID, CSeq, top Via); the To tag part of that rule needs the state of the
transaction and is checked by the caller, see :func:`legacy_to_tag_matches`.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicegw.sip.message import SipRequest, SipResponse

MAGIC_COOKIE = "z9hG4bK"

# Default ports used to compare a sent-by that omits the port with one that spells it.
_DEFAULT_PORTS = {"TLS": 5061, "WSS": 443, "WS": 80}


@dataclass(frozen=True, slots=True)
class ClientKey:
    """§17.1.3: the branch of the top Via plus the CSeq method."""

    branch: str
    method: str


@dataclass(frozen=True, slots=True)
class ServerKey:
    """§17.2.3: branch (with magic cookie), sent-by and method (ACK counts as INVITE)."""

    branch: str
    host: str
    port: int
    method: str


@dataclass(frozen=True, slots=True)
class LegacyServerKey:
    """§17.2.3 RFC 2543 fallback, without the To tag (checked against transaction state)."""

    request_uri: str
    from_tag: str | None
    call_id: str
    cseq: int
    method: str
    top_via: str


TransactionKey = ServerKey | LegacyServerKey


def client_key(request: SipRequest) -> ClientKey:
    """The key under which responses to our own ``request`` will arrive."""
    branch = request.via[0].branch if request.via else None
    if branch is None or not branch.startswith(MAGIC_COOKIE):
        raise ValueError("a request we send needs a top Via branch with the z9hG4bK cookie")
    return ClientKey(branch, request.cseq.method)


def response_key(response: SipResponse) -> ClientKey | None:
    """The client transaction a response belongs to, None when it cannot belong to any."""
    if not response.via or response.via[0].branch is None:
        return None
    return ClientKey(response.via[0].branch, response.cseq.method)


def server_key(request: SipRequest, method: str | None = None) -> TransactionKey:
    """The server transaction ``request`` belongs to, looked up as ``method`` if given.

    ACK is looked up as INVITE (it belongs to the INVITE's transaction); a CANCEL
    is its own transaction and finds the INVITE it cancels with ``method="INVITE"``.
    """
    target = method or ("INVITE" if request.method == "ACK" else request.method)
    top = request.via[0]
    if top.branch is not None and top.branch.startswith(MAGIC_COOKIE):
        port = top.port or _DEFAULT_PORTS.get(top.transport, 5060)
        return ServerKey(top.branch, top.host.lower(), port, target)
    return LegacyServerKey(
        request_uri=str(request.uri),
        from_tag=request.from_.tag,
        call_id=request.call_id,
        cseq=request.cseq.seq,
        method=target,
        top_via=request.headers.values("Via")[0].strip(),
    )


def legacy_to_tag_matches(
    request: SipRequest, original_to_tag: str | None, response_to_tag: str | None
) -> bool:
    """RFC 2543 matching of the To tag: an ACK carries the tag of our response,
    anything else (retransmission, CANCEL) the tag of the original request."""
    expected = response_to_tag if request.method == "ACK" else original_to_tag
    return request.to.tag == expected
