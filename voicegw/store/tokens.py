"""Bearer tokens: random secrets shown once, stored only as SHA-256.

A token has 256 bits of entropy, so a plain (unsalted) SHA-256 is a sound
verifier and allows an indexed lookup; slow password hashes are for secrets
humans choose.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.store.models import ApiToken

Role = Literal["operator", "tenant_admin", "supervisor", "agent"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "vgw_"  # noqa: S105 - a recognisable prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the authenticated identity behind a token."""

    token_id: str
    role: str
    tenant_id: str | None
    agent_id: int | None

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"

    def may_access_tenant(self, tenant_id: str) -> bool:
        return self.role == "operator" or self.tenant_id == tenant_id


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    session: AsyncSession,
    *,
    role: str,
    tenant_id: str | None,
    agent_id: int | None = None,
    label: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret (never stored, never logged)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if (role == "operator") != (tenant_id is None):
        raise ValueError("operator tokens have no tenant; every other role needs one")
    if (role == "agent") != (agent_id is not None):
        raise ValueError("agent tokens need an agent, and only agent tokens have one")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=secrets.token_hex(8),
        token_hash=hash_token(secret),
        role=role,
        tenant_id=tenant_id,
        agent_id=agent_id,
        label=label,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    await session.flush()
    return row, secret


async def authenticate(session: AsyncSession, secret: str) -> Principal | None:
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
        return None
    row = (
        await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.role, row.tenant_id, row.agent_id)


async def revoke_token(session: AsyncSession, token_id: str) -> ApiToken | None:
    row = await session.get(ApiToken, token_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row
