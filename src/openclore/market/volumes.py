"""Renters' volumes (SPEC §8): storage that lives on one server and outlives every order.

``create_volume`` makes one on a server (its agent creates a Docker volume with a size quota
where the storage driver allows); it is billed ``size_gb`` × the host's storage price per day,
per second, from creation to deletion (:mod:`openclore.engine.storage`). Orders on that server
mount it (``create_order`` ``volumes: {"<id>": "/path"}``). ``delete_volume`` is refused while a
live order mounts it. When the agent reports a volume lost, it turns ``gone``: its renter gets an
event and billing stops.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import percent_to_bp, to_coins
from openclore.domain.spot import runway
from openclore.engine.billing import Row, lock_server
from openclore.engine.notify import notify_server
from openclore.engine.outbox import (
    VOLUME_CREATED,
    VOLUME_DELETED,
    VOLUME_ENDED,
    VOLUME_GONE,
    VOLUME_READY,
    emit,
)
from openclore.engine.storage import BILLED_VOLUME_STATES, bill_volume
from openclore.ledger.ledger import balance, ensure_wallet
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.market.keeping import keeps_work
from openclore.protocol import DesiredVolume, VolumeStatus
from openclore.store.db import inserted_id
from openclore.store.schema import orders, server_prices, volumes

VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_LIVE_VOLUMES = 50
MAX_MOUNTS = 8
VOLUME_CREATE = "volume.create"
VOLUME_DELETE = "volume.delete"


def docker_name(volume_id: int) -> str:
    """The Docker volume's name on the host."""
    return f"openclore-vol-{volume_id}"


def storage_price(conn: Connection, server_id: int, currency: str) -> int:
    """The host's storage price per GB per day in ``currency`` (0: storage is free there)."""
    price = conn.execute(
        select(server_prices.c.storage).where(
            server_prices.c.server_id == server_id, server_prices.c.currency == currency
        )
    ).scalar()
    return int(price or 0)


def create_volume(
    conn: Connection,
    user_id: int,
    server_id: int,
    size_gb: int,
    name: str,
    currency: str | None,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> int:
    """A new volume of ``size_gb`` on ``server_id``; returns its id."""
    if not VOLUME_NAME.match(name):
        raise InvalidInput("name: 1 to 64 letters, digits, '_', '.' or '-'")
    currency = currency or settings.default_currency
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    server = lock_server(conn, server_id)
    if server is None or server["removed_at"] is not None or server["visibility"] != "public":
        raise MarketError("server-dont-exist")
    if server["owner_id"] == user_id:
        raise MarketError("cant_rent_from_yourself")
    if not keeps_work(server):
        raise MarketError("stop_not_supported")
    if server["disk_gb"] is None:
        raise MarketError("disk_not_offered")
    if not 1 <= size_gb <= server["disk_gb"]:
        raise MarketError("disk_gb_out_of_range", max_disk_gb=server["disk_gb"])
    live = conn.execute(
        select(func.count())
        .select_from(volumes)
        .where(volumes.c.user_id == user_id, volumes.c.state.in_(BILLED_VOLUME_STATES))
    ).scalar_one()
    if live >= MAX_LIVE_VOLUMES:
        raise MarketError("volume_limit_reached", limit=MAX_LIVE_VOLUMES)
    rate = size_gb * storage_price(conn, server_id, currency)
    wallet = ensure_wallet(conn, user_id, currency, settings.address_secret)
    ensure_wallet(conn, server["owner_id"], currency, settings.address_secret)
    if balance(conn, wallet, lock=True) < runway(rate, settings.runway_seconds):
        raise MarketError("not_enough_balance")
    simulated = bool(server["simulated"])
    volume_id = inserted_id(
        conn.execute(
            insert(volumes).values(
                user_id=user_id,
                server_id=server_id,
                name=name,
                size_gb=size_gb,
                currency=currency,
                rate=rate,
                fee_bp=percent_to_bp(settings.fee_on_demand),
                created_at=now,
                billed_at=now,
                seconds=0,
                spend=0,
                fee_paid=0,
                state="ready" if simulated else "creating",
                quota=True if simulated else None,
            )
        )
    )
    notify_server(conn, server_id)
    emit(
        conn,
        user_id,
        VOLUME_CREATED,
        now,
        volume_id=volume_id,
        server_id=server_id,
        name=name,
        size_gb=size_gb,
        currency=currency,
        price_per_day=to_coins(rate),
    )
    record_by(
        conn, actor, VOLUME_CREATE, f"volume:{volume_id}", {"size_gb": size_gb}, about=user_id
    )
    return volume_id


def delete_volume(
    conn: Connection, user_id: int, volume_id: int, now: int, *, actor: Actor = SYSTEM
) -> None:
    """Delete one's own volume (billed up to now); refused while a live order mounts it."""
    row = conn.execute(select(volumes).where(volumes.c.id == volume_id)).first()
    if row is None or row.user_id != user_id or row.state == "deleted":
        raise MarketError("volume_dont_exist")
    lock_server(conn, int(row.server_id))
    volume = dict(
        conn.execute(select(volumes).where(volumes.c.id == volume_id).with_for_update())
        .one()
        ._mapping
    )
    users = mounted_by(conn, volume_id)
    if users:
        raise MarketError("volume_in_use", orders=users)
    if volume["state"] in BILLED_VOLUME_STATES:
        bill_volume(conn, volume, now)
    conn.execute(
        update(volumes)
        .where(volumes.c.id == volume_id)
        .values(state="deleted", ended_at=now, billed_at=None)
    )
    notify_server(conn, int(row.server_id))  # its agent removes it
    emit(conn, user_id, VOLUME_DELETED, now, volume_id=volume_id, server_id=row.server_id)
    record_by(conn, actor, VOLUME_DELETE, f"volume:{volume_id}", {}, about=user_id)


def mounted_by(conn: Connection, volume_id: int) -> list[int]:
    """The live orders (running, stopped or waiting) that mount a volume."""
    rows = conn.execute(
        select(orders.c.id, orders.c.mounts).where(
            orders.c.expired.is_(False), orders.c.mounts.is_not(None)
        )
    )
    return sorted(int(r.id) for r in rows if str(volume_id) in (r.mounts or {}))


def checked_mounts(
    conn: Connection, user_id: int, server_id: int, asked: dict[str, str] | None
) -> dict[str, str] | None:
    """create_order's ``volumes``: each one the renter's own, live, on the order's server."""
    if not asked:
        return None
    if len(asked) > MAX_MOUNTS:
        raise InvalidInput(f"volumes: at most {MAX_MOUNTS}")
    ids = {int(k) for k in asked}
    rows = {
        int(r.id): r for r in conn.execute(select(volumes).where(volumes.c.id.in_(sorted(ids))))
    }
    for vid in sorted(ids):
        row = rows.get(vid)
        if row is None or row.user_id != user_id or row.state not in BILLED_VOLUME_STATES:
            raise MarketError("volume_dont_exist", volume_id=vid)
        if row.server_id != server_id:
            raise MarketError("volume_not_on_server", volume_id=vid)
    return {str(int(k)): v for k, v in asked.items()}


def volume_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "server_id": row["server_id"],
        "size_gb": row["size_gb"],
        "currency": row["currency"],
        "price_per_day": to_coins(row["rate"]),
        "state": row["state"],
        "created_at": row["created_at"],
        "ended_at": row["ended_at"],
        "spend": to_coins(row["spend"]),
        "quota": row["quota"],
        **({"error": row["error"]} if row["error"] else {}),
    }


