"""GigaSPOT: batch spot bids with per-GPU settings, and the snapshot bidders read.

A GigaSPOT order *is* a spot order (same book, same billing, same rules for raising and lowering
bids); it may carry per-GPU settings (``oc``: power limit, clock locks and offsets). They are
checked against the ranges the server's agent reported (:mod:`openclore.domain.gpu_settings`):
settings that do not fit, or a host that does not allow them, leave the bid placed without them
and name the server in ``failed_to_oc_servers``. Settings that fit go to the agent with the
order's container, and the agent applies them through NVML while the order runs (and restores
the GPU's defaults after); an agent that could not apply them reports it, and my_orders shows
``oc_failed: true``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.gpu_settings import settings_problem, snapshot_gpus
from openclore.domain.money import bp_to_percent, percent_to_bp, to_coins, to_units
from openclore.domain.specs import clean_gpu_array, clean_specs
from openclore.engine.notify import notify_server
from openclore.market import orders as order_service
from openclore.market.audit import PRICE_CHANGE, SYSTEM, Actor, record_by
from openclore.market.inputs import CreateOrderRequest, GigaspotEdit, GigaspotOrder
from openclore.market.servers import cuda_version, listed_servers
from openclore.store.schema import orders, servers

# a bid refused for its price goes in too_low_bids_servers / too_low_bid_ids
TOO_LOW = frozenset({"too_low_price"})
TOO_LOW_EDIT = frozenset({"amount_too_low", "exceeded_max_step", "can_lower_every_600_seconds"})


def _store_oc(conn: Connection, order_id: int, oc: list[dict[str, Any]] | None) -> None:
    conn.execute(update(orders).where(orders.c.id == order_id).values(oc=oc, oc_failed=None))


def create_order(
    conn: Connection,
    user_id: int,
    item: GigaspotOrder,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> tuple[int, str | None]:
    """Place one GigaSPOT bid. Returns the order id and why its GPU settings were not taken
    (None: taken, or none asked)."""
    req = CreateOrderRequest.model_validate(
        {
            "currency": item.currency,
            "image": item.image,
            "renting_server": item.renting_server,
            "type": "spot",
            "spotprice": item.price,
            "env": item.env,
        }
    )
    order_id = order_service.create_order(conn, user_id, req, settings, now, actor=actor)
    oc = [g.to_stored() for g in item.oc]
    if not oc:
        return order_id, None
    limits = conn.execute(
        select(servers.c.gpu_limits).where(servers.c.id == item.renting_server)
    ).scalar()
    problem = settings_problem(oc, limits)
    if problem is None:
        _store_oc(conn, order_id, oc)
        notify_server(conn, item.renting_server)
    return order_id, problem


def edit_order(
    conn: Connection,
    user_id: int,
    item: GigaspotEdit,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> str | None:
    """Re-price one's own GigaSPOT bid and replace its GPU settings. Price rules are
    set_spot_price's. Returns why the GPU settings were not taken (None: taken)."""
    row = conn.execute(select(orders).where(orders.c.id == item.order_id)).first()
    if row is None or row.user_id != user_id or not row.spot or row.expired:
        raise MarketError("order_dont_exist")
    desired = to_units(item.price)
    detail = item.model_dump(mode="json", exclude_none=True)
    record_by(conn, actor, PRICE_CHANGE, f"order:{item.order_id}", detail, about=user_id)
    if desired != row.price:
        order_service.reprice(conn, user_id, item.order_id, desired, settings, now, actor)
    oc = [g.to_stored() for g in item.oc]
    limits = conn.execute(
        select(servers.c.gpu_limits).where(servers.c.id == row.server_id)
    ).scalar()
    problem = settings_problem(oc, limits)
    if problem is None and (oc or row.oc):
        _store_oc(conn, item.order_id, oc or None)
        notify_server(conn, row.server_id)
    return problem


