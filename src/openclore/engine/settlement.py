"""Set-based settlement: bill every running order up to ``now`` in a handful of SQL statements.

The per-order rules are the ones of :func:`openclore.engine.billing.settle` (spend from the active
time at the current price plus what was spent before it, fee from the total spend, transfer keys
carrying cumulative totals), written as SQL so that the cost per tick grows linearly and stays
small: no Python loop per order.

Orders this fast path does not take are left to the exact per-server path
(:func:`openclore.engine.billing.resolve_server`): orders that reach their end of life or their
stop timer in this tick, and all orders of a wallet that cannot pay for this tick (they end at
the last second the balance covers, and the next bid of their server starts right then).

Booking: one ``spend`` transfer per (renter, host) and one ``fee`` transfer per (renter, platform)
and tick, each order's share of it in ``order_charges`` (statements show the shares, one entry per
order); the balances move once per account.

Concurrency: on PostgreSQL the orders UPDATE re-checks ``billed_at`` under the row lock and only
the orders it applied to are booked (an order a use case changed meanwhile is settled by that use
case, or by the next tick); one ticker at a time holds an advisory lock. On SQLite the whole tick
holds the database write lock. Either way nothing is billed twice, and transfer keys carry an
order's cumulative total, so a replay is refused by the unique index.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from openclore.domain.money import BASIS_POINTS, SECONDS_PER_DAY
from openclore.ledger.ledger import add_pending, credit_at_end

# price × seconds / 86400 without overflowing 64 bits: p = q·86400 + r  ⇒
# floor(p·a / 86400) = q·a + floor(r·a / 86400); the same split for the fee.
_D, _B = SECONDS_PER_DAY, BASIS_POINTS
_SPEND = f"((o.price / {_D}) * {{a}} + ((o.price % {_D}) * {{a}}) / {_D})"
_FEE = f"((({{s}}) / {_B}) * o.fee_bp + ((({{s}}) % {_B}) * o.fee_bp) / {_B})"


@dataclass(frozen=True)
class SettlementResult:
    settled: int  # orders billed by the fast path
    deferred_servers: list[int]  # servers whose orders need the exact per-server path


_COLUMNS = (
    "id, server_id, renter, host, platform, old_billed_at, new_billed_at, new_active, "
    "new_spend, new_fee, d_spend, d_fee"
)


def _create_tick_table(conn: Connection) -> None:
    pg = conn.dialect.name == "postgresql"
    conn.execute(text("DROP TABLE IF EXISTS tick_orders"))
    conn.execute(
        text(
            f"""CREATE TEMP TABLE tick_orders (
                id INTEGER PRIMARY KEY, server_id INTEGER, renter BIGINT, host BIGINT,
                platform BIGINT, old_billed_at BIGINT, new_billed_at BIGINT, new_active BIGINT,
                new_spend BIGINT, new_fee BIGINT, d_spend BIGINT, d_fee BIGINT)
                {"ON COMMIT DROP" if pg else ""}"""
        )
    )


def _candidates(pg: bool, grace: int) -> str:
    """The running orders that stay alive through ``:now``, with what billing them to ``:now``
    gives (``_COLUMNS``)."""
    # Billing of an agent's server runs at most `grace` seconds past its last heartbeat, so a
    # server that went silent is not billed for its downtime.
    least = "LEAST" if pg else "MIN"
    paid_until = (
        f"CASE WHEN s.simulated THEN :now "
        f"ELSE {least}(:now, COALESCE(s.last_seen, :now) + {grace}) END"
    )
    # the current price applies since base_seconds; what was spent before stays (base_spend)
    spend = "b.base_spend + " + _SPEND.format(a="(b.new_active - b.base_seconds)").replace(
        "o.", "b."
    )
    fee = _FEE.format(s="c.new_spend").replace("o.", "c.")
    return f"""
            SELECT c.id, c.server_id, c.renter, c.host, c.platform, c.old_billed_at,
                   c.new_billed_at, c.new_active, c.new_spend, {fee} AS new_fee,
                   c.new_spend - c.old_spend AS d_spend, {fee} - c.old_fee AS d_fee
              FROM (
                SELECT b.*, {spend} AS new_spend
                  FROM (
                    SELECT o.id, o.server_id, o.price, o.fee_bp, o.spend AS old_spend,
                           o.base_spend, o.base_seconds,
                           o.fee_paid AS old_fee, rw.id AS renter, hw.id AS host,
                           pf.id AS platform, o.billed_at AS old_billed_at,
                           {paid_until} AS new_billed_at,
                           o.active_seconds + ({paid_until} - o.billed_at) AS new_active
                      FROM orders o
                      JOIN servers s ON s.id = o.server_id
                      JOIN accounts rw ON rw.kind = 'wallet' AND rw.user_id = o.user_id
                                      AND rw.currency = o.currency
                      JOIN accounts hw ON hw.kind = 'wallet' AND hw.user_id = s.owner_id
                                      AND hw.currency = o.currency
                      JOIN accounts pf ON pf.key = 'platform:' || o.currency
                     WHERE o.running AND NOT o.expired
                       AND o.billed_at < {paid_until}
                       AND o.ct + o.mrl > :now
                       AND (o.stop_at IS NULL OR o.stop_at > :now)
                  ) AS b
              ) AS c
            """


def _create_candidates(conn: Connection, now: int, grace: int) -> int:
    """SQLite: the candidates into ``tick_orders``."""
    _create_tick_table(conn)
    return int(
        conn.execute(
            text(f"INSERT INTO tick_orders ({_COLUMNS}) {_candidates(False, grace)}"),
            {"now": now},
        ).rowcount
    )


def settle_running_orders(conn: Connection, now: int, grace: int) -> SettlementResult:
    """Bill every running order that stays alive through ``now`` (one transaction)."""
    add_pending(conn)  # its statements read and move the balances themselves
    if conn.dialect.name == "postgresql":
        short = _apply_postgresql(conn, now, grace)
    else:
        short = _apply_sqlite(conn, now, grace)
    settled = int(conn.execute(text("SELECT COUNT(*) FROM tick_orders")).scalar_one())
    if settled:
        _book(conn, now)
    _drop(conn)
    return SettlementResult(settled=settled, deferred_servers=short)


def _apply_postgresql(conn: Connection, now: int, grace: int) -> list[int]:
    """One statement: read the candidates, leave out the wallets that cannot pay for all their
    orders of this tick, move the orders' totals, keep what was applied in ``tick_orders``;
    answers the servers of the wallets left out (the exact path settles them).

    An order a use case changed after this statement's snapshot (it holds the row lock, so the
    UPDATE waits, then re-checks ``billed_at`` and the running state on the new row version) is
    not updated, so not returned, so not booked: that use case settled it, or the next tick will.
    """
    _create_tick_table(conn)
    return sorted(
        int(sid)
        for sid in conn.execute(
            text(
                f"""
                WITH c AS ({_candidates(True, grace)}),
                w AS (
                    SELECT c.*, SUM(c.d_spend) OVER (PARTITION BY c.renter) > a.balance AS short
                      FROM c JOIN accounts a ON a.id = c.renter),
                applied AS (
                    UPDATE orders SET active_seconds = w.new_active, spend = w.new_spend,
                                      fee_paid = w.new_fee, billed_at = w.new_billed_at
                      FROM w
                     WHERE orders.id = w.id AND NOT w.short
                       AND orders.billed_at = w.old_billed_at
                       AND orders.running AND NOT orders.expired
                 RETURNING w.*),
                kept AS (
                    INSERT INTO tick_orders ({_COLUMNS}) SELECT {_COLUMNS} FROM applied)
                SELECT DISTINCT w.server_id FROM w WHERE w.short
                """
            ),
            {"now": now},
        ).scalars()
    )


def _apply_sqlite(conn: Connection, now: int, grace: int) -> list[int]:
    """The same in steps: the tick holds SQLite's write lock, so nothing changes meanwhile."""
    if _create_candidates(conn, now, grace) == 0:
        return []
    # wallets that cannot pay for all their orders of this tick go the exact way
    short = sorted(
        int(sid)
        for sid in conn.execute(
            text(
                """
                    SELECT DISTINCT t.server_id FROM tick_orders t
                 WHERE t.renter IN (
                       SELECT t2.renter FROM tick_orders t2
                         JOIN accounts a ON a.id = t2.renter
                        GROUP BY t2.renter, a.balance
                       HAVING SUM(t2.d_spend) > a.balance)
                """
            )
        ).scalars()
    )
    if short:
        conn.execute(
            text(
                """
                DELETE FROM tick_orders WHERE renter IN (
                       SELECT t2.renter FROM tick_orders t2
                         JOIN accounts a ON a.id = t2.renter
                        GROUP BY t2.renter, a.balance
                       HAVING SUM(t2.d_spend) > a.balance)
                """
            )
        )
    conn.execute(
        text(
            """
            UPDATE orders SET active_seconds = t.new_active, spend = t.new_spend,
                              fee_paid = t.new_fee, billed_at = t.new_billed_at
              FROM tick_orders t
             WHERE orders.id = t.id
            """
        )
    )
    return short


