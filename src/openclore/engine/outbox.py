"""Market events for users: an outbox written in the transaction of the change.

Use cases call :func:`emit` wherever something a user cares about happens (an order created,
running, outbid, failed or ended; a server online or offline; a deposit credited; a low
balance). The rows are written as the transaction's last statements (``store.db.before_commit``),
so an event exists if and only if its change committed.

Ids follow commit order. ``GET /v1/events?after=N`` and ``Last-Event-ID`` resume from an id, so
an event that got a smaller id but committed after a reader saw a bigger one would be skipped
for good. On SQLite every writer holds the database lock, so ids are given in commit order
anyway; on PostgreSQL the flush takes a transaction-scoped advisory lock first, held only for
the insert and the commit, which orders the event-writing transactions' commits.

The same flush fans each event out to its user's webhooks (one delivery row each, same
transaction: at-least-once from the start) and wakes this and every other process's deliverers
and event streams (``pg_notify`` at commit on PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select, text

from openclore.domain.money import Coins, to_coins
from openclore.engine.notify import notify_server
from openclore.store.db import before_commit, inserted_id
from openclore.store.schema import events, orders, servers, webhook_deliveries, webhooks

# event types (the wire names)
ORDER_CREATED = "order.created"
ORDER_RUNNING = "order.running"  # it holds the server and is billed (again, after an outbid)
ORDER_OUTBID = "order.outbid"  # stopped running, still in the book: reason outbid | preempted
ORDER_PAUSED = "order.paused"  # stopped running because its server went offline
ORDER_FAILED = "order.failed"  # the agent reports its container cannot run: error
ORDER_ENDED = "order.ended"  # reason: see END_REASONS
BALANCE_LOW = "balance.low"  # a wallet's runway dropped under the user's threshold
SERVER_ONLINE = "server.online"
SERVER_OFFLINE = "server.offline"
DEPOSIT_CREDITED = "deposit.credited"
WITHDRAWAL_REQUESTED = "withdrawal.requested"  # amount and fee moved to pending at once
WITHDRAWAL_APPROVED = "withdrawal.approved"  # paid out: txid
WITHDRAWAL_REJECTED = "withdrawal.rejected"  # amount and fee back in the wallet: reason
BALANCE_ADJUSTED = "balance.adjusted"  # an operator's refund or adjustment: reason
WEBHOOK_PING = "webhook.ping"  # a test delivery, to one webhook only
# keeping work (SPEC §8)
# holds no GPU, keeps its disk: reason user | timer (a preempted spot order is ORDER_OUTBID with
# stopped: true)
ORDER_STOPPED = "order.stopped"
ORDER_RESTARTED = "order.restarted"  # restart_order: the same container starts again
ORDER_RESET = "order.reset"  # reset_order: a new container from the image
ORDER_EXTENDED = "order.extended"  # extend_order: mrl (seconds) is the new max rental length
VOLUME_CREATED = "volume.created"
VOLUME_READY = "volume.ready"  # the host's agent holds it: quota says whether size_gb is enforced
VOLUME_GONE = "volume.gone"  # the host's agent reports it lost: billing stopped
VOLUME_DELETED = "volume.deleted"  # by its renter
VOLUME_ENDED = "volume.ended"  # reason: balance | server_removed
# renters' own things (SPEC §8)
SSH_KEY_ADDED = "ssh_key.added"  # key_id, name, fingerprint
SSH_KEY_DELETED = "ssh_key.deleted"  # key_id, fingerprint
TEMPLATE_CREATED = "template.created"  # template_id, name, public
TEMPLATE_DELETED = "template.deleted"  # template_id
# a standing order made an ordinary order (its own order.created comes with it): standing_order_id,
# order_id, server_id, currency, price, filled, count
STANDING_ORDER_FILLED = "standing_order.filled"
EVENT_TYPES = (
    ORDER_CREATED,
    ORDER_RUNNING,
    ORDER_OUTBID,
    ORDER_PAUSED,
    ORDER_FAILED,
    ORDER_ENDED,
    BALANCE_LOW,
    SERVER_ONLINE,
    SERVER_OFFLINE,
    DEPOSIT_CREDITED,
    WITHDRAWAL_REQUESTED,
    WITHDRAWAL_APPROVED,
    WITHDRAWAL_REJECTED,
    BALANCE_ADJUSTED,
    WEBHOOK_PING,
    ORDER_STOPPED,
    ORDER_RESTARTED,
    ORDER_RESET,
    ORDER_EXTENDED,
    VOLUME_CREATED,
    VOLUME_READY,
    VOLUME_GONE,
    VOLUME_DELETED,
    VOLUME_ENDED,
    SSH_KEY_ADDED,
    SSH_KEY_DELETED,
    TEMPLATE_CREATED,
    TEMPLATE_DELETED,
    STANDING_ORDER_FILLED,
)
# how orders end, as billing and the use cases write ``orders.end_reason``: the renter cancelled,
# its max rental length ran out, its wallet could not pay for the next second, the host removed
# the server. (Outbid and preempted orders do not end: they stay in the book, ORDER_OUTBID.)
END_REASONS = ("cancelled", "expired", "balance", "server_removed")

EVENTS_LOCK = 0x0E7E  # pg advisory lock ordering event-writing commits
# the ids under which commits that wrote events wake subscribers of the server-event hub: 0 for
# webhook deliverers (no server has id 0), USER_WAKE + user id for that user's event streams
# (server ids stay below 2**31)
WAKE_ID = 0
USER_WAKE = 1 << 40


def user_wake_id(user_id: int) -> int:
    return USER_WAKE + user_id


_KEY = "openclore_outbox"


def emit(conn: Connection, user_id: int, type_: str, at: int, **data: Any) -> None:
    """Record an event for ``user_id``, committed with the caller's transaction or not at all."""
    assert type_ in EVENT_TYPES, type_
    before_commit(conn, _KEY, _flush).append((user_id, type_, at, render(data), None))


