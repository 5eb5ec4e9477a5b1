"""First start: a demo tenant and an operator token written to a 0600 file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.store import audit, tenants, tokens
from voicegw.tenant_settings import TenantSettings

DEMO_TENANT = "demo"
TOKEN_FILE = "operator-token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class Bootstrapped:
    tenant_id: str
    token_file: Path


def write_secret(path: Path, secret: str) -> None:
    """Create ``path`` readable by its owner only; the secret never passes through a log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)


async def bootstrap_if_empty(
    sessions: async_sessionmaker[AsyncSession], data_dir: Path, region: str
) -> Bootstrapped | None:
    async with sessions() as session, session.begin():
        if await tenants.count_tenants(session):
            return None
        actor = "system:bootstrap"
        await tenants.create_tenant(
            session,
            actor=actor,
            tenant_id=DEMO_TENANT,
            name="Demo tenant",
            settings=TenantSettings(region=region),
        )
        row, secret = await tokens.create_token(
            session, role="operator", tenant_id=None, label="bootstrap"
        )
        await audit.append(
            session,
            actor=actor,
            action="token.create",
            target=f"token/{row.id}",
            details={"role": "operator"},
        )
    path = data_dir / TOKEN_FILE
    write_secret(path, secret)
    return Bootstrapped(DEMO_TENANT, path)
