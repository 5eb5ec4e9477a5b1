"""Two gateways on loopback set up an SDES-SRTP call through SIP and hear the echo.

The caller offers RTP/SAVP (SRTP required), the callee answers with its
default policy; both legs then encrypt with their own key and decrypt with
the other's, which only works if offer/answer and the call legs agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import EndReason, InboundCall, OutboundCall, SipCalls, SipCallsConfig
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.media.ports import PortAllocator
from voicegw.sip.digest import DigestClient, TrunkCredentials
from voicegw.sip.offer_answer import SrtpPolicy
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import ListenAddresses
from voicegw.sip.uri import parse_uri
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = f"acme.{DOMAIN}"
TIMEOUT = 5.0


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        await sip_accounts.create_credential(
            session, actor="test", tenant_id="acme", username="alice", realm=REALM, password="pw"
        )
    yield sessions
    await engine.dispose()


Node = tuple[SipService, SipCalls, "asyncio.Queue[InboundCall]"]


@pytest.fixture
async def node(sessions: Sessions) -> AsyncIterator[Callable[[SipCallsConfig], Awaitable[Node]]]:
    started: list[Node] = []

    async def owner(number: str) -> str | None:
        return None

    async def start(config: SipCallsConfig) -> Node:
        service = SipService(
            SipServiceConfig(
                domain=DOMAIN,
                nonce_secret=b"0123456789abcdef-srtp-secret",
                listen=ListenAddresses(udp=("127.0.0.1", 0)),
            ),
            sessions,
        )
        calls = SipCalls(
            service,
            Router(owner),
            PortAllocator("127.0.0.1", 44000, 44999),
            {Service.ECHO: EchoService()},
            config,
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        started.append((service, calls, offered))
        return service, calls, offered

    yield start
    for service, calls, _ in started:
        await calls.close()
        await service.stop()


async def test_outbound_rtp_savp_call_to_echo_is_keyed_both_ways_and_audio_returns(
    node: Callable[[SipCallsConfig], Awaitable[Node]],
) -> None:
    callee_service, _, offered = await node(SipCallsConfig())
    _, caller_calls, _ = await node(SipCallsConfig(offer_srtp=SrtpPolicy.REQUIRED))
    assert callee_service.transports.bound.udp is not None
    host, port = callee_service.transports.bound.udp
    call = await asyncio.wait_for(
        caller_calls.place_call(
            parse_uri(f"sip:echo@{REALM}"),
            Destination(host, port),
            caller=f"sip:alice@{REALM}",
            tenant_id="acme",
            digest=DigestClient(TrunkCredentials("alice", "pw", REALM, host)),
        ),
        TIMEOUT,
    )
    assert isinstance(call, OutboundCall), call
    far = await asyncio.wait_for(offered.get(), TIMEOUT)
    await asyncio.wait_for(far.confirmed.wait(), TIMEOUT)
    assert far.offer.remote_sdp.media[0].proto == "RTP/SAVP"

    ours, theirs = call.transport.srtp, far.transport.srtp
    assert ours is not None and theirs is not None
    assert call.audio.local_crypto == far.audio.remote_crypto
    assert call.audio.remote_crypto == far.audio.local_crypto
    assert call.audio.local_crypto != call.audio.remote_crypto

    for _ in range(10):
        call.transport.send_pcm(bytes(320))  # 20 ms of silence
    leg = call.transport.leg

    def echoed() -> int:
        received = leg.summary().received
        return 0 if received is None else received.packets_received

    for _ in range(int(TIMEOUT / 0.02)):
        if echoed() >= 10:
            break
        await asyncio.sleep(0.02)
    assert echoed() >= 10, "no echo came back"
    assert ours.stats.dropped == theirs.stats.dropped == 0

    call.hang_up()
    await asyncio.wait_for(far.ended.wait(), TIMEOUT)
    assert far.end_reason is EndReason.REMOTE_BYE