def my_volumes(conn: Connection, user_id: int, include_ended: bool = False) -> dict[str, Any]:
    query = select(volumes).where(volumes.c.user_id == user_id).order_by(volumes.c.id.desc())
    if not include_ended:
        query = query.where(volumes.c.state.in_((*BILLED_VOLUME_STATES, "gone")))
    rows = [dict(r._mapping) for r in conn.execute(query)]
    mounts: dict[int, list[int]] = {}
    if rows:
        for r in conn.execute(
            select(orders.c.id, orders.c.mounts).where(
                orders.c.user_id == user_id,
                orders.c.expired.is_(False),
                orders.c.mounts.is_not(None),
            )
        ):
            for vid in r.mounts or {}:
                mounts.setdefault(int(vid), []).append(int(r.id))
    return {
        "volumes": [{**volume_view(r), "mounted_by": sorted(mounts.get(r["id"], []))} for r in rows]
    }


def desired_volumes(conn: Connection, server_id: int) -> list[DesiredVolume]:
    """The volumes a server's agent must keep."""
    return [
        DesiredVolume(name=docker_name(int(r.id)), size_gb=int(r.size_gb))
        for r in conn.execute(
            select(volumes.c.id, volumes.c.size_gb)
            .where(volumes.c.server_id == server_id, volumes.c.state.in_(BILLED_VOLUME_STATES))
            .order_by(volumes.c.id)
        )
    ]


def apply_volume_reports(
    conn: Connection, server_id: int, reports: list[VolumeStatus], now: int
) -> None:
    """What the agent holds (the full list): a creating volume it reports becomes ready, a
    ready one it no longer reports is gone (billed up to now, then no more)."""
    held = {r.name: r for r in reports}
    rows = conn.execute(
        select(volumes)
        .where(volumes.c.server_id == server_id, volumes.c.state.in_(BILLED_VOLUME_STATES))
        .with_for_update()
    ).all()
    for row in rows:
        volume = dict(row._mapping)
        report = held.get(docker_name(volume["id"]))
        if report is not None and report.ok:
            values = {"quota": report.quota, "error": report.error}
            if volume["state"] == "creating":
                values["state"] = "ready"
                emit(
                    conn,
                    volume["user_id"],
                    VOLUME_READY,
                    now,
                    volume_id=volume["id"],
                    server_id=server_id,
                    quota=report.quota,
                    **({"note": report.error} if report.error else {}),
                )
            if any(volume[k] != v for k, v in values.items()):
                conn.execute(update(volumes).where(volumes.c.id == volume["id"]).values(**values))
        elif volume["state"] == "ready" or (report is not None and not report.ok):
            if bill_volume(conn, volume, now):
                continue  # its renter could not pay: it ended
            error = None if report is None else report.error
            conn.execute(
                update(volumes)
                .where(volumes.c.id == volume["id"])
                .values(state="gone", ended_at=now, billed_at=None, error=error)
            )
            emit(
                conn,
                volume["user_id"],
                VOLUME_GONE,
                now,
                volume_id=volume["id"],
                server_id=server_id,
                **({"error": error} if error else {}),
            )


def end_server_volumes(conn: Connection, server_id: int, now: int) -> None:
    """The server was removed: its volumes end (billed up to now)."""
    rows = conn.execute(
        select(volumes)
        .where(volumes.c.server_id == server_id, volumes.c.state.in_(BILLED_VOLUME_STATES))
        .with_for_update()
    ).all()
    for row in rows:
        volume = dict(row._mapping)
        if bill_volume(conn, volume, now):
            continue
        conn.execute(
            update(volumes)
            .where(volumes.c.id == volume["id"])
            .values(state="ended", ended_at=now, billed_at=None)
        )
        emit(
            conn,
            volume["user_id"],
            VOLUME_ENDED,
            now,
            volume_id=volume["id"],
            server_id=server_id,
            reason="server_removed",
        )
