"""price segments: a spot bid's new price bills only the seconds after it

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column("base_seconds", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("base_spend", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("base_spend")
        batch.drop_column("base_seconds")
