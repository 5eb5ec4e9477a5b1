"""agents: an optional SIP endpoint (the tenant SIP login whose phone rings for the agent)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 08:20:00.000000

Agents created before this revision keep a NULL ``sip_user``: they stay
softphone agents. A login answers for at most one agent of its tenant.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sip_user", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_agents_tenant_sip_user", ["tenant_id", "sip_user"])


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_constraint("uq_agents_tenant_sip_user", type_="unique")
        batch_op.drop_column("sip_user")
