"""Standing orders (SPEC §8): rent matching servers as soon as they appear, in placement order.

A renter places a standing order once (``create_standing_order``): marketplace filters, a price
per day it will pay at most, how many servers (or ``gpu_count`` GPUs each) and until when. The
engine matches the open ones in the order they were placed (created_at, id) inside the very
transaction that makes a server or GPU slots available, just before it commits
(:func:`match_standing_orders`, run by ``Database.write()`` whenever a transaction wrote what the
listing shows): when anyone else can see the server, it is already taken. Each fill is an
ordinary order made by :func:`openclore.market.orders.create_order` (same funding rules, same
events) plus a ``standing_order.filled`` event.

A fill that the server refuses (taken, too small, another currency…) moves on to the next
candidate; one the renter cannot make (``not_enough_balance``, ``order_limit_reached``, a
template gone) leaves the standing order open with ``last_error`` telling why, and it fills once
that is fixed. A standing order past its ``expires_at`` becomes ``expired``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import UNITS_PER_COIN, to_coins, to_units
from openclore.domain.slots import slot_minimum, slot_price
from openclore.domain.spot import runway
from openclore.engine.outbox import STANDING_ORDER_FILLED, emit
from openclore.engine.spending import limit_of
from openclore.ledger.ledger import balance, wallet_id
from openclore.market.accounts import lock_user
from openclore.market.api_keys import check_spend
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.market.inputs import (
    STANDING_ORDER_FIELDS,
    CreateStandingOrderRequest,
    fill_request,
)
from openclore.market.orders import create_order
from openclore.market.search import (
    PARAMS,
    MarketQuery,
    SearchIndex,
    build_index,
    free_gpus,
    gpu_count,
    parse_query,
    search,
)
from openclore.market.servers import marketplace_servers, prices_of
from openclore.market.templates import usable_template
from openclore.store.db import inserted_id, savepoint
from openclore.store.schema import api_tokens, orders, standing_order_fills, standing_orders

log = logging.getLogger("openclore.standing")

MAX_OPEN = 20  # open standing orders per user
STANDING_CREATE = "standing_order.create"
STANDING_CANCEL = "standing_order.cancel"
# the marketplace filters a standing order may use (the rest page and sort a listing)
QUERY_PARAMS = tuple(p for p in PARAMS if p not in ("available", "sort", "limit", "offset"))
# a fill refused for the server's sake: the next candidate may take it
SERVER_REFUSALS = frozenset(
    {
        "server-dont-exist",
        "server-offline",
        "server-already-rented",
        "cant_rent_from_yourself",
        "too_low_price",
        "you_already_have_spot_order",
        "currency-not-allowed",
        "price_changed",
        "partial_gpu_rental_off",
        "gpu_count_out_of_range",
        "disk_not_offered",
        "disk_gb_out_of_range",
        "stop_not_supported",
    }
)
# order fields never shown back (secrets)
_HIDDEN = ("ssh_password", "dockerhub_auth")


def _query_params(query: dict[str, Any]) -> dict[str, str]:
    """The marketplace filters as the query string would carry them (code 2 for others)."""
    unknown = sorted(set(query) - set(QUERY_PARAMS))
    if unknown:
        raise InvalidInput(
            f"query: unknown filter {unknown[0][:32]!r} (use {', '.join(QUERY_PARAMS)})"
        )
    out = {}
    for name, value in query.items():
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def _parsed(params: dict[str, str], settings: Settings, currency: str) -> MarketQuery:
    q = parse_query(params, settings.currencies, currency)
    return replace(q, available=False, sort="id", limit=None, offset=0)


def _funded(
    conn: Connection, user_id: int, currency: str, spot: bool, price: int, settings: Settings
) -> bool:
    """Whether the wallet holds what create_order asks of an order at ``price``: the creation
    fee and the runway."""
    fees = settings.creation_fee_spot if spot else settings.creation_fee_on_demand
    wallet = wallet_id(conn, user_id, currency)
    funds = 0 if wallet is None else balance(conn, wallet)
    return funds >= to_units(fees.get(currency, 0)) + runway(price, settings.runway_seconds)


def create_standing_order(
    conn: Connection,
    user_id: int,
    req: CreateStandingOrderRequest,
    body: dict[str, Any],
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> dict[str, Any]:
    """Place a standing order (``body``: the request, whose create_order fields its fills use);
    it fills at once where a matching server is free. Returns its view."""
    params = _query_params(req.query)
    _parsed(params, settings, req.currency)  # code 2 for a bad filter, as marketplace answers
    given = {k: body[k] for k in STANDING_ORDER_FIELDS if body.get(k) is not None}
    max_price = to_units(req.max_price_per_day)
    # a key with a daily limit cannot place what it could not pay for a day (SPEC §8)
    check_spend(conn, actor, req.currency, max_price, now)
    # the fields as create_order checks them (code 2), with a stand-in server; kept as checked
    checked = fill_request(given, 0, req.currency, req.is_spot, req.gpu_count, _coins(max_price))
    fields = checked.model_dump(include=set(STANDING_ORDER_FIELDS), exclude_none=True)
    if req.expires_at is not None and req.expires_at <= now:
        raise InvalidInput("expires_at: must be in the future (unix seconds)")
    lock_user(conn, user_id)
    if req.currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    if fields.get("template_id") is not None:
        usable_template(conn, user_id, fields["template_id"])
    open_count = conn.execute(
        select(func.count())
        .select_from(standing_orders)
        .where(
            standing_orders.c.user_id == user_id,
            standing_orders.c.state == "open",
            or_(standing_orders.c.expires_at.is_(None), standing_orders.c.expires_at > now),
        )
    ).scalar_one()
    if open_count >= MAX_OPEN:
        raise MarketError("standing_order_limit_reached", limit=MAX_OPEN)
    live = conn.execute(
        select(func.count())
        .select_from(orders)
        .where(orders.c.user_id == user_id, orders.c.expired.is_(False))
    ).scalar_one()
    if live >= settings.max_active_orders:  # no fill could be made (create_order's limit)
        raise MarketError("order_limit_reached", limit=settings.max_active_orders)
    if not _funded(conn, user_id, req.currency, req.is_spot, max_price, settings):
        raise MarketError("not_enough_balance")
    standing_id = inserted_id(
        conn.execute(
            insert(standing_orders).values(
                user_id=user_id,
                api_key_id=actor.key_id,
                query=params,
                max_price=max_price,
                currency=req.currency,
                gpu_count=req.gpu_count,
                spot=req.is_spot,
                template_id=fields.get("template_id"),
                fields=fields,
                count=req.count,
                filled=0,
                expires_at=req.expires_at,
                state="open",
                created_at=now,
            )
        )
    )
    detail = {"currency": req.currency, "max_price_units": max_price, "count": req.count}
    record_by(conn, actor, STANDING_CREATE, f"standing_order:{standing_id}", detail, about=user_id)
    match_standing_orders(conn, settings, now)  # a matching server free now is taken now
    return standing_view(conn, _row(conn, standing_id))


def _coins(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_COIN


def _row(conn: Connection, standing_id: int, *, lock: bool = False) -> dict[str, Any]:
    query = select(standing_orders).where(standing_orders.c.id == standing_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise MarketError("standing_order_dont_exist")
    return dict(row._mapping)


def standing_view(conn: Connection, row: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """A standing order as the API shows it; an open one past ``expires_at`` (at ``now``) shows
    as ``expired`` before the engine's next match records it."""
    filled = [
        r.order_id
        for r in conn.execute(
            select(standing_order_fills.c.order_id)
            .where(standing_order_fills.c.standing_order_id == row["id"])
            .order_by(standing_order_fills.c.order_id)
        )
    ]
    fields = {k: v for k, v in dict(row["fields"] or {}).items() if k not in _HIDDEN}
    return {
        "id": row["id"],
        "state": "expired" if _lapsed(row, now) else row["state"],
        "query": dict(row["query"] or {}),
        "max_price_per_day": to_coins(row["max_price"]),
        "currency": row["currency"],
        "gpu_count": row["gpu_count"],
        "type": "spot" if row["spot"] else "on-demand",
        "template_id": row["template_id"],
        "order": fields,
        "count": row["count"],
        "filled": row["filled"],
        "order_ids": filled,
        "expires_at": row["expires_at"],
        "created_at": row["created_at"],
        "ended_at": row["ended_at"],
        "last_error": row["last_error"],
    }


