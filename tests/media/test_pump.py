"""The media pump: batched socket reads, and a C relay step that does exactly what the
Python path does.

The differential test runs one script of datagrams (in order, reordered, duplicated,
a sequence wrap, a restart jump, a new SSRC, DTMF, RTP bleed, CSRC/extension/padding,
both directions, a tapped leg) twice, with the C step on and off, at the same
``now`` values, and compares everything observable: the bytes each far end got, the
legs' statistics and sender state, the drop counters and the tapped jitter buffer.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from voicegw.media.codecs import PCMA, PCMU
from voicegw.media.dtmf import digit_packets
from voicegw.media.ports import PortAllocator
from voicegw.media.pump import MediaPump
from voicegw.media.session import LegConfig, MediaLeg, static_codecs
from voicegw.media.transport import LegTransport

HOST = "127.0.0.1"
DTMF_PT = 101


def rtp(
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    *,
    pt: int = 0,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | len(csrc) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    second = pt | (0x80 if marker else 0)
    out = struct.pack("!BBHII", first, second, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrc)
    if extension is not None:
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def voice(n: int) -> bytes:
    return bytes([n % 256]) * 160


@dataclass
class Call:
    pump: MediaPump
    a: LegTransport  # the caller's leg
    b: LegTransport  # the callee's leg
    caller: socket.socket
    callee: socket.socket
    intruder: socket.socket

    def heard(self, sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096, socket.MSG_DONTWAIT))
            except BlockingIOError:
                return out


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


@contextmanager
def bridged_call(*, relay_in_c: bool, callee_codecs: tuple[Any, ...] = (PCMU,)) -> Iterator[Call]:
    """A bridged call whose loop never runs: the test reads the pump at chosen times."""
    loop = asyncio.new_event_loop()
    allocator = PortAllocator(HOST, 30000, 39999)
    caller, callee, intruder = udp(), udp(), udp()
    legs = []
    for seed, (far, codecs) in enumerate(((caller, (PCMU,)), (callee, callee_codecs))):
        table = dict(static_codecs(*codecs))
        config = LegConfig(
            table,
            next(iter(table)),
            telephone_event_payload_type=DTMF_PT,
            remote_rtp=far.getsockname(),
        )
        leg = MediaLeg(config, 0.0, rng=random.Random(seed))
        legs.append(LegTransport(leg, allocator.allocate(), loop))
    a, b = legs
    a.peer, b.peer = b, a
    pump = MediaPump.of(loop)
    pump.relay_in_c = relay_in_c
    try:
        yield Call(pump, a, b, caller, callee, intruder)
    finally:
        a.close()
        b.close()
        for sock in (caller, callee, intruder):
            sock.close()
        loop.close()


def state(leg: MediaLeg) -> dict[str, Any]:
    receiver = leg._receiver
    sender = leg.sender
    return {
        "summary": repr(leg.summary()),
        "dropped": {reason.value: n for reason, n in leg.dropped.items()},
        "receiver": None
        if receiver is None
        else {name: getattr(receiver, name) for name in type(receiver).__slots__},
        "sender": {
            name: getattr(sender, name) for name in type(sender).__slots__ if name != "stats"
        },
        "last_received": leg.last_received,
        "rx_codec": leg.receive_codec.name,
    }


def run_script(relay_in_c: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """Everything observable after the script, and the pump's counters."""
    with bridged_call(relay_in_c=relay_in_c) as call:
        call.a.leg.enable_pcm()  # the caller is tapped: its packets feed a jitter buffer
        a_addr, b_addr = call.a.local_rtp, call.b.local_rtp
        frames: list[Any] = []
        now = 0.0

        def batch(*sends: tuple[socket.socket, bytes, tuple[str, int]], dt: float = 0.02) -> None:
            nonlocal now
            for sock, data, to in sends:
                sock.sendto(data, to)
            now += dt
            call.pump.read(now)
            frames.append(call.a.leg.playout_encoded(now))

        def from_caller(*packets: bytes) -> None:
            batch(*((call.caller, p, a_addr) for p in packets))

        s1, s2, seq, ts = 0x1111, 0x2222, 65530, 4_294_966_000
        from_caller(rtp(seq, ts, s1, voice(0), marker=True))  # latches the caller
        from_caller(rtp(seq + 1, ts + 160, s1, voice(1)), rtp(seq + 2, ts + 320, s1, voice(2)))
        from_caller(rtp(seq + 4, ts + 640, s1, voice(4)), rtp(seq + 3, ts + 480, s1, voice(3)))
        from_caller(rtp(seq + 4, ts + 640, s1, voice(4)))  # a duplicate
        batch((call.intruder, rtp(seq + 5, ts + 800, s1, b"\xee" * 160), a_addr))  # RTP bleed
        from_caller(
            rtp(seq + 5, ts + 800, s1, voice(5), csrc=(7, 8), extension=b"\x10\xaa\x00\x00"),
            rtp(seq + 6, ts + 960, s1, voice(6), padding=4),
        )
        dtmf = [
            rtp(seq + 7 + i, ts + 1120, s1, p.payload, pt=DTMF_PT, marker=p.marker)
            for i, p in enumerate(digit_packets("5", 0)[:3])
        ]
        from_caller(*dtmf, rtp(seq + 10, ts + 1280, s1, voice(10)))
        # A jump beyond MAX_DROPOUT: held back, then two in a row mean a restart (RFC 3550 A.1).
        from_caller(rtp(seq + 5000, ts + 1440, s1, voice(11)))
        from_caller(
            rtp(seq + 5001, ts + 1600, s1, voice(12)), rtp(seq + 5002, ts + 1760, s1, voice(13))
        )
        # A new source (the phone restarted its stream): rebased on the callee's side.
        from_caller(rtp(100, 9000, s2, voice(14), marker=True), rtp(101, 9160, s2, voice(15)))
        for n in range(3):  # the callee talks back
            batch((call.callee, rtp(500 + n, 2000 + 160 * n, 0x3333, voice(50 + n)), b_addr))
        from_caller(*(rtp(102 + n, 9320 + 160 * n, s2, voice(16 + n)) for n in range(6)))
        for n in range(12):  # then one packet per tick, late and early
            batch(
                (call.caller, rtp(108 + n, 10280 + 160 * n, s2, voice(22 + n)), a_addr),
                dt=0.02 + 0.003 * (n % 3 - 1),
            )
        observed = {
            "callee_heard": call.heard(call.callee),
            "caller_heard": call.heard(call.caller),
            "a": state(call.a.leg),
            "b": state(call.b.leg),
            "frames": frames,
            "socket_errors": (call.a.socket_errors, call.b.socket_errors),
        }
        return observed, call.pump.counters()


