"""The admin API's route table: one list drives both the router and the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from voicegw.api import (
    admin,
    agent_endpoint,
    agent_skills,
    campaigns,
    live_calls,
    processing,
    prompts,
    recordings,
    sip_users,
    supervisor,
)
from voicegw.api.errors import Handler
from voicegw.api.schemas import AgentCreate, NumberCreate, SettingsPatch, TenantCreate, TokenCreate

API = "/api/v1"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: tuple[str, ...]
    body: type[BaseModel] | None = None
    success: int = 200
    #: When the state of the target may refuse the request: what a 409 then means.
    conflict: str | None = None


ALL = ("operator", "tenant_admin", "supervisor", "agent")
ADMIN = ("operator", "tenant_admin")
READ = ("operator", "tenant_admin", "supervisor")

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{API}/tenants",
        admin.create_tenant,
        "Create a tenant",
        ("operator",),
        TenantCreate,
        201,
    ),
    Route("GET", f"{API}/tenants", admin.list_tenants, "List the tenants the token may see", ALL),
    Route("GET", f"{API}/tenants/{{tenant_id}}", admin.get_tenant, "Show a tenant", READ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/settings",
        admin.get_settings,
        "Show a tenant's settings",
        READ,
    ),
    Route(
        "PATCH",
        f"{API}/tenants/{{tenant_id}}/settings",
        admin.patch_settings,
        "Change a tenant's settings (partial; nested objects merge); audited",
        ADMIN,
        SettingsPatch,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/numbers",
        admin.list_numbers,
        "List the tenant's numbers",
        READ,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/numbers",
        admin.add_number,
        "Assign a number to the tenant",
        ADMIN,
        NumberCreate,
        201,
    ),
    Route(
        "DELETE",
        f"{API}/tenants/{{tenant_id}}/numbers/{{number_id}}",
        admin.remove_number,
        "Release a number",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/agents",
        admin.list_agents,
        "List the tenant's agents",
        READ,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/agents",
        admin.add_agent,
        "Create an agent",
        ADMIN,
        AgentCreate,
        201,
    ),
    Route(
        "PUT",
        f"{API}/tenants/{{tenant_id}}/agents/{{agent_id}}/skills",
        agent_skills.set_skills,
        "Replace an agent's skills (queues ring only agents with all of theirs); audited",
        ADMIN,
        agent_skills.AgentSkills,
    ),
    Route(
        "PUT",
        f"{API}/tenants/{{tenant_id}}/agents/{{agent_id}}/endpoint",
        agent_endpoint.set_endpoint,
        "Ring the agent at one of the tenant's SIP logins (its registered phone), or at the "
        "softphone (null); audited",
        ADMIN,
        agent_endpoint.AgentEndpoint,
    ),
    Route(
        "PUT",
        f"{API}/tenants/{{tenant_id}}/agents/{{agent_id}}/presence",
        agent_endpoint.set_presence,
        "Set a signed-in or phone agent available or away; audited",
        READ,
        agent_endpoint.AgentPresence,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/audit",
        admin.tenant_audit,
        "The tenant's audit events (query: after, limit)",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/prompts",
        prompts.list_prompts,
        "List uploaded prompt files",
        READ,
    ),
    Route(
        "PUT",
        f"{API}/tenants/{{tenant_id}}/prompts/{{name}}",
        prompts.upload_prompt,
        "Upload a prompt WAV (mono, 8-48 kHz, 0.5-60 s; the body is the file); audited",
        ADMIN,
        None,
        201,
    ),
    Route(
        "DELETE",
        f"{API}/tenants/{{tenant_id}}/prompts/{{name}}",
        prompts.delete_prompt,
        "Delete a prompt file; audited",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/sip-users",
        sip_users.list_sip_users,
        "List the tenant's SIP logins (phones)",
        READ,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/sip-users",
        sip_users.create_sip_user,
        "Create a SIP login; only digests of the password are stored; audited",
        ADMIN,
        sip_users.SipUserCreate,
        201,
    ),
    Route(
        "DELETE",
        f"{API}/tenants/{{tenant_id}}/sip-users/{{username}}",
        sip_users.disable_sip_user,
        "Disable a SIP login; audited",
        ADMIN,
    ),
    # -- recordings and transcripts (recordings.py) --
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/recordings",
        recordings.list_recordings,
        "List recordings with consent pointer, retention and hold (query: call_id, limit, after)",
        READ,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/recordings/{{object_id}}",
        recordings.get_recording,
        "Show a recording's metadata",
        READ,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/recordings/{{object_id}}/audio",
        recordings.recording_audio,
        "Download a recording as a decrypted 2-channel WAV (streamed); audited before sending",
        ADMIN,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/recordings/{{object_id}}/verify",
        recordings.verify_recording,
        "Verify a stored recording against its metadata and its authentication",
        ADMIN,
    ),
    Route(
        "PUT",
        f"{API}/tenants/{{tenant_id}}/recordings/{{object_id}}/legal-hold",
        recordings.place_hold,
        "Place a legal hold (exempt from retention); audited",
        ADMIN,
        recordings.HoldBody,
    ),
    Route(
        "DELETE",
        f"{API}/tenants/{{tenant_id}}/recordings/{{object_id}}/legal-hold",
        recordings.release_hold,
        "Release a legal hold; audited",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/transcripts",
        recordings.list_transcripts,
        "List transcripts (query: call_id, limit, after)",
        READ,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/transcripts/{{object_id}}/text",
        recordings.transcript_text,
        "Download a decrypted transcript as JSON lines (streamed); audited before sending",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/processing-records",
        processing.list_processing_records,
        "Processing records: which provider got which party's audio or text, for what, where, "
        "on which rule (query: call_id, or since [until] as ISO 8601; limit, after)",
        ADMIN,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/supervisor",
        supervisor.supervisor_view,
        "Live view: agents with presence and current call, the queue, calls in progress "
        "(caller numbers masked)",
        READ,
    ),
    # -- live calls (live_calls.py): consent state and secure pause --
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/calls",
        live_calls.list_live_calls,
        "Calls in progress on this node with their consent and recording state",
        READ,
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/calls/{{call_id}}",
        live_calls.get_live_call,
        "A live call's consent and recording state (call_id: the gateway's call id or an "
        "agent call id; an agent token: only its own connected call)",
        ALL,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/calls/{{call_id}}/secure-pause",
        live_calls.secure_pause,
        "Secure pause: recording, speech-to-text and transcripts of every party stop from the "
        "next frame; audited. Answers the call's state and the media instant it took effect",
        ("operator", "tenant_admin", "agent"),
        conflict="nothing is recorded, consent is not granted, or already paused",
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/calls/{{call_id}}/secure-resume",
        live_calls.secure_resume,
        "End a secure pause (recording reopens after the jitter guard); audited",
        ("operator", "tenant_admin", "agent"),
        conflict="the recording is not paused (or nothing is recorded)",
    ),
    # -- outbound campaigns (campaigns.py) --
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/campaigns",
        campaigns.list_campaigns,
        "List the tenant's outbound campaigns",
        READ,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/campaigns",
        campaigns.create_campaign,
        "Create an outbound campaign (its trunk, an optional recording-mode override); audited",
        ADMIN,
        campaigns.CampaignCreate,
        201,
        conflict="the tenant has a campaign with this id",
    ),
    Route(
        "PATCH",
        f"{API}/tenants/{{tenant_id}}/campaigns/{{campaign_id}}",
        campaigns.update_campaign,
        "Change a campaign (recording_mode null: the tenant default applies again); audited",
        ADMIN,
        campaigns.CampaignPatch,
    ),
    Route(
        "POST",
        f"{API}/tenants/{{tenant_id}}/campaigns/{{campaign_id}}/calls",
        campaigns.place_call,
        "Call a number (E.164) for the campaign through its trunk; once answered the callee "
        "goes through the consent flow (the campaign's recording mode) to the agent queue. "
        "Answers the call's status",
        ADMIN,
        campaigns.CampaignCallCreate,
        202,
        conflict="the campaign is disabled, or its trunk places no calls on this node",
    ),
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/campaigns/{{campaign_id}}/calls/{{call_id}}",
        campaigns.get_call,
        "A campaign call's status: dialling, answered, ended, or failed with the SIP status",
        ADMIN,
    ),
    Route(
        "POST",
        f"{API}/tokens",
        admin.create_token,
        "Create a bearer token (shown once)",
        ADMIN,
        TokenCreate,
        201,
    ),
    Route("DELETE", f"{API}/tokens/{{token_id}}", admin.revoke_token, "Revoke a token", ADMIN),
    Route(
        "GET",
        f"{API}/audit/verify",
        admin.verify_audit,
        "Verify the audit hash chain",
        ("operator",),
    ),
)
