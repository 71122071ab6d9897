"""web_sessions.token_id: a console session ends with the API token it was started with;
orders.http_label: the unguessable first label of an order's http URLs (live orders get one)

Revision ID: second_review
Revises: order_charges
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "second_review"
down_revision = "order_charges"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # sessions started before this revision cannot be told apart: they end (one more sign-in)
    op.execute("DELETE FROM web_sessions")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_web_sessions_token_id", ["token_id"], unique=False)
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("http_label", sa.String(length=32), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_orders_http_label"), ["http_label"])
    bind = op.get_bind()
    live = bind.execute(sa.text("SELECT id FROM orders WHERE NOT expired")).scalars().all()
    for order_id in live:
        bind.execute(
            sa.text("UPDATE orders SET http_label = :label WHERE id = :id"),
            {"label": secrets.token_hex(12), "id": order_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_orders_http_label"), type_="unique")
        batch_op.drop_column("http_label")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_web_sessions_token_id")
        batch_op.drop_column("token_id")
