"""What the orders of a limited API key spend (SPEC §8 scopes): the day's spending per key and
currency, and the stop timer that ends it at the key's daily limit.

A market day is UTC; an amount counts on the day it is booked. The tick calls
:func:`apply_spend_caps` before billing: an order whose key reaches its limit within the tick gets
its stop timer at the very second (``timer_reason`` ``spend_limit``), and the exact per-server
path bills it to that second and stops it, as it does a renter's own timer.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select, text, update

from openclore.domain.money import SECONDS_PER_DAY
from openclore.store.schema import api_tokens, orders

# what a renter is billed for an order: rent and its fee, storage and its fee, the creation fee
SPENDING_KINDS = ("spend", "fee", "storage", "storage_fee", "creation_fee")
# orders.timer_reason and orders.stop_reason of an order stopped at its key's daily limit
SPEND_LIMIT = "spend_limit"


def limit_of(stored: Any) -> tuple[tuple[str, int], ...] | None:
    if stored is None:
        return None
    data = json.loads(stored) if isinstance(stored, str) else stored
    return tuple(sorted((str(c), int(v)) for c, v in dict(data).items()))


def day_start(now: int) -> int:
    return now - now % SECONDS_PER_DAY


def spent_today(conn: Connection, key_id: int, now: int) -> dict[str, int]:
    """What the orders created with the key were billed today (UTC), per currency: the
    per-order transfers and the orders' shares of the tick's pooled transfers."""
    kinds = ", ".join(f"'{k}'" for k in SPENDING_KINDS)
    rows = conn.execute(
        text(
            f"""
            SELECT o.currency AS currency, SUM(x.amount) AS total FROM (
                SELECT oc.order_id AS order_id, oc.amount AS amount
                  FROM order_charges oc JOIN transfers t ON t.id = oc.transfer_id
                 WHERE oc.order_id IN (SELECT id FROM orders WHERE api_key_id = :k)
                   AND t.created_at >= :day
                UNION ALL
                SELECT t.order_id, t.amount FROM transfers t
                 WHERE t.order_id IN (SELECT id FROM orders WHERE api_key_id = :k)
                   AND t.kind IN ({kinds}) AND t.created_at >= :day
            ) x JOIN orders o ON o.id = x.order_id
            GROUP BY o.currency
            """
        ),
        {"k": key_id, "day": day_start(now)},
    )
    return {str(r.currency): int(r.total) for r in rows}


def apply_spend_caps(conn: Connection, now: int) -> None:
    """Set the stop timer of the running orders whose key's daily limit is reached by ``now``
    to the second it is reached (``timer_reason`` ``spend_limit``); the tick's exact path then
    bills them to that second and stops them. One query of the (few) limited keys when none
    has a running order."""
    limits: dict[int, dict[str, int]] = {
        int(row.id): dict(limit_of(row.spend_limit) or ())
        for row in conn.execute(
            select(api_tokens.c.id, api_tokens.c.spend_limit).where(
                api_tokens.c.spend_limit.is_not(None)
            )
        )
    }
    if not limits:
        return
    running = conn.execute(
        select(
            orders.c.id,
            orders.c.api_key_id,
            orders.c.currency,
            orders.c.price,
            orders.c.billed_at,
            orders.c.stop_at,
        ).where(
            orders.c.api_key_id.in_(list(limits)),
            orders.c.running.is_(True),
            orders.c.expired.is_(False),
            orders.c.stopped.is_(False),
        )
    ).all()
    groups: dict[tuple[int, str], list[Any]] = {}
    for row in running:
        groups.setdefault((int(row.api_key_id), str(row.currency)), []).append(row)
    spent_cache: dict[int, dict[str, int]] = {}
    for (key_id, currency), rows in groups.items():
        if key_id not in spent_cache:
            spent_cache[key_id] = spent_today(conn, key_id, now)
        remaining = limits[key_id].get(currency, 0) - spent_cache[key_id].get(currency, 0)
        # at least 1: every price is (the database's ck_orders_price_positive)
        rate = sum(int(r.price) for r in rows)
        # each order accrues price × (t − billed_at) / 86400: the t where the sum is `remaining`
        weighted = sum(int(r.price) * int(r.billed_at) for r in rows)
        at = (max(remaining, 0) * SECONDS_PER_DAY + weighted) // rate
        if at > now:
            continue
        for r in rows:
            stop = max(at, int(r.billed_at))
            if r.stop_at is not None and int(r.stop_at) <= stop:
                continue
            conn.execute(
                update(orders)
                .where(orders.c.id == r.id)
                .values(stop_at=stop, timer_reason=SPEND_LIMIT)
            )