def test_the_c_relay_step_does_exactly_what_the_python_path_does() -> None:
    in_c, c_counters = run_script(relay_in_c=True)
    in_python, py_counters = run_script(relay_in_c=False)
    assert in_c["callee_heard"] == in_python["callee_heard"]
    assert in_c["caller_heard"] == in_python["caller_heard"]
    assert in_c["a"] == in_python["a"]
    assert in_c["b"] == in_python["b"]
    assert in_c["frames"] == in_python["frames"]
    assert in_c == in_python
    # The comparison means something only if the step took most packets in one run and
    # none in the other.
    assert c_counters["relayed"] >= 20
    assert py_counters["relayed"] == 0
    assert c_counters["datagrams"] == py_counters["datagrams"]
    # And the script did what it says: bleed dropped, DTMF not relayed, audio through.
    dropped = in_c["a"]["dropped"]
    assert dropped["unexpected_source"] == 1
    assert not any(p[1] & 0x7F == DTMF_PT for p in in_c["callee_heard"])
    assert len(in_c["callee_heard"]) >= 30
    assert len(in_c["caller_heard"]) == 3


def test_packets_of_a_leg_keep_their_order_when_some_go_to_python() -> None:
    # A DTMF packet (Python's) between audio packets in one read: the audio after it
    # must not overtake it, or the sender state would see a reordered stream.
    with bridged_call(relay_in_c=True) as call:
        a_addr = call.a.local_rtp
        call.caller.sendto(rtp(1, 0, 9, voice(0)), a_addr)
        call.pump.read(0.02)
        dtmf = digit_packets("1", 0)[0]
        for data in (
            rtp(2, 160, 9, voice(1)),
            rtp(3, 320, 9, dtmf.payload, pt=DTMF_PT, marker=True),
            rtp(4, 480, 9, voice(2)),
            rtp(5, 640, 9, voice(3)),
        ):
            call.caller.sendto(data, a_addr)
        before = call.pump.counters()
        call.pump.read(0.04)
        after = call.pump.counters()
        assert after["relayed"] - before["relayed"] == 1  # only the packet before the digit
        assert after["returned"] - before["returned"] == 3
        heard = [struct.unpack_from("!H", p, 2)[0] for p in call.heard(call.callee)]
        assert heard == sorted(heard) and len(heard) == 4