def _lapsed(row: dict[str, Any], now: int | None) -> bool:
    expires_at = row["expires_at"]
    return row["state"] == "open" and None not in (now, expires_at) and expires_at <= now


def list_standing_orders(conn: Connection, user_id: int, now: int) -> list[dict[str, Any]]:
    """The user's standing orders, newest first."""
    rows = conn.execute(
        select(standing_orders)
        .where(standing_orders.c.user_id == user_id)
        .order_by(standing_orders.c.id.desc())
    )
    return [standing_view(conn, dict(r._mapping), now) for r in rows]


def cancel_standing_order(
    conn: Connection, user_id: int, standing_id: int, now: int, *, actor: Actor = SYSTEM
) -> dict[str, Any]:
    """Cancel one's own open standing order: it never fills again (its fills stay orders)."""
    lock_user(conn, user_id)
    row = _row(conn, standing_id, lock=True)
    if row["user_id"] != user_id:
        raise MarketError("standing_order_dont_exist")
    if row["state"] != "open":
        raise MarketError("standing_order_not_open", state=row["state"])
    conn.execute(
        update(standing_orders)
        .where(standing_orders.c.id == standing_id)
        .values(state="cancelled", ended_at=now)
    )
    record_by(conn, actor, STANDING_CANCEL, f"standing_order:{standing_id}", {}, about=user_id)
    return standing_view(conn, _row(conn, standing_id))


