"""Outbound campaign calls: dial through the campaign's trunk, then the inbound path.

:class:`CampaignDialer` places one call to a callee through the trunk the
campaign names (the trunk's credentials answer its 401/407, see
:func:`~voicegw.calls.trunks.place_trunk_call`). Once the callee answers, the
call is handed to the same :data:`~voicegw.calls.sip_calls.CallHandler` that
takes calls to the tenant's numbers (``voicegw serve``: the consent flow, then
the agent queue), with the campaign on its :class:`CallOffer`, so the
campaign's recording-mode override applies (all-party jurisdictions of the
callee's number still win: that is the policy's order, not ours).

The services take an :class:`~voicegw.calls.sip_calls.InboundCall`: an
answered outbound leg is handed over as :class:`CampaignLeg`, which shows the
callee as the caller (the party on the leg, whose number the jurisdiction
rules look at) and our caller ID as the dialled side. Ringing, answering and
rejecting are already over for it: they do nothing (a reject ends it with BYE).

Each placed call has a :class:`CampaignCall` status (dialling, answered, ended,
failed with the SIP status) that the admin API shows; numbers appear in it
only masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, cast

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.call_types import CallFailed, EndReason
from voicegw.calls.routing import Caller, CallerIdentity, Route, Service
from voicegw.calls.sip_calls import CallHandler, CallOffer, InboundCall, OutboundCall, SipCalls
from voicegw.calls.trunks import Trunk, TrunkTable, place_trunk_call
from voicegw.logs import mask_number
from voicegw.media.clock import MediaClock

__all__ = [
    "CampaignCall",
    "CampaignCallState",
    "CampaignDialer",
    "CampaignLeg",
    "CampaignTarget",
    "NoTrunk",
]

log = logging.getLogger("voicegw.calls.campaign_calls")

#: Finished calls' statuses kept for the API (the oldest go first).
_KEEP_FINISHED: Final = 1000
#: Seconds a callee may ring before the INVITE is cancelled (408).
DEFAULT_ANSWER_TIMEOUT: Final = 45.0
#: Seconds to wait for the leg to end after our hang-up.
_BYE_WAIT: Final = 32.0


class CampaignCallState(enum.StrEnum):
    DIALLING = "dialling"
    ANSWERED = "answered"
    ENDED = "ended"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CampaignTarget:
    """What the dialer needs of a campaign (read from the store by the caller)."""

    tenant_id: str
    campaign_id: str
    trunk: str
    #: Our From URI (the tenant's caller ID).
    caller: str


@dataclass(eq=False)
class CampaignCall:
    """One placed call as the API shows it: never the raw number."""

    id: str
    tenant_id: str
    campaign_id: str
    callee: str  # masked
    state: CampaignCallState = CampaignCallState.DIALLING
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The SIP call's id once answered (live calls, consent records and recordings use it).
    sip_call_id: str | None = None
    #: The final SIP status and reason of a call that was not answered.
    failure: CallFailed | None = None
    end_reason: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "campaign": self.campaign_id,
            "callee": self.callee,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "sip_call_id": self.sip_call_id,
            "failure": (
                None
                if self.failure is None
                else {"status": self.failure.status, "reason": self.failure.reason}
            ),
            "end_reason": self.end_reason,
        }


class NoTrunk(LookupError):
    """The campaign's trunk is not configured on this node for the tenant's outbound calls."""


class CampaignLeg:
    """An answered campaign call, as the inbound services see a call (module docstring).

    What the services read (state, ended, confirmed, transport, ...) is the leg's own;
    what they do before an answer is moot. They set no attributes on the call, so a
    wrapper is enough; a typed interface shared by both kinds of leg would replace it
    if one ever must.
    """

    def __init__(self, leg: OutboundCall, offer: CallOffer) -> None:
        self.leg = leg
        self.offer = offer

    @property
    def id(self) -> str:
        return self.leg.id

    def media(self, clock: MediaClock) -> RtpCallMedia:
        return self.leg.media(clock)

    def ring(self, *, early_media: bool = False) -> None:
        """Answered already: nothing to ring."""

    def answer(self) -> None:
        """Answered already (by the callee)."""

    def reject(self, status: int, reason: str | None = None) -> None:
        # Past the point of a final response: a service that refuses the call ends it.
        self.leg.hang_up()

    def cancelled(self) -> None:
        """No INVITE of the callee's to cancel."""

    def hang_up(
        self, reason: EndReason = EndReason.LOCAL_HANGUP, reason_header: str | None = None
    ) -> None:
        self.leg.hang_up(reason, reason_header)

    def __getattr__(self, name: str) -> object:
        # Everything else (state, ended, confirmed, transport, dialog, ...) is the leg's own.
        return getattr(self.leg, name)

    def as_inbound(self) -> InboundCall:
        """This leg typed as the services take it: it answers every attribute they use."""
        return cast(InboundCall, self)


