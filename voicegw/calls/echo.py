"""The echo service: answers and sends the caller's own audio back.

The leg is relayed to itself (``transport.peer = transport``): every accepted
RTP packet goes straight back out from inside the receive callback, with the
payload untouched and our own SSRC, sequence numbers and timestamps from the
leg's sender. Nothing is decoded. It proves a phone's registration, routing,
SDP and both RTP directions in one call: operators dial sip:echo@<tenant realm>
to check a phone or a trunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from voicegw.calls.routing import DEFAULT_ECHO_USER
from voicegw.calls.sip_calls import InboundCall


@dataclass(frozen=True, slots=True)
class EchoConfig:
    #: The Request-URI user of the service (``sip:echo@<tenant realm>``); give it to the Router.
    user: str = DEFAULT_ECHO_USER
    #: How long it rings before answering (0: answer at once).
    ring_delay: float = 0.0


class EchoService:
    """A :data:`~voicegw.calls.sip_calls.CallHandler` that echoes the caller's audio."""

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.config = config or EchoConfig()

    async def __call__(self, call: InboundCall) -> None:
        call.ring()
        if self.config.ring_delay > 0:
            # A CANCEL while ringing ends the call: stop waiting then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), self.config.ring_delay)
        if call.ended.is_set():
            return
        call.transport.peer = call.transport
        call.answer()
