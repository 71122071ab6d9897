"""Scoped API keys (SPEC §8): a key's name, scopes, expiry and daily spend limit; the key each
order was created with; why an order's stop timer is set; order_charges by order

Revision ID: scoped_keys
Revises: account_things
Create Date: 2026-12-06 19:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "scoped_keys"
down_revision = "account_things"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("scopes", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("spend_limit", sa.JSON(), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("timer_reason", sa.String(16), nullable=True))
    op.create_index(op.f("ix_orders_api_key_id"), "orders", ["api_key_id"])
    op.create_index(op.f("ix_order_charges_order_id"), "order_charges", ["order_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_order_charges_order_id"), table_name="order_charges")
    op.drop_index(op.f("ix_orders_api_key_id"), table_name="orders")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("timer_reason")
        batch_op.drop_column("api_key_id")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("spend_limit")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
        batch_op.drop_column("name")
