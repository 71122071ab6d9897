"""live Clore parity: exchange rates, online stretches, ratings, enabled currencies, GigaSPOT

Revision ID: live_clore_parity
Revises: money_in_and_out
Create Date: 2026-11-27 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "live_clore_parity"
down_revision = "money_in_and_out"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("online_since", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("first_online_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gpu_limits", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("usd_pricing", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("autoprice", sa.JSON(), nullable=True))
    with op.batch_alter_table("server_prices") as batch:
        batch.add_column(
            sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False)
        )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("rating", sa.SmallInteger(), nullable=True))
        batch.add_column(sa.Column("dockerhub_auth", sa.Text(), nullable=True))
        batch.add_column(sa.Column("oc", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("oc_failed", sa.Boolean(), nullable=True))
        batch.create_check_constraint(
            "rating_range", "rating IS NULL OR (rating >= 1 AND rating <= 5)"
        )
    op.create_table(
        "online_intervals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("ended_at >= started_at", name=op.f("ck_online_intervals_ordered")),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], name=op.f("fk_online_intervals_server_id_servers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_online_intervals")),
    )
    op.create_index(
        op.f("ix_online_intervals_server_id"), "online_intervals", ["server_id"], unique=False
    )
    op.create_table(
        "usd_rates",
        sa.Column("currency", sa.String(length=32), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("rate > 0", name=op.f("ck_usd_rates_rate_positive")),
        sa.PrimaryKeyConstraint("currency", name=op.f("pk_usd_rates")),
    )
    # servers online now start their first stretch at the migration
    op.execute(
        "UPDATE servers SET online_since = last_seen, first_online_at = last_seen "
        "WHERE online AND last_seen IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("usd_rates")
    op.drop_index(op.f("ix_online_intervals_server_id"), table_name="online_intervals")
    op.drop_table("online_intervals")
    with op.batch_alter_table("orders") as batch:
        batch.drop_constraint("rating_range", type_="check")
        batch.drop_column("oc_failed")
        batch.drop_column("oc")
        batch.drop_column("dockerhub_auth")
        batch.drop_column("rating")
    with op.batch_alter_table("server_prices") as batch:
        batch.drop_column("enabled")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("autoprice")
        batch.drop_column("usd_pricing")
        batch.drop_column("first_online_at")
        batch.drop_column("gpu_limits")
        batch.drop_column("online_since")
