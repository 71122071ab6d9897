"""Billing and the running state of orders, applied inside the caller's transaction.

An order is *running* (and billed) when its server is online and it holds the server: the live
on-demand order if there is one, else the highest live spot bid (ties: the earliest). Every change
that may move that (a bid, a new or ended order, a server going offline or online) calls
:func:`resolve_server` in the same transaction; every order that stops running is settled first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select, update

from openclore.domain.money import affordable_seconds, fee_for, segment_spend
from openclore.domain.spot import ranked
from openclore.engine.notify import notify_server
from openclore.engine.outbox import order_ended, order_states, record_order_changes
from openclore.ledger.ledger import (
    balance,
    lock_accounts,
    system_account_id,
    transfer,
    wallet_id,
)
from openclore.store.schema import orders, servers

Row = Mapping[str, Any]
# Agents heartbeat every few seconds; billing of a silent server stops this long after the last
# heartbeat, so renters are not charged for the time it takes to declare a server offline.
BILLING_GRACE = 15


def _wallet(conn: Connection, user_id: int, currency: str) -> int:
    found = wallet_id(conn, user_id, currency)
    if found is None:  # create_order makes sure both wallets exist before an order runs
        raise LookupError(f"user {user_id} has no {currency} wallet")
    return found


def settle(conn: Connection, order: Row, now: int) -> Row:
    """Bill a running order up to ``now`` (or its end of life); end it when the renter cannot pay
    or its time is up. Returns the order as it is afterwards. Idempotent for the same ``now``."""
    if order["expired"]:
        return order
    end_of_life = order["ct"] + order["mrl"]
    t_end = min(now, end_of_life, _paid_until(conn, order["server_id"], now))
    values: dict[str, Any] = {}
    ended_reason: str | None = None
    if order["running"] and order["billed_at"] is not None and t_end > order["billed_at"]:
        renter = _wallet(conn, order["user_id"], order["currency"])
        seconds = t_end - order["billed_at"]
        active = order["active_seconds"] + seconds
        new_spend = _spend(order, active)
        available = balance(conn, renter, lock=True)
        if new_spend - order["spend"] > available:
            seconds = _affordable(order, available)
            active = order["active_seconds"] + seconds
            new_spend = _spend(order, active)
            t_end = order["billed_at"] + seconds
            ended_reason = "balance"
        new_fee = fee_for(new_spend, order["fee_bp"])
        _pay(conn, order, renter, new_spend, new_fee, now)
        values.update(active_seconds=active, spend=new_spend, fee_paid=new_fee, billed_at=t_end)
    if ended_reason is None and now >= end_of_life:
        ended_reason = "expired"
    if ended_reason is not None:
        values.update(expired=True, running=False, ended_at=t_end, end_reason=ended_reason)
        values["dockerhub_auth"] = None  # registry credentials never outlive the order
    if not values:
        return order
    conn.execute(update(orders).where(orders.c.id == order["id"]).values(**values))
    return {**order, **values}


def _spend(order: Row, active: int) -> int:
    return segment_spend(order["price"], order["base_spend"], order["base_seconds"], active)


def _affordable(order: Row, available: int) -> int:
    """How many more seconds the order's renter can pay for at its current price."""
    return affordable_seconds(
        order["price"],
        order["active_seconds"] - order["base_seconds"],
        order["spend"] - order["base_spend"],
        available,
    )


def _paid_until(conn: Connection, server_id: int, now: int) -> int:
    """An agent's server is billed at most BILLING_GRACE seconds past its last heartbeat."""
    row = conn.execute(
        select(servers.c.simulated, servers.c.last_seen).where(servers.c.id == server_id)
    ).one()
    if row.simulated or row.last_seen is None:
        return now
    return min(now, int(row.last_seen) + BILLING_GRACE)


def _pay(conn: Connection, order: Row, renter: int, spend: int, fee: int, now: int) -> None:
    """Book the difference between the new totals and what was already paid, exactly once:
    each transfer's key carries the cumulative total it brings the order to."""
    host = _host_wallet(conn, order)
    platform = system_account_id(conn, "platform", order["currency"])
    host_total = spend - fee
    oid = order["id"]
    lock_accounts(conn, [renter, host, platform])
    transfer(
        conn,
        key=f"order:{oid}:host:{host_total}",
        debit=renter,
        credit=host,
        amount=host_total - (order["spend"] - order["fee_paid"]),
        kind="spend",
        now=now,
        order_id=oid,
    )
    transfer(
        conn,
        key=f"order:{oid}:fee:{fee}",
        debit=renter,
        credit=platform,
        amount=fee - order["fee_paid"],
        kind="fee",
        now=now,
        order_id=oid,
    )


def _host_wallet(conn: Connection, order: Row) -> int:
    owner = conn.execute(
        select(servers.c.owner_id).where(servers.c.id == order["server_id"])
    ).scalar_one()
    return _wallet(conn, int(owner), order["currency"])


