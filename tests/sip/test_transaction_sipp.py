"""The transaction layer and dialogs against SIPp on loopback UDP.

A few lines of asyncio glue (the shape of the real transport adapter: feed
datagrams in, send what comes out, re-arm one timer) put a
:class:`TransactionLayer` on a socket; a scripted TU answers or places one
call. SIPp judges the other side: its exit status is 0 only if every message
it expected arrived, in order, within the timeout.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import cast

import pytest

from voicegw.sip.dialog import Dialog, DialogId
from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import Headers
from voicegw.sip.message import (
    SipRequest,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from voicegw.sip.transaction import Destination
from voicegw.sip.transaction_layer import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
)
from voicegw.sip.uri import parse_uri

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

SIPP_TIMEOUT = 15  # seconds SIPp allows for the whole call before failing


class LayerEndpoint(asyncio.DatagramProtocol):
    """Bytes and time in, bytes out: the transport adapter pattern, test-sized."""

    def __init__(self) -> None:
        self.layer = TransactionLayer()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            return
        source = Destination(addr[0], addr[1], "UDP")
        if isinstance(message, SipRequest):
            self.layer.receive_request(message, source, self.loop.time())
        else:
            self.layer.receive_response(message, source, self.loop.time())
        self.pump()

    def pump(self) -> None:
        assert self.transport is not None
        for out in self.layer.messages_to_send():
            self.transport.sendto(bytes(out.message), out.destination.addr)
        while (event := self.layer.next_event()) is not None:
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
        at = self.layer.get_timer()
        self._timer = None if at is None else self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self.layer.handle_timer(self.loop.time())
        self.pump()

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def endpoint() -> LayerEndpoint:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(LayerEndpoint, local_addr=("127.0.0.1", 0))
    return protocol


async def start_sipp(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "sipp",
        *args,
        "-i",
        "127.0.0.1",
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        f"{SIPP_TIMEOUT}s",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        str(tmp_path / "sipp_errors.log"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, tmp_path: Path) -> int:
    try:
        await asyncio.wait_for(proc.wait(), SIPP_TIMEOUT + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    errors = tmp_path / "sipp_errors.log"
    assert proc.returncode == 0, errors.read_text() if errors.exists() else "sipp failed"
    return proc.returncode


async def next_event(ep: LayerEndpoint) -> Event:
    return await asyncio.wait_for(ep.events.get(), SIPP_TIMEOUT)


def our_invite(ep: LayerEndpoint, sipp_port: int) -> SipRequest:
    pairs = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:{ep.port};branch={new_branch()};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:voicegw@127.0.0.1:{ep.port}>;tag={new_tag()}"),
        ("To", f"<sip:service@127.0.0.1:{sipp_port}>"),
        ("Call-ID", new_call_id("127.0.0.1")),
        ("CSeq", "1 INVITE"),
        ("Contact", f"<sip:voicegw@127.0.0.1:{ep.port}>"),
    ]
    return SipRequest(
        method="INVITE",
        uri=parse_uri(f"sip:service@127.0.0.1:{sipp_port}"),
        headers=Headers.of(pairs),
    )


async def test_rfc3261_13_sipp_uac_calls_our_uas(tmp_path: Path) -> None:
    """SIPp's built-in uac: INVITE, (100), 180, 200, ACK, BYE, 200."""
    ep = await endpoint()
    try:
        proc = await start_sipp(
            tmp_path, "-sn", "uac", f"127.0.0.1:{ep.port}", "-p", str(free_udp_port()), "-d", "200"
        )
        dialog: Dialog | None = None
        for _ in range(10):
            event = await next_event(ep)
            assert isinstance(event, RequestReceived)
            request = event.request
            if request.method == "INVITE":
                assert event.transaction is not None
                tag = new_tag()
                contact = (("Contact", f"<sip:voicegw@127.0.0.1:{ep.port}>"),)
                ringing = make_response(request, 180, to_tag=tag, headers=contact)
                ep.layer.send_response(event.transaction, ringing, ep.loop.time())
                ok = make_response(request, 200, to_tag=tag, headers=contact)
                dialog = Dialog.as_uas(request, ok, ep.loop.time())
                ep.layer.send_response(event.transaction, ok, ep.loop.time())
            elif request.method == "ACK":
                assert event.transaction is None  # the 2xx's ACK is outside the transaction
                assert dialog is not None
                assert DialogId.of_request(request) == dialog.id
            else:
                assert request.method == "BYE"
                assert event.transaction is not None
                assert dialog is not None
                assert dialog.receive_request(request) is None
                bye_ok = make_response(request, 200)
                ep.layer.send_response(event.transaction, bye_ok, ep.loop.time())
            ep.pump()
            if request.method == "BYE":
                break
        await finish(proc, tmp_path)
    finally:
        ep.close()


