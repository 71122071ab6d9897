"""The processes deciding rate limits for a database, and which of them decides alone in memory

Revision ID: rate_limit_members
Revises: image_digest
Create Date: 2026-12-08 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rate_limit_members"
down_revision = "image_digest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_members",
        sa.Column("member", sa.String(64), primary_key=True),
        sa.Column("seen_until", sa.Double, nullable=False),
        sa.Column("solo_until", sa.Double, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_members")
