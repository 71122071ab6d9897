"""The engine tick: liveness, expiry and billing for every server, idempotent and replica-safe.

Each server is settled in its own short transaction under its row lock (``SELECT … FOR UPDATE``
on PostgreSQL, the database write lock on SQLite), so several API processes ticking at once
never bill the same seconds twice: a second ticker finds ``billed_at`` already moved.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, select, text, update
from sqlalchemy.exc import IntegrityError

from openclore.engine.alerts import check_low_balances
from openclore.engine.billing import BILLING_GRACE, lock_server, resolve_server, servers_starving
from openclore.engine.outbox import SERVER_OFFLINE, emit
from openclore.engine.reliability import close_stretch, recompute, reliability_due
from openclore.engine.settlement import servers_due, settle_running_orders
from openclore.engine.spending import apply_spend_caps
from openclore.engine.storage import servers_storing
from openclore.store.db import Database, run_write
from openclore.store.schema import servers

TICK_LOCK = 0x71C4

log = logging.getLogger("openclore.engine")


def mark_offline(db: Database, now: int, timeout: int) -> list[int]:
    """Servers whose agent has not been heard from within ``timeout`` go offline; their orders
    stop running (billed up to the last heartbeat plus the grace) and the book is re-resolved."""
    with db.read() as conn:
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
    for server_id in stale:
        run_write(
            db, functools.partial(_take_offline, server_id=server_id, now=now, timeout=timeout)
        )
    return stale


def _take_offline(conn: Connection, server_id: int, now: int, timeout: int) -> None:
    server = lock_server(conn, server_id)
    if server is None or not server["online"] or server["simulated"]:
        return
    if server["last_seen"] is not None and server["last_seen"] >= now - timeout:
        return  # a heartbeat arrived meanwhile
    close_stretch(conn, server, now)
    conn.execute(update(servers).where(servers.c.id == server_id).values(online=False))
    emit(conn, server["owner_id"], SERVER_OFFLINE, now, server_id=server_id, name=server["name"])
    resolve_server(conn, server_id, now)


def settle_server(db: Database, server_id: int, now: int) -> None:
    def run(conn: Connection) -> None:
        if lock_server(conn, server_id) is not None:
            resolve_server(conn, server_id, now)

    run_write(db, run)


def tick(db: Database, now: int, agent_timeout: int, reliability_interval: int = 600) -> TickReport:
    """Bring the whole market up to ``now``: liveness, set-based billing, then the exact
    per-server path for orders that end (mrl reached, balance exhausted); servers' reliability
    at most every ``reliability_interval`` seconds."""
    offline = mark_offline(db, now, agent_timeout)
    with db.read() as conn:  # a write transaction only when a recomputation is due
        due = reliability_due(conn, now, reliability_interval)
    if due:
        run_write(db, functools.partial(recompute, now=now, interval=reliability_interval))

    def fast(conn: Connection) -> tuple[int, list[int]]:
        if (
            db.is_postgres
            and not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": TICK_LOCK}
            ).scalar()
        ):
            return 0, []  # another process is ticking right now
        apply_spend_caps(conn, now)  # a key's limit reached in this tick: stop timers at it
        result = settle_running_orders(conn, now, BILLING_GRACE)
        due = servers_due(conn, now) + servers_starving(conn, now) + servers_storing(conn, now)
        return result.settled, result.deferred_servers + due

    settled, exact = _fast_with_rereads(db, fast)
    for server_id in sorted(set(exact)):
        settle_server(db, server_id, now)
    check_low_balances(db, now)
    return TickReport(offline=offline, settled=settled, exact_servers=len(set(exact)))


DRAINED_RETRIES = 3


def _fast_with_rereads(
    db: Database, fast: Callable[[Connection], tuple[int, list[int]]]
) -> tuple[int, list[int]]:
    """The set-based billing, read again when a wallet it counted on was drained meanwhile.

    A use case that takes money from a wallet (a creation fee, a withdrawal) between the tick's
    read of the balances and its booking makes the booking break the no-negative-balance check:
    the tick's transaction rolls back whole (nothing was billed) and is simply run again, and
    this time that wallet's orders go the exact path. Any other integrity error is a fault and
    goes up."""
    for attempt in range(DRAINED_RETRIES):
        try:
            return run_write(db, fast)
        except IntegrityError as exc:
            if "balance_not_negative" not in str(exc) or attempt + 1 == DRAINED_RETRIES:
                raise
            log.info("a wallet was drained during the tick's billing: reading again")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class TickReport:
    offline: list[int]
    settled: int
    exact_servers: int
