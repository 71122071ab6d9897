"""money in and out: withdrawals, memo and actor on transfers, per-account transfer indexes

Revision ID: money_in_and_out
Revises: gateway_tunnels
Create Date: 2026-11-27 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "money_in_and_out"
down_revision = "gateway_tunnels"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(sa.Column("memo", sa.Text(), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(length=64), nullable=True))
    op.create_index("ix_transfers_debit_account", "transfers", ["debit_account_id", "id"])
    op.create_index("ix_transfers_credit_account", "transfers", ["credit_account_id", "id"])
    op.create_table(
        "withdrawals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("txid", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("amount > 0 AND fee >= 0", name=op.f("ck_withdrawals_amounts")),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'rejected')", name=op.f("ck_withdrawals_state")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_withdrawals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawals")),
    )
    op.create_index("ix_withdrawals_user", "withdrawals", ["user_id", "created_at"])
    op.create_index("ix_withdrawals_state", "withdrawals", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_withdrawals_state", table_name="withdrawals")
    op.drop_index("ix_withdrawals_user", table_name="withdrawals")
    op.drop_table("withdrawals")
    op.drop_index("ix_transfers_credit_account", table_name="transfers")
    op.drop_index("ix_transfers_debit_account", table_name="transfers")
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("actor")
        batch.drop_column("memo")
