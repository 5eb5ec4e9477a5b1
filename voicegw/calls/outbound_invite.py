"""Placing a call: our INVITE until its final response, and what comes before it.

:class:`OutboundInvite` follows the INVITE (digest retries, early dialogs per
§12.1.2, the ACK for every 2xx); :class:`EarlyMedia` turns its provisional
responses into :class:`CallProgress` reports and opens the leg's media when a
18x carries SDP. :meth:`SipCalls.place_call <voicegw.calls.sip_calls.SipCalls.place_call>`
drives both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voicegw.calls.call_types import SDP, CallFailed
from voicegw.calls.routing import CallerIdentity
from voicegw.media.ports import RtpPorts
from voicegw.media.session import LegConfig, MediaLeg
from voicegw.media.transport import LegTransport
from voicegw.sip.dialog import Dialog
from voicegw.sip.digest import CHALLENGE_HEADERS, AuthAttempt, AuthorizationHeader, DigestClient
from voicegw.sip.message import SipRequest, SipResponse, new_branch
from voicegw.sip.offer_answer import MediaCapabilities, NegotiatedAudio, apply_answer
from voicegw.sip.sdp import SdpError, SessionDescription
from voicegw.sip.transaction import Destination
from voicegw.sip.transaction_layer import (
    ResponseReceived,
    TransactionId,
    TransactionTimedOut,
    TransportFailed,
)

if TYPE_CHECKING:
    from voicegw.calls.sip_calls import SipCalls

log = logging.getLogger("voicegw.calls.outbound_invite")


@dataclass(frozen=True, slots=True)
class CallProgress:
    """A provisional response (180-199) to a call we placed.

    ``early_media`` is set when the response carried SDP (183 Session Progress
    with the callee's ringback or announcement): the leg's transport, opened
    already, whose received RTP can be relayed (set its ``peer``) until the
    answer. None: plain ringing, no media yet.
    """

    status: int
    reason: str
    early_media: LegTransport | None


@dataclass(frozen=True, slots=True)
class LegParts:
    offer: SessionDescription
    caps: MediaCapabilities
    ports: RtpPorts
    tenant_id: str
    identity: CallerIdentity | None


class EarlyMedia:
    """An outbound call's provisional responses: progress reports, media opened by a 18x's SDP."""

    def __init__(
        self,
        calls: SipCalls,
        offer: SessionDescription,
        caps: MediaCapabilities,
        ports: RtpPorts,
        on_progress: Callable[[CallProgress], None] | None,
    ) -> None:
        self.calls = calls
        self.offer = offer
        self.caps = caps
        self.ports = ports
        self.on_progress = on_progress
        self.audio: NegotiatedAudio | None = None
        self.transport: LegTransport | None = None
        self._opening: asyncio.Task[None] | None = None

    def provisional(self, response: SipResponse) -> None:
        if response.status <= 100:
            return
        if self._opening is None and response.body and self._is_sdp(response):
            try:
                audio = apply_answer(self.offer, SessionDescription.parse(response.body), self.caps)
                config = self.calls.leg_config_for(audio)
            except SdpError:
                log.info("sip.call.early_media_refused")
            else:
                self.audio = audio
                self._opening = asyncio.create_task(self._open(response, config))
                return
        self._report(response)

    async def _open(self, response: SipResponse, config: LegConfig) -> None:
        opened = await LegTransport.open(MediaLeg(config, self.calls.now()), self.ports)
        opened.held = True  # nothing of ours goes to the callee before the answer
        self.transport = opened
        self._report(response)

    def _report(self, response: SipResponse) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(CallProgress(response.status, response.reason, self.transport))
        except Exception as error:  # runs in the SIP pump: a bad callback must not stop it
            log.error("sip.call.progress_handler_failed", extra={"error": type(error).__name__})

    @staticmethod
    def _is_sdp(response: SipResponse) -> bool:
        return (response.content_type or "").split(";")[0].strip().lower() == SDP

    async def opened(self) -> LegTransport | None:
        if self._opening is not None:
            await self._opening
        return self.transport

    async def close(self) -> None:
        """The call failed or was given up: close the early media, if any."""
        if self._opening is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._opening
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class OutboundInvite:
    """Our INVITE until its final response: digest retries (new CSeq, same Call-ID),
    then the ACK for the 2xx, re-sent for every retransmission of it (§13.2.2.4)."""

    def __init__(
        self,
        calls: SipCalls,
        request: SipRequest,
        destination: Destination,
        digest: DigestClient | None,
    ) -> None:
        self.calls = calls
        self.request = request
        self.destination = destination
        self.digest = digest
        self.attempt: AuthAttempt | None = None
        self.result: asyncio.Future[SipResponse | CallFailed] = (
            asyncio.get_running_loop().create_future()
        )
        self.dialog: Dialog | None = None
        self.ack: SipRequest | None = None
        self.transactions: list[TransactionId] = []
        #: Told of each provisional response (180 Ringing, 183 with early media ...).
        self.on_provisional: Callable[[SipResponse], None] | None = None
        #: §12.1.2: the early dialogs tagged provisional responses created, by To tag (forks).
        self.early_dialogs: dict[str, Dialog] = {}

    @property
    def transaction(self) -> TransactionId:
        return self.transactions[-1]

    def send(self) -> None:
        tid = self.calls.service.send_request(self.request, self.destination)
        self.transactions.append(tid)
        self.calls.track_client(tid, self)

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        if not isinstance(event, ResponseReceived):
            self._fail(408, "Request Timeout")
            return
        response = event.response
        if response.status < 200:
            if self.result.done():
                return
            self._early_dialog(response)
            if self.on_provisional is not None:
                self.on_provisional(response)
            return
        if response.status < 300:
            self._accepted(response)
        elif not self._retry_with_credentials(response):
            self._fail(response.status, response.reason)

    def _early_dialog(self, response: SipResponse) -> None:
        tag = response.to.tag
        if response.status == 100 or tag is None:
            return  # §12.1: no dialog without a To tag
        early = self.early_dialogs.get(tag)
        if early is None:
            self.early_dialogs[tag] = Dialog.as_uac(self.request, response, self.calls.now())
        else:
            early.receive_response(response, self.calls.now())  # may refresh the target

    def _accepted(self, response: SipResponse) -> None:
        if self.dialog is None:
            early = self.early_dialogs.pop(response.to.tag or "", None)
            if early is not None:
                # §13.2.2.4: the 2xx confirms the early dialog of its fork (route set anew).
                early.receive_response(response, self.calls.now())
                self.dialog = early
            else:
                self.dialog = Dialog.as_uac(self.request, response, self.calls.now())
            for other in self.early_dialogs.values():
                other.terminate()  # forks that did not answer: their early dialogs end here
            self.early_dialogs.clear()
            via = self.calls.via(self.destination)
            self.ack = self.dialog.create_ack(self.request.cseq.seq, via)
        assert self.ack is not None
        hop = self.calls.hop(self.dialog, self.destination)
        self.calls.service.send_stateless(self.ack, hop)
        if not self.result.done():
            self.result.set_result(response)

    def _retry_with_credentials(self, response: SipResponse) -> bool:
        challenge = CHALLENGE_HEADERS.get(response.status)
        if challenge is None or self.digest is None:
            return False
        answer = self.digest.respond(
            response.status,
            response.headers.get_all(challenge[0]),
            method="INVITE",
            uri=str(self.request.uri),
            target_host=self.destination.host,
            attempt=self.attempt,
        )
        if not isinstance(answer, AuthorizationHeader):
            return False
        self.attempt = answer.attempt
        headers = (
            self.request.headers.set(
                "Via", f"{self.calls.via(self.destination)};branch={new_branch()}"
            )
            .set("CSeq", f"{self.request.cseq.seq + 1} INVITE")
            .set(answer.name, answer.value)
        )
        self.request = SipRequest(
            method="INVITE", uri=self.request.uri, headers=headers, body=self.request.body
        )
        self.send()
        return True

    def _fail(self, status: int, reason: str) -> None:
        if not self.result.done():
            self.result.set_result(CallFailed(status, reason))


__all__ = ["CallProgress", "EarlyMedia", "LegParts", "OutboundInvite"]
