"""order_charges: the per-order split of the tick's rental transfers; orders pages half full

Every running order's row is rewritten at every tick; with at most half of each page filled
(PostgreSQL), its next version fits on the same page, so the update stays heap-only (no index
entries) even on the first tick after the orders were created.

Revision ID: order_charges
Revises: event_retention
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "order_charges"
down_revision = "event_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_charges",
        sa.Column(
            "transfer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_order_charges_amount_positive")),
        sa.PrimaryKeyConstraint("transfer_id", "order_id", name=op.f("pk_order_charges")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE orders SET (fillfactor = 45)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE orders SET (fillfactor = 70)")
    op.drop_table("order_charges")
