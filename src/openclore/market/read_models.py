"""Read models the web console shows beside the Clore endpoints' own answers: the spot rules an
order is under right now, money over time (spend, earnings, platform revenue) and the operator's
lists. Each function is one read (or one write for the operator's server actions) in the caller's
transaction; the rules themselves stay in ``domain`` and the other use cases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.specs import not_listed_reason
from openclore.domain.spot import lowest_bid, runway, seconds_until_lowering
from openclore.ledger.ledger import account_key
from openclore.market.orders import my_orders
from openclore.market.servers import prices_of, remove_server, storage_prices
from openclore.store.schema import (
    accounts,
    events,
    order_charges,
    orders,
    servers,
    transfers,
    users,
)

DAY = 86400


def order_board(
    conn: Connection, user_id: int, settings: Settings, now: int, completed: bool = False
) -> list[dict[str, Any]]:
    """``my_orders`` with each order's SSH line (:func:`ssh_line`) and, for each live spot bid,
    when it may next be lowered and how far."""
    listed: list[dict[str, Any]] = my_orders(conn, user_id, completed, settings)["orders"]
    for o in listed:
        o["ssh"] = ssh_line(o)
    spot_ids = [o["id"] for o in listed if o.get("spot") and not o.get("expired")]
    rows = (
        {
            int(r.id): r
            for r in conn.execute(
                select(orders.c.id, orders.c.server_id, orders.c.last_lowered_at).where(
                    orders.c.id.in_(spot_ids)
                )
            )
        }
        if spot_ids
        else {}
    )
    prices = prices_of(conn, {int(r.server_id) for r in rows.values()})
    for o in listed:
        row = rows.get(o["id"])
        if row is None:
            continue
        min_spot = prices[int(row.server_id)].get(o["currency"], (0, 0))[1]
        current = o["price"].units
        o["lower_in"] = seconds_until_lowering(
            row.last_lowered_at, now, settings.spot_lowering_interval
        )
        o["lowest_bid"] = lowest_bid(current, min_spot)
        o["min_spot"] = min_spot
    return listed


def ssh_line(order: dict[str, Any]) -> str | None:
    """How a renter connects to an order as the console shows it, ``ssh root@HOST -p PORT``
    (the first public host, the public side of the last published port 22), else None (port 22
    not published yet, or no public host)."""
    port = None
    for mapping in order.get("tcp_ports") or []:
        if mapping.startswith("22:"):
            port = mapping.split(":")[1]
    hosts = order.get("pub_cluster")
    if port and hosts:
        return f"ssh root@{hosts[0]} -p {port}"
    return None


def storage_offer(conn: Connection, server_id: int, currencies: list[str]) -> dict[str, Any]:
    """What a server offers to keep (SPEC §8): the disk each rental gets at most (``disk_gb``,
    None: none offered) and the storage price per GB per day in each currency."""
    disk = conn.execute(select(servers.c.disk_gb).where(servers.c.id == server_id)).scalar()
    return {"disk_gb": disk, "storage_pricing": storage_prices(conn, server_id, currencies)}


def rent_quote(price_per_day: int, balance: int, settings: Settings) -> dict[str, int]:
    """What renting at ``price_per_day`` costs and how long ``balance`` lasts at it (seconds)."""
    return {
        "per_day": price_per_day,
        "per_hour": price_per_day // 24,
        "needs": runway(price_per_day, settings.runway_seconds),
        "runway": balance * DAY // price_per_day if price_per_day > 0 else 0,
    }


def _daily(conn: Connection, where: Any, now: int, days: int) -> list[tuple[int, int]]:
    """``[(day_start, total units)]`` for the last ``days`` days (empty days included)."""
    start = (now // DAY - days + 1) * DAY
    # summed per day here: one query shape for both databases
    totals: dict[int, int] = {}
    for r in conn.execute(
        select(transfers.c.created_at, transfers.c.amount).where(
            where, transfers.c.created_at >= start
        )
    ):
        index = (int(r.created_at) - start) // DAY
        totals[index] = totals.get(index, 0) + int(r.amount)
    return [(start + i * DAY, totals.get(i, 0)) for i in range(days)]


def _account(conn: Connection, key: str) -> int | None:
    found = conn.execute(select(accounts.c.id).where(accounts.c.key == key)).scalar()
    return None if found is None else int(found)


def spend_series(
    conn: Connection, user_id: int, currency: str, now: int, days: int = 30
) -> list[tuple[int, int]]:
    """What the user's wallet paid for orders (spend, fees, creation fees) per day."""
    wallet = _account(conn, account_key("wallet", currency, user_id))
    if wallet is None:
        return [(t, 0) for t, _ in _daily(conn, transfers.c.id < 0, now, days)]
    kinds = ("spend", "fee", "creation_fee")
    return _daily(
        conn,
        and_(transfers.c.debit_account_id == wallet, transfers.c.kind.in_(kinds)),
        now,
        days,
    )