Placer = Callable[[Trunk, str, str], Awaitable[OutboundCall | CallFailed]]


class CampaignDialer:
    """Places campaign calls and keeps their status; one task per call, bounded by the SIP
    timers (``answer_timeout``, Timer B) and the call layer's duration limit."""

    def __init__(
        self,
        calls: SipCalls,
        trunks: TrunkTable,
        handler: CallHandler | None = None,
        *,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        self.calls = calls
        self.trunks = trunks
        #: Takes answered calls; None: the call layer's agent-queue service (what a tenant's
        #: numbers reach), looked up per call so a node wires it once.
        self.handler = handler
        self.answer_timeout = answer_timeout
        self._calls: OrderedDict[str, CampaignCall] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def trunk_for(self, target: CampaignTarget) -> Trunk:
        """The campaign's trunk, if it is the tenant's and can place calls, else NoTrunk."""
        trunk = self.trunks.get(target.trunk)
        if trunk is None or trunk.tenant_id != target.tenant_id or trunk.outbound is None:
            raise NoTrunk(target.trunk)
        return trunk

    def get(self, tenant_id: str, call_id: str) -> CampaignCall | None:
        found = self._calls.get(call_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    def start(self, target: CampaignTarget, number: str) -> CampaignCall:
        """Dial ``number`` (E.164, validated) for ``target``; returns at once (NoTrunk first)."""
        trunk = self.trunk_for(target)
        status = CampaignCall(
            id=uuid.uuid4().hex,
            tenant_id=target.tenant_id,
            campaign_id=target.campaign_id,
            callee=mask_number(number),
        )
        self._remember(status)
        task = asyncio.create_task(self._run(status, target, trunk, number), name="campaign-call")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "campaign.call.dialling",
            extra={
                "tenant_id": target.tenant_id,
                "campaign": target.campaign_id,
                "campaign_call": status.id,
                "callee": status.callee,
            },
        )
        return status

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _remember(self, status: CampaignCall) -> None:
        self._calls[status.id] = status
        finished = [k for k, v in self._calls.items() if v.finished.is_set()]
        for key in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._calls[key]

    async def _run(
        self, status: CampaignCall, target: CampaignTarget, trunk: Trunk, number: str
    ) -> None:
        try:
            result = await place_trunk_call(
                self.calls,
                trunk,
                number,
                caller=target.caller,
                answer_timeout=self.answer_timeout,
            )
            if isinstance(result, CallFailed):
                status.state, status.failure = CampaignCallState.FAILED, result
                log.info(
                    "campaign.call.failed",
                    extra={"campaign_call": status.id, "status": result.status},
                )
                return
            status.state, status.sip_call_id = CampaignCallState.ANSWERED, result.id
            await self._answered(result, target, trunk, number)
            status.state = CampaignCallState.ENDED
            status.end_reason = None if result.end_reason is None else result.end_reason.value
        except asyncio.CancelledError:  # the node is stopping
            if status.state is CampaignCallState.ANSWERED:
                status.state, status.end_reason = CampaignCallState.ENDED, "shutdown"
            else:
                status.state = CampaignCallState.FAILED
                status.failure = CallFailed(503, "Gateway shutting down")
            raise
        except Exception:
            log.exception("campaign.call.error", extra={"campaign_call": status.id})
            status.state = CampaignCallState.FAILED
            status.failure = CallFailed(500, "Gateway error")
        finally:
            status.finished.set()

    async def _answered(
        self, leg: OutboundCall, target: CampaignTarget, trunk: Trunk, number: str
    ) -> None:
        assert trunk.outbound is not None
        callee_uri = str(trunk.outbound.request_uri(number))
        offer = CallOffer(
            from_uri=callee_uri,  # the party on the leg, as a caller would be
            to_uri=target.caller,
            request_uri=target.caller,
            caller=CallerIdentity(Caller.TRUNK, target.tenant_id, trunk.name),
            route=Route(Service.AGENT_QUEUE, target.tenant_id, None),
            remote_sdp=None,
            campaign=target.campaign_id,
        )
        handler = self.handler or self.calls.services.get(Service.AGENT_QUEUE)
        try:
            if handler is None:
                raise RuntimeError("no agent-queue service on the call layer")
            await handler(CampaignLeg(leg, offer).as_inbound())
        finally:
            if not leg.ended.is_set():
                leg.hang_up()
        # Our BYE ends the leg at once; only a BYE held back for an ACK could take longer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(leg.ended.wait(), _BYE_WAIT)
