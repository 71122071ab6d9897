"""GPU slots (SPEC §8): servers.partial_gpu_rental, min_gpus and agent_protocol (an agent that
keeps per-GPU rentals apart says so); orders.gpu_count, gpus_wanted,
gpus and waiting_since; the one-live-on-demand-order index covers whole-server orders only

Revision ID: gpu_slots
Revises: second_review
Create Date: 2026-12-06 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gpu_slots"
down_revision = "second_review"
branch_labels = None
depends_on = None

WHOLE = "NOT spot AND NOT expired AND gpu_count IS NULL"
ANY = "NOT spot AND NOT expired"


def upgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "partial_gpu_rental", sa.Boolean(), nullable=False, server_default=sa.text("false")
            )
        )
        batch_op.add_column(sa.Column("min_gpus", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("agent_protocol", sa.Integer(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_servers_min_gpus_positive"), "min_gpus >= 1"
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpus_wanted", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("gpus", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("waiting_since", sa.BigInteger(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_orders_gpu_count_positive"), "gpu_count IS NULL OR gpu_count >= 1"
        )
        batch_op.drop_index("uq_orders_on_demand_live")
        batch_op.create_index(
            "uq_orders_on_demand_live",
            ["server_id"],
            unique=True,
            sqlite_where=sa.text(WHOLE),
            postgresql_where=sa.text(WHOLE),
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("uq_orders_on_demand_live")
        batch_op.create_index(
            "uq_orders_on_demand_live",
            ["server_id"],
            unique=True,
            sqlite_where=sa.text(ANY),
            postgresql_where=sa.text(ANY),
        )
        batch_op.drop_constraint(batch_op.f("ck_orders_gpu_count_positive"), type_="check")
        batch_op.drop_column("waiting_since")
        batch_op.drop_column("gpus")
        batch_op.drop_column("gpus_wanted")
        batch_op.drop_column("gpu_count")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_servers_min_gpus_positive"), type_="check")
        batch_op.drop_column("agent_protocol")
        batch_op.drop_column("min_gpus")
        batch_op.drop_column("partial_gpu_rental")
