"""Hosts' servers: creation, settings, and the views my_servers, server_config, spot_marketplace."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy import Row as SqlRow

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import Coins, to_coins, to_units
from openclore.domain.reliability import PRIOR
from openclore.domain.slots import slot_minimum, slot_price
from openclore.domain.specs import clean_gpu_array, clean_specs, not_listed_reason
from openclore.engine.billing import (
    Row,
    end_order,
    lock_server,
    resolve_server,
)
from openclore.engine.notify import notify_server
from openclore.engine.reliability import close_stretch
from openclore.market.accounts import TOKEN_ALPHABET, lock_user
from openclore.market.audit import SERVER_ADD, SERVER_SETTINGS, SYSTEM, Actor, record_by
from openclore.market.inputs import SetServerSettingsRequest
from openclore.market.rates import apply_autoprice, current_rates, rates_in_usd, usd_block
from openclore.market.volumes import end_server_volumes
from openclore.protocol import PER_GPU_PROTOCOL, env_dict
from openclore.store.db import inserted_id
from openclore.store.schema import orders, server_prices, servers

INIT_TOKEN_LENGTH = 48


def new_init_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(INIT_TOKEN_LENGTH))


def add_server(
    conn: Connection,
    owner_id: int,
    name: str,
    now: int,
    settings: Settings,
    *,
    init_token: str | None = None,
    actor: Actor = SYSTEM,
) -> tuple[int, str]:
    """A new, not yet connected, hidden server (audited as ``actor``'s). Returns
    ``(id, init_token)``."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput("name: 1 to 128 characters")
    lock_user(conn, owner_id)  # the server limit is counted under it
    count = conn.execute(
        select(func.count())
        .select_from(servers)
        .where(servers.c.owner_id == owner_id, servers.c.removed_at.is_(None))
    ).scalar_one()
    if count >= settings.max_servers_per_user:
        raise MarketError("server_limit_reached", limit=settings.max_servers_per_user)
    if _find_by_name(conn, owner_id, name) is not None:
        raise MarketError("server_name_taken")
    token = init_token or new_init_token()
    server_id = inserted_id(
        conn.execute(
            insert(servers).values(
                owner_id=owner_id,
                name=name,
                init_token=token,
                connected=False,
                online=False,
                simulated=False,
                visibility="hidden",
                mrl_hours=min(72, settings.max_server_mrl_hours),
                reliability=PRIOR,
                rating_avg=0.0,
                rating_cnt=0,
                bg_command="",
                bg_times_updated=0,
                created_at=now,
            )
        )
    )
    record_by(conn, actor, SERVER_ADD, f"server:{server_id}", {"name": name}, about=owner_id)
    return server_id, token


def remove_server(conn: Connection, owner_id: int, name: str, now: int) -> int:
    """Take a server off the market for good: its live orders and offers end now (billed up to
    now), and it disappears from every listing. Returns how many orders ended."""
    found = _find_by_name(conn, owner_id, name)
    if found is None:
        raise MarketError("server_dont_exist")
    locked = lock_server(conn, found["id"])
    if locked is not None and locked["online"]:
        close_stretch(conn, locked, now)
    live = conn.execute(
        select(orders.c.id).where(orders.c.server_id == found["id"], orders.c.expired.is_(False))
    ).scalars()
    ended = sum(end_order(conn, int(oid), now, "server_removed") is not None for oid in list(live))
    end_server_volumes(conn, found["id"], now)
    conn.execute(
        update(servers)
        .where(servers.c.id == found["id"])
        .values(removed_at=now, visibility="hidden", online=False)
    )
    notify_server(conn, found["id"])  # its agent is told to go
    return ended


def own_server_ids(conn: Connection, user_id: int) -> list[int]:
    """The ids of a user's servers (``my_servers`` in the marketplace answer)."""
    return [
        int(i)
        for i in conn.execute(
            select(servers.c.id)
            .where(servers.c.owner_id == user_id, servers.c.removed_at.is_(None))
            .order_by(servers.c.id)
        ).scalars()
    ]


def _find_by_name(conn: Connection, owner_id: int, name: str) -> Row | None:
    row = conn.execute(
        select(servers).where(
            servers.c.owner_id == owner_id,
            servers.c.name == name,
            servers.c.removed_at.is_(None),
        )
    ).first()
    return None if row is None else dict(row._mapping)


def prices_of(
    conn: Connection, server_ids: Iterable[int], *, enabled_only: bool = False
) -> dict[int, dict[str, tuple[int, int]]]:
    """``{server_id: {currency: (on_demand, spot)}}`` in units; ``enabled_only``: without the
    currencies the host stopped accepting (``enabled-<currency>: false``)."""
    ids = list(server_ids)
    out: dict[int, dict[str, tuple[int, int]]] = {i: {} for i in ids}
    if not ids:
        return out
    query = select(server_prices).where(server_prices.c.server_id.in_(ids))
    if enabled_only:
        query = query.where(server_prices.c.enabled.is_(True))
    for r in conn.execute(query):
        out[r.server_id][r.currency] = (r.on_demand, r.spot)
    return out


def disabled_currencies(conn: Connection, server_id: int) -> list[str]:
    return sorted(
        conn.execute(
            select(server_prices.c.currency).where(
                server_prices.c.server_id == server_id, server_prices.c.enabled.is_(False)
            )
        ).scalars()
    )


def cuda_version(specs: Any) -> str:
    """The CUDA version the agent measured (live Clore sends a string; ``""`` when unknown)."""
    clean = clean_specs(specs) or {}
    value = clean.get("cuda_version")
    return value if isinstance(value, str) else ""


def usd_pricing_view(stored: Any, currencies: list[str]) -> dict[str, dict[str, Coins]]:
    """``usd_pricing`` as stored (decimal text) → ``{currency: {on_demand, spot}}`` amounts."""
    out: dict[str, dict[str, Coins]] = {}
    if not isinstance(stored, dict):
        return out
    for currency in currencies:
        sides = stored.get(currency)
        if isinstance(sides, dict):
            out[currency] = {
                kind: to_coins(to_units(Decimal(str(sides[kind]))))
                for kind in ("on_demand", "spot")
                if sides.get(kind) is not None
            }
    return out


def price_map(
    prices: dict[str, tuple[int, int]], which: int, currencies: list[str], *, all_coins: bool
) -> dict[str, Coins]:
    """One side (0 on-demand, 1 spot) as ``{coin: price}``; zeros only when ``all_coins``."""
    out: dict[str, Coins] = {}
    for currency in currencies:
        units = prices.get(currency, (0, 0))[which]
        if units or all_coins:
            out[currency] = to_coins(units)
    return out


def rental_status(conn: Connection, server_id: int) -> int:
    """0 not rented, 1 rented on spot, 2 rented on demand (by the order running now)."""
    row = conn.execute(
        select(orders.c.spot).where(
            orders.c.server_id == server_id,
            orders.c.expired.is_(False),
            orders.c.running.is_(True),
        )
    ).first()
    if row is None:
        return 0
    return 1 if row.spot else 2


def my_servers(conn: Connection, user_id: int, settings: Settings) -> dict[str, Any]:
    rows = conn.execute(
        select(servers)
        .where(servers.c.owner_id == user_id, servers.c.removed_at.is_(None))
        .order_by(servers.c.id)
    ).all()
    prices = prices_of(conn, (r.id for r in rows))
    holders = gpu_holders(conn, [r.id for r in rows])
    out = []
    for r in rows:
        item: dict[str, Any] = {
            "id": r.id,
            "name": r.name,
            "connected": r.connected,
            "visibility": r.visibility,
            "pricing": price_map(prices[r.id], 0, settings.currencies, all_coins=True),
            "online": r.online,
            "min_spot_pricing": price_map(prices[r.id], 1, settings.currencies, all_coins=True),
            "partial_gpu_rental": bool(r.partial_gpu_rental),
            "min_gpus": r.min_gpus,
            # which running order holds which GPU ({"index": order id})
            "gpu_orders": holders.get(r.id, {}),
            # the agent: its last heartbeat (market time), its protocol, or a simulated one
            "last_seen": r.last_seen,
            "agent_protocol": r.agent_protocol,
            "simulated": bool(r.simulated),
        }
        if not r.connected:
            item["init_token"] = r.init_token
        if r.specs:
            item["specs"] = clean_specs(r.specs)
        if r.connected:  # why the marketplace leaves it out whatever its settings ("no_gpu")
            reason = not_listed_reason(r.gpu_array, r.specs)
            if reason is not None:
                item["not_listed"] = reason
        out.append(item)
    return {"servers": out, "limit": settings.max_servers_per_user}


def gpu_holders(conn: Connection, server_ids: list[int]) -> dict[int, dict[str, int]]:
    """``{server id: {GPU index: order id}}`` for the running orders on these servers."""
    out: dict[int, dict[str, int]] = {}
    if not server_ids:
        return out
    rows = conn.execute(
        select(orders.c.id, orders.c.server_id, orders.c.gpus, servers.c.gpu_array)
        .join(servers, servers.c.id == orders.c.server_id)
        .where(
            orders.c.server_id.in_(server_ids),
            orders.c.running.is_(True),
            orders.c.expired.is_(False),
        )
    )
    for o in rows:
        indices = o.gpus or range(len(clean_gpu_array(o.gpu_array)))
        out.setdefault(o.server_id, {}).update({str(i): o.id for i in indices})
    return out


def listed_servers(
    conn: Connection,
) -> tuple[Sequence[SqlRow[Any]], dict[int, dict[str, tuple[int, int]]]]:
    """The servers the market lists (public, online, not removed, with at least one GPU), in id
    order, with the prices of the currencies their hosts accept: the one rule behind
    ``marketplace`` (and so the console's market, Vast's offers and standing orders) and
    GigaSPOT. A server whose agent reports no GPU stays rentable by id (docs/decisions.md)."""
    rows = conn.execute(
        select(servers)
        .where(
            servers.c.removed_at.is_(None),
            servers.c.visibility == "public",
            servers.c.online.is_(True),
        )
        .order_by(servers.c.id)
    ).all()
    rows = [r for r in rows if not_listed_reason(r.gpu_array, r.specs) is None]
    return rows, prices_of(conn, (r.id for r in rows), enabled_only=True)


def marketplace_servers(conn: Connection, settings: Settings) -> list[dict[str, Any]]:
    """Every server on the market, as the ``marketplace`` listing shows it."""
    rows, prices = listed_servers(conn)
    rates = current_rates(conn, settings)
    rented: set[int] = set()
    held: dict[int, set[int]] = {}
    for o in conn.execute(
        select(
            orders.c.server_id, orders.c.spot, orders.c.running, orders.c.gpus, orders.c.stopped
        ).where(orders.c.expired.is_(False))
    ):
        if not o.spot and not o.stopped:  # a stopped order holds no GPU (SPEC §8)
            rented.add(o.server_id)
        if o.running:
            # a running order from before GPU slots holds every slot: an empty set marks it
            held.setdefault(o.server_id, set()).update(o.gpus or [-1])
    storage: dict[int, dict[str, Coins]] = {}
    for p in conn.execute(
        select(server_prices.c.server_id, server_prices.c.currency, server_prices.c.storage).where(
            server_prices.c.storage > 0, server_prices.c.enabled.is_(True)
        )
    ):
        if p.currency in settings.currencies:
            storage.setdefault(p.server_id, {})[p.currency] = to_coins(p.storage)
    out = []
    for r in rows:
        on_demand = price_map(prices[r.id], 0, settings.currencies, all_coins=False)
        spot = price_map(prices[r.id], 1, settings.currencies, all_coins=False)
        if not on_demand and not spot:
            continue  # nothing to rent it with
        price: dict[str, Any] = {"on_demand": on_demand, "spot": spot}
        usd = usd_block({c: p for c, p in prices[r.id].items() if c in settings.currencies}, rates)
        if usd is not None:
            price["usd"] = usd
        original = usd_pricing_view(r.usd_pricing, settings.currencies)
        if original:
            price["original_usd"] = original
        out.append(
            {
                "id": r.id,
                "owner": r.owner_id,
                "mrl": r.mrl_hours,
                "price": price,
                "rented": r.id in rented,
                "specs": clean_specs(r.specs),
                "allowed_coins": [c for c in settings.currencies if c in on_demand or c in spot],
                "gpu_array": clean_gpu_array(r.gpu_array),
                "reliability": r.reliability,
                "rating": {"avg": r.rating_avg, "cnt": r.rating_cnt},
                "cuda_version": cuda_version(r.specs),
                "online": True,  # the listing shows online servers only
                "partial_gpu_rental": partial_view(
                    r, held.get(r.id, set()), prices[r.id], settings.currencies
                ),
            }
        )
        if r.disk_gb is not None:  # the disk each rental gets and its storage price (SPEC §8)
            out[-1]["storage"] = {
                "disk_gb": r.disk_gb,
                "price_per_gb_day": storage.get(r.id, {}),
            }
    return out


def partial_view(
    server: Any, held: set[int], prices: dict[str, tuple[int, int]], currencies: list[str]
) -> dict[str, Any]:
    """``partial_gpu_rental`` of a listed server (SPEC §8): whether renters may take some of its
    GPUs, the smallest rental, the indices no running order holds, and the price of one GPU
    (on demand: 1/n of the server's price, rounded down; spot: the minimum bid per GPU,
    rounded up)."""
    n = len(clean_gpu_array(server.gpu_array))
    free = [] if -1 in held else [i for i in range(n) if i not in held]
    per_gpu: dict[str, dict[str, Coins]] = {"on_demand": {}, "spot": {}}
    for currency in (c for c in currencies if c in prices and n):
        on_demand, spot = prices[currency]
        if on_demand:
            per_gpu["on_demand"][currency] = to_coins(slot_price(on_demand, 1, n))
        if spot:
            per_gpu["spot"][currency] = to_coins(slot_minimum(spot, 1, n))
    return {
        "enabled": rents_per_gpu(server._mapping),
        "min_gpus": server.min_gpus,
        "free_indices": free,
        "price_per_gpu": per_gpu,
    }


def server_config(conn: Connection, user_id: int, name: str, settings: Settings) -> dict[str, Any]:
    row = _find_by_name(conn, user_id, name)
    if row is None:
        raise MarketError("server_dont_exist")
    prices = prices_of(conn, [row["id"]])[row["id"]]
    disabled = disabled_currencies(conn, row["id"])
    # an object, {} when empty: clients type it as a map (docs/decisions.md)
    bg_env = env_dict(row["bg_env"])
    autoprice = row["autoprice"] if isinstance(row["autoprice"], dict) else {}
    return {
        "config": {
            "name": row["name"],
            "connected": row["connected"],
            "visibility": row["visibility"],
            "pricing": price_map(prices, 0, settings.currencies, all_coins=True),
            "spot_pricing": price_map(prices, 1, settings.currencies, all_coins=True),
            "mrl": row["mrl_hours"],
            "online": row["online"],
            "initialized": row["connected"],
            "id": row["id"],
            "rental_status": rental_status(conn, row["id"]),
            "specs": clean_specs(row["specs"]),
            "background_job": {
                "times_updated": row["bg_times_updated"],
                "image": row["bg_image"],
                "command": row["bg_command"],
                "env": bg_env,
            },
            "allowed_coins": [c for c in settings.currencies if c in prices and c not in disabled],
            "gpu_array": clean_gpu_array(row["gpu_array"]),
            "usd_pricing": usd_pricing_view(row["usd_pricing"], settings.currencies),
            "autoprice": {c: autoprice.get(c, False) for c in settings.currencies},
            "partial_gpu_rental": bool(row["partial_gpu_rental"]),
            "min_gpus": row["min_gpus"],
            # keeping work (SPEC §8): what set_server_settings' disk_gb and storage_price set
            "disk_gb": row["disk_gb"] or 0,
            "storage_pricing": storage_prices(conn, row["id"], settings.currencies),
        },
        "creation_completed": True,
    }


def storage_prices(conn: Connection, server_id: int, currencies: list[str]) -> dict[str, Coins]:
    """The host's storage price per GB per day, per currency (0: storage is free there)."""
    found = {
        r.currency: int(r.storage or 0)
        for r in conn.execute(
            select(server_prices.c.currency, server_prices.c.storage).where(
                server_prices.c.server_id == server_id
            )
        )
    }
    return {c: to_coins(found.get(c, 0)) for c in currencies}


def set_server_settings(
    conn: Connection,
    user_id: int,
    req: SetServerSettingsRequest,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> None:
    """Change one's server's settings (audited as ``actor``'s)."""
    found = _find_by_name(conn, user_id, req.name)
    detail = req.model_dump(mode="json", exclude_none=True)
    record_by(conn, actor, SERVER_SETTINGS, f"server:{req.name}", detail, about=user_id)
    if found is None:
        raise MarketError("server_dont_exist")
    per_currency: dict[str, dict[str, Decimal]] = req.per_currency(settings.currencies)
    default = per_currency.setdefault(settings.default_currency, {})
    if req.on_demand is not None:
        default.setdefault("on_demand", req.on_demand)
    if req.spot is not None:
        default.setdefault("spot", req.spot)
    if req.storage_price is not None:
        default.setdefault("storage", req.storage_price)
    enabled = req.enabled(settings.currencies)
    values: dict[str, Any] = {}
    if req.mrl is not None:
        if req.mrl > settings.max_server_mrl_hours:
            raise InvalidInput(f"mrl: at most {settings.max_server_mrl_hours} hours")
        values["mrl_hours"] = req.mrl
    if req.visibility is not None:
        values["visibility"] = req.visibility
    if req.availability is not None:
        values["visibility"] = "public" if req.availability else "hidden"
    rates: dict[str, int] = {}
    if req.usd_pricing is not None:
        merged = dict(found["usd_pricing"] or {})
        for currency, sides in req.usd_pricing.items():
            if currency not in settings.currencies:
                raise InvalidInput(f"usd_pricing: unknown currency {currency[:32]!r}")
            kept = dict(merged.get(currency) or {})
            kept.update({k: None if v is None else str(v) for k, v in sides.items()})
            merged[currency] = kept
        values["usd_pricing"] = merged
    if req.autoprice is not None:
        rates = current_rates(conn, settings)
        merged_auto = dict(found["autoprice"] or {})
        for currency, mode in req.autoprice.items():
            if currency not in settings.currencies:
                raise InvalidInput(f"autoprice: unknown currency {currency[:32]!r}")
            if mode == "usd" and currency not in rates:
                raise InvalidInput(f"autoprice: no exchange rate for {currency} on this market")
            merged_auto[currency] = mode
        values["autoprice"] = merged_auto
    values.update(_partial_rental(req, found))
    if req.disk_gb is not None:
        values["disk_gb"] = req.disk_gb or None  # 0: no disk offered
    if not values and not any(per_currency.values()) and not enabled:
        raise InvalidInput(
            "nothing to change: send availability, mrl, on_demand, spot, disk_gb or storage_price"
        )
    lock_server(conn, found["id"])
    if values:
        conn.execute(update(servers).where(servers.c.id == found["id"]).values(**values))
    current = prices_of(conn, [found["id"]])[found["id"]]
    for currency in set(per_currency) | set(enabled):
        change = per_currency.get(currency, {})
        if not change and currency not in enabled:
            continue
        on_demand, spot = current.get(currency, (0, 0))
        if "on_demand" in change:
            on_demand = to_units(change["on_demand"])
        if "spot" in change:
            spot = to_units(change["spot"])
        row_values: dict[str, Any] = {"on_demand": on_demand, "spot": spot}
        if "storage" in change:
            row_values["storage"] = to_units(change["storage"])
        if currency in enabled:
            row_values["enabled"] = enabled[currency]
        if currency in current:
            conn.execute(
                update(server_prices)
                .where(
                    server_prices.c.server_id == found["id"],
                    server_prices.c.currency == currency,
                )
                .values(**row_values)
            )
        else:
            conn.execute(
                insert(server_prices).values(server_id=found["id"], currency=currency, **row_values)
            )
    if "usd_pricing" in values or "autoprice" in values:
        apply_autoprice(
            conn,
            found["id"],
            values.get("usd_pricing", found["usd_pricing"]),
            values.get("autoprice", found["autoprice"]),
            rates or current_rates(conn, settings),
        )
    resolve_server(conn, found["id"], now)


def rents_per_gpu(server: Any) -> bool:
    """Whether renters may take some of a server's GPUs now: its host turned it on, it has at
    least two GPUs, and its agent keeps rentals apart (a demo server has no agent)."""
    if not server["partial_gpu_rental"] or len(clean_gpu_array(server["gpu_array"])) < 2:
        return False
    return bool(server["simulated"]) or (server["agent_protocol"] or 0) >= PER_GPU_PROTOCOL


def gpu_slots(server: Row) -> int:
    """How many GPU slots a server has: the GPUs its agent reported (SPEC §8)."""
    return len(clean_gpu_array(server.get("gpu_array")))


def _partial_rental(req: SetServerSettingsRequest, server: Row) -> dict[str, Any]:
    """``partial_gpu_rental`` and ``min_gpus`` as the host sent them, checked against its GPUs."""
    values: dict[str, Any] = {}
    if req.partial_gpu_rental is not None:
        values["partial_gpu_rental"] = req.partial_gpu_rental
    if req.min_gpus is not None:
        n = gpu_slots(server)
        if n and req.min_gpus > n:
            raise InvalidInput(f"min_gpus: this server has {n} GPUs")
        values["min_gpus"] = req.min_gpus
    if values.get("partial_gpu_rental") and gpu_slots(server) < 2:
        raise InvalidInput("partial_gpu_rental: needs a server with at least 2 GPUs")
    agent = server["agent_protocol"]
    if values.get("partial_gpu_rental") and agent is not None and agent < PER_GPU_PROTOCOL:
        raise InvalidInput(
            "partial_gpu_rental: this server's agent gives every rental every GPU; update it"
        )
    return values


def offer_view(order: Any, server: Any, user_id: int | None) -> dict[str, Any]:
    """One bid as ``spot_marketplace`` shows it; on a server rented per GPU, with how many GPUs
    it bids for and which it holds while active (SPEC §8)."""
    out: dict[str, Any] = {
        "offer_id": order.id,
        "bid": to_coins(order.price),
        "active": order.running,
        "my": order.user_id == user_id,
        "currency": order.currency,
    }
    if server.partial_gpu_rental or order.gpu_count is not None:
        n = len(clean_gpu_array(server.gpu_array))
        whole = order.gpu_count is None
        out["gpu_count"] = n if whole else order.gpu_count
        out["gpus"] = list(range(n)) if whole and order.running else list(order.gpus or [])
    return out


def spot_marketplace(
    conn: Connection, server_id: int, user_id: int | None, settings: Settings
) -> dict[str, Any]:
    row = conn.execute(
        select(servers).where(servers.c.id == server_id, servers.c.removed_at.is_(None))
    ).first()
    if row is None or (row.visibility != "public" and row.owner_id != user_id):
        return {"exists": False}
    live = conn.execute(
        select(orders)
        .where(
            orders.c.server_id == server_id, orders.c.spot.is_(True), orders.c.expired.is_(False)
        )
        .order_by(orders.c.price.desc(), orders.c.id)
    ).all()
    prices = prices_of(conn, [server_id], enabled_only=True)[server_id]
    rates = current_rates(conn, settings)
    return {
        "market": {
            "currency_rates_in_usd": rates_in_usd(rates, settings.currencies),
            "offers": [offer_view(o, row, user_id) for o in live],
            "server": {
                "min_pricing": price_map(prices, 1, settings.currencies, all_coins=False),
                "mrl": row.mrl_hours * 3600,
                "visibility": row.visibility,
                "online": row.online,
            },
        },
        "exists": True,
    }
