"""Runway: what a user's orders (running, or stopped with a disk) and volumes burn per day, how
long each wallet lasts at that rate, and the ``balance.low`` event when that drops under the
user's threshold (checked every tick; sent once per dip, again only after the runway was back
above the threshold)."""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update

from openclore.domain.money import to_coins
from openclore.domain.spot import runway_seconds
from openclore.engine.outbox import BALANCE_LOW, emit
from openclore.engine.storage import BILLED_VOLUME_STATES
from openclore.store.db import Database, run_write
from openclore.store.schema import accounts, orders, user_alerts, volumes


def burn_per_day(conn: Connection, user_ids: list[int]) -> dict[tuple[int, str], int]:
    """``{(user, currency): Σ per day}`` of what the user's orders and volumes cost now: the
    price of running orders, the storage of stopped ones and of live volumes (SPEC §8)."""
    if not user_ids:
        return {}
    out: dict[tuple[int, str], int] = {}
    queries = (
        select(orders.c.user_id, orders.c.currency, func.sum(orders.c.price)).where(
            orders.c.running.is_(True)
        ),
        select(orders.c.user_id, orders.c.currency, func.sum(orders.c.storage_rate)).where(
            orders.c.stopped.is_(True)
        ),
    )
    for query in queries:
        rows = conn.execute(
            query.where(orders.c.user_id.in_(user_ids), orders.c.expired.is_(False)).group_by(
                orders.c.user_id, orders.c.currency
            )
        )
        for r in rows:
            key = (int(r[0]), str(r[1]))
            out[key] = out.get(key, 0) + int(r[2] or 0)
    rows = conn.execute(
        select(volumes.c.user_id, volumes.c.currency, func.sum(volumes.c.rate))
        .where(volumes.c.user_id.in_(user_ids), volumes.c.state.in_(BILLED_VOLUME_STATES))
        .group_by(volumes.c.user_id, volumes.c.currency)
    )
    for r in rows:
        key = (int(r[0]), str(r[1]))
        out[key] = out.get(key, 0) + int(r[2] or 0)
    return {k: v for k, v in out.items() if v > 0}


def check_low_balances(db: Database, now: int) -> int:
    """Emit ``balance.low`` for wallets whose runway fell under their owner's threshold; returns
    how many were sent."""

    def run(conn: Connection) -> int:
        watched = {
            int(r.user_id): (int(r.low_balance_seconds), list(r.alerted or []))
            for r in conn.execute(select(user_alerts).with_for_update())
        }
        if not watched:
            return 0
        burns = burn_per_day(conn, list(watched))
        wallets = conn.execute(
            select(accounts.c.user_id, accounts.c.currency, accounts.c.balance).where(
                accounts.c.kind == "wallet", accounts.c.user_id.in_(list(watched))
            )
        ).all()
        sent = 0
        new_alerted: dict[int, set[str]] = {uid: set(a) for uid, (_, a) in watched.items()}
        for wallet in wallets:
            uid, currency = int(wallet.user_id), str(wallet.currency)
            threshold, _ = watched[uid]
            burn = burns.get((uid, currency), 0)
            runway = runway_seconds(int(wallet.balance), burn)
            low = runway is not None and runway < threshold
            if low and currency not in new_alerted[uid]:
                emit(
                    conn,
                    uid,
                    BALANCE_LOW,
                    now,
                    currency=currency,
                    balance=to_coins(int(wallet.balance)),
                    burn_per_day=to_coins(burn),
                    runway_seconds=runway,
                    threshold_seconds=threshold,
                )
                new_alerted[uid].add(currency)
                sent += 1
            elif not low:
                new_alerted[uid].discard(currency)
        for uid, (_, before) in watched.items():
            if set(before) != new_alerted[uid]:
                conn.execute(
                    update(user_alerts)
                    .where(user_alerts.c.user_id == uid)
                    .values(alerted=sorted(new_alerted[uid]))
                )
        return sent

    return run_write(db, run)