def snapshot(conn: Connection, settings: Settings) -> dict[str, Any]:
    """``{server id: {...}}``: every public, online server that can be rented on spot, with
    its live bids and what its GPUs allow."""
    rows, prices = listed_servers(conn)
    live = conn.execute(
        select(orders)
        .where(orders.c.expired.is_(False), orders.c.server_id.in_([r.id for r in rows]))
        .order_by(orders.c.price.desc(), orders.c.id)
    ).all()
    out: dict[str, Any] = {}
    for r in rows:
        mins = {
            c: spot
            for c, (_od, spot) in prices[r.id].items()
            if spot > 0 and c in settings.currencies
        }
        if not mins:
            continue
        specs = clean_specs(r.specs) or {}
        cores, _, threads = str(specs.get("cpus", "")).partition("/")
        server_orders = [o for o in live if o.server_id == r.id]
        default = settings.default_currency
        out[str(r.id)] = {
            "bids": [
                {
                    "owner": o.user_id,
                    "id": o.id,
                    "active": o.running,
                    "to_cache": False,
                    "cached": False,
                    "price": to_coins(o.price),
                    "currency": o.currency,
                    "pl": sum(float(g.get("pl", 0)) for g in (o.oc or [])),
                }
                for o in server_orders
                if o.spot
            ],
            # a stopped on-demand order holds no GPU (SPEC §8)
            "on_demand_rented": any(not o.spot and not o.stopped for o in server_orders),
            "online": True,
            "cpu": specs.get("cpu", ""),
            "cores": _int(cores),
            "threads": _int(threads),
            "ram": specs.get("ram", 0),
            "gpus": snapshot_gpus(r.gpu_limits, clean_gpu_array(r.gpu_array)),
            "working_properly": True,
            "cuda": cuda_version(r.specs),
            "max_rental_length": r.mrl_hours * 3600,
            "cc": (specs.get("net") or {}).get("cc", ""),
            "host": r.owner_id,
            "reliability": r.reliability,
            "min_bid": to_coins(mins.get(default, min(mins.values()))),
            "min_bids": {c: to_coins(v) for c, v in mins.items()},
            "energy_price": 0,
        }
    return out


def creation_fees(settings: Settings) -> dict[str, Any]:
    """get_gigaspot ``creation_fees``: the spot creation fee per currency."""
    return {
        c: to_coins(to_units(settings.creation_fee_spot.get(c, 0))) for c in settings.currencies
    }


def renter_fees(settings: Settings) -> dict[str, Any]:
    """renter_fees: the platform fee (percent of spend) and creation fees, per currency."""

    def fee(percent: Any) -> dict[str, Any]:
        return {c: bp_to_percent(percent_to_bp(percent)) for c in settings.currencies}

    return {
        "renter_fees": {
            "on_demand": {"base": fee(settings.fee_on_demand)},
            "spot": {"base": fee(settings.fee_spot)},
        },
        "creation_fees": {
            "on_demand": {
                c: to_coins(to_units(settings.creation_fee_on_demand.get(c, 0)))
                for c in settings.currencies
            },
            "spot": {
                c: to_coins(to_units(settings.creation_fee_spot.get(c, 0)))
                for c in settings.currencies
            },
        },
        # openclore has no Proof of Holding: no reduction, nothing held (poh_balance)
        "poh_config": {"max_reduction_percent": 0, "max_poh_amount": 0},
        "poh_balance": 0,
    }


def poh_balance() -> dict[str, Any]:
    """poh_balance: openclore has no Proof of Holding (live Clore lowers fees for CLORE held in
    registered wallets); every user holds nothing, so fees are never reduced."""
    return {
        "items": [],
        "balance": {
            "total": 0,
            "free_amount": 0,
            "reward_amount": 0,
            "offers": {
                "rented_amount": 0,
                "rented_on_marketplace_amount": 0,
                "rented_finished_amount": 0,
                "leased_amount": 0,
                "leased_finished_amount": 0,
            },
        },
        "count": 0,
    }


def _int(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0