def test_transcoding_and_held_peers_stay_with_python() -> None:
    with bridged_call(relay_in_c=True, callee_codecs=(PCMA,)) as call:
        a_addr = call.a.local_rtp
        for n in range(5):
            call.caller.sendto(rtp(n, 160 * n, 9, voice(n)), a_addr)
            call.pump.read(0.02 * (n + 1))
        heard = call.heard(call.callee)
        assert len(heard) == 5 and all(p[1] & 0x7F == 8 for p in heard)  # PCMA, transcoded
        assert call.pump.counters()["relayed"] == 0
        call.b.held = True
        call.caller.sendto(rtp(5, 800, 9, voice(5)), a_addr)
        call.pump.read(0.12)
        assert call.heard(call.callee) == []
        assert call.b.held_drops == 1


@pytest.mark.parametrize("relay_in_c", [True, False])
def test_a_send_that_fails_is_counted_not_raised(relay_in_c: bool) -> None:
    # The callee's SDP named an address our socket cannot reach (another family).
    with bridged_call(relay_in_c=relay_in_c) as call:
        call.b.leg.relearn(0.0, ("::1", 9))
        a_addr = call.a.local_rtp
        for n in range(5):
            call.caller.sendto(rtp(n, 160 * n, 9, voice(n)), a_addr)
            call.pump.read(0.02 * (n + 1))
        assert call.b.socket_errors == 5
        received = call.a.leg.summary().received
        assert received is not None and received.packets_received == 5


def test_a_leg_closed_by_an_event_in_a_read_gets_nothing_after() -> None:
    with bridged_call(relay_in_c=False) as call:
        events: list[object] = []

        def hang_up(event: object) -> None:
            events.append(event)
            call.a.close()  # the first event closes the leg; the later ones are the first packet's

        call.a.on_event = hang_up
        a_addr = call.a.local_rtp
        call.caller.sendto(rtp(1, 0, 9, voice(0)), a_addr)  # latching: SourceLatched event
        call.caller.sendto(rtp(2, 160, 9, voice(1)), a_addr)
        call.pump.read(0.02)
        assert [type(e).__name__ for e in events] == ["SourceLatched", "SsrcChanged"]
        assert len(call.heard(call.callee)) <= 1  # the second packet came after the close


@pytest.mark.parametrize("relay_in_c", [True, False])
async def test_on_a_running_loop_the_pump_reads_by_itself(relay_in_c: bool) -> None:
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(HOST, 30000, 39999)
    caller, callee = udp(), udp()
    callee.setblocking(False)
    legs = []
    for far in (caller, callee):
        config = LegConfig(static_codecs(PCMU), 0, remote_rtp=far.getsockname())
        legs.append(await LegTransport.open(MediaLeg(config, loop.time()), allocator.allocate()))
    a, b = legs
    a.peer, b.peer = b, a
    MediaPump.of(loop).relay_in_c = relay_in_c
    try:
        for n in range(20):
            caller.sendto(rtp(n, 160 * n, 9, voice(n)), a.local_rtp)
            await asyncio.sleep(0.005)
        got = []
        for _ in range(200):
            try:
                got.append(callee.recv(4096))
            except BlockingIOError:
                if len(got) == 20:
                    break
                await asyncio.sleep(0.005)
        assert [p[12:] for p in got] == [voice(n) for n in range(20)]
    finally:
        MediaPump.of(loop).relay_in_c = True
        a.close()
        b.close()
        caller.close()
        callee.close()
