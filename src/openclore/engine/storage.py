"""Storage billing (SPEC §8): a stopped order's disk and renters' volumes, per second, through
the same ledger, fee and rounding rules as rent.

A stopped order pays its ``storage_rate`` (``disk_gb`` × the host's storage price per day, fixed
when the order was created) for every second from ``stored_at``; a volume pays its ``rate``
(``size_gb`` × the storage price) from its creation to its deletion. Spend is
``floor(rate × seconds / 86400)`` of the cumulative seconds, the fee is the order's (or volume's)
fee rate of that total, and each transfer's key carries the cumulative total it brings the order
or volume to, so a replay is refused. When the renter cannot pay, storage is billed up to the
last second the balance covers and then ends: the stopped order ends for ``balance`` (the agent
removes its container), the volume ends the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select, update

from openclore.domain.money import affordable_seconds, fee_for, segment_spend
from openclore.engine.notify import notify_server
from openclore.engine.outbox import VOLUME_ENDED, emit
from openclore.ledger.ledger import balance, system_account_id, transfer, wallet_id
from openclore.store.schema import orders, servers, volumes

Row = Mapping[str, Any]
# volumes that exist on their host and are billed
BILLED_VOLUME_STATES = ("creating", "ready")


def storage_bill(
    conn: Connection,
    *,
    ref: str,
    user_id: int,
    server_id: int,
    currency: str,
    rate: int,
    seconds: int,
    more: int,
    spent: int,
    fee_paid: int,
    fee_bp: int,
    now: int,
    order_id: int | None = None,
) -> tuple[int, int, int, bool]:
    """Bill ``more`` seconds of storage at ``rate`` per day on top of ``seconds`` already billed
    (``spent`` and ``fee_paid`` so far). Returns ``(seconds, spend, fee, short)``: the new
    totals, and whether the renter's balance ran out (then only the seconds it covers)."""
    renter = wallet_id(conn, user_id, currency)
    available = 0 if renter is None else balance(conn, renter, lock=True)
    total = seconds + more
    spend = segment_spend(rate, 0, 0, total)
    short = spend - spent > available
    if short:
        total = seconds + affordable_seconds(rate, seconds, spent, available)
        spend = segment_spend(rate, 0, 0, total)
    fee = fee_for(spend, fee_bp)
    if spend > spent and renter is not None:
        owner = conn.execute(
            select(servers.c.owner_id).where(servers.c.id == server_id)
        ).scalar_one()
        host = wallet_id(conn, int(owner), currency)
        platform = system_account_id(conn, "platform", currency)
        if host is None:
            raise LookupError(f"the host of server {server_id} has no {currency} wallet")
        transfer(
            conn,
            key=f"{ref}:storage:{spend - fee}",
            debit=renter,
            credit=host,
            amount=(spend - fee) - (spent - fee_paid),
            kind="storage",
            now=now,
            order_id=order_id,
        )
        transfer(
            conn,
            key=f"{ref}:storage_fee:{fee}",
            debit=renter,
            credit=platform,
            amount=fee - fee_paid,
            kind="storage_fee",
            now=now,
            order_id=order_id,
        )
    return total, spend, fee, short


def settle_stored(conn: Connection, order: Row, until: int, now: int) -> dict[str, Any]:
    """The values that bill a stopped order's disk up to ``until``; with ``ended_at`` set when
    its renter could not pay for all of it (the caller ends the order then)."""
    start = order["stored_at"]
    if not order["stopped"] or start is None or until <= start:
        return {}
    if order["storage_rate"] <= 0:
        return {"stored_seconds": order["stored_seconds"] + until - start, "stored_at": until}
    seconds, spend, fee, short = storage_bill(
        conn,
        ref=f"order:{order['id']}",
        user_id=order["user_id"],
        server_id=order["server_id"],
        currency=order["currency"],
        rate=order["storage_rate"],
        seconds=order["stored_seconds"],
        more=until - start,
        spent=order["storage_spend"],
        fee_paid=order["storage_fee"],
        fee_bp=order["fee_bp"],
        now=now,
        order_id=order["id"],
    )
    values: dict[str, Any] = {
        "stored_seconds": seconds,
        "storage_spend": spend,
        "storage_fee": fee,
        "stored_at": start + seconds - order["stored_seconds"],
    }
    if short:
        values["ended_at"] = values["stored_at"]
    return values


def settle_volumes(conn: Connection, server_id: int, now: int) -> bool:
    """Bill the live volumes of a server up to ``now`` (the caller holds the server's lock);
    a volume whose renter cannot pay ends (event ``volume.ended``, reason ``balance``). True
    when one ended (the agent must be told)."""
    rows = conn.execute(
        select(volumes)
        .where(
            volumes.c.server_id == server_id,
            volumes.c.state.in_(BILLED_VOLUME_STATES),
            volumes.c.billed_at < now,
        )
        .order_by(volumes.c.id)
        .with_for_update()
    ).all()
    ended = False
    for row in rows:
        ended = bill_volume(conn, dict(row._mapping), now) or ended
    if ended:
        notify_server(conn, server_id)
    return ended


def bill_volume(conn: Connection, volume: Row, until: int) -> bool:
    """Bill one volume up to ``until``; True when its renter could not pay and it ended."""
    if volume["billed_at"] is None or until <= volume["billed_at"]:
        return False
    seconds, spend, fee, short = storage_bill(
        conn,
        ref=f"volume:{volume['id']}",
        user_id=volume["user_id"],
        server_id=volume["server_id"],
        currency=volume["currency"],
        rate=volume["rate"],
        seconds=volume["seconds"],
        more=until - volume["billed_at"],
        spent=volume["spend"],
        fee_paid=volume["fee_paid"],
        fee_bp=volume["fee_bp"],
        now=until,
    )
    billed_at = volume["billed_at"] + seconds - volume["seconds"]
    values: dict[str, Any] = {
        "seconds": seconds,
        "spend": spend,
        "fee_paid": fee,
        "billed_at": billed_at,
    }
    if short:
        values.update(state="ended", ended_at=billed_at, billed_at=None)
    conn.execute(update(volumes).where(volumes.c.id == volume["id"]).values(**values))
    if short:
        emit(
            conn,
            volume["user_id"],
            VOLUME_ENDED,
            until,
            volume_id=volume["id"],
            server_id=volume["server_id"],
            reason="balance",
            ended_at=billed_at,
        )
    return short


def servers_storing(conn: Connection, now: int) -> list[int]:
    """Servers with storage to bill (a stopped order paying for its disk, a billed volume) or a
    stop timer due: the tick takes them the exact way."""
    stored = select(orders.c.server_id).where(
        orders.c.expired.is_(False),
        ((orders.c.stopped.is_(True)) & (orders.c.storage_rate > 0) & (orders.c.stored_at < now))
        | ((orders.c.stop_at.is_not(None)) & (orders.c.stop_at <= now)),
    )
    held = select(volumes.c.server_id).where(
        volumes.c.state.in_(BILLED_VOLUME_STATES), volumes.c.rate > 0, volumes.c.billed_at < now
    )
    return sorted({int(s) for s in conn.execute(stored.union(held)).scalars()})
