"""The messages the transaction layer builds itself, and where responses go.

ACK for a non-2xx final (§17.1.1.3) and CANCEL (§9.1) are the only requests
the layer writes; responses are routed per §18.2.2 and RFC 3581.
"""

from __future__ import annotations

from voicegw.sip.headers import Headers
from voicegw.sip.message import SipRequest, SipResponse
from voicegw.sip.transaction import Destination


def _first(headers: Headers, name: str) -> list[tuple[str, str]]:
    value = headers.get(name)
    return [] if value is None else [(name, value)]


def build_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """§17.1.1.3: ACK for a non-2xx final response, in the INVITE's transaction."""
    pairs = [("Via", request.headers.values("Via")[0])]
    pairs += [("Route", r) for r in request.headers.get_all("Route")]
    pairs += _first(request.headers, "From")
    pairs += _first(response.headers, "To")
    pairs += _first(request.headers, "Call-ID")
    pairs += [("CSeq", f"{request.cseq.seq} ACK"), ("Max-Forwards", "70")]
    return SipRequest(method="ACK", uri=request.uri, headers=Headers.of(pairs))


def build_cancel(request: SipRequest) -> SipRequest:
    """§9.1: CANCEL for ``request``, same Request-URI, Call-ID, From, To, CSeq number,
    top Via and Route; it is sent to the same destination as the request."""
    pairs = [("Via", request.headers.values("Via")[0])]
    pairs += [("Route", r) for r in request.headers.get_all("Route")]
    pairs += _first(request.headers, "From")
    pairs += _first(request.headers, "To")
    pairs += _first(request.headers, "Call-ID")
    pairs += [("CSeq", f"{request.cseq.seq} CANCEL"), ("Max-Forwards", "70")]
    return SipRequest(method="CANCEL", uri=request.uri, headers=Headers.of(pairs))


def response_destination(request: SipRequest, source: Destination) -> Destination:
    """§18.2.2 with RFC 3581: where responses to ``request`` go.

    Reliable transports answer on the connection the request came in on; over
    UDP the reply goes to the packet's source address (the ``received`` host),
    and to its source port only when the client asked with ``rport`` (else to
    the sent-by port of the top Via, 5060 by default).
    """
    if source.reliable or not request.via:
        return source
    top = request.via[0]
    if top.rport is not None:
        return source
    return Destination(source.host, top.port or 5060, source.transport)
