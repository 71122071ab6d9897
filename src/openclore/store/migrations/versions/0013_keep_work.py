"""Keeping work (SPEC §8): stopped orders with their disk and storage billing, timers, restarts
and resets; servers.disk_gb and server_prices.storage; renters' volumes; the
one-live-on-demand-order index leaves stopped orders out (they hold no GPU)

Revision ID: keep_work
Revises: gpu_slots
Create Date: 2026-12-06 16:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "keep_work"
down_revision = "gpu_slots"
branch_labels = None
depends_on = None

RUNNING_WHOLE = "NOT spot AND NOT expired AND NOT stopped AND gpu_count IS NULL"
WHOLE = "NOT spot AND NOT expired AND gpu_count IS NULL"


def _zero(name: str, type_: type[sa.Integer] | type[sa.BigInteger]) -> sa.Column[int]:
    """A counter that starts at 0 (existing rows too)."""
    return sa.Column(name, type_(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_gb", sa.Integer(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_servers_disk_gb_positive"), "disk_gb IS NULL OR disk_gb >= 1"
        )
    with op.batch_alter_table("server_prices", schema=None) as batch_op:
        batch_op.add_column(_zero("storage", sa.BigInteger))
        batch_op.create_check_constraint(
            batch_op.f("ck_server_prices_storage_not_negative"), "storage >= 0"
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stopped", sa.Boolean(), nullable=False, server_default=sa.text("false"))
        )
        batch_op.add_column(sa.Column("stop_reason", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("disk_gb", sa.Integer(), nullable=True))
        for name in ("storage_rate", "stored_seconds", "storage_spend", "storage_fee"):
            batch_op.add_column(_zero(name, sa.BigInteger))
        batch_op.add_column(sa.Column("stored_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("stop_at", sa.BigInteger(), nullable=True))
        for name in ("restart_requested", "restart_done", "generation"):
            batch_op.add_column(_zero(name, sa.Integer))
        batch_op.add_column(sa.Column("mounts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("kept_gpus", sa.JSON(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_orders_storage_sane"),
            "storage_spend >= 0 AND storage_fee >= 0 AND storage_fee <= storage_spend",
        )
        batch_op.drop_index("uq_orders_on_demand_live")
        batch_op.create_index(
            "uq_orders_on_demand_live",
            ["server_id"],
            unique=True,
            sqlite_where=sa.text(RUNNING_WHOLE),
            postgresql_where=sa.text(RUNNING_WHOLE),
        )
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(32), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("fee_bp", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("billed_at", sa.BigInteger(), nullable=True),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("spend", sa.BigInteger(), nullable=False),
        sa.Column("fee_paid", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("quota", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("size_gb >= 1", name=op.f("ck_volumes_size_positive")),
        sa.CheckConstraint(
            "spend >= 0 AND fee_paid >= 0 AND fee_paid <= spend", name=op.f("ck_volumes_spend_sane")
        ),
        sa.CheckConstraint(
            "state IN ('creating', 'ready', 'gone', 'deleted', 'ended')",
            name=op.f("ck_volumes_volume_state"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], name=op.f("fk_volumes_server_id_servers")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_volumes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
    )
    op.create_index(op.f("ix_volumes_server_id"), "volumes", ["server_id"])
    op.create_index(op.f("ix_volumes_user_id"), "volumes", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_volumes_user_id"), table_name="volumes")
    op.drop_index(op.f("ix_volumes_server_id"), table_name="volumes")
    op.drop_table("volumes")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("uq_orders_on_demand_live")
        batch_op.create_index(
            "uq_orders_on_demand_live",
            ["server_id"],
            unique=True,
            sqlite_where=sa.text(WHOLE),
            postgresql_where=sa.text(WHOLE),
        )
        batch_op.drop_constraint(batch_op.f("ck_orders_storage_sane"), type_="check")
        for name in (
            "kept_gpus",
            "mounts",
            "generation",
            "restart_done",
            "restart_requested",
            "stop_at",
            "stored_at",
            "storage_fee",
            "storage_spend",
            "stored_seconds",
            "storage_rate",
            "disk_gb",
            "stop_reason",
            "stopped",
        ):
            batch_op.drop_column(name)
    with op.batch_alter_table("server_prices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_server_prices_storage_not_negative"), type_="check")
        batch_op.drop_column("storage")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_servers_disk_gb_positive"), type_="check")
        batch_op.drop_column("disk_gb")
