"""A real linphonec calls the echo service, and the gateway calls linphonec.

linphonec 5.1 is driven through stdin with a config bound to 127.0.0.1
(TESTING.md): an account whose proxy and route are the gateway (so REGISTER
and INVITE go there whatever the Request-URI host), ``soundcard use files``
with ``play``/``record`` WAVs in place of a microphone and speaker, ``-a`` to
auto-answer. Every wait is on a line linphonec prints or a gateway call
event, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.e2e.peers import (
    RATE,
    REALM,
    Linphonec,
    acme_store,
    loopback_sip_service,
    tone_sequence,
)
from voicegw.calls.echo import EchoService
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import InboundCall, OutboundCall, SipCalls
from voicegw.calls.sip_service import SipService
from voicegw.media.ports import PortAllocator
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import parse_uri

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("linphonec") is None, reason="linphonec is not installed"),
]

AOR = f"sip:alice@{REALM}"
PASSWORD = "pw-linphonec"
TIMEOUT = 15.0


def window_correlations(sent: np.ndarray, received: np.ndarray) -> list[float]:
    """Per 0.5 s window of what came back: its normalised correlation with ``sent`` at the
    window's own best lag. Windowed because linphonec's jitter buffer shifts playout by a
    frame or so during a call, which a single global alignment would count as noise."""
    start = int(np.flatnonzero(np.abs(received) > 0.01)[0])  # skip silence before the echo
    size = RATE // 2
    found = []
    for begin in range(start, len(received) - size + 1, size):
        window = received[begin : begin + size]
        n = len(sent) + size
        xcorr = np.fft.irfft(np.fft.rfft(sent, n) * np.conj(np.fft.rfft(window, n)), n)
        lag = int(np.argmax(xcorr[: len(sent) - size]))
        match = sent[lag : lag + size]
        found.append(
            float(np.dot(match, window) / (np.linalg.norm(match) * np.linalg.norm(window) + 1e-12))
        )
    return found


def echo_phone(home: Path, *, proxy_port: int | None, auto_answer: bool = False) -> Linphonec:
    """A linphonec without echo cancelling, registered as alice via the gateway if proxied."""
    account = ""
    if proxy_port is not None:
        # Proxy and route: REGISTER and every INVITE go to the gateway, never to DNS.
        hop = f"sip:127.0.0.1:{proxy_port};transport=udp"
        account = (
            f"[proxy_0]\nreg_proxy=<{hop}>\nreg_route=<{hop};lr>\nreg_identity={AOR}\n"
            "reg_expires=3600\nreg_sendregister=1\n"
            f"[auth_info_0]\nusername=alice\npasswd={PASSWORD}\nrealm={REALM}\n"
            f"domain={REALM}\n"
        )
    return Linphonec(
        home,
        sip_config=f"default_proxy={0 if proxy_port else -1}\n",
        rtp_config="audio_rtp_port=46000-46999\n",
        # Its echo canceller would cancel the very echo under test.
        more_config="[video]\nenabled=0\n[sound]\nechocancellation=0\n" + account,
        auto_answer=auto_answer,
        timeout=TIMEOUT,
    )


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
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async def nobody(number: str) -> str | None:
        return None

    async with acme_store(tmp_path / "voicegw.db", {"alice": PASSWORD}) as sessions:
        service = loopback_sip_service(sessions, b"e2e-linphonec-nonce-secret", md5_only=False)
        calls = SipCalls(
            service,
            Router(nobody),
            PortAllocator("127.0.0.1", 47000, 47999),
            {Service.ECHO: EchoService()},
        )
        calls.attach()
        offered: asyncio.Queue[InboundCall] = asyncio.Queue()
        calls.on_call = offered.put_nowait
        await service.start()
        yield Gateway(service, calls, offered)
        await calls.close()
        await service.stop()


@pytest.fixture
async def phones() -> AsyncIterator[list[Linphonec]]:
    started: list[Linphonec] = []
    yield started
    for phone in started:
        await phone.stop()


async def test_linphonec_registers_with_sha256_calls_echo_hears_itself_and_hangs_up(
    gateway: Gateway,
    phones: list[Linphonec],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = tone_sequence(6.0, seed=11, taper=False)
    soundfile.write(tmp_path / "in.wav", sent, RATE, subtype="PCM_16")
    phone = echo_phone(tmp_path / "home", proxy_port=gateway.port)
    phones.append(phone)
    with caplog.at_level(logging.INFO, logger="voicegw.calls.sip"):
        await phone.start()
        await phone.wait_for_line("registered, identity=", poll="status register")
    registers = [r for r in caplog.records if r.getMessage() == "sip.register"]
    assert [(r.__dict__["status"], r.__dict__["algorithm"]) for r in registers] == [
        (200, "SHA-256")
    ]

    for line in (
        "soundcard use files",
        f"play {tmp_path / 'in.wav'}",
        f"record {tmp_path / 'out.wav'}",
        f"call sip:echo@{REALM}",
    ):
        await phone.command(line)
    await phone.wait_for_line("connected")
    call = await asyncio.wait_for(gateway.offered.get(), TIMEOUT)
    assert call.offer.caller.username == "alice" and call.offer.route.tenant_id == "acme"
    await asyncio.wait_for(call.confirmed.wait(), TIMEOUT)

    await asyncio.sleep(3.0)  # the echo runs for 3 s of the 6 s input
    await phone.command("terminate")
    await phone.wait_for_line("ended")
    await asyncio.wait_for(call.ended.wait(), TIMEOUT)
    assert call.end_reason is not None and call.end_reason.value == "remote-bye"

    received, rate = soundfile.read(tmp_path / "out.wav", dtype="float32")
    assert rate == RATE and len(received) > RATE  # more than a second came back
    assert float(np.sqrt(np.mean(received**2))) > 0.05  # not silence
    correlations = window_correlations(sent, received)
    assert len(correlations) >= 4  # at least 2 s of echo
    assert float(np.median(correlations)) > 0.9, correlations


async def test_gateway_calls_auto_answering_linphonec_and_hangs_up(
    gateway: Gateway, phones: list[Linphonec], tmp_path: Path
) -> None:
    phone = echo_phone(tmp_path / "home", proxy_port=None, auto_answer=True)
    phones.append(phone)
    await phone.start()
    await phone.command("soundcard use files")
    await phone.wait_for_line("Using wav files")

    call = await gateway.calls.place_call(
        parse_uri(f"sip:alice@127.0.0.1:{phone.sip_port}"),
        Destination("127.0.0.1", phone.sip_port),
        caller=f"sip:echo@{REALM}",
        tenant_id="acme",
        answer_timeout=TIMEOUT,
    )
    assert isinstance(call, OutboundCall), call
    await phone.wait_for_line("connected")
    call.hang_up()
    await phone.wait_for_line("ended")
    assert gateway.calls.calls == {}
    assert gateway.calls.ports.in_use == 0
