"""recordings and transcripts: the node that wrote them (node-scoped crash recovery)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:30:00.000000

Several nodes share one database; at start-up a node settles only the
``writing`` rows it wrote itself. Rows written before this revision keep a
NULL node: no node claims them automatically.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TABLES = ("recordings", "transcripts")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("node", sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in reversed(_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("node")
