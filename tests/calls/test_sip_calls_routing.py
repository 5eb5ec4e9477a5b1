"""Who may call what: the routing table, with a number directory held in a dict."""

from __future__ import annotations

import pytest

from voicegw.calls.routing import (
    ROUTES,
    Caller,
    CallerIdentity,
    Refusal,
    Route,
    Router,
    Service,
    Target,
)
from voicegw.sip.message import SipRequest, parse_request

DIRECTORY = {"+442079460123": "acme", "+442079460999": "globex"}
ALICE = CallerIdentity(Caller.USER, "acme", "alice", "acme.voice.test")
TRUNK = CallerIdentity(Caller.PUBLIC)


async def owner(number: str) -> str | None:
    return DIRECTORY.get(number)


def invite(request_uri: str) -> SipRequest:
    text = (
        f"INVITE {request_uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-route\r\n"
        "From: <sip:alice@acme.voice.test>;tag=a\r\n"
        # A claimed tenant in headers changes nothing: only credential or number count.
        "To: <sip:echo@globex.voice.test>\r\n"
        "Call-ID: route-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    return parse_request(text.encode())


QUEUE = Service.AGENT_QUEUE  # tenant numbers reach the agent queue


@pytest.mark.parametrize(
    ("caller", "request_uri", "expected"),
    [
        (ALICE, "sip:echo@acme.voice.test", Route(Service.ECHO, "acme", None)),
        (ALICE, "sip:+442079460123@voice.test", Route(QUEUE, "acme", "+442079460123")),
        (ALICE, "sip:echo@globex.voice.test", Refusal(404, "Not Found")),
        (ALICE, "sip:+442079460999@voice.test", Refusal(403, "Forbidden")),
        (ALICE, "sip:+14155550100@voice.test", Refusal(404, "Not Found")),
        (TRUNK, "sip:+442079460123@voice.test", Route(QUEUE, "acme", "+442079460123")),
        (TRUNK, "sip:+442079460999@voice.test", Route(QUEUE, "globex", "+442079460999")),
        (TRUNK, "sip:echo@acme.voice.test", Refusal(404, "Not Found")),
        (TRUNK, "sip:+14155550100@elsewhere.example", Refusal(404, "Not Found")),
        (TRUNK, "tel:+442079460123", Refusal(404, "Not Found")),
    ],
)
async def test_route_decisions(
    caller: CallerIdentity, request_uri: str, expected: Route | Refusal
) -> None:
    assert await Router(owner).route(invite(request_uri), caller) == expected


def test_every_caller_and_target_has_a_decision() -> None:
    assert set(ROUTES) == {(c, t) for c in Caller for t in Target}


async def test_echo_address_is_configurable() -> None:
    router = Router(owner, echo_user="loopback")
    request = invite("sip:loopback@acme.voice.test")
    assert await router.route(request, ALICE) == Route(Service.ECHO, "acme", None)
    assert isinstance(await router.route(invite("sip:echo@acme.voice.test"), ALICE), Refusal)
