"""Standing orders (SPEC §8): a renter's standing request to rent matching servers as soon as
they appear, filled by the engine in placement order; each fill's ordinary order

Revision ID: standing_orders
Revises: scoped_keys
Create Date: 2026-12-06 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "standing_orders"
down_revision = "scoped_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "standing_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("max_price", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(32), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=True),
        sa.Column("spot", sa.Boolean(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("filled", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "count >= 1 AND filled >= 0 AND filled <= count",
            name=op.f("ck_standing_orders_count_sane"),
        ),
        sa.CheckConstraint(
            "state IN ('open', 'filled', 'cancelled', 'expired')",
            name=op.f("ck_standing_orders_standing_state"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_standing_orders_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standing_orders")),
    )
    op.create_index(op.f("ix_standing_orders_user_id"), "standing_orders", ["user_id"])
    op.create_index("ix_standing_orders_open", "standing_orders", ["state", "created_at", "id"])
    op.create_table(
        "standing_order_fills",
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("standing_order_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("filled_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_standing_order_fills_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["standing_order_id"],
            ["standing_orders.id"],
            name=op.f("fk_standing_order_fills_standing_order_id_standing_orders"),
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_standing_order_fills")),
    )
    op.create_index(
        op.f("ix_standing_order_fills_standing_order_id"),
        "standing_order_fills",
        ["standing_order_id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_standing_order_fills_standing_order_id"), table_name="standing_order_fills"
    )
    op.drop_table("standing_order_fills")
    op.drop_index("ix_standing_orders_open", table_name="standing_orders")
    op.drop_index(op.f("ix_standing_orders_user_id"), table_name="standing_orders")
    op.drop_table("standing_orders")
