"""The bridge's parts that stand alone: regenerated digits, failure mapping, records, routing.

Bridged calls end to end (two real baresips) are in tests/e2e/test_baresip_bridge.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from voicegw.calls.bridge import DEFAULT_FAILURE, FAILURES, DigitSender
from voicegw.calls.records import leg_stats, mask_party
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
from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.session import DtmfReceived, LegConfig, MediaEvent, MediaLeg, static_codecs
from voicegw.media.transport import LegTransport, wallclock_offset
from voicegw.sip.message import SipRequest, parse_request
from voicegw.sip.uri import parse_uri

HOST = "127.0.0.1"
TE = 101
ALICE = CallerIdentity(Caller.USER, "acme", "alice", "acme.voice.test")


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def pair() -> AsyncIterator[tuple[LegTransport, LegTransport, list[MediaEvent]]]:
    """Two legs on loopback sending to each other; what the second one reports."""
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 44000, 44999)
    legs: list[LegTransport] = []
    for _ in range(2):
        config = LegConfig(
            codecs=static_codecs(PCMU),
            send_payload_type=0,
            telephone_event_payload_type=TE,
            wallclock_offset=wallclock_offset(loop),
        )
        legs.append(await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate()))
    sender, receiver = legs
    sender.leg.relearn(loop.time(), receiver.local_rtp)
    receiver.leg.relearn(loop.time(), sender.local_rtp)
    events: list[MediaEvent] = []
    receiver.on_event = events.append
    yield sender, receiver, events
    for leg in legs:
        leg.close()


async def test_rfc4733_digits_are_regenerated_once_each_and_pause_the_relay_meanwhile(
    pair: tuple[LegTransport, LegTransport, list[MediaEvent]],
) -> None:
    sender, _, events = pair
    # Audio first, as in a call: the receiver latches onto the source and its stream.
    for _ in range(5):
        sender.send_pcm(bytes(320))
        await asyncio.sleep(0.02)
    pauses: list[bool] = []
    digits = DigitSender(sender, pauses.append, "leg-b")
    try:
        digits.send("7", 0.1)
        digits.send("#", 0.06)

        def received() -> list[str | None]:
            return [e.digit.digit for e in events if isinstance(e, DtmfReceived)]

        await until(lambda: len(received()) == 2 and digits.sent == ["7", "#"])
        await asyncio.sleep(0.1)  # late duplicates (end packets are sent three times) would show
        assert received() == ["7", "#"]
        assert all(e.digit.ended for e in events if isinstance(e, DtmfReceived))
        # Relayed audio stops for each digit and comes back after it.
        assert pauses == [True, False, True, False]
    finally:
        digits.close()


async def test_a_leg_without_telephone_event_gets_no_digits(
    pair: tuple[LegTransport, LegTransport, list[MediaEvent]],
) -> None:
    sender, _, events = pair
    loop = asyncio.get_running_loop()
    plain = LegConfig(codecs=static_codecs(PCMU), send_payload_type=0)
    sender.leg = MediaLeg(plain, loop.time())
    pauses: list[bool] = []
    digits = DigitSender(sender, pauses.append, "leg-b")
    try:
        digits.send("5", 0.1)
        await asyncio.sleep(0.2)
        assert (digits.sent, pauses, events) == ([], [], [])
    finally:
        digits.close()


@pytest.mark.parametrize(
    ("callee_status", "caller_status", "record"),
    [
        (486, 486, "callee-busy"),
        (600, 600, "callee-busy"),
        (603, 603, "callee-declined"),
        (408, 408, "callee-no-answer"),
        (487, 480, "callee-no-answer"),  # our own CANCEL after the answer timeout
        (480, 480, "callee-unavailable"),
        (404, 404, "callee-unknown"),
    ],
)
def test_callee_failures_reach_the_caller_as_a_final_status(
    callee_status: int, caller_status: int, record: str
) -> None:
    failure = FAILURES[callee_status]
    assert (failure.status, failure.record) == (caller_status, record)


def test_a_callee_failure_not_in_the_table_is_a_bad_gateway() -> None:
    assert FAILURES.get(500, DEFAULT_FAILURE).status == 502


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("sip:+6591234567@voice.test", "+65****4567"),
        ("<sip:+442079460123@voice.test>", "+44****0123"),
        ("tel:+14155550100", "+14****0100"),
        ("sip:alice@acme.voice.test", "alice"),
        ("sip:voice.test", ""),
        ("not a uri", ""),
    ],
)
def test_call_records_show_masked_numbers_and_plain_user_names(uri: str, shown: str) -> None:
    assert mask_party(uri) == shown


def test_leg_stats_are_json() -> None:
    leg = MediaLeg(LegConfig(codecs=static_codecs(PCMU), send_payload_type=0), 0.0)
    stats = leg_stats(leg.summary())
    assert json.loads(json.dumps(stats)) == stats
    assert stats["received"] is None and stats["packets_sent"] == 0


def invite(request_uri: str) -> SipRequest:
    text = (
        f"INVITE {request_uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-bridge\r\n"
        "From: <sip:alice@acme.voice.test>;tag=a\r\nTo: <sip:bob@acme.voice.test>\r\n"
        "Call-ID: bridge-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    return parse_request(text.encode())


async def nobody(number: str) -> str | None:
    return None


async def acme_users(tenant_id: str, realm: str, username: str) -> bool:
    return (tenant_id, realm, username) in {("acme", "acme.voice.test", "bob")}


@pytest.mark.parametrize(
    ("caller", "request_uri", "expected"),
    [
        (ALICE, "sip:bob@acme.voice.test", Route(Service.BRIDGE_USER, "acme", None)),
        (ALICE, "sip:BOB@ACME.voice.test", Refusal(404, "Not Found")),  # user names are exact
        (ALICE, "sip:carol@acme.voice.test", Refusal(404, "Not Found")),
        (ALICE, "sip:bob@globex.voice.test", Refusal(404, "Not Found")),
        (CallerIdentity(Caller.PUBLIC), "sip:bob@acme.voice.test", Refusal(404, "Not Found")),
    ],
)
async def test_only_users_of_the_callers_own_tenant_are_bridged_to(
    caller: CallerIdentity, request_uri: str, expected: Route | Refusal
) -> None:
    router = Router(nobody, tenant_user=acme_users)
    assert await router.route(invite(request_uri), caller) == expected


def test_nobody_without_credentials_reaches_a_tenant_user() -> None:
    assert all(
        isinstance(ROUTES[(kind, Target.TENANT_USER)], Refusal)
        for kind in Caller
        if kind is not Caller.USER
    )


async def globex_number(number: str) -> str | None:
    return {"+442079460123": "acme", "+14155550100": "globex"}.get(number)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("sip:bob@acme.voice.test", Route(Service.BRIDGE_USER, "acme", None)),
        ("sip:+442079460123@voice.test", Route(Service.AGENT_QUEUE, "acme", "+442079460123")),
        ("sip:+14155550100@voice.test", Refusal(403, "Forbidden")),  # another tenant's number
        ("sip:+19995550100@voice.test", Refusal(404, "Not Found")),  # nobody's: no open relay
        ("tel:+442079460123", Refusal(404, "Not Found")),
    ],
)
async def test_transfer_targets_follow_the_same_table_as_calls(
    target: str, expected: Route | Refusal
) -> None:
    router = Router(globex_number, tenant_user=acme_users)
    assert await router.route_uri(parse_uri(target), ALICE) == expected
