"""JSON views of stored rows (no secrets, numbers shown as stored E.164 to their owner)."""

from __future__ import annotations

from typing import Any

from voicegw.store.models import Agent, ApiToken, AuditEvent, Tenant, TenantNumber


def tenant_view(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "region": t.region,
        "settings": t.settings,
        "created_at": t.created_at.isoformat(),
        "updated_at": t.updated_at.isoformat(),
    }


def number_view(n: TenantNumber) -> dict[str, Any]:
    return {"id": n.id, "number": n.e164, "label": n.label, "recording_mode": n.recording_mode}


def agent_view(a: Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        "username": a.username,
        "display_name": a.display_name,
        "skills": a.skills,
        "enabled": a.enabled,
        "sip_user": a.sip_user,
    }


def token_view(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "role": t.role,
        "tenant_id": t.tenant_id,
        "agent_id": t.agent_id,
        "label": t.label,
        "created_at": t.created_at.isoformat(),
        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
    }


def audit_view(e: AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": e.created_at,
        "actor": e.actor,
        "tenant_id": e.tenant_id,
        "action": e.action,
        "target": e.target,
        "details": e.details,
        "hash": e.hash,
    }