def emit_ping(conn: Connection, user_id: int, webhook_id: int, at: int) -> None:
    """A ``webhook.ping`` event, delivered to that one webhook (and shown in the stream)."""
    data = render({"webhook_id": webhook_id})
    before_commit(conn, _KEY, _flush).append((user_id, WEBHOOK_PING, at, data, webhook_id))


def render(data: Mapping[str, Any]) -> str:
    """Compact JSON with amounts as exact numbers (``Coins``), never through a float."""
    return orjson.dumps(data, default=_default).decode()


def _default(value: Any) -> Any:
    if isinstance(value, Coins):
        return orjson.Fragment(str(value))
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError


def _flush(conn: Connection, items: list[tuple[int, str, int, str, int | None]]) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENTS_LOCK})
    users = sorted({user_id for user_id, *_ in items})
    hooks = conn.execute(
        select(webhooks.c.id, webhooks.c.user_id, webhooks.c.events).where(
            webhooks.c.user_id.in_(users), webhooks.c.deleted_at.is_(None)
        )
    ).all()
    wall = time.time()
    deliveries: list[dict[str, Any]] = []
    for user_id, type_, at, data, only in items:
        event_id = inserted_id(
            conn.execute(
                insert(events).values(user_id=user_id, type=type_, created_at=at, data=data)
            )
        )
        body = event_json(event_id, type_, at, data)
        for hook in hooks:
            wanted = type_ in hook.events if hook.events is not None else True
            if only is not None:
                wanted = hook.id == only
            if hook.user_id == user_id and wanted:
                deliveries.append(delivery_row(hook.id, event_id, body, wall))
    if deliveries:
        conn.execute(insert(webhook_deliveries), deliveries)
        notify_server(conn, WAKE_ID)
    for user_id in users:
        notify_server(conn, user_wake_id(user_id))


def delivery_row(webhook_id: int, event_id: int | None, body: str, wall: float) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "event_id": event_id,
        "body": body,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": wall,
        "created_at": wall,
    }


def event_json(event_id: int, type_: str, at: int, data: str) -> str:
    """One event as the stream, the polling answer and webhooks carry it."""
    return f'{{"id":{event_id},"type":"{type_}","time":{at},"data":{data}}}'


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    time: int
    json: str


def latest_event_id(conn: Connection, user_id: int) -> int:
    found = conn.execute(select(func.max(events.c.id)).where(events.c.user_id == user_id)).scalar()
    return 0 if found is None else int(found)


def events_after(
    conn: Connection, user_id: int, after: int, limit: int, types: Sequence[str] | None = None
) -> list[Event]:
    """The user's events with an id above ``after``, oldest first."""
    query = (
        select(events.c.id, events.c.type, events.c.created_at, events.c.data)
        .where(events.c.user_id == user_id, events.c.id > after)
        .order_by(events.c.id)
        .limit(limit)
    )
    if types:
        query = query.where(events.c.type.in_(list(types)))
    return [
        Event(int(r.id), r.type, int(r.created_at), event_json(r.id, r.type, r.created_at, r.data))
        for r in conn.execute(query)
    ]


