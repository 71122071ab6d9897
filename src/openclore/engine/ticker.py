"""The engine tick: liveness, expiry and billing for every server, idempotent and replica-safe.

Each server is settled in its own short transaction under its row lock (``SELECT … FOR UPDATE``
on PostgreSQL, the database write lock on SQLite), so several API processes ticking at once
never bill the same seconds twice: a second ticker finds ``billed_at`` already moved.
"""

from __future__ import annotations

from sqlalchemy import select, update

from openclore.engine.billing import MARKET_VERSION, lock_server, resolve_server
from openclore.store.db import Database, bump_meta
from openclore.store.schema import orders, servers


def mark_offline(db: Database, now: int, timeout: int) -> list[int]:
    """Servers whose agent has not been heard from within ``timeout`` go offline."""
    with db.write() as conn:
        stale = [
            int(r.id)
            for r in conn.execute(
                select(servers.c.id).where(
                    servers.c.online.is_(True),
                    servers.c.simulated.is_(False),
                    (servers.c.last_seen.is_(None)) | (servers.c.last_seen < now - timeout),
                )
            )
        ]
        if stale:
            conn.execute(update(servers).where(servers.c.id.in_(stale)).values(online=False))
            bump_meta(conn, MARKET_VERSION)
    return stale


def servers_with_live_orders(db: Database) -> list[int]:
    with db.read() as conn:
        return [
            int(sid)
            for sid in conn.execute(
                select(orders.c.server_id).where(orders.c.expired.is_(False)).distinct()
            ).scalars()
        ]


def settle_server(db: Database, server_id: int, now: int) -> None:
    with db.write() as conn:
        if lock_server(conn, server_id) is not None:
            resolve_server(conn, server_id, now)


def tick(db: Database, now: int, agent_timeout: int) -> None:
    """Bring the whole market up to ``now``."""
    mark_offline(db, now, agent_timeout)
    for server_id in servers_with_live_orders(db):
        settle_server(db, server_id, now)
