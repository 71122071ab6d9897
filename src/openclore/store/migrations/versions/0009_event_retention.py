"""events by time, for the retention purge

Revision ID: event_retention
Revises: events_webhooks_idempotency
Create Date: 2026-11-27 08:50:00
"""

from __future__ import annotations

from alembic import op

revision = "event_retention"
down_revision = "events_webhooks_idempotency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_created_at")