# ----------------------------------------------------------------------------- orders


OrderStates = dict[int, tuple[bool, tuple[int, ...], bool]]  # id -> running, GPUs, stopped


def order_states(conn: Connection, server_id: int) -> OrderStates:
    """The live orders of a server, whether each runs and on which GPUs: compared after a
    change by :func:`record_order_changes`."""
    rows = conn.execute(
        select(orders.c.id, orders.c.running, orders.c.gpus, orders.c.stopped).where(
            orders.c.server_id == server_id, orders.c.expired.is_(False)
        )
    )
    return {int(r.id): (bool(r.running), tuple(r.gpus or ()), bool(r.stopped)) for r in rows}


def record_order_changes(conn: Connection, server_id: int, before: OrderStates, now: int) -> None:
    """Emit what happened to a server's orders since ``before``: started running (on which
    GPUs), outbid or preempted (which GPUs it lost), paused with the server offline, ended
    (with billing's reason)."""
    if not before:
        return
    rows = [
        dict(r._mapping)
        for r in conn.execute(
            select(orders).where(orders.c.id.in_(list(before))).order_by(orders.c.id)
        )
    ]
    running = [r for r in rows if r["running"] and not r["expired"]]
    online = None
    for row in rows:
        was_running, lost, was_stopped = before[row["id"]]
        if row["expired"]:
            order_ended(conn, row, str(row["end_reason"]), now)
        elif row["running"] and not was_running:
            emit(conn, row["user_id"], ORDER_RUNNING, now, **_order_data(row), **_gpus(row))
        elif row["stopped"] and not was_stopped and row["stop_reason"] != "preempted":
            order_stopped(conn, row, str(row["stop_reason"]), now)
        elif was_running and not row["running"]:
            if online is None:
                online = bool(
                    conn.execute(
                        select(servers.c.online).where(servers.c.id == server_id)
                    ).scalar_one()
                )
            takers = [r for r in running if not lost or not r["gpus"] or set(lost) & set(r["gpus"])]
            if not online or (not takers and row["gpu_count"] is None):
                emit(
                    conn,
                    row["user_id"],
                    ORDER_PAUSED,
                    now,
                    **_order_data(row),
                    reason="server_offline",
                )
                continue
            # a per-GPU bid may lose its GPUs to a bid that waited too long (no taker: outbid)
            reason = "preempted" if any(not r["spot"] for r in takers) else "outbid"
            extra: dict[str, Any] = {}
            if row["gpu_count"] is not None:
                extra["gpus_lost"] = list(lost)
            if row["stopped"]:  # it keeps its disk and starts again by itself (SPEC §8)
                extra["stopped"] = True
            emit(
                conn, row["user_id"], ORDER_OUTBID, now, **_order_data(row), reason=reason, **extra
            )


def _gpus(row: Mapping[str, Any]) -> dict[str, Any]:
    """The GPU indices a per-GPU order got (whole-server orders say nothing: they hold all)."""
    return {} if row["gpu_count"] is None else {"gpus": list(row["gpus"] or [])}


def order_stopped(conn: Connection, row: Mapping[str, Any], reason: str, now: int) -> None:
    emit(
        conn,
        row["user_id"],
        ORDER_STOPPED,
        now,
        **_order_data(row),
        reason=reason,
        disk_gb=row["disk_gb"],
        storage_per_day=to_coins(int(row["storage_rate"])),
    )


def order_ended(conn: Connection, row: Mapping[str, Any], reason: str, now: int) -> None:
    emit(
        conn,
        row["user_id"],
        ORDER_ENDED,
        now,
        **_order_data(row),
        reason=reason,
        ended_at=row["ended_at"],
        spend=to_coins(int(row["spend"])),
        **(
            {"storage_spend": to_coins(int(row["storage_spend"]))}
            if row.get("storage_spend")
            else {}
        ),
    )


def order_created(conn: Connection, order_id: int, now: int) -> None:
    row = dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)
    emit(conn, row["user_id"], ORDER_CREATED, now, **_order_data(row), price=to_coins(row["price"]))


def _order_data(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "order_id": row["id"],
        "server_id": row["server_id"],
        "spot": bool(row["spot"]),
        "currency": row["currency"],
    }
