"""access gateway: gateways, tunnel ports, the server's gateway and tunnel key, agent requests

Revision ID: gateway_tunnels
Revises: 0002
Create Date: 2026-11-27 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_tunnels"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("gateway", sa.String(length=253), nullable=True))
        batch.add_column(sa.Column("tunnel_key", sa.Text(), nullable=True))
    op.create_table(
        "gateways",
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("ssh_address", sa.String(length=300), nullable=False),
        sa.Column("host_key", sa.Text(), nullable=False),
        sa.Column("host_key_public", sa.Text(), nullable=False),
        sa.Column("http_url", sa.String(length=300), nullable=True),
        sa.Column("seen_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_gateways")),
    )
    op.create_table(
        "tunnel_ports",
        sa.Column("gateway", sa.String(length=253), nullable=False),
        sa.Column("public_port", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("container_port", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_tunnel_ports_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("gateway", "public_port", name=op.f("pk_tunnel_ports")),
        sa.UniqueConstraint("order_id", "container_port", name="uq_tunnel_ports_order_port"),
    )

    op.create_table(
        "agent_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tail", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("answered_at", sa.BigInteger(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], name=op.f("fk_agent_requests_server_id_servers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_requests")),
    )
    op.create_index(
        op.f("ix_agent_requests_server_id"), "agent_requests", ["server_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_requests_server_id"), table_name="agent_requests")
    op.drop_table("agent_requests")
    op.drop_table("tunnel_ports")
    op.drop_table("gateways")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("tunnel_key")
        batch.drop_column("gateway")
