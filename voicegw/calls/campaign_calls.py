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
only masked. Every change is also stored (table ``campaign_calls``, the node's
name on it), so a status can be read after the node that placed the call
restarted, or through another node; at start-up a node settles the calls it
left unfinished (:func:`~voicegw.store.campaigns.settle_unfinished_calls`).
A failed status write is logged and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, cast

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.call_media import RtpCallMedia
from voicegw.calls.call_types import CallFailed, EndReason
from voicegw.calls.routing import Caller, CallerIdentity, Route, Service
from voicegw.calls.sip_calls import CallHandler, CallOffer, InboundCall, OutboundCall, SipCalls
from voicegw.calls.trunks import Trunk, TrunkTable, place_trunk_call
from voicegw.logs import mask_number
from voicegw.media.clock import MediaClock
from voicegw.store import campaigns as store
from voicegw.store.campaigns import CampaignCallState
from voicegw.store.models import CampaignCall as CampaignCallRow
from voicegw.store.recordings import as_utc

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

    @classmethod
    def from_row(cls, row: CampaignCallRow) -> CampaignCall:
        """A stored status (of a call this node no longer holds); settled, as stored."""
        failure = (
            None
            if row.failure_status is None
            else CallFailed(row.failure_status, row.failure_reason or "")
        )
        status = cls(
            id=row.id,
            tenant_id=row.tenant_id,
            campaign_id=row.campaign_id,
            callee=row.callee_masked,
            state=CampaignCallState(row.state),
            created_at=as_utc(row.created_at),
            sip_call_id=row.sip_call_id,
            failure=failure,
            end_reason=row.end_reason,
        )
        status.finished.set()
        return status

    def to_row(self, node: str | None) -> CampaignCallRow:
        return CampaignCallRow(
            id=self.id,
            tenant_id=self.tenant_id,
            campaign_id=self.campaign_id,
            callee_masked=self.callee,
            state=self.state.value,
            created_at=self.created_at,
            updated_at=datetime.now(UTC),
            sip_call_id=self.sip_call_id,
            failure_status=None if self.failure is None else self.failure.status,
            failure_reason=None if self.failure is None else self.failure.reason[:128],
            end_reason=self.end_reason,
            node=node,
        )

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
        sessions: async_sessionmaker[AsyncSession],
        node: str | None = None,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        self.calls = calls
        self.trunks = trunks
        self.sessions = sessions
        #: Stored on each status: start-up settles only this node's unfinished calls.
        self.node = node
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
        """A call this node placed and still holds in memory."""
        found = self._calls.get(call_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    async def lookup(self, tenant_id: str, call_id: str) -> CampaignCall | None:
        """A call's status: this node's own, else as stored (another node, a restart)."""
        found = self.get(tenant_id, call_id)
        if found is not None:
            return found
        async with self.sessions() as session:
            row = await store.get_campaign_call(session, tenant_id, call_id)
        return None if row is None else CampaignCall.from_row(row)

    async def start(self, target: CampaignTarget, number: str) -> CampaignCall:
        """Dial ``number`` (E.164, validated) for ``target``; returns once the status is
        stored, before the callee answers (NoTrunk first; a failed write raises and
        nothing is dialled: a call nobody could follow is not placed)."""
        trunk = self.trunk_for(target)
        status = CampaignCall(
            id=uuid.uuid4().hex,
            tenant_id=target.tenant_id,
            campaign_id=target.campaign_id,
            callee=mask_number(number),
        )
        await self._save(status)
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
            await self._store(status)
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
            # Stored before the waiters hear of it; shielded, so a stopping node records
            # how its calls ended.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._store(status))
            status.finished.set()

    async def _save(self, status: CampaignCall) -> None:
        async with self.sessions() as session, session.begin():
            await store.save_campaign_call(session, status.to_row(self.node))

    async def _store(self, status: CampaignCall) -> None:
        """Save, and log a failure: the call goes on whether its status is stored or not."""
        try:
            await self._save(status)
        except (SQLAlchemyError, OSError) as exc:
            log.error(
                "campaign call status not stored",
                extra={"campaign_call": status.id, "error": type(exc).__name__},
            )

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
