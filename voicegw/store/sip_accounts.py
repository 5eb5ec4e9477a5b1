"""SIP accounts: digest credentials and registrar bindings, per tenant.

Credentials keep only HA1 digests (``H(user:realm:password)`` for MD5 and
SHA-256), never the password: a stolen table lets nobody register elsewhere
under another realm, and rotating the realm invalidates it. The tenant of a
SIP request is the tenant of the credential row that authenticated it.

Bindings are the registrar's (:class:`voicegw.sip.registrar.Binding`) with an
absolute expiry, so they survive a restart. Several nodes may share the
database; two REGISTERs for one AOR racing on two nodes are resolved by the
unique (aor, contact) key, the loser seeing an integrity error and its UA
retrying.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from voicegw.sip.digest import ha1
from voicegw.sip.registrar import Binding
from voicegw.sip.transaction import Destination
from voicegw.store import audit
from voicegw.store.models import Base

#: RFC 3261 ``user`` characters we accept in a SIP username (no escapes: it is
#: also written into AORs and logs).
SIP_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~+-]{0,63}$")


class SipCredential(Base):
    __tablename__ = "sip_credentials"
    __table_args__ = (
        UniqueConstraint("realm", "username", name="uq_sip_credentials_realm_username"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    realm: Mapped[str] = mapped_column(String(255))
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SipRegistration(Base):
    __tablename__ = "sip_registrations"
    __table_args__ = (UniqueConstraint("aor", "contact", name="uq_sip_registrations_aor_contact"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    aor: Mapped[str] = mapped_column(String(320), index=True)
    contact: Mapped[str] = mapped_column(String(1024))
    source_host: Mapped[str] = mapped_column(String(64))
    source_port: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(8))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    call_id: Mapped[str] = mapped_column(String(255))
    cseq: Mapped[int] = mapped_column(Integer)
    q: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """What the digest check needs of a credential row, detached from the session."""

    tenant_id: str
    username: str
    realm: str
    enabled: bool
    ha1_by_algorithm: dict[str, str] = field(repr=False)

    def ha1_for(self, algorithm_name: str) -> str | None:
        """The stored HA1 for a digest algorithm (``-sess`` variants share it)."""
        base = algorithm_name.upper().removesuffix("-SESS")
        return self.ha1_by_algorithm.get(base) if self.enabled else None


def _now() -> datetime:
    return datetime.now(UTC)


def _to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _to_seconds(value: datetime) -> float:
    # SQLite hands timezone-aware columns back naive (it stores no zone): they are UTC.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.timestamp()


async def create_credential(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    username: str,
    realm: str,
    password: str,
) -> CredentialRecord:
    """Store a SIP login as HA1 digests (the password itself is not kept), audited."""
    if not SIP_USERNAME.match(username):
        raise ValueError("SIP username: 1-64 letters, digits and . _ ~ + -, starting alphanumeric")
    if not password:
        raise ValueError("SIP password must not be empty")
    row = SipCredential(
        tenant_id=tenant_id,
        username=username,
        realm=realm,
        ha1_md5=ha1(username, realm, password, "MD5"),
        ha1_sha256=ha1(username, realm, password, "SHA-256"),
        enabled=True,
        created_at=_now(),
    )
    session.add(row)
    await session.flush()
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="sip.credential.create",
        target=f"sip-credential/{realm}/{username}",
        details={"username": username, "realm": realm},
    )
    return _record(row)


async def set_credential_enabled(
    session: AsyncSession, *, actor: str, tenant_id: str, realm: str, username: str, enabled: bool
) -> bool:
    """Enable or disable a login of ``tenant_id``; False when it has no such login."""
    row = (
        await session.execute(
            select(SipCredential).where(
                SipCredential.tenant_id == tenant_id,
                SipCredential.realm == realm,
                SipCredential.username == username,
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return False
    row.enabled = enabled
    await audit.append(
        session,
        actor=actor,
        tenant_id=tenant_id,
        action="sip.credential.enable" if enabled else "sip.credential.disable",
        target=f"sip-credential/{realm}/{username}",
    )
    return True


async def find_credential(
    session: AsyncSession, realm: str, username: str
) -> CredentialRecord | None:
    """The login for (realm, username), whichever tenant owns it; None if unknown."""
    row = (
        await session.execute(
            select(SipCredential).where(
                SipCredential.realm == realm, SipCredential.username == username
            )
        )
    ).scalar_one_or_none()
    return None if row is None else _record(row)


def _record(row: SipCredential) -> CredentialRecord:
    return CredentialRecord(
        tenant_id=row.tenant_id,
        username=row.username,
        realm=row.realm,
        enabled=row.enabled,
        ha1_by_algorithm={"MD5": row.ha1_md5, "SHA-256": row.ha1_sha256},
    )


async def load_bindings(session: AsyncSession, tenant_id: str, aor: str) -> list[Binding]:
    """Every stored binding of ``aor`` (expired ones included: the registrar drops them)."""
    rows = (
        await session.execute(
            select(SipRegistration)
            .where(SipRegistration.tenant_id == tenant_id, SipRegistration.aor == aor)
            .order_by(SipRegistration.id)
        )
    ).scalars()
    return [_binding(row) for row in rows]


async def live_bindings(
    session: AsyncSession, tenant_id: str, aor: str, now: float
) -> list[Binding]:
    """Where ``aor`` can be reached at wall-clock ``now``: unexpired bindings, best q first."""
    rows = (
        await session.execute(
            select(SipRegistration).where(
                SipRegistration.tenant_id == tenant_id,
                SipRegistration.aor == aor,
                SipRegistration.expires_at > _to_datetime(now),
            )
        )
    ).scalars()
    bindings = [_binding(row) for row in rows]
    return sorted(bindings, key=lambda b: -(b.q if b.q is not None else 1.0))


async def registered_aors(session: AsyncSession, aors: Iterable[str], now: float) -> set[str]:
    """Which of ``aors`` (every tenant's) have an unexpired binding at wall-clock ``now``."""
    wanted = sorted(set(aors))
    if not wanted:
        return set()
    rows = await session.execute(
        select(SipRegistration.aor)
        .where(SipRegistration.aor.in_(wanted), SipRegistration.expires_at > _to_datetime(now))
        .distinct()
    )
    return set(rows.scalars())


async def apply_binding_changes(
    session: AsyncSession,
    tenant_id: str,
    saved: Iterable[Binding],
    removed: Iterable[Binding],
) -> None:
    """Persist a registrar result: delete ``removed``, insert or replace ``saved``."""
    now = _now()
    for binding in removed:
        await session.execute(
            delete(SipRegistration).where(
                SipRegistration.tenant_id == tenant_id,
                SipRegistration.aor == binding.aor,
                SipRegistration.contact == binding.contact,
            )
        )
    for binding in saved:
        row = (
            await session.execute(
                select(SipRegistration).where(
                    SipRegistration.tenant_id == tenant_id,
                    SipRegistration.aor == binding.aor,
                    SipRegistration.contact == binding.contact,
                )
            )
        ).scalar_one_or_none()
        if row is None:
            row = SipRegistration(tenant_id=tenant_id, aor=binding.aor, contact=binding.contact)
            session.add(row)
        row.source_host = binding.source.host
        row.source_port = binding.source.port
        row.transport = binding.source.transport
        row.expires_at = _to_datetime(binding.expires_at)
        row.call_id = binding.call_id
        row.cseq = binding.cseq
        row.q = binding.q
        row.updated_at = now
    await session.flush()


async def purge_expired(session: AsyncSession, now: float) -> int:
    """Delete bindings expired at wall-clock ``now`` (all tenants); returns how many."""
    result = await session.execute(
        delete(SipRegistration).where(SipRegistration.expires_at <= _to_datetime(now))
    )
    count: int = getattr(result, "rowcount", 0) or 0
    return count


def _binding(row: SipRegistration) -> Binding:
    return Binding(
        aor=row.aor,
        contact=row.contact,
        expires_at=_to_seconds(row.expires_at),
        call_id=row.call_id,
        cseq=row.cseq,
        source=Destination(row.source_host, row.source_port, row.transport),
        q=row.q,
    )


__all__: Sequence[str] = (
    "SIP_USERNAME",
    "CredentialRecord",
    "SipCredential",
    "SipRegistration",
    "apply_binding_changes",
    "create_credential",
    "find_credential",
    "live_bindings",
    "load_bindings",
    "purge_expired",
    "registered_aors",
    "set_credential_enabled",
)


async def list_credentials(session: AsyncSession, tenant_id: str) -> list[CredentialRecord]:
    """A tenant's SIP logins (without their digests in any view that leaves the process)."""
    rows = await session.execute(
        select(SipCredential)
        .where(SipCredential.tenant_id == tenant_id)
        .order_by(SipCredential.username)
    )
    return [_record(row) for row in rows.scalars()]
