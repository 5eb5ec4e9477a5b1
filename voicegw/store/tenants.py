"""Tenant, number and agent operations shared by the admin API and the CLI.

Every change is audited in the same transaction as the change itself.
Lookups take the tenant id as a required argument: nothing here can reach
another tenant's rows by a bare primary key.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.logs import mask_number
from voicegw.store import audit
from voicegw.store.models import Agent, Tenant, TenantNumber
from voicegw.store.sip_accounts import SipCredential
from voicegw.tenant_settings import TenantSettings, merge_settings

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class ConflictError(Exception):
    """The resource already exists."""


def _now() -> datetime:
    return datetime.now(UTC)


def normalise_e164(number: str) -> str:
    """Validate and normalise a phone number to E.164; ValueError says why not."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        raise ValueError(
            "not a phone number in international format (+<country><number>)"
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number for its country")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def tenant_settings(tenant: Tenant) -> TenantSettings:
    return TenantSettings.model_validate(tenant.settings)


async def create_tenant(
    session: AsyncSession, *, actor: str, tenant_id: str, name: str, settings: TenantSettings
) -> Tenant:
    if not TENANT_ID.match(tenant_id):
        raise ValueError(
            "tenant id: 2-63 lower-case letters, digits and '-', starting alphanumeric"
        )
    if await session.get(Tenant, tenant_id) is not None:
        raise ConflictError(f"tenant {tenant_id} already exists")
    now = _now()
    tenant = Tenant(
        id=tenant_id,
        name=name,
        region=settings.region,
        settings=settings.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
    )
    session.add(tenant)
    await session.flush()
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="tenant.create",
        target=f"tenant/{tenant_id}",
        details={"name": name, "settings": tenant.settings},
    )
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def list_tenants(session: AsyncSession, only: str | None = None) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.id)
    if only is not None:
        query = query.where(Tenant.id == only)
    return list((await session.execute(query)).scalars())


async def count_tenants(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Tenant))).scalar_one())


async def update_settings(
    session: AsyncSession, *, actor: str, tenant: Tenant, patch: dict[str, Any]
) -> TenantSettings:
    """Merge ``patch`` into the tenant's settings; raises pydantic.ValidationError on bad input."""
    before = tenant_settings(tenant)
    after = merge_settings(before, patch)
    if after.region != before.region:
        # Stored recordings live under the old region's root; moving data is a
        # migration project, not a settings toggle.
        raise ValueError("region cannot be changed once a tenant exists")
    tenant.settings = after.model_dump(mode="json")
    tenant.updated_at = _now()
    changed = _diff(before.model_dump(mode="json"), tenant.settings)
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant.id,
        action="tenant.settings.update",
        target=f"tenant/{tenant.id}/settings",
        details={"changed": changed},
    )
    return after


