"""campaign_calls: the status of each call a campaign placed, beyond the node's memory

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 19:30:00.000000

The outbound scheduler polls a placed call's status; kept here it survives a
restart of the node that placed it and can be read through any node. The
callee's number is stored masked only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_calls",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("callee_masked", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sip_call_id", sa.String(length=128), nullable=True),
        sa.Column("failure_status", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.String(length=128), nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_campaign_calls_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_calls")),
    )
    op.create_index(
        op.f("ix_campaign_calls_tenant_id"), "campaign_calls", ["tenant_id"], unique=False
    )
    op.create_index(
        "ix_campaign_calls_node_state", "campaign_calls", ["node", "state"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_calls_node_state", table_name="campaign_calls")
    op.drop_index(op.f("ix_campaign_calls_tenant_id"), table_name="campaign_calls")
    op.drop_table("campaign_calls")
