"""Renters' own things (SPEC §8): account SSH keys, templates, and the orders' account_keys
(the account's keys as they were when the order was created) and template_id

Revision ID: account_things
Revises: keep_work
Create Date: 2026-12-06 17:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "account_things"
down_revision = "keep_work"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_keys", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("template_id", sa.Integer(), nullable=True))
    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ssh_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ssh_keys")),
        sa.UniqueConstraint("user_id", "fingerprint", name="uq_ssh_keys_user_fingerprint"),
    )
    op.create_index(op.f("ix_ssh_keys_user_id"), "ssh_keys", ["user_id"])
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        sa.Column("command", sa.Text(), nullable=True),
        sa.Column("env", sa.JSON(), nullable=True),
        sa.Column("ports", sa.JSON(), nullable=True),
        sa.Column("jupyter_token", sa.String(32), nullable=True),
        sa.Column("disk_gb", sa.Integer(), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("readme", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_templates_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
    )
    op.create_index(op.f("ix_templates_user_id"), "templates", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_templates_user_id"), table_name="templates")
    op.drop_table("templates")
    op.drop_index(op.f("ix_ssh_keys_user_id"), table_name="ssh_keys")
    op.drop_table("ssh_keys")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("template_id")
        batch_op.drop_column("account_keys")
