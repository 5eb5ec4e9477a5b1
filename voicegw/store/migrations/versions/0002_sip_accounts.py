"""sip accounts: digest credentials (HA1 only) and registrar bindings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sip_credentials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("realm", sa.String(length=255), nullable=False),
        sa.Column("ha1_md5", sa.String(length=32), nullable=False),
        sa.Column("ha1_sha256", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sip_credentials_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sip_credentials")),
        sa.UniqueConstraint("realm", "username", name="uq_sip_credentials_realm_username"),
    )
    with op.batch_alter_table("sip_credentials", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sip_credentials_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "sip_registrations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("aor", sa.String(length=320), nullable=False),
        sa.Column("contact", sa.String(length=1024), nullable=False),
        sa.Column("source_host", sa.String(length=64), nullable=False),
        sa.Column("source_port", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("call_id", sa.String(length=255), nullable=False),
        sa.Column("cseq", sa.Integer(), nullable=False),
        sa.Column("q", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sip_registrations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sip_registrations")),
        sa.UniqueConstraint("aor", "contact", name="uq_sip_registrations_aor_contact"),
    )
    with op.batch_alter_table("sip_registrations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sip_registrations_aor"), ["aor"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sip_registrations_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sip_registrations_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sip_registrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sip_registrations_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_sip_registrations_expires_at"))
        batch_op.drop_index(batch_op.f("ix_sip_registrations_aor"))

    op.drop_table("sip_registrations")
    with op.batch_alter_table("sip_credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sip_credentials_tenant_id"))

    op.drop_table("sip_credentials")
