"""A tenant's outbound campaigns: create, list, change; every change audited.

A campaign names the configured trunk its calls go out through and may
override the tenant's recording mode for its calls (the consent policy's
``campaign_overrides``). Every query is scoped by tenant: a campaign id means
nothing outside its tenant.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.consent.modes import RecordingMode
from voicegw.store import audit
from voicegw.store.models import Campaign, CampaignCall
from voicegw.store.tenants import ConflictError

__all__ = [
    "CAMPAIGN_ID",
    "CampaignCallState",
    "CampaignChange",
    "campaign_modes",
    "create_campaign",
    "get_campaign",
    "get_campaign_call",
    "list_campaigns",
    "purge_finished_calls",
    "save_campaign_call",
    "settle_unfinished_calls",
    "update_campaign",
]

CAMPAIGN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MODES = frozenset(mode.value for mode in RecordingMode)


@dataclass(frozen=True, slots=True)
class CampaignChange:
    """What an update sets; a field left ``None`` stays as it is (``clear_mode`` drops the
    override, so the tenant default applies again)."""

    name: str | None = None
    recording_mode: str | None = None
    clear_mode: bool = False
    trunk: str | None = None
    enabled: bool | None = None


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in _MODES:
        raise ValueError(f"recording_mode must be one of {', '.join(sorted(_MODES))}")


def _target(row: Campaign) -> str:
    return f"tenant/{row.tenant_id}/campaigns/{row.id}"


async def create_campaign(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    campaign_id: str,
    name: str,
    trunk: str,
    recording_mode: str | None = None,
    enabled: bool = True,
) -> Campaign:
    """ValueError for a bad id or mode, ConflictError when the tenant has the id already."""
    if not CAMPAIGN_ID.match(campaign_id):
        raise ValueError("id: 1-63 lower-case letters, digits and '-', starting alphanumeric")
    _check_mode(recording_mode)
    if await get_campaign(session, tenant_id, campaign_id) is not None:
        raise ConflictError("campaign already exists")
    row = Campaign(
        tenant_id=tenant_id,
        id=campaign_id,
        name=name,
        recording_mode=recording_mode,
        trunk=trunk,
        enabled=enabled,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent create of the same id won the race
        raise ConflictError("campaign already exists") from None
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="tenant.campaign.create",
        target=_target(row),
        details={
            "name": name,
            "trunk": trunk,
            "recording_mode": recording_mode,
            "enabled": enabled,
        },
    )
    return row


async def get_campaign(session: AsyncSession, tenant_id: str, campaign_id: str) -> Campaign | None:
    query = select(Campaign).where(Campaign.tenant_id == tenant_id, Campaign.id == campaign_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_campaigns(session: AsyncSession, tenant_id: str) -> list[Campaign]:
    query = select(Campaign).where(Campaign.tenant_id == tenant_id).order_by(Campaign.id)
    return list((await session.execute(query)).scalars())


async def update_campaign(
    session: AsyncSession, *, actor: str, campaign: Campaign, change: CampaignChange
) -> Campaign:
    """Apply ``change``; the audit event lists each field's before and after."""
    _check_mode(change.recording_mode)
    wanted: dict[str, Any] = {
        "name": change.name,
        "recording_mode": None if change.clear_mode else change.recording_mode,
        "trunk": change.trunk,
        "enabled": change.enabled,
    }
    diff: dict[str, Any] = {}
    for field, value in wanted.items():
        clearing = field == "recording_mode" and change.clear_mode
        if value is None and not clearing:
            continue
        before = getattr(campaign, field)
        if before != value:
            setattr(campaign, field, value)
            diff[field] = {"from": before, "to": value}
    if not diff:
        return campaign
    await session.flush()
    await audit.append(
        session,
        actor=actor,
        tenant_id=campaign.tenant_id,
        action="tenant.campaign.update",
        target=_target(campaign),
        details=diff,
    )
    return campaign


async def campaign_modes(session: AsyncSession, tenant_id: str) -> dict[str, str]:
    """Campaign id -> recording mode, for the tenant's campaigns that override it."""
    query = select(Campaign.id, Campaign.recording_mode).where(
        Campaign.tenant_id == tenant_id, Campaign.recording_mode.is_not(None)
    )
    return {cid: mode for cid, mode in (await session.execute(query)).all() if mode is not None}


# --- placed calls ------------------------------------------------------------------------


class CampaignCallState(enum.StrEnum):
    DIALLING = "dialling"
    ANSWERED = "answered"
    ENDED = "ended"
    FAILED = "failed"


#: What a call still dialling when its node stopped is reported as (a SIP status).
RESTARTED_STATUS, RESTARTED_REASON = 503, "Gateway restarted"
#: The end reason of an answered call whose node stopped under it.
RESTARTED_END = "node-restarted"


async def save_campaign_call(session: AsyncSession, row: CampaignCall) -> None:
    """Insert or update a placed call's status (keyed by its id)."""
    await session.merge(row)


async def get_campaign_call(
    session: AsyncSession, tenant_id: str, call_id: str
) -> CampaignCall | None:
    query = select(CampaignCall).where(
        CampaignCall.tenant_id == tenant_id, CampaignCall.id == call_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def settle_unfinished_calls(session: AsyncSession, node: str) -> int:
    """At ``node``'s start-up: its calls still dialling or answered died with it. A call
    dialling is failed (503), an answered one ended; returns how many were settled.
    Other nodes' calls are theirs: they may be live."""
    now = datetime.now(UTC)
    dialling = (
        update(CampaignCall)
        .where(CampaignCall.node == node, CampaignCall.state == CampaignCallState.DIALLING)
        .values(
            state=CampaignCallState.FAILED.value,
            failure_status=RESTARTED_STATUS,
            failure_reason=RESTARTED_REASON,
            updated_at=now,
        )
    )
    answered = (
        update(CampaignCall)
        .where(CampaignCall.node == node, CampaignCall.state == CampaignCallState.ANSWERED)
        .values(state=CampaignCallState.ENDED.value, end_reason=RESTARTED_END, updated_at=now)
    )
    settled = 0
    for statement in (dialling, answered):
        result = await session.execute(statement)
        settled += int(getattr(result, "rowcount", 0) or 0)
    return settled


async def purge_finished_calls(session: AsyncSession, before: datetime) -> int:
    """Delete the statuses of calls that ended or failed before ``before``: the scheduler
    has long read them, and the table would otherwise grow with every call dialled."""
    statement = delete(CampaignCall).where(
        CampaignCall.state.in_([CampaignCallState.ENDED.value, CampaignCallState.FAILED.value]),
        CampaignCall.updated_at < before,
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)