def live_orders(conn: Connection, server_id: int, *, lock: bool = False) -> list[Row]:
    query = (
        select(orders)
        .where(orders.c.server_id == server_id, orders.c.expired.is_(False))
        .order_by(orders.c.id)
    )
    if lock:
        query = query.with_for_update()
    return [dict(r._mapping) for r in conn.execute(query)]


def can_pay_next_second(conn: Connection, order: Row) -> bool:
    """Whether the renter's wallet covers the order's next second of spend (exact, from totals).
    An order that cannot is over for lack of balance: it never takes a server it cannot pay."""
    renter = _wallet(conn, order["user_id"], order["currency"])
    available = balance(conn, renter, lock=True)
    return _affordable(order, available) >= 1


def _end_unfunded(conn: Connection, order: Row, at: int) -> int:
    """End an order whose renter cannot pay for its next second; returns when it ended."""
    ended_at = order["billed_at"] if order["running"] and order["billed_at"] is not None else at
    ended_at = max(ended_at, order["ct"])
    conn.execute(
        update(orders)
        .where(orders.c.id == order["id"])
        .values(expired=True, running=False, ended_at=ended_at, end_reason="balance")
    )
    return int(ended_at)


def resolve_server(conn: Connection, server_id: int, now: int) -> None:
    """Settle and end what is due on one server up to ``now``, then make the right order run.

    Time is replayed in order: when the running order ran out (its mrl, or its renter's balance)
    before ``now``, the next winner starts at that moment, not at ``now``, so a clock jump bills
    exactly as if the time had passed second by second. The caller holds the server row lock
    (:func:`lock_server`), so this is the only transaction changing this server's orders.
    """
    online = bool(
        conn.execute(select(servers.c.online).where(servers.c.id == server_id)).scalar_one()
    )
    before = order_states(conn, server_id)
    changed = False
    while True:
        live = live_orders(conn, server_id, lock=True)
        # the running order first: if it ran out before `now`, the book moves on at that moment
        start = now
        remaining: list[Row] = []
        for order in (o for o in live if o["running"]):
            order = settle(conn, order, now)
            if not order["expired"] and online and not can_pay_next_second(conn, order):
                order = {**order, "expired": True, "ended_at": _end_unfunded(conn, order, now)}
            if order["expired"]:
                changed = True
                start = min(start, order["ended_at"])
            else:
                remaining.append(order)
        for order in (o for o in live if not o["running"]):
            order = settle(conn, order, start)  # ends it if its life was over by `start`
            if order["expired"]:
                changed = True
            else:
                remaining.append(order)
        winner: int | None = None
        unfunded: set[int] = set()
        for candidate in ranked(remaining) if online else []:
            if candidate["running"] or can_pay_next_second(conn, candidate):
                winner = int(candidate["id"])
                break
            _end_unfunded(conn, candidate, start)  # it would take the server and not pay
            unfunded.add(candidate["id"])
            changed = True
        remaining = [o for o in remaining if o["id"] not in unfunded]
        for order in remaining:
            should_run = order["id"] == winner
            if should_run and not order["running"]:
                conn.execute(
                    update(orders)
                    .where(orders.c.id == order["id"])
                    .values(running=True, billed_at=max(start, order["ct"]))
                )
                changed = True
            elif not should_run and order["running"]:
                conn.execute(
                    update(orders)
                    .where(orders.c.id == order["id"])
                    .values(running=False, billed_at=None)
                )
                changed = True
        if start >= now:
            break
    if changed:
        notify_server(conn, server_id)
        record_order_changes(conn, server_id, before, now)


def lock_server(conn: Connection, server_id: int) -> Row | None:
    """Take the server's row lock: every change to a server's orders goes through it."""
    row = conn.execute(select(servers).where(servers.c.id == server_id).with_for_update()).first()
    return None if row is None else dict(row._mapping)


def end_order(conn: Connection, order_id: int, now: int, reason: str) -> str | None:
    """Settle an order to ``now`` and end it (cancel, server removed…); caller holds the lock.
    Returns why it ended: ``reason``, or the settlement's own reason when settling ended it first
    (its balance or its time ran out); None when it had already ended before."""
    row = conn.execute(select(orders).where(orders.c.id == order_id).with_for_update()).first()
    if row is None or row.expired:
        return None
    order = settle(conn, dict(row._mapping), now)
    if order["expired"]:
        notify_server(conn, order["server_id"])
        order_ended(conn, order, str(order["end_reason"]), now)
        return str(order["end_reason"])
    values = {
        "expired": True,
        "running": False,
        "ended_at": now,
        "end_reason": reason,
        "dockerhub_auth": None,
    }
    conn.execute(update(orders).where(orders.c.id == order_id).values(**values))
    notify_server(conn, order["server_id"])  # its container must stop now
    order_ended(conn, {**order, **values}, reason, now)
    return reason
