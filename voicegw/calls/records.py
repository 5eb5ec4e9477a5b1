"""Call records: one :class:`~voicegw.store.models.Call` row per call, whatever service took it.

:meth:`CallRecords.track` is given every inbound call (it fits
:attr:`SipCalls.on_call <voicegw.calls.sip_calls.SipCalls.on_call>`): the row
is written at once (state ``offered``), gets ``answered_at`` when the call is
confirmed, and at the end its ``ended_at``, ``end_reason`` and ``media_stats``,
the RTP figures of every leg of the call (loss, jitter, RTT from
:meth:`MediaLeg.summary <voicegw.media.session.MediaLeg.summary>`). A service
that adds legs (the bridge's callee leg) names them with :meth:`CallRecord.add_leg`
and may give a more telling end reason than the caller leg's own.

Only masked numbers are stored; the SIP user names of a tenant's own phones are
not numbers and are kept as they are. A database error is logged and never
touches the call. Rows are written by one task per call, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_calls import CallLeg, InboundCall
from voicegw.logs import mask_number
from voicegw.media.session import LegSummary
from voicegw.media.stats import StreamSummary
from voicegw.sip.errors import SipParseError
from voicegw.sip.uri import SipURI, TelURI, parse_uri
from voicegw.store.models import Call

log = logging.getLogger("voicegw.calls.records")

#: A user part that is a telephone number once visual separators are dropped.
_NUMBER_LIKE = re.compile(r"^\+?[0-9][0-9 ().-]*$")
_COLUMN = 32  # caller_masked / callee_masked width
CALLER_LEG = "caller"


def mask_party(uri: str) -> str:
    """What the record shows of a From/To URI: a masked number, or the SIP user name."""
    try:
        parsed = parse_uri(uri.strip().strip("<>"))
    except SipParseError:
        return ""
    if isinstance(parsed, TelURI):
        return mask_number(parsed.number)[:_COLUMN]
    if not isinstance(parsed, SipURI):
        return ""
    user = parsed.user
    if not user:
        return ""
    if _NUMBER_LIKE.match(user):
        return mask_number(user)[:_COLUMN]
    return user[:_COLUMN]


def _stream(summary: StreamSummary | None) -> dict[str, object] | None:
    if summary is None:
        return None
    return {
        "ssrc": summary.ssrc,
        "packets_received": summary.packets_received,
        "packets_expected": summary.packets_expected,
        "packets_lost": summary.packets_lost,
        "loss_fraction": summary.loss_fraction,
        "jitter_ms": summary.jitter_ms,
        "rtt_ms": summary.rtt_ms,
    }


def leg_stats(summary: LegSummary) -> dict[str, object]:
    """One leg's figures as JSON: reception of the current stream, sending, drops, RTT."""
    return {
        "received": _stream(summary.received),
        "previous_streams": len(summary.previous),
        "packets_sent": summary.packets_sent,
        "octets_sent": summary.octets_sent,
        "rtt_ms": summary.rtt_ms,
        "dropped": dict(summary.dropped),
    }


def _at(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


@dataclass
class CallRecord:
    """The record of one live call: its row id and the legs whose figures it stores."""

    id: str
    legs: dict[str, CallLeg] = field(default_factory=dict)
    #: Set by the service when it knows better than the caller leg (e.g. "callee-busy").
    end_reason: str | None = None

    def add_leg(self, name: str, leg: CallLeg) -> None:
        self.legs[name] = leg


class CallRecords:
    """Writes the Call rows of one node's calls (see the module docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        node: str | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.node = node
        self.wallclock = wallclock
        self.live: dict[str, CallRecord] = {}  # by SipCalls call id
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, call: InboundCall) -> None:
        """Start the record of ``call`` (write the row now, finish it when the call ends)."""
        record = CallRecord(uuid.uuid4().hex)
        record.add_leg(CALLER_LEG, call)
        self.live[call.id] = record
        row = Call(
            id=record.id,
            tenant_id=call.offer.route.tenant_id,
            direction="inbound",
            caller_masked=mask_party(call.offer.from_uri),
            callee_masked=mask_party(call.offer.to_uri),
            state="offered",
            started_at=_at(self.wallclock()),
            node=self.node,
        )
        task = asyncio.create_task(self._follow(call, record, row))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_of(self, call: CallLeg) -> CallRecord | None:
        return self.live.get(call.id)

    async def wait_written(self) -> None:
        """Until every record started so far is finished (tests, shutdown)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _follow(self, call: InboundCall, record: CallRecord, row: Call) -> None:
        try:
            await self._write(row)
            confirmed = asyncio.create_task(call.confirmed.wait())
            ended = asyncio.create_task(call.ended.wait())
            try:
                await asyncio.wait({confirmed, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                confirmed.cancel()
            if call.confirmed.is_set():
                await self._update(record.id, state="answered", answered_at=_at(self.wallclock()))
            await ended
            # The other legs end with this one (a bridge hangs them up on the same event).
            await self._update(
                record.id,
                state="ended",
                ended_at=_at(self.wallclock()),
                end_reason=record.end_reason
                or (call.end_reason.value if call.end_reason else None),
                media_stats={
                    name: leg_stats(leg.transport.leg.summary())
                    for name, leg in record.legs.items()
                },
            )
        finally:
            self.live.pop(call.id, None)

    async def _write(self, row: Call) -> None:
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except Exception as error:
            log.error("call.record_failed", extra={"error": type(error).__name__})

    async def _update(self, record_id: str, **values: object) -> None:
        try:
            async with self.sessions.begin() as session:
                row = await session.get(Call, record_id)
                if row is None:
                    return
                for name, value in values.items():
                    setattr(row, name, value)
        except Exception as error:
            log.error("call.record_failed", extra={"error": type(error).__name__})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


__all__ = ["CALLER_LEG", "CallRecord", "CallRecords", "leg_stats", "mask_party"]
