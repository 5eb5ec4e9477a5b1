"""processing records: party, basis, and a (tenant, started) index for time-range queries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("processing_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("party", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("basis", sa.String(length=48), nullable=True))
        batch_op.create_index(
            "ix_processing_records_tenant_started", ["tenant_id", "started_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("processing_records", schema=None) as batch_op:
        batch_op.drop_index("ix_processing_records_tenant_started")
        batch_op.drop_column("basis")
        batch_op.drop_column("party")
