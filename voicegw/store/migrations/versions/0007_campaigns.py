"""campaigns: a tenant's outbound campaigns (trunk, recording-mode override, enabled)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:30:00.000000

The campaign id is the tenant's own slug; the key is (tenant, id), so two
tenants may both have a campaign called "renewals".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("recording_mode", sa.String(length=16), nullable=True),
        sa.Column("trunk", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_campaigns_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_campaigns")),
    )


def downgrade() -> None:
    op.drop_table("campaigns")
