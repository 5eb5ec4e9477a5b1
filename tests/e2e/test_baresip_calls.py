"""A real baresip calls the gateway's echo service: audio, hang-ups, CANCEL, hold, DTMF.

baresip 1.0 runs headless with ``aufile`` as its microphone (a WAV of
non-repeating tones and chirps made here), ``sndfile`` recording what it
sends and receives, and ``ctrl_tcp`` to dial, hang up, hold, resume and send
digits. Every wait is on an event (ctrl_tcp events from baresip, call events
from the gateway), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile

from tests.e2e.peers import (
    EVENT_TIMEOUT,
    RATE,
    REALM,
    SECRET,
    Baresip,
    Sessions,
    acme_store,
    aligned_correlation,
    loopback_sip_service,
    tone_sequence,
)
from voicegw.calls.echo import EchoConfig, EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import (
    CallEnded,
    CallEvent,
    EndReason,
    HoldChanged,
    InboundCall,
    OutboundCall,
    SipCalls,
    SipCallsConfig,
)
from voicegw.calls.sip_service import SipService
from voicegw.media.ports import PortAllocator
from voicegw.media.session import DtmfReceived
from voicegw.sip.sdp import Direction
from voicegw.sip.uri import parse_uri
from voicegw.store import sip_accounts, tenants

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

ECHO_URI = f"sip:echo@{REALM}"
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than any call here


@dataclass
class Gateway:
    service: SipService
    calls: SipCalls
    offered: asyncio.Queue[InboundCall]

    @property
    def port(self) -> int:
        assert self.service.transports.bound.udp is not None
        return self.service.transports.bound.udp[1]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    """SQLite only: these tests are about SIP and RTP, the store has its own suite."""
    async with acme_store(tmp_path / "voicegw.db", {"alice": "secret"}) as sessions:
        yield sessions


GatewayFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Gateway]"]


@pytest.fixture
def gateway(sessions: Sessions) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def start(echo: EchoConfig | None = None) -> AsyncIterator[Gateway]:
        service = loopback_sip_service(sessions, SECRET)

        async def owner(number: str) -> str | None:
            async with sessions() as session:
                found = await tenants.tenant_for_number(session, number)
                return None if found is None else found.tenant_id

        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 42000, 42999),
            {Service.ECHO: EchoService(echo)},
            SipCallsConfig(),
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        try:
            yield Gateway(service, calls, offered)
        finally:
            await calls.close()
            await service.stop()

    return start


@pytest.fixture
def source_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    soundfile.write(path, tone_sequence(INPUT_SECONDS), RATE, subtype="PCM_16")
    return path


@pytest.fixture
async def phone(tmp_path: Path, source_wav: Path) -> AsyncIterator[Baresip]:
    baresip = Baresip(tmp_path / "alice", source_wav)
    await baresip.start()
    yield baresip
    await baresip.stop()


async def next_call(gateway: Gateway) -> InboundCall:
    return await asyncio.wait_for(gateway.offered.get(), EVENT_TIMEOUT)


async def until(predicate: Callable[[], bool], within: float = EVENT_TIMEOUT) -> None:
    """Poll a gateway-side condition that has no event of its own (packet counters)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def watch(call: InboundCall) -> asyncio.Queue[CallEvent]:
    queue: asyncio.Queue[CallEvent] = asyncio.Queue()
    for event in call.events:
        queue.put_nowait(event)
    call.on_event = queue.put_nowait
    return queue


async def next_of(events: asyncio.Queue[CallEvent], kind: type) -> CallEvent:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event


async def test_baresip_hears_its_own_audio_from_echo_and_hangs_up_with_bye(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert call.offer.caller.tenant_id == "acme"
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        # 3 s of audio echoed back (150 packets of 20 ms), then baresip hangs up.
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert call.end_reason is EndReason.REMOTE_BYE
        assert gw.calls.calls == {}
        assert gw.calls.ports.in_use == 0

    sent, received = phone.recording("enc"), phone.recording("dec")
    assert len(received) >= 2 * RATE
    correlation, lag = aligned_correlation(sent, received)
    assert correlation > 0.9, (correlation, lag)


async def test_gateway_hangs_up_with_bye_and_baresip_closes_the_call(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        call.hang_up()
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert call.end_reason is EndReason.LOCAL_HANGUP
        assert gw.calls.calls == {}


async def test_baresip_cancels_while_ringing_and_gets_487(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(EchoConfig(ring_delay=EVENT_TIMEOUT)) as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        assert await phone.event("CALL_RINGING") == "CALL_RINGING"
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert call.end_reason is EndReason.CANCELLED
        assert call.dialog is None
        assert gw.calls.ports.in_use == 0


async def test_baresip_hold_and_resume_reinvites_are_answered_with_the_right_direction(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        events = watch(call)
        sent_at: list[int] = []  # packets we had sent when each hold change took effect

        def on_event(event: CallEvent) -> None:
            if isinstance(event, HoldChanged):
                sent_at.append(call.transport.leg.summary().packets_sent)
            events.put_nowait(event)

        call.on_event = on_event
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        await until(lambda: call.transport.leg.summary().packets_sent >= 25)

        await phone.command("hold")
        assert await next_of(events, HoldChanged) == HoldChanged(True, Direction.RECVONLY)
        assert call.held

        await phone.command("resume")
        assert await next_of(events, HoldChanged) == HoldChanged(False, Direction.SENDRECV)
        # Nothing went out between the two re-INVITEs; echo resumes after the second.
        assert sent_at[0] == sent_at[1]
        await until(lambda: call.transport.leg.summary().packets_sent > sent_at[1] + 25)
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert isinstance(await next_of(events, CallEnded), CallEnded)


async def test_baresip_rfc4733_digits_are_reported_once_each(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port)
        await phone.command("dial", ECHO_URI)
        call = await next_call(gw)
        events = watch(call)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        digits: list[str] = []
        for key in "19#":
            await phone.command("sndcode", key)
            event = await next_of(events, DtmfReceived)
            assert isinstance(event, DtmfReceived)
            digits.append(event.digit.digit or "?")
        assert digits == ["1", "9", "#"]
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        assert [e.digit.digit for e in call.events if isinstance(e, DtmfReceived)] == digits


async def test_gateway_calls_registered_baresip_which_hears_its_audio_echoed(
    gateway: GatewayFactory, phone: Baresip, sessions: Sessions
) -> None:
    async with gateway() as gw:
        await phone.register("alice", "secret", gw.port, auto_answer=True)
        async with sessions() as session:
            found = await sip_accounts.live_bindings(
                session, "acme", f"sip:alice@{REALM}", time.time()
            )
        assert len(found) == 1
        binding = found[0]
        call = await gw.calls.place_call(
            parse_uri(binding.contact.strip("<>")),
            binding.source,
            caller=ECHO_URI,
            tenant_id="acme",
            answer_timeout=EVENT_TIMEOUT,
        )
        assert isinstance(call, OutboundCall), call
        call.transport.peer = call.transport  # the gateway side echoes
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)
        call.hang_up()
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        assert call.end_reason is EndReason.LOCAL_HANGUP
        assert gw.calls.calls == {} and gw.calls.ports.in_use == 0

    correlation, lag = aligned_correlation(phone.recording("enc"), phone.recording("dec"))
    assert correlation > 0.9, (correlation, lag)