async def test_rfc3261_13_our_uac_calls_sipp_uas(tmp_path: Path) -> None:
    """SIPp's built-in uas: we INVITE, get 180 and 200, ACK the 2xx from the dialog, BYE."""
    sipp_port = free_udp_port()
    proc = await start_sipp(tmp_path, "-sn", "uas", "-p", str(sipp_port))
    ep = await endpoint()
    try:
        # No wait for SIPp to bind: an INVITE sent too early is what timer A is for.
        sipp = Destination("127.0.0.1", sipp_port, "UDP")
        via = f"SIP/2.0/UDP 127.0.0.1:{ep.port};rport"
        invite = our_invite(ep, sipp_port)
        ep.layer.send_request(invite, sipp, ep.loop.time())
        ep.pump()
        statuses: list[tuple[str, int]] = []
        for _ in range(10):
            event = await next_event(ep)
            if not isinstance(event, ResponseReceived):
                continue
            response = event.response
            statuses.append((response.cseq.method, response.status))
            if response.cseq.method == "INVITE" and response.status == 200:
                dialog = Dialog.as_uac(invite, response, ep.loop.time())
                ep.layer.send_stateless(dialog.create_ack(invite.cseq.seq, via), sipp)
                ep.layer.send_request(dialog.create_request("BYE", via), sipp, ep.loop.time())
                ep.pump()
            if response.cseq.method == "BYE":
                break
        assert statuses[-1] == ("BYE", 200)
        assert ("INVITE", 200) in statuses
        await finish(proc, tmp_path)
    finally:
        ep.close()


REPLY_HEAD = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]"""

CANCEL_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAS answering 180, then CANCEL -> 200 + 487">
  <recv request="INVITE">
    <action>
      <ereg regexp="CSeq: ([0-9]+) INVITE" search_in="msg" assign_to="all,cseq"/>
    </action>
  </recv>
  <Reference variables="all"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
{REPLY_HEAD}
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

]]></send>
  <recv request="CANCEL"/>
  <send><![CDATA[
SIP/2.0 200 OK
{REPLY_HEAD}
[last_CSeq:]
Content-Length: 0

]]></send>
  <send><![CDATA[
SIP/2.0 487 Request Terminated
{REPLY_HEAD}
CSeq: [$cseq] INVITE
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""

BUSY_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAS answering 486, expecting the ACK">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 486 Busy Here
{REPLY_HEAD}
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""


async def call_scripted_uas(
    tmp_path: Path, scenario: str, cancel_on_ringing: bool
) -> list[tuple[str, int]]:
    sipp_port = free_udp_port()
    (tmp_path / "scenario.xml").write_text(scenario)
    proc = await start_sipp(tmp_path, "-sf", "scenario.xml", "-p", str(sipp_port))
    ep = await endpoint()
    try:
        # No wait for SIPp to bind: an INVITE sent too early is what timer A is for.
        sipp = Destination("127.0.0.1", sipp_port, "UDP")
        tid = ep.layer.send_request(our_invite(ep, sipp_port), sipp, ep.loop.time())
        ep.pump()
        statuses: list[tuple[str, int]] = []
        for _ in range(10):
            event = await next_event(ep)
            if not isinstance(event, ResponseReceived):
                continue
            response = event.response
            statuses.append((response.cseq.method, response.status))
            if cancel_on_ringing and response.status == 180:
                assert ep.layer.cancel(tid, ep.loop.time())
                ep.pump()
            if response.cseq.method == "INVITE" and response.status >= 300:
                break
        await finish(proc, tmp_path)
        return statuses
    finally:
        ep.close()


async def test_rfc3261_9_1_sipp_accepts_our_cancel_and_gets_ack_for_487(tmp_path: Path) -> None:
    statuses = await call_scripted_uas(tmp_path, CANCEL_SCENARIO, cancel_on_ringing=True)
    assert statuses == [("INVITE", 180), ("CANCEL", 200), ("INVITE", 487)]


async def test_rfc3261_17_1_1_3_sipp_gets_ack_for_486(tmp_path: Path) -> None:
    statuses = await call_scripted_uas(tmp_path, BUSY_SCENARIO, cancel_on_ringing=False)
    assert statuses == [("INVITE", 486)]