def _diff(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.update(_diff(old, new, f"{prefix}{key}."))
        elif old != new:
            out[f"{prefix}{key}"] = {"from": old, "to": new}
    return out


async def add_number(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    number: str,
    label: str | None = None,
    recording_mode: str | None = None,
) -> TenantNumber:
    e164 = normalise_e164(number)
    existing = (
        await session.execute(select(TenantNumber).where(TenantNumber.e164 == e164))
    ).scalar_one_or_none()
    if existing is not None:
        # Same answer whichever tenant owns it: no probing other tenants' numbers.
        raise ConflictError("number is already assigned")
    row = TenantNumber(
        tenant_id=tenant_id,
        e164=e164,
        label=label,
        recording_mode=recording_mode,
        created_at=_now(),
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError("number is already assigned") from None
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="tenant.number.add",
        target=f"tenant/{tenant_id}/numbers/{row.id}",
        details={"number": mask_number(e164), "recording_mode": recording_mode},
    )
    return row


async def list_numbers(session: AsyncSession, tenant_id: str) -> list[TenantNumber]:
    query = (
        select(TenantNumber).where(TenantNumber.tenant_id == tenant_id).order_by(TenantNumber.id)
    )
    return list((await session.execute(query)).scalars())


async def remove_number(
    session: AsyncSession, *, actor: str, tenant_id: str, number_id: int
) -> bool:
    row = (
        await session.execute(
            select(TenantNumber).where(
                TenantNumber.tenant_id == tenant_id, TenantNumber.id == number_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return False
    await session.delete(row)
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="tenant.number.remove",
        target=f"tenant/{tenant_id}/numbers/{number_id}",
        details={"number": mask_number(row.e164)},
    )
    return True


async def tenant_for_number(session: AsyncSession, e164: str) -> TenantNumber | None:
    """Inbound routing: which tenant owns a dialled number."""
    query = select(TenantNumber).where(TenantNumber.e164 == e164)
    return (await session.execute(query)).scalar_one_or_none()


async def add_agent(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    username: str,
    display_name: str,
    skills: list[str],
) -> Agent:
    existing = (
        await session.execute(
            select(Agent).where(Agent.tenant_id == tenant_id, Agent.username == username)
        )
    ).scalar_one_or_none()
    if existing is not None:
        raise ConflictError(f"agent {username} already exists")
    row = Agent(
        tenant_id=tenant_id,
        username=username,
        display_name=display_name,
        skills=skills,
        enabled=True,
        created_at=_now(),
    )
    session.add(row)
    await session.flush()
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="tenant.agent.add",
        target=f"tenant/{tenant_id}/agents/{row.id}",
        details={"username": username, "skills": skills},
    )
    return row


async def set_agent_skills(
    session: AsyncSession, *, actor: str, agent: Agent, skills: list[str]
) -> Agent:
    """Replace an agent's skills (queues ring only agents with all of theirs); audited."""
    before = list(agent.skills)
    agent.skills = skills
    await session.flush()
    await audit.append(
        session,
        actor=actor,
        tenant_id=agent.tenant_id,
        action="tenant.agent.skills",
        target=f"tenant/{agent.tenant_id}/agents/{agent.id}",
        details={"before": before, "after": skills},
    )
    return agent


async def list_agents(session: AsyncSession, tenant_id: str) -> list[Agent]:
    query = select(Agent).where(Agent.tenant_id == tenant_id).order_by(Agent.id)
    return list((await session.execute(query)).scalars())


async def get_agent(session: AsyncSession, tenant_id: str, agent_id: int) -> Agent | None:
    query = select(Agent).where(Agent.tenant_id == tenant_id, Agent.id == agent_id)
    return (await session.execute(query)).scalar_one_or_none()


async def set_agent_sip_user(
    session: AsyncSession, *, actor: str, agent: Agent, sip_user: str | None
) -> Agent:
    """Link ``agent`` to one of its tenant's SIP logins (None: back to the softphone); audited.

    ValueError when the login is not the tenant's or is disabled, ConflictError when
    another agent of the tenant answers for it already.
    """
    if sip_user is not None:
        login = (
            await session.execute(
                select(SipCredential).where(
                    SipCredential.tenant_id == agent.tenant_id,
                    SipCredential.username == sip_user,
                )
            )
        ).scalar_one_or_none()
        if login is None or not login.enabled:
            raise ValueError(f"the tenant has no enabled SIP user {sip_user}")
        holder = (
            await session.execute(
                select(Agent.id).where(
                    Agent.tenant_id == agent.tenant_id,
                    Agent.sip_user == sip_user,
                    Agent.id != agent.id,
                )
            )
        ).scalar_one_or_none()
        if holder is not None:
            raise ConflictError(f"SIP user {sip_user} is the endpoint of agent {holder}")
    before = agent.sip_user
    agent.sip_user = sip_user
    try:
        await session.flush()
    except IntegrityError:  # a concurrent link of the same login won the race
        raise ConflictError(f"SIP user {sip_user} is another agent's endpoint") from None
    await audit.append(
        session,
        actor=actor,
        tenant_id=agent.tenant_id,
        action="tenant.agent.endpoint",
        target=f"tenant/{agent.tenant_id}/agents/{agent.id}",
        details={"before": before, "after": sip_user},
    )
    return agent


async def agents_with_sip_user(session: AsyncSession) -> list[Agent]:
    """Every enabled agent (all tenants) whose calls ring a SIP phone: loaded at start-up."""
    query = (
        select(Agent)
        .where(Agent.sip_user.is_not(None), Agent.enabled.is_(True))
        .order_by(Agent.tenant_id, Agent.id)
    )
    return list((await session.execute(query)).scalars())
