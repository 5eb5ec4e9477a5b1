"""Two SRTP legs bridged on loopback: phones on both sides speak SRTP, the wire never carries audio.

Each phone is a plain UDP socket holding its own SDES context, so what goes
over the wire is exactly what a real SRTP endpoint would see.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from voicegw.media.codecs import PCMU
from voicegw.media.ports import PortAllocator
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import Address, LegConfig, MediaLeg, static_codecs
from voicegw.media.srtp import SrtpContext, is_rtcp
from voicegw.media.transport import LegTransport, wallclock_offset

HOST = "127.0.0.1"
SUITE = "AES_CM_128_HMAC_SHA1_80"


class Phone(asyncio.DatagramProtocol):
    """An SRTP endpoint: encrypts with its key, decrypts with the gateway's."""

    def __init__(self) -> None:
        self.wire: list[bytes] = []  # datagrams exactly as they arrived
        self.opened: list[bytes] = []  # the same, decrypted and authenticated
        self.transport: asyncio.DatagramTransport | None = None
        self.key = secrets.token_bytes(30)
        self.srtp: SrtpContext | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.wire.append(data)
        assert self.srtp is not None
        plain = self.srtp.unprotect(data)  # once only: a second look would be a replay
        if plain is not None:
            self.opened.append(plain)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, plain: bytes, addr: Address) -> None:
        assert self.transport is not None and self.srtp is not None
        protected = self.srtp.protect(plain)
        assert protected is not None
        self.transport.sendto(protected, addr)

    def audio(self) -> list[RtpPacket]:
        return [RtpPacket.parse(p) for p in self.opened if not is_rtcp(p)]


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


Call = tuple[Phone, LegTransport, LegTransport, Phone]


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    """caller phone <-> leg a <-> leg b <-> callee phone, each hop SDES-keyed on its own."""
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 30000, 31000, rtcp_mux=True)
    phones: list[Phone] = []
    legs: list[LegTransport] = []
    for _ in range(2):
        _, phone = await loop.create_datagram_endpoint(Phone, local_addr=(HOST, 0))
        config = LegConfig(
            static_codecs(PCMU),
            0,
            remote_rtp=phone.address,
            rtcp_mux=True,
            wallclock_offset=wallclock_offset(loop),
        )
        leg = await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate())
        gateway_key = secrets.token_bytes(30)
        leg.srtp = SrtpContext.sdes(SUITE, gateway_key, phone.key)
        phone.srtp = SrtpContext.sdes(SUITE, phone.key, gateway_key)
        phones.append(phone)
        legs.append(leg)
    a, b = legs
    a.peer, b.peer = b, a
    yield phones[0], a, b, phones[1]
    for leg in legs:
        leg.close()
    for phone in phones:
        assert phone.transport is not None
        phone.transport.close()


def speech(seq: int, ssrc: int) -> bytes:
    return bytes(RtpPacket(0, seq, seq * 160, ssrc, bytes([seq]) * 160))


async def test_audio_crosses_two_srtp_legs_in_both_directions_and_is_never_plain_on_the_wire(
    call: Call,
) -> None:
    caller, a, b, callee = call
    for seq in range(30):
        caller.send(speech(seq, 0xCA11), a.local_rtp)
        callee.send(speech(seq, 0xCA22), b.local_rtp)
        await asyncio.sleep(0.001)
    await until(lambda: len(callee.audio()) == 30 and len(caller.audio()) == 30)
    assert [p.payload for p in callee.audio()] == [bytes([s]) * 160 for s in range(30)]
    assert [p.payload for p in caller.audio()] == [bytes([s]) * 160 for s in range(30)]
    for datagram in caller.wire + callee.wire:
        assert not any(bytes([s]) * 16 in datagram for s in range(30))
    assert a.srtp is not None and b.srtp is not None
    assert a.srtp.stats.dropped == b.srtp.stats.dropped == 0


async def test_packets_under_another_key_are_dropped_before_the_leg_sees_them(call: Call) -> None:
    caller, a, _, callee = call
    caller.send(speech(0, 0xCA11), a.local_rtp)
    await until(lambda: len(callee.audio()) == 1)
    # Same source address (the latch holds), but not keyed with what the SDP exchanged.
    assert caller.transport is not None
    impostor = SrtpContext.sdes(SUITE, secrets.token_bytes(30), secrets.token_bytes(30))
    for seq in range(1, 11):
        forged = impostor.protect_rtp(speech(seq, 0xCA11))
        assert forged is not None
        caller.transport.sendto(forged, a.local_rtp)
    assert a.srtp is not None
    stats = a.srtp.stats
    await until(lambda: stats.auth_failures == 10)
    caller.send(speech(11, 0xCA11), a.local_rtp)
    await until(lambda: len(callee.audio()) == 2)
    assert [p.payload[0] for p in callee.audio()] == [0, 11]


async def test_the_final_rtcp_bye_goes_out_as_srtcp(call: Call) -> None:
    caller, a, _, _ = call
    caller.send(speech(0, 0xCA11), a.local_rtp)
    await until(lambda: a.leg.latched is not None)
    a.close()
    await until(lambda: any(is_rtcp(d) for d in caller.wire))
    sent = [d for d in caller.wire if is_rtcp(d)]
    opened = [p for p in caller.opened if is_rtcp(p)]
    assert len(opened) == len(sent) >= 1
    assert all(d not in opened for d in sent)  # what crossed the wire was not the plain RTCP