# A tick's rental legs, one per (renter, host) for the hosts' share and (renter, platform) for
# the fee; ``first`` is the lowest order id in the group, whose new cumulative total makes the
# transfer's key (``tick:<order>:host:<total>``, ``tick:<order>:fee:<total>``): an order's totals
# only grow, so the key is never used twice, and a tick booked twice fails on it.
_LEGS = (
    ("spend", "t.host", "t.d_spend - t.d_fee", "host", "t.new_spend - t.new_fee"),
    ("fee", "t.platform", "t.d_fee", "fee", "t.new_fee"),
)


def _book(conn: Connection, now: int) -> None:
    """Book the settled orders' rental: one transfer per account pair, each order's share of it
    in ``order_charges``, then the balances (one UPDATE per side)."""
    pg = conn.dialect.name == "postgresql"
    conn.execute(text("DROP TABLE IF EXISTS tick_legs"))
    conn.execute(
        text(
            f"""CREATE TEMP TABLE tick_legs (
                kind VARCHAR(16), debit BIGINT, credit BIGINT, amount BIGINT, key VARCHAR(128),
                transfer_id BIGINT, PRIMARY KEY (kind, debit, credit))
                {"ON COMMIT DROP" if pg else ""}"""
        )
    )
    for kind, credit, amount, label, total in _LEGS:
        conn.execute(
            text(
                f"""
                INSERT INTO tick_legs (kind, debit, credit, amount, key)
                SELECT '{kind}', g.debit, g.credit, g.amount,
                       'tick:' || t.id || ':{label}:' || ({total})
                  FROM (SELECT t.renter AS debit, {credit} AS credit, SUM({amount}) AS amount,
                               MIN(t.id) AS first
                          FROM tick_orders t WHERE {amount} > 0
                         GROUP BY t.renter, {credit}) AS g
                  JOIN tick_orders t ON t.id = g.first
                """
            )
        )
    if pg:  # the paying accounts' locks in id order, so two ticks never wait on each other
        # (the credited ones are written at the transaction's end, as every booking's are)
        conn.execute(
            text(
                """
                SELECT a.id FROM accounts a
                 WHERE a.id IN (SELECT debit FROM tick_legs)
                 ORDER BY a.id FOR NO KEY UPDATE
                """
            )
        )
    conn.execute(
        text(
            """
            INSERT INTO transfers (key, debit_account_id, credit_account_id, amount, kind,
                                   created_at)
            SELECT g.key, g.debit, g.credit, g.amount, g.kind, :now FROM tick_legs g
            """
        ),
        {"now": now},
    )
    conn.execute(
        text(
            "UPDATE tick_legs SET transfer_id = "
            "(SELECT tr.id FROM transfers tr WHERE tr.key = tick_legs.key)"
        )
    )
    for kind, credit, amount, _, _ in _LEGS:
        conn.execute(
            text(
                f"""
                INSERT INTO order_charges (transfer_id, order_id, amount)
                SELECT g.transfer_id, t.id, {amount}
                  FROM tick_orders t
                  JOIN tick_legs g ON g.kind = '{kind}' AND g.debit = t.renter
                                  AND g.credit = {credit}
                 WHERE {amount} > 0
                 ORDER BY g.transfer_id, t.id
                """
            )
        )
    conn.execute(
        text(
            """
            UPDATE accounts SET balance = accounts.balance - x.total
              FROM (SELECT g.debit AS account, SUM(g.amount) AS total
                      FROM tick_legs g GROUP BY g.debit) AS x
             WHERE accounts.id = x.account
            """
        )
    )
    credits = conn.execute(text("SELECT credit, SUM(amount) FROM tick_legs GROUP BY credit"))
    credit_at_end(conn, [(int(a), int(n)) for a, n in credits])
    if not pg:
        conn.execute(text("DROP TABLE tick_legs"))


def _drop(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":  # PostgreSQL drops it at commit
        conn.execute(text("DROP TABLE tick_orders"))


def servers_due(conn: Connection, now: int) -> list[int]:
    """Servers with a live order at or past its end of life: the exact path ends them."""
    return [
        int(sid)
        for sid in conn.execute(
            text("SELECT DISTINCT server_id FROM orders WHERE NOT expired AND ct + mrl <= :now"),
            {"now": now},
        ).scalars()
    ]