def match_standing_orders(conn: Connection, settings: Settings, now: int) -> int:
    """Fill the open standing orders, in placement order, from what the market offers as this
    transaction sees it; returns how many orders were made. One indexed query when none is open.
    The open ones stay locked to the end of the transaction (PostgreSQL), so that two matching
    transactions take turns and the earlier standing order is served first in each."""
    query = (
        select(standing_orders)
        .where(standing_orders.c.state == "open")
        .order_by(standing_orders.c.created_at, standing_orders.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = [dict(r._mapping) for r in conn.execute(query)]
    if not rows:
        return 0
    # undone alone if it fails for a reason of its own: a bug here must not refuse the change
    # that ran it (a server coming online); a database error (a deadlock) goes on, so that the
    # whole transaction is tried again
    try:
        with savepoint(conn):
            return _match(conn, rows, settings, now)
    except DBAPIError:
        raise
    except Exception:
        log.exception("standing-order match failed; the change commits without it")
        return 0


def _match(conn: Connection, rows: list[dict[str, Any]], settings: Settings, now: int) -> int:
    made = 0
    market: Market | None = None
    for so in rows:
        if so["expires_at"] is not None and so["expires_at"] <= now:
            _set(conn, so["id"], state="expired", ended_at=now)
            continue
        if market is None:
            listing = marketplace_servers(conn, settings)
            market = Market(listing, build_index(listing))
        filled = _fill(conn, so, market, settings, now)
        if filled:
            made += filled
            market = None  # what it took is no longer free
    return made


@dataclass(frozen=True)
class Market:
    """The listing as this transaction sees it, and its search index (built once per change)."""

    listing: list[dict[str, Any]]
    index: SearchIndex


def _set(conn: Connection, standing_id: int, **values: Any) -> None:
    conn.execute(
        update(standing_orders).where(standing_orders.c.id == standing_id).values(**values)
    )


def _candidates(
    conn: Connection, so: dict[str, Any], market: Market, settings: Settings
) -> list[tuple[int, int]]:
    """``(price, server id)`` of the listed servers the standing order may take now, cheapest
    first (ties: lowest id)."""
    try:
        q = _parsed(dict(so["query"] or {}), settings, so["currency"])
    except InvalidInput:
        return []  # a currency the operator no longer offers
    found = [market.listing[i] for i in search(market.index, q).positions]
    found = [s for s in found if s["owner"] != so["user_id"]]
    prices = prices_of(conn, [s["id"] for s in found], enabled_only=True)
    k = so["gpu_count"]
    out = []
    for server in found:
        n = gpu_count(server)
        on_demand, min_spot = prices[server["id"]].get(so["currency"], (0, 0))
        if n == 0 or (k is not None and k > n):
            continue
        if so["spot"]:
            # a bid at the server's minimum for its GPUs, on GPUs nobody holds
            price = slot_minimum(min_spot, k or n, n) if min_spot > 0 else 0
            if free_gpus(server) < (k or n) or (k is None and server["rented"]):
                continue
        else:
            price = on_demand if k is None else slot_price(on_demand, k, n)
            if k is None and server["rented"]:
                continue
        if 0 < price <= so["max_price"]:
            out.append((price, server["id"]))
    out.sort()
    return out


def _fill_actor(conn: Connection, so: dict[str, Any]) -> Actor:
    """Who a fill acts as: the standing order's owner with the key it was placed with, so that
    the key's daily spend limit bounds its fills as it bounds the key's own orders."""
    via = f"standing_order:{so['id']}"
    key_id = so["api_key_id"]
    if key_id is None:
        return Actor.user(so["user_id"], "engine", via)
    stored = conn.execute(
        select(api_tokens.c.spend_limit).where(api_tokens.c.id == key_id)
    ).scalar()
    return Actor.user(so["user_id"], "engine", via, key_id, limit_of(stored))


def _fill(
    conn: Connection,
    so: dict[str, Any],
    market: Market,
    settings: Settings,
    now: int,
) -> int:
    """Fill one standing order as far as the market allows; returns how many orders it made."""
    filled = so["filled"]
    made = 0
    error: str | None = so["last_error"]
    actor = _fill_actor(conn, so)
    queue = _candidates(conn, so, market, settings)
    at = 0
    while at < len(queue) and filled < so["count"]:
        price, server_id = queue[at]
        # a whole server once; GPUs of one server while it has enough free
        at += so["gpu_count"] is None
        try:
            req = fill_request(
                dict(so["fields"] or {}),
                server_id,
                so["currency"],
                so["spot"],
                so["gpu_count"],
                _coins(price),
            )
            with savepoint(conn):
                order_id = create_order(conn, so["user_id"], req, settings, now, actor=actor)
        except MarketError as exc:
            if exc.name in SERVER_REFUSALS:
                at += so["gpu_count"] is not None
                continue
            error = exc.name  # the renter's to fix (money, the order limit, a template)
            break
        except InvalidInput:
            error = "invalid_order"
            break
        except IntegrityError:  # a unique index refused it: the server is taken
            at += so["gpu_count"] is not None
            continue
        conn.execute(
            insert(standing_order_fills).values(
                order_id=order_id, standing_order_id=so["id"], server_id=server_id, filled_at=now
            )
        )
        filled += 1
        made += 1
        error = None
        emit(
            conn,
            so["user_id"],
            STANDING_ORDER_FILLED,
            now,
            standing_order_id=so["id"],
            order_id=order_id,
            server_id=server_id,
            currency=so["currency"],
            price=to_coins(price),
            filled=filled,
            count=so["count"],
        )
    values: dict[str, Any] = {}
    if made:
        values["filled"] = filled
        if filled >= so["count"]:
            values.update(state="filled", ended_at=now)
    if error != so["last_error"]:
        values["last_error"] = error
    if values:
        _set(conn, so["id"], **values)
    return made
