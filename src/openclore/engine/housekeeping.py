"""Housekeeping: events and finished webhook deliveries older than the retention go.

Every ``serve`` process runs it about once an hour (replicas deleting the same rows at once is
harmless: a row is gone for both). Rows go in batches of ``BATCH``, each its own short
transaction, so a large backlog never holds locks for long. A pending delivery stays until it is
delivered or fails for good, whatever its age: it carries its own body, not a reference to the
event. The ledger, the audit log and orders are never touched here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, select

from openclore.store.db import Database, run_write
from openclore.store.schema import events, webhook_deliveries

BATCH = 5000
INTERVAL = 3600.0  # seconds between two runs in one process
FIRST_DELAY = 60.0  # seconds from the process's start to its first run
DAY = 86400


@dataclass(frozen=True)
class Purged:
    events: int
    deliveries: int


def purge(db: Database, market_now: int, wall_now: float, retention_days: int) -> Purged:
    """Delete events older than ``retention_days`` of market time (events carry the market's
    time) and delivered or failed deliveries older than that of wall-clock time (deliveries
    carry the wall clock). 0 days: keep everything."""
    if retention_days <= 0:
        return Purged(0, 0)
    horizon = retention_days * DAY
    e, d = events, webhook_deliveries

    def old_events(conn: Connection) -> int:
        ids = select(e.c.id).where(e.c.created_at < market_now - horizon).limit(BATCH)
        return int(conn.execute(delete(e).where(e.c.id.in_(ids.scalar_subquery()))).rowcount)

    def old_deliveries(conn: Connection) -> int:
        ids = (
            select(d.c.id)
            .where(d.c.state.in_(("delivered", "failed")), d.c.created_at < wall_now - horizon)
            .limit(BATCH)
        )
        return int(conn.execute(delete(d).where(d.c.id.in_(ids.scalar_subquery()))).rowcount)

    counts = []
    for step in (old_events, old_deliveries):
        total = 0
        while True:
            gone = run_write(db, step)
            total += gone
            if gone < BATCH:
                break
        counts.append(total)
    return Purged(*counts)
