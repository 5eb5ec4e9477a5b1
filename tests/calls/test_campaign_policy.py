"""A tenant's stored campaigns become the policy's campaign overrides (SQLite and PostgreSQL).

The precedence itself is ``tests/consent/test_policy.py``; here: what the call
layer loads for a tenant (:func:`load_consent_policy`) makes a campaign's mode
apply to its calls, leaves other campaigns on the tenant default, still lets an
all-party jurisdiction of the callee win, and names the campaigns in the
policy version the evidence carries.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.consent_flow import load_consent_policy
from voicegw.consent import CallContext, RecordingMode, Rule, resolve_mode
from voicegw.store import campaigns, tenants
from voicegw.store.campaigns import CampaignChange
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
BERLIN = "+4930901820"
SAN_FRANCISCO = "+14155550123"
TENANT = "acme"


async def make_tenant(sessions: Sessions, settings: TenantSettings) -> None:
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name="Acme", settings=settings
        )
        await tenants.create_tenant(
            session, actor="test", tenant_id="globex", name="Globex", settings=settings
        )
        for tenant, campaign, mode in (
            (TENANT, "renewals", "opt_in"),
            (TENANT, "reminders", None),
            ("globex", "surveys", "notify"),
        ):
            await campaigns.create_campaign(
                session,
                actor="test",
                tenant_id=tenant,
                campaign_id=campaign,
                name=campaign,
                trunk="carrier",
                recording_mode=mode,
            )


async def resolve(sessions: Sessions, caller: str, campaign: str | None) -> tuple[str, Rule]:
    async with sessions() as session:
        tenant = await tenants.get_tenant(session, TENANT)
        assert tenant is not None
        policy = await load_consent_policy(session, TENANT, tenants.tenant_settings(tenant))
    resolution = resolve_mode(policy, CallContext(caller, None, campaign))
    return resolution.mode.value, resolution.rule


async def test_a_campaigns_mode_overrides_the_tenant_default_for_its_calls(
    sessions: Sessions,
) -> None:
    await make_tenant(sessions, TenantSettings(recording_mode="off"))
    assert await resolve(sessions, BERLIN, "renewals") == ("opt_in", Rule.CAMPAIGN_OVERRIDE)
    # A campaign without an override, another tenant's campaign, no campaign: the default.
    assert await resolve(sessions, BERLIN, "reminders") == ("off", Rule.TENANT_DEFAULT)
    assert await resolve(sessions, BERLIN, "surveys") == ("off", Rule.TENANT_DEFAULT)
    assert await resolve(sessions, BERLIN, None) == ("off", Rule.TENANT_DEFAULT)


async def test_an_all_party_jurisdiction_of_the_callee_outranks_the_campaign(
    sessions: Sessions,
) -> None:
    await make_tenant(
        sessions,
        TenantSettings(recording_mode="off", all_party_consent_jurisdictions=("US-CA",)),
    )
    async with sessions.begin() as session:
        row = await campaigns.get_campaign(session, TENANT, "renewals")
        assert row is not None
        await campaigns.update_campaign(
            session, actor="test", campaign=row, change=CampaignChange(recording_mode="notify")
        )
    assert await resolve(sessions, SAN_FRANCISCO, "renewals") == ("opt_in", Rule.JURISDICTION)
    assert await resolve(sessions, BERLIN, "renewals") == ("notify", Rule.CAMPAIGN_OVERRIDE)


async def test_changing_a_campaigns_mode_changes_the_policy_version(sessions: Sessions) -> None:
    await make_tenant(sessions, TenantSettings(recording_mode="off"))

    async def version() -> str:
        async with sessions() as session:
            policy = await load_consent_policy(
                session, TENANT, TenantSettings(recording_mode="off")
            )
        assert policy.campaign_overrides == {"renewals": RecordingMode.OPT_IN} or (
            "renewals" not in policy.campaign_overrides
        )
        return policy.version

    before = await version()
    async with sessions.begin() as session:
        row = await campaigns.get_campaign(session, TENANT, "renewals")
        assert row is not None
        await campaigns.update_campaign(
            session, actor="test", campaign=row, change=CampaignChange(clear_mode=True)
        )
    after = await version()
    assert before != after
    assert await resolve(sessions, BERLIN, "renewals") == ("off", Rule.TENANT_DEFAULT)
