"""Billing and the running state of orders, applied inside the caller's transaction.

An order is *running* (and billed) when its server is online and it holds GPU slots: the
allocation of :mod:`openclore.domain.slots` (SPEC §8) gives them to on-demand orders first, then
to spot bids by price per slot (ties: the earliest). A whole-server order needs every slot, so on
a server rented whole this is the live on-demand order if there is one, else the highest bid.
Every change that may move that (a bid, a new or ended order, a server going offline or online)
calls :func:`resolve_server` in the same transaction; every order that stops running is settled
first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select, update

from openclore.domain.money import affordable_seconds, fee_for, segment_spend
from openclore.domain.slots import Claim, Slots, allocate
from openclore.domain.specs import clean_gpu_array
from openclore.engine.notify import notify_server
from openclore.engine.outbox import order_ended, order_states, record_order_changes
from openclore.engine.storage import settle_stored, settle_volumes
from openclore.ledger.ledger import (
    balance,
    system_account_id,
    transfer,
    wallet_id,
)
from openclore.store.db import Database, get_meta, set_meta
from openclore.store.schema import orders, servers

Row = Mapping[str, Any]
# Agents heartbeat every few seconds; billing of a silent server stops this long after the last
# heartbeat, so renters are not charged for the time it takes to declare a server offline.
BILLING_GRACE = 15
# the market's spot_starvation_seconds, as `openclore serve` records it in the meta table
STARVATION_KEY = "spot_starvation_seconds"
DEFAULT_STARVATION_SECONDS = 3600
# orders.stop_reason of a spot order that lost its slots: it bids on and starts by itself
PREEMPTED = "preempted"


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
    if order["stopped"]:  # its disk is kept and paid for, whether the host is heard or not
        t_end = min(now, end_of_life)
        values = settle_stored(conn, order, t_end, now)
        if "ended_at" in values:
            t_end = values.pop("ended_at")
            ended_reason = "balance"
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
    server = conn.execute(
        select(servers.c.online, servers.c.gpu_array).where(servers.c.id == server_id)
    ).one()
    online = bool(server.online)
    before = order_states(conn, server_id)
    changed = False
    while True:
        live = live_orders(conn, server_id, lock=True)
        # the running orders first, up to the first end of life among them (the slots it frees
        # go to the next orders at that second, while the others run on); if one ran out of
        # money before that, the book moves on at that moment
        bound = min(
            [
                now,
                *(o["ct"] + o["mrl"] for o in live if o["running"]),
                *(o["stop_at"] for o in live if o["stop_at"] is not None and not o["stopped"]),
            ]
        )
        start = bound
        remaining: list[Row] = []
        for order in (o for o in live if o["running"]):
            order = settle(conn, order, bound)
            if not order["expired"] and online and not can_pay_next_second(conn, order):
                order = {**order, "expired": True, "ended_at": _end_unfunded(conn, order, bound)}
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
        for i, order in enumerate(remaining):
            if order["stop_at"] is not None and order["stop_at"] <= bound and not order["stopped"]:
                at = max(order["stop_at"], order["ct"])
                remaining[i] = stop(conn, order, at, order.get("timer_reason") or "timer")
                changed = True
        # a stopped order holds nothing; a preempted spot order still bids (SPEC §8)
        bidding = [o for o in remaining if not o["stopped"] or o["stop_reason"] == PREEMPTED]
        holds, unfunded = _allocate(conn, server, bidding, online, start)
        changed = changed or bool(unfunded)
        bidding = [o for o in bidding if o["id"] not in unfunded]
        for order in bidding:
            changed = _apply(conn, order, holds.get(order["id"], ()), start, online) or changed
        if start >= now:
            break
    settle_volumes(conn, server_id, now)
    if changed:
        notify_server(conn, server_id)
        record_order_changes(conn, server_id, before, now)


def publish_rules(db: Database, starvation_seconds: int) -> None:
    """Record the market's ``spot_starvation_seconds`` where every resolve reads it (a serving
    process does at start: one setting for the whole market, whichever replica resolves)."""
    with db.write() as conn:
        if get_meta(conn, STARVATION_KEY, -1) != starvation_seconds:
            set_meta(conn, STARVATION_KEY, starvation_seconds)


def servers_starving(conn: Connection, now: int) -> list[int]:
    """Servers with a bid that has waited for GPU slots past the starvation setting: the tick
    resolves them, so that its reservation holds from then on (SPEC §8)."""
    limit = now - get_meta(conn, STARVATION_KEY, DEFAULT_STARVATION_SECONDS)
    return [
        int(sid)
        for sid in conn.execute(
            select(orders.c.server_id)
            .join(servers, servers.c.id == orders.c.server_id)
            .where(
                servers.c.partial_gpu_rental.is_(True),
                orders.c.expired.is_(False),
                orders.c.spot.is_(True),
                orders.c.running.is_(False),
                orders.c.waiting_since < limit,
            )
            .distinct()
        ).scalars()
    ]


def slot_count(gpu_array: Any) -> int:
    """A server's GPU slots: its reported GPUs, and one slot for a server without any (it is
    rented whole)."""
    return max(1, len(clean_gpu_array(gpu_array)))


def order_slots(order: Row, n: int) -> int:
    """How many slots an order needs: its ``gpu_count``, or all ``n`` for a whole-server order."""
    return int(order["gpu_count"]) if order.get("gpu_count") is not None else n


def order_claim(order: Row, n: int) -> Claim | None:
    """The order as the allocation sees it; None when it cannot fit this server any more (the
    server reports fewer GPUs than it asked for): it waits, holding nothing."""
    k = order_slots(order, n)
    wanted = tuple(order["gpus_wanted"]) if order.get("gpus_wanted") else None
    if k > n or (wanted is not None and max(wanted) >= n):
        return None
    held: Slots = ()
    if order["running"]:
        stored = tuple(order.get("gpus") or ())
        held = stored if len(stored) == k else tuple(range(n)) if k == n else ()
    return Claim(
        id=int(order["id"]),
        spot=bool(order["spot"]),
        price=int(order["price"]),
        k=k,
        wanted=wanted,
        held=held,
        waiting_since=order.get("waiting_since"),
    )


def _allocate(
    conn: Connection, server: Any, live: list[Row], online: bool, at: int
) -> tuple[dict[int, Slots], set[int]]:
    """The slots each live order holds from ``at`` on, and the orders ended because they would
    start without the money for their first second (they never take slots they cannot pay)."""
    n = slot_count(server.gpu_array)
    unfunded: set[int] = set()
    if not online:
        return {}, unfunded
    starvation: int | None = None
    if any(o["spot"] and not o["running"] for o in live):
        starvation = get_meta(conn, STARVATION_KEY, DEFAULT_STARVATION_SECONDS)
    while True:
        claims = [
            c for o in live if o["id"] not in unfunded and (c := order_claim(o, n)) is not None
        ]
        holds = allocate(n, claims, online=True, now=at, starvation_seconds=starvation)
        broke = [
            o
            for o in live
            if o["id"] not in unfunded
            and holds.get(o["id"])
            and not o["running"]
            and not can_pay_next_second(conn, o)
        ]
        if not broke:
            return holds, unfunded
        for order in broke:
            _end_unfunded(conn, order, at)  # it would take slots and not pay
            unfunded.add(order["id"])


def _apply(conn: Connection, order: Row, slots: Slots, at: int, online: bool = True) -> bool:
    """Start, stop or move one order to the slots it was given; True when it ran or stopped.
    A spot order that loses its slots on an online server is stopped (it keeps its disk and
    pays for it) until the allocation gives it slots again (SPEC §8)."""
    values: dict[str, Any] = {}
    if slots and not order["running"]:
        values = {"running": True, "billed_at": max(at, order["ct"]), "gpus": list(slots)}
        values["waiting_since"] = None
        if order["stopped"]:  # a preempted spot order starts again by itself
            values.update(stopped=False, stop_reason=None, stored_at=None)
    elif not slots and order["running"]:
        values = {"running": False, "billed_at": None, "gpus": []}
        if order["spot"]:
            values["waiting_since"] = at
            if online:
                values.update(stopped=True, stop_reason=PREEMPTED, stored_at=at)
                values["kept_gpus"] = list(order.get("gpus") or [])
    elif slots and list(slots) != list(order.get("gpus") or ()):
        values = {"gpus": list(slots)}  # moved (or first recorded): the agent follows
    elif not slots and order["spot"] and order.get("waiting_since") is None:
        values = {"waiting_since": max(at, order["ct"])}
    if values:
        conn.execute(update(orders).where(orders.c.id == order["id"]).values(**values))
    return "running" in values or "gpus" in values


def stop(conn: Connection, order: Row, at: int, reason: str) -> Row:
    """Stop an order at ``at`` (billed up to then by the caller): it holds no slot, keeps its
    disk and pays its storage from then on (SPEC §8). Returns the order as it is afterwards."""
    values: dict[str, Any] = {
        "running": False,
        "billed_at": None,
        "gpus": [],
        "stopped": True,
        "stop_reason": reason,
        "stored_at": at,
        "stop_at": None,
        "timer_reason": None,
        "waiting_since": None,
    }
    if order["running"]:
        values["kept_gpus"] = list(order.get("gpus") or [])
    conn.execute(update(orders).where(orders.c.id == order["id"]).values(**values))
    return {**order, **values}


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