def earnings_series(
    conn: Connection, owner_id: int, currency: str, now: int, days: int = 30
) -> dict[int, list[tuple[int, int]]]:
    """A host's earnings per server per day: ``{server_id: [(day_start, units)]}``."""
    wallet = _account(conn, account_key("wallet", currency, owner_id))
    start = (now // DAY - days + 1) * DAY
    mine = [
        int(i)
        for i in conn.execute(
            select(servers.c.id)
            .where(servers.c.owner_id == owner_id, servers.c.removed_at.is_(None))
            .order_by(servers.c.id)
        ).scalars()
    ]
    out: dict[int, list[int]] = {sid: [0] * days for sid in mine}
    if wallet is not None and mine:
        earned = (
            transfers.c.credit_account_id == wallet,
            transfers.c.kind == "spend",
            transfers.c.created_at >= start,
            orders.c.server_id.in_(mine),
        )
        # rental booked for one order, and the orders' shares of the tick's transfers
        for query in (
            select(orders.c.server_id, transfers.c.created_at, transfers.c.amount)
            .join(orders, orders.c.id == transfers.c.order_id)
            .where(*earned),
            select(orders.c.server_id, transfers.c.created_at, order_charges.c.amount)
            .join(order_charges, order_charges.c.transfer_id == transfers.c.id)
            .join(orders, orders.c.id == order_charges.c.order_id)
            .where(*earned),
        ):
            for r in conn.execute(query):
                out[int(r.server_id)][(int(r.created_at) - start) // DAY] += int(r.amount)
    return {sid: [(start + i * DAY, v) for i, v in enumerate(vals)] for sid, vals in out.items()}


def platform_revenue(
    conn: Connection, currency: str, now: int, days: int = 30
) -> list[tuple[int, int]]:
    """Fees and creation fees the platform took per day."""
    platform = _account(conn, account_key("platform", currency))
    if platform is None:
        return [(t, 0) for t, _ in _daily(conn, transfers.c.id < 0, now, days)]
    return _daily(conn, transfers.c.credit_account_id == platform, now, days)


def all_servers(conn: Connection) -> list[dict[str, Any]]:
    """Every server not removed, with its owner (the operator's list) and, as ``my_servers``
    says it to its host, why the marketplace leaves it out (``not_listed``)."""
    return [
        {
            "id": int(r.id),
            "name": str(r.name),
            "owner": str(r.owner),
            "online": bool(r.online),
            "visibility": str(r.visibility),
            "not_listed": not_listed_reason(r.gpu_array, r.specs) if r.connected else None,
        }
        for r in conn.execute(
            select(
                servers.c.id,
                servers.c.name,
                servers.c.online,
                servers.c.visibility,
                servers.c.connected,
                servers.c.gpu_array,
                servers.c.specs,
                users.c.name.label("owner"),
            )
            .join(users, users.c.id == servers.c.owner_id)
            .where(servers.c.removed_at.is_(None))
            .order_by(servers.c.id)
        )
    ]


def _server_row(conn: Connection, server_id: int) -> Any:
    row = conn.execute(
        select(servers.c.id, servers.c.owner_id, servers.c.name).where(
            servers.c.id == server_id, servers.c.removed_at.is_(None)
        )
    ).first()
    if row is None:
        raise MarketError("server_dont_exist")
    return row


def hide_server(conn: Connection, server_id: int) -> None:
    """The operator takes a server off the listing (its host may list it again)."""
    _server_row(conn, server_id)
    conn.execute(update(servers).where(servers.c.id == server_id).values(visibility="hidden"))


def remove_server_by_id(conn: Connection, server_id: int, now: int) -> int:
    """The operator removes a server for good (as its host could): its orders end now."""
    row = _server_row(conn, server_id)
    return remove_server(conn, int(row.owner_id), str(row.name), now)


def deposits(
    conn: Connection, user_id: int | None = None, currency: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Deposits credited to wallets, newest first: one user's (``user_id``), or everyone's
    with the user's name (the operator's list)."""
    query = (
        select(
            transfers.c.id,
            transfers.c.created_at,
            transfers.c.amount,
            transfers.c.memo,
            transfers.c.actor,
            accounts.c.currency,
            accounts.c.user_id,
            users.c.name,
        )
        .join(accounts, accounts.c.id == transfers.c.credit_account_id)
        .join(users, users.c.id == accounts.c.user_id)
        .where(transfers.c.kind == "deposit", accounts.c.kind == "wallet")
    )
    if user_id is not None:
        query = query.where(accounts.c.user_id == user_id)
    if currency is not None:
        query = query.where(accounts.c.currency == currency)
    rows = conn.execute(query.order_by(transfers.c.id.desc()).limit(limit))
    return [
        {
            "id": int(r.id),
            "time": int(r.created_at),
            "currency": str(r.currency),
            "amount": int(r.amount),
            "user_id": int(r.user_id),
            "user": str(r.name),
            "memo": r.memo,
            "by": r.actor,
        }
        for r in rows
    ]


def recent_events(conn: Connection, user_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The user's newest events (what ``/v1/events`` streams and webhooks receive), newest
    first, each with its JSON data as rendered once."""
    rows = conn.execute(
        select(events.c.id, events.c.type, events.c.created_at, events.c.data)
        .where(events.c.user_id == user_id)
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    return [
        {"id": int(r.id), "type": str(r.type), "at": int(r.created_at), "data": str(r.data)}
        for r in rows
    ]
