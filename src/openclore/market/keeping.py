"""Keeping work (SPEC §8): stop and start an order, restart or reset its container, extend it.

A stopped order holds no GPU (others may rent them), keeps its container and disk on the host
and pays for the disk only (:mod:`openclore.engine.storage`); ``start_order`` takes its GPUs again
on the same server, or is refused and changes nothing. Each use case works under the server's
row lock, brings the server's book to ``now`` first, and records an event and an audit entry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.spot import runway
from openclore.engine.billing import (
    PREEMPTED,
    Row,
    live_orders,
    lock_server,
    resolve_server,
    slot_count,
    stop,
)
from openclore.engine.notify import notify_server
from openclore.engine.outbox import (
    ORDER_EXTENDED,
    ORDER_RESET,
    ORDER_RESTARTED,
    emit,
    order_stopped,
)
from openclore.ledger.ledger import balance, wallet_id
from openclore.market.api_keys import check_spend
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.protocol import KEEP_PROTOCOL
from openclore.store.schema import orders

ORDER_STOP = "order.stop"
ORDER_START = "order.start"
ORDER_RESTART = "order.restart"
ORDER_RESET_ACTION = "order.reset"
ORDER_EXTEND = "order.extend"
MAX_EXTEND_HOURS = 24 * 365


def keeps_work(server: Row) -> bool:
    """Whether a server can keep a stopped order's container and hold volumes: a demo server,
    or one whose agent speaks protocol 3 (an older agent would remove the container)."""
    return bool(server["simulated"]) or (server["agent_protocol"] or 0) >= KEEP_PROTOCOL


def _locked_order(conn: Connection, user_id: int, order_id: int, now: int) -> tuple[Row, Row]:
    """One's own live order and its server, the server locked and its book brought to ``now``
    (an order that ended by now is ``order_not_active``)."""
    row = conn.execute(select(orders.c.user_id, orders.c.server_id).where(orders.c.id == order_id))
    found = row.first()
    if found is None or found.user_id != user_id:
        raise MarketError("order_dont_exist")
    server = lock_server(conn, int(found.server_id))
    assert server is not None
    resolve_server(conn, int(found.server_id), now)
    order = dict(
        conn.execute(select(orders).where(orders.c.id == order_id).with_for_update()).one()._mapping
    )
    if order["expired"]:
        raise MarketError("order_not_active")
    return order, server


def stop_order(
    conn: Connection, user_id: int, order_id: int, now: int, *, actor: Actor = SYSTEM
) -> None:
    """Stop a running order: billed up to now, its GPUs freed, its container stopped and kept
    with its disk; storage is billed from now on."""
    order, server = _locked_order(conn, user_id, order_id, now)
    if order["stopped"]:
        raise MarketError("order_already_stopped")
    if order["spot"] and not order["running"]:
        raise MarketError("order_not_running")  # a waiting bid holds nothing to stop
    if not keeps_work(server):
        raise MarketError("stop_not_supported")
    order = stop(conn, order, now, "user")
    order_stopped(conn, order, "user", now)
    notify_server(conn, order["server_id"])
    resolve_server(conn, order["server_id"], now)  # its GPUs go to the next orders
    record_by(conn, actor, ORDER_STOP, f"order:{order_id}", {}, about=user_id)


def start_order(
    conn: Connection,
    user_id: int,
    order_id: int,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> None:
    """Start a stopped order again on its server, in the same container. Refused when its GPUs
    (or, per GPU, as many free ones) cannot be had now: the caller's transaction is rolled back,
    so nothing changes."""
    order, server = _locked_order(conn, user_id, order_id, now)
    if not order["stopped"]:
        raise MarketError("order_not_stopped")
    if not server["online"]:
        raise MarketError("server-offline")
    wallet = wallet_id(conn, user_id, order["currency"])
    funds = 0 if wallet is None else balance(conn, wallet, lock=True)
    if funds < runway(order["price"], settings.runway_seconds):
        raise MarketError("not_enough_balance")
    check_spend(conn, actor, order["currency"], order["price"], now)
    if not order["spot"] and order["gpu_count"] is None:
        others = [o for o in live_orders(conn, server["id"]) if o["id"] != order_id]
        if any(not o["spot"] and not o["stopped"] for o in others):
            # another on-demand order rents (some of) it
            raise MarketError("gpus_not_free", gpu_count=slot_count(server["gpu_array"]))
    values: dict[str, Any] = {"stopped": False, "stop_reason": None, "stored_at": None}
    if order["spot"]:
        # back in the book: it runs now if its bid wins its slots, else the start is refused
        values.update(stopped=True, stop_reason=PREEMPTED, stored_at=now)
    conn.execute(update(orders).where(orders.c.id == order_id).values(**values))
    resolve_server(conn, server["id"], now)
    running = conn.execute(select(orders.c.running).where(orders.c.id == order_id)).scalar()
    if not running:
        n = slot_count(server["gpu_array"])
        raise MarketError("gpus_not_free", gpu_count=order["gpu_count"] or n)
    notify_server(conn, server["id"])
    record_by(conn, actor, ORDER_START, f"order:{order_id}", {}, about=user_id)


def restart_order(
    conn: Connection, user_id: int, order_id: int, now: int, *, actor: Actor = SYSTEM
) -> int:
    """Restart a running order's container (the same container: its files stay). Returns the
    restart's number."""
    order, server = _running(conn, user_id, order_id, now)
    number = int(order["restart_requested"]) + 1
    values: dict[str, Any] = {"restart_requested": number}
    if server["simulated"]:
        values["restart_done"] = number  # a demo server has nothing to restart
    conn.execute(update(orders).where(orders.c.id == order_id).values(**values))
    notify_server(conn, server["id"])
    emit(conn, user_id, ORDER_RESTARTED, now, order_id=order_id, server_id=server["id"])
    record_by(conn, actor, ORDER_RESTART, f"order:{order_id}", {"n": number}, about=user_id)
    return number


