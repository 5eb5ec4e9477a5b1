"""SQLAlchemy 2 models. Every tenant-owned row carries ``tenant_id``: queries scope by it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: migrations (and SQLite batch mode) need them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(16))
    #: TenantSettings as JSON, validated on every write.
    settings: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantNumber(Base):
    """A number a tenant owns: routes inbound calls to it and is its outbound caller ID."""

    __tablename__ = "tenant_numbers"
    __table_args__ = (UniqueConstraint("e164"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    e164: Mapped[str] = mapped_column(String(20))
    label: Mapped[str | None] = mapped_column(String(100))
    #: Per-number recording mode override (None = tenant default).
    recording_mode: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "username", name="uq_agents_tenant_username"),
        # One phone login answers for one agent: a call to it must find one agent.
        UniqueConstraint("tenant_id", "sip_user", name="uq_agents_tenant_sip_user"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The tenant SIP login whose registered phone rings for this agent (None: softphone).
    sip_user: Mapped[str | None] = mapped_column(String(64))


class Campaign(Base):
    """An outbound campaign of a tenant: the trunk it dials through and its recording mode."""

    __tablename__ = "campaigns"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    #: The tenant's own name for it (a slug): what consent evidence and the API refer to.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: Recording mode override for the campaign's calls (None = tenant default).
    recording_mode: Mapped[str | None] = mapped_column(String(16))
    #: Name of the configured trunk (``[[trunks]]``) its calls go out through.
    trunk: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CampaignCall(Base):
    """One call a campaign placed, as the scheduler polls it; kept so that its status
    outlives the node that placed it (a restart, another node behind the API)."""

    __tablename__ = "campaign_calls"
    __table_args__ = (Index("ix_campaign_calls_node_state", "node", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    campaign_id: Mapped[str] = mapped_column(String(64))
    #: Masked: the full number lives only in the dialling node's memory.
    callee_masked: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sip_call_id: Mapped[str | None] = mapped_column(String(128))
    failure_status: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(String(128))
    end_reason: Mapped[str | None] = mapped_column(String(64))
    #: The node that placed it: start-up settles only its own unfinished calls.
    node: Mapped[str | None] = mapped_column(String(64))


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (Index("ix_calls_tenant_started", "tenant_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(16))
    #: Masked for display; the full number is needed for routing only while the call lives.
    caller_masked: Mapped[str] = mapped_column(String(32))
    callee_masked: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(64))
    #: Per-leg RTP figures (loss, jitter, RTT) written when the call ends.
    media_stats: Mapped[dict[str, object] | None] = mapped_column(JSON)
    node: Mapped[str | None] = mapped_column(String(64))
    mos: Mapped[float | None] = mapped_column(Float)


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored; the secret is shown once at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One link of the hash chain. ``seq`` is gap-free; ``hash`` covers ``prev_hash``."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    created_at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's newest link: the row appenders lock, and what catches a deleted tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


from voicegw.store import recordings as _recordings  # noqa: E402, F401 - registers its tables
from voicegw.store import sip_accounts as _sip_accounts  # noqa: E402, F401 - registers its tables
