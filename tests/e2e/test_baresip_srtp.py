"""A real baresip with mandatory SDES-SRTP (RTP/SAVP, ``mediaenc=srtp-mand``) calls echo.

baresip only plays what authenticates under the key we answered with, so
hearing its own audio back proves both directions are SRTP end to end. The
gateway's leg gets a recording SRTP context (a real one that also keeps each
datagram it hands to the socket) to show that no plain G.711 went out.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import soundfile

from tests.e2e.peers import (
    RATE,
    REALM,
    Baresip,
    Sessions,
    acme_store,
    aligned_correlation,
    loopback_sip_service,
    tone_sequence,
)
from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import EndReason, InboundCall, SipCalls, SipCallsConfig
from voicegw.media.ports import PortAllocator
from voicegw.media.srtp import SrtpContext

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
    pytest.mark.skipif(
        not Path("/usr/lib/baresip/modules/srtp.so").exists(), reason="no baresip srtp module"
    ),
]

ECHO_URI = f"sip:echo@{REALM}"
TIMEOUT = 10.0
INPUT_SECONDS = 30  # aufile hangs up at the end of its file: longer than the call


class RecordingSrtp(SrtpContext):
    """A real SDES context that also keeps (plain, protected) for every RTP packet sent."""

    def __init__(self, suite: str, local: bytes, remote: bytes) -> None:
        super().__init__(suite, local, remote)
        self.sent: list[tuple[bytes, bytes]] = []

    def protect_rtp(self, packet: bytes) -> bytes | None:
        protected = super().protect_rtp(packet)
        if protected is not None and len(self.sent) < 1000:
            self.sent.append((packet, protected))
        return protected


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    async with acme_store(tmp_path / "voicegw.db", {"alice": "pw"}) as sessions:
        yield sessions


@pytest.fixture
async def phone(tmp_path: Path) -> AsyncIterator[Baresip]:
    source = tmp_path / "in.wav"
    soundfile.write(source, tone_sequence(INPUT_SECONDS, seed=4568), RATE, subtype="PCM_16")
    baresip = Baresip(tmp_path / "alice", source, modules=("srtp.so",))
    await baresip.start()
    yield baresip
    await baresip.stop()


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_baresip_with_mandatory_srtp_hears_its_audio_echoed_and_the_wire_is_encrypted(
    sessions: Sessions, phone: Baresip
) -> None:
    service = loopback_sip_service(sessions, b"e2e-srtp-nonce-secret-0123")

    async def owner(number: str) -> str | None:
        return None

    calls = SipCalls(
        service,
        Router(owner),
        PortAllocator("127.0.0.1", 42000, 42999),
        {Service.ECHO: EchoService()},
        SipCallsConfig(),  # the default answering policy takes SRTP offers
    )
    calls.attach()
    offered: asyncio.Queue[InboundCall] = asyncio.Queue()
    recorders: list[RecordingSrtp] = []

    def on_call(call: InboundCall) -> None:
        # Swapped in before the call is answered, so no packet was protected under the old one.
        local, remote = call.audio.local_crypto, call.audio.remote_crypto
        if local is not None and remote is not None:
            recorder = RecordingSrtp(local.suite, local.key_salt, remote.key_salt)
            recorders.append(recorder)
            call.transport.srtp = recorder
        offered.put_nowait(call)

    calls.on_call = on_call
    await service.start()
    try:
        assert service.transports.bound.udp is not None
        port = service.transports.bound.udp[1]
        await phone.add_account("alice", "pw", port, params=";mediaenc=srtp-mand")
        assert await phone.event("REGISTER_OK", "REGISTER_FAIL") == "REGISTER_OK", phone.log()
        await phone.command("dial", ECHO_URI)
        call = await asyncio.wait_for(offered.get(), TIMEOUT)
        media = call.offer.remote_sdp.media[0]
        assert media.proto == "RTP/SAVP" and media.crypto, str(call.offer.remote_sdp)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)
        [recorder] = recorders
        assert call.transport.srtp is recorder
        await until(lambda: call.transport.leg.summary().packets_sent >= 150)  # 3 s echoed
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        await asyncio.wait_for(call.ended.wait(), TIMEOUT)
        assert call.end_reason is EndReason.REMOTE_BYE
        # baresip's plain 16-byte RTCP APP "PING" keep-alive is the only thing dropped (malformed).
        assert recorder.stats.auth_failures == recorder.stats.replays == 0
    finally:
        await calls.close()
        await service.stop()

    sent, received = phone.recording("enc"), phone.recording("dec")
    assert len(received) >= 2 * RATE
    correlation, _ = aligned_correlation(sent, received)
    assert correlation > 0.9, correlation

    # What went to the socket: the SRTP header is the RTP header, the payload is not the G.711.
    assert len(recorder.sent) >= 150
    for plain, protected in recorder.sent:
        assert protected[:12] == plain[:12]
        assert len(protected) == len(plain) + 10  # AES_CM_128_HMAC_SHA1_80 tag (baresip default)
        assert protected[12 : len(plain)] != plain[12:]
        assert plain[12:44] not in protected