def reset_order(
    conn: Connection, user_id: int, order_id: int, now: int, *, actor: Actor = SYSTEM
) -> int:
    """Recreate a running order's container from its image (Clore's ``reset_container``): its
    files are gone, its volumes and ports stay. Returns the new generation."""
    order, server = _running(conn, user_id, order_id, now)
    generation = int(order["generation"]) + 1
    conn.execute(update(orders).where(orders.c.id == order_id).values(generation=generation))
    notify_server(conn, server["id"])
    emit(conn, user_id, ORDER_RESET, now, order_id=order_id, server_id=server["id"])
    record_by(
        conn,
        actor,
        ORDER_RESET_ACTION,
        f"order:{order_id}",
        {"generation": generation},
        about=user_id,
    )
    return generation


def _running(conn: Connection, user_id: int, order_id: int, now: int) -> tuple[Row, Row]:
    order, server = _locked_order(conn, user_id, order_id, now)
    if not order["running"]:
        raise MarketError("order_not_running")
    if not keeps_work(server):
        raise MarketError("stop_not_supported")
    return order, server


def extend_order(
    conn: Connection, user_id: int, order_id: int, hours: int, now: int, *, actor: Actor = SYSTEM
) -> int:
    """Give an order ``hours`` more before it ends at ``ct + mrl``: what is left of it after the
    extension stays within the host's maximum rental length (``mrl`` hours of the server).
    Returns the order's new ``mrl`` in seconds."""
    order, server = _locked_order(conn, user_id, order_id, now)
    if not 1 <= hours <= MAX_EXTEND_HOURS:
        raise MarketError("extend_out_of_range", max_hours=server["mrl_hours"])
    mrl = int(order["mrl"]) + hours * 3600
    left_now = max(0, order["ct"] + order["mrl"] - now)
    if order["ct"] + mrl - now > server["mrl_hours"] * 3600:
        most = max(0, (server["mrl_hours"] * 3600 - left_now) // 3600)
        raise MarketError("extend_out_of_range", max_hours=most)
    conn.execute(update(orders).where(orders.c.id == order_id).values(mrl=mrl))
    emit(conn, user_id, ORDER_EXTENDED, now, order_id=order_id, server_id=server["id"], mrl=mrl)
    record_by(conn, actor, ORDER_EXTEND, f"order:{order_id}", {"hours": hours}, about=user_id)
    return mrl
