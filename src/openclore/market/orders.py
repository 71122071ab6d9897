"""Orders and spot offers: create, cancel, re-price, list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import (
    bp_to_percent,
    percent_to_bp,
    to_coins,
    to_units,
)
from openclore.domain.slots import (
    bid_meets_minimum,
    on_demand_admission,
    slot_minimum,
    slot_price,
)
from openclore.domain.specs import clean_gpu_array, clean_specs
from openclore.domain.spot import lowest_bid, runway, seconds_until_lowering
from openclore.engine.billing import (
    PREEMPTED,
    Row,
    end_order,
    live_orders,
    lock_server,
    order_claim,
    resolve_server,
    slot_count,
)
from openclore.engine.outbox import order_created
from openclore.ledger.ledger import balance, ensure_wallet, system_account_id, transfer, wallet_id
from openclore.market.account_keys import account_keys
from openclore.market.accounts import lock_user
from openclore.market.api_keys import check_spend
from openclore.market.audit import (
    ORDER_CANCEL,
    ORDER_CREATE,
    PRICE_CHANGE,
    SYSTEM,
    Actor,
    record_by,
)
from openclore.market.inputs import CreateOrderRequest
from openclore.market.keeping import keeps_work
from openclore.market.servers import cuda_version, prices_of, rents_per_gpu
from openclore.market.templates import apply_template
from openclore.market.tunnels import http_pub, http_urls, new_http_label
from openclore.market.volumes import checked_mounts, storage_price
from openclore.store.db import inserted_id
from openclore.store.schema import orders, servers

MAX_ISSUE_LENGTH = 2048


def _rentable_server(
    conn: Connection, user_id: int, req: CreateOrderRequest, settings: Settings
) -> dict[str, Any]:
    """The server an order asks for, locked, when ``user_id`` may rent it in that currency."""
    server = lock_server(conn, req.renting_server)
    if server is None or server["removed_at"] is not None:
        raise MarketError("server-dont-exist")
    if server["owner_id"] == user_id:
        raise MarketError("cant_rent_from_yourself")
    if server["visibility"] != "public":
        raise MarketError("server-dont-exist")
    if not server["online"]:
        raise MarketError("server-offline")
    if req.currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    return dict(server)


def create_order(
    conn: Connection,
    user_id: int,
    req: CreateOrderRequest,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> int:
    """Rent a server on demand or bid for it (audited as ``actor``'s); returns the order id."""
    lock_user(conn, user_id)  # the order limit is counted under it
    req = apply_template(conn, user_id, req)
    server = _rentable_server(conn, user_id, req, settings)
    on_demand_price, min_spot = prices_of(conn, [server["id"]], enabled_only=True)[
        server["id"]
    ].get(req.currency, (0, 0))
    live = live_orders(conn, server["id"])
    n = slot_count(server["gpu_array"])
    k, wanted = _slots_asked(req, server, n)
    if req.is_spot:
        if min_spot <= 0:
            raise MarketError("currency-not-allowed")
        assert req.spotprice is not None
        price = to_units(req.spotprice)
        if not bid_meets_minimum(price, k or n, min_spot, n):
            least = slot_minimum(min_spot, k or n, n)
            raise MarketError("too_low_price", min_price=to_coins(least))
        if any(o["spot"] and o["user_id"] == user_id for o in live):
            raise MarketError("you_already_have_spot_order")
        fee_bp = percent_to_bp(settings.fee_spot)
        creation_fee = to_units(settings.creation_fee_spot.get(req.currency, 0))
    else:
        price = on_demand_price if k is None else slot_price(on_demand_price, k, n)
        if price <= 0:
            raise MarketError("currency-not-allowed")
        if req.required_price is not None and to_units(req.required_price) != price:
            raise MarketError("price_changed", price=to_coins(price))
        if not _on_demand_fits(live, n, k, wanted):
            raise MarketError("server-already-rented")
        fee_bp = percent_to_bp(settings.fee_on_demand)
        creation_fee = to_units(settings.creation_fee_on_demand.get(req.currency, 0))
    if _live_order_count(conn, user_id) >= settings.max_active_orders:
        raise MarketError("order_limit_reached", limit=settings.max_active_orders)
    # both wallets exist before any money moves (a currency may have been added since)
    wallet = ensure_wallet(conn, user_id, req.currency, settings.address_secret)
    ensure_wallet(conn, server["owner_id"], req.currency, settings.address_secret)
    funds = balance(conn, wallet, lock=True)
    if funds < creation_fee + runway(price, settings.runway_seconds):
        raise MarketError("not_enough_balance")
    check_spend(conn, actor, req.currency, price, now, upfront=creation_fee)
    keeping = _keeping(conn, user_id, req, server, k, n, now)

    order_id = inserted_id(
        conn.execute(
            insert(orders).values(
                user_id=user_id,
                server_id=server["id"],
                spot=req.is_spot,
                currency=req.currency,
                price=price,
                fee_bp=fee_bp,
                creation_fee=creation_fee,
                api_key_id=actor.key_id,
                mrl=keeping.pop("mrl"),
                ct=now,
                image=req.image,
                command=req.command or "",
                env=req.env or {},
                ports=req.ports or {},
                jupyter_token=req.jupyter_token,
                ssh_key=req.ssh_key,
                account_keys=account_keys(conn, user_id),
                template_id=req.template_id,
                ssh_password=req.ssh_password,
                autossh_entrypoint=bool(req.autossh_entrypoint),
                dockerhub_auth=req.dockerhub_auth,
                running=False,
                expired=False,
                active_seconds=0,
                spend=0,
                fee_paid=0,
                tcp_ports=[],
                http_label=new_http_label(),
                gpu_count=k,
                gpus_wanted=None if wanted is None else list(wanted),
                gpus=[],
                **keeping,
            )
        )
    )
    order_created(conn, order_id, now)
    detail = {"server": server["id"], "spot": req.is_spot, "currency": req.currency}
    record_by(conn, actor, ORDER_CREATE, f"order:{order_id}", detail, about=user_id)
    transfer(
        conn,
        key=f"order:{order_id}:creation_fee",
        debit=wallet,
        credit=system_account_id(conn, "platform", req.currency),
        amount=creation_fee,
        kind="creation_fee",
        now=now,
        order_id=order_id,
    )
    if server["simulated"]:
        _simulate_connection(conn, order_id, server, req, settings)
    resolve_server(conn, server["id"], now)
    return order_id


def _live_order_count(conn: Connection, user_id: int) -> int:
    """The renter's orders that have not ended (create_order's limit counts them)."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(orders)
            .where(orders.c.user_id == user_id, orders.c.expired.is_(False))
        ).scalar_one()
    )


def server_gpu_array(conn: Connection, server_id: int) -> Any:
    """The GPU names the server reported (its row is locked by the caller)."""
    return conn.execute(select(servers.c.gpu_array).where(servers.c.id == server_id)).scalar()


def _slots_asked(
    req: CreateOrderRequest, server: Row, n: int
) -> tuple[int | None, tuple[int, ...] | None]:
    """The GPU slots an order asks for (SPEC §8): ``(None, None)`` for the whole server (no
    count, or every GPU), else the count and the explicit indices if any."""
    asked = req.slots_asked
    if asked is None or (asked == n and req.gpus is None):
        return None, None
    if req.gpus is not None and req.gpus[-1] >= n:
        raise InvalidInput(f"gpus: this server's GPUs are 0 to {n - 1}")
    if asked == n:
        return None, None  # every index: the whole server
    if not rents_per_gpu(server):
        raise MarketError("partial_gpu_rental_off")
    if not server["min_gpus"] <= asked <= n:
        raise MarketError("gpu_count_out_of_range", min_gpus=server["min_gpus"], max_gpus=n)
    return asked, None if req.gpus is None else tuple(req.gpus)


def _keeping(
    conn: Connection,
    user_id: int,
    req: CreateOrderRequest,
    server: Row,
    k: int | None,
    n: int,
    now: int,
) -> dict[str, Any]:
    """A new order's disk, storage rate, volumes, timers and mrl (SPEC §8)."""
    disk_gb = _disk_asked(req, server, k, n)
    rate = 0 if disk_gb is None else disk_gb * storage_price(conn, server["id"], req.currency)
    mounts = checked_mounts(conn, user_id, server["id"], req.volumes)
    if (mounts or req.stop_after) and not keeps_work(server):
        raise MarketError("stop_not_supported")
    mrl = server["mrl_hours"] * 3600
    if req.terminate_after is not None:  # the order ends then, like at its mrl
        mrl = min(mrl, req.terminate_after)
    return {
        "disk_gb": disk_gb,
        "storage_rate": rate,
        "mounts": mounts,
        "stop_at": None if req.stop_after is None else now + req.stop_after,
        "mrl": mrl,
    }


def _disk_asked(req: CreateOrderRequest, server: Row, k: int | None, n: int) -> int | None:
    """The disk an order gets (SPEC §8): what it asks for, up to the host's offer (k/n of it for
    k of n GPUs, at least 1 GB); the whole offer when it does not ask; None when the host
    offers none."""
    offer = server["disk_gb"]
    if offer is None:
        if req.disk_gb is not None:
            raise MarketError("disk_not_offered")
        return None
    if k is not None:
        offer = max(1, offer * k // n)
    if req.disk_gb is None:
        return int(offer)
    if req.disk_gb > offer:
        raise MarketError("disk_gb_out_of_range", max_disk_gb=offer)
    return req.disk_gb


def _on_demand_fits(live: list[Row], n: int, k: int | None, wanted: tuple[int, ...] | None) -> bool:
    """Whether a new on-demand order gets its slots: a whole-server order while no other
    on-demand order lives; a partial one while on-demand orders leave it enough (it preempts
    the lowest bids it needs)."""
    if k is None:
        return not any(not o["spot"] and not o["stopped"] for o in live)
    claims = [
        c
        for o in live
        if (not o["stopped"] or o["stop_reason"] == PREEMPTED)
        and (c := order_claim(o, n)) is not None
    ]
    return on_demand_admission(n, claims, k, wanted) is not None


def _simulate_connection(
    conn: Connection, order_id: int, server: Row, req: CreateOrderRequest, settings: Settings
) -> None:
    """Demo servers have no agent: publish ports the way an agent would (deterministic)."""
    ports = req.ports or {}
    base = 10000 + (order_id * 8) % 50000
    tcp = [
        f"{p}:{base + i}" for i, (p, proto) in enumerate(sorted(ports.items())) if proto == "tcp"
    ]
    http = next((p for p, proto in ports.items() if proto == "http"), None)
    conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(
            tcp_ports=tcp,
            http_port=http,
            pub_cluster=server["pub_cluster"] or settings.public_hostnames or ["localhost"],
            runtime_state="running",
        )
    )


def _own_order(conn: Connection, user_id: int, order_id: int, foreign_error: str) -> Row:
    row = conn.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None:
        raise MarketError("order_dont_exist")
    if row.user_id != user_id:
        raise MarketError(foreign_error)
    return dict(row._mapping)


def cancel_order(
    conn: Connection,
    user_id: int,
    order_id: int,
    issue: str | None,
    now: int,
    rating: int | None = None,
    *,
    actor: Actor = SYSTEM,
) -> None:
    """End one's own live order now, billed up to now (audited as ``actor``'s). An order that
    settling ends on its own (its balance or its time ran out) is ended all the same, and the
    cancel succeeds.

    ``rating`` (1-5) scores the server, once per order: it may come with the cancel or, for an
    order that already ended, alone (``order_not_active`` is not raised then)."""
    if issue is not None and len(issue) > MAX_ISSUE_LENGTH:
        raise MarketError("issue_description_too_long")
    order = _own_order(conn, user_id, order_id, "you_dont_own_this_order")
    if rating is not None and order["rating"] is not None:
        raise MarketError("order_already_rated")
    lock_server(conn, order["server_id"])
    ended = end_order(conn, order_id, now, "cancelled")
    if ended is None and rating is None:
        raise MarketError("order_not_active")
    values: dict[str, Any] = {}
    if issue:
        values["issue"] = issue
    if rating is not None:
        values["rating"] = rating
    if values:
        conn.execute(update(orders).where(orders.c.id == order_id).values(**values))
    if rating is not None:
        rate_server(conn, order["server_id"])
    resolve_server(conn, order["server_id"], now)
    detail = {"ended": ended is not None, "rating": rating}
    record_by(conn, actor, ORDER_CANCEL, f"order:{order_id}", detail, about=user_id)


def rate_server(conn: Connection, server_id: int) -> None:
    """The server's ``rating``: the average of its orders' scores and how many there are."""
    avg, count = conn.execute(
        select(func.avg(orders.c.rating), func.count(orders.c.rating)).where(
            orders.c.server_id == server_id, orders.c.rating.is_not(None)
        )
    ).one()
    conn.execute(
        update(servers)
        .where(servers.c.id == server_id)
        .values(rating_avg=round(float(avg or 0), 2), rating_cnt=int(count))
    )


def cancel_orders(
    conn_factory: Any, user_id: int, order_ids: list[int], now: int, *, actor: Actor = SYSTEM
) -> dict[int, str | None]:
    """Cancel several orders, each in its own transaction (one failing leaves the others
    cancelled): ``{order id: None (cancelled) | error name}``."""
    results: dict[int, str | None] = {}
    for order_id in order_ids:
        if order_id in results:
            continue
        try:
            conn_factory(
                lambda conn, oid=order_id: cancel_order(conn, user_id, oid, None, now, actor=actor)
            )
            results[order_id] = None
        except MarketError as exc:
            results[order_id] = exc.name
    return results


def set_spot_price(
    conn: Connection,
    user_id: int,
    order_id: int,
    desired: int,
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> None:
    """Raise or lower one's bid (audited as ``actor``'s)."""
    record_by(
        conn,
        actor,
        PRICE_CHANGE,
        f"order:{order_id}",
        {"desired_price_units": desired},
        about=user_id,
    )
    reprice(conn, user_id, order_id, desired, settings, now, actor)


def reprice(
    conn: Connection,
    user_id: int,
    order_id: int,
    desired: int,
    settings: Settings,
    now: int,
    actor: Actor = SYSTEM,
) -> None:
    """The spot rules of a re-priced bid, for a use case that records its own audit entry
    (:func:`set_spot_price`, a GigaSPOT edit)."""
    order = _own_order(conn, user_id, order_id, "order_dont_exist")
    if not order["spot"]:
        raise MarketError("order_dont_exist")
    lock_server(conn, order["server_id"])
    order = dict(
        conn.execute(select(orders).where(orders.c.id == order_id).with_for_update()).one()._mapping
    )
    if order["expired"]:
        raise MarketError("order_dont_exist")
    current = order["price"]
    values: dict[str, Any] = {"price": desired}
    if desired > current:
        # a raise may take the server from others: it must be funded like a new bid
        wallet = wallet_id(conn, user_id, order["currency"])
        funds = 0 if wallet is None else balance(conn, wallet, lock=True)
        if funds < runway(desired, settings.runway_seconds):
            raise MarketError("not_enough_balance")
        check_spend(conn, actor, order["currency"], desired, now)
    if desired < current:
        min_spot = prices_of(conn, [order["server_id"]])[order["server_id"]].get(
            order["currency"], (0, 0)
        )[1]
        if order["gpu_count"] is not None:  # a bid for k of n GPUs: the minimum for its GPUs
            n = slot_count(server_gpu_array(conn, order["server_id"]))
            min_spot = slot_minimum(min_spot, min(order["gpu_count"], n), n)
        wait = seconds_until_lowering(
            order["last_lowered_at"], now, settings.spot_lowering_interval
        )
        if wait > 0:
            raise MarketError("can_lower_every_600_seconds", time_to_lowering=wait)
        if desired < min_spot:
            raise MarketError("amount_too_low", min_price=to_coins(min_spot))
        lowest = lowest_bid(current, min_spot)
        if desired < lowest:
            raise MarketError("exceeded_max_step", max_step=to_coins(lowest))
        values["last_lowered_at"] = now
    if desired != current:
        # bill the time at the old price before the new one applies; the new price starts a new
        # base, so it applies only to the seconds after now
        resolve_server(conn, order["server_id"], now)
        billed = conn.execute(
            select(orders.c.expired, orders.c.active_seconds, orders.c.spend).where(
                orders.c.id == order_id
            )
        ).one()
        if billed.expired:  # settling ended it (its balance or its time ran out)
            return
        values.update(base_seconds=billed.active_seconds, base_spend=billed.spend)
        conn.execute(update(orders).where(orders.c.id == order_id).values(**values))
        resolve_server(conn, order["server_id"], now)


def order_view(
    row: Row, server: Row | None, settings: Settings, http_templates: dict[str, str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "fee": bp_to_percent(row["fee_bp"]),
        "creation_fee": to_coins(row["creation_fee"]),
        "price": to_coins(row["price"]),
        "mrl": row["mrl"],
        "image": row["image"],
        "currency": row["currency"],
        "spend": to_coins(row["spend"]),
        "ct": row["ct"],
        "p": settings.proxy_cluster,
        "specs": clean_specs(server["specs"]) if server else None,
        "si": row["server_id"],
    }
    if row["pub_cluster"]:
        out["pub_cluster"] = list(row["pub_cluster"])
    out["tcp_ports"] = list(row["tcp_ports"] or [])
    if row["http_port"]:
        out["http_port"] = row["http_port"]
        url = None
        if http_templates and not row["expired"]:
            url = http_pub(
                http_templates, row["pub_cluster"], row.get("http_label"), row["http_port"]
            )
        if url is not None:
            out["http_pub"] = url
    if row["spot"]:
        out["spot"] = True
    if row["expired"]:
        out["expired"] = True
    if server is not None:  # live Clore sends these with every order
        out["online"] = bool(server["online"])
        out["cuda_version"] = cuda_version(server["specs"])
        out["reliability"] = server["reliability"]
        out["rating"] = {"avg": server["rating_avg"], "cnt": server["rating_cnt"]}
        out["gpu_array"] = clean_gpu_array(server["gpu_array"])
        out["owner"] = server["owner_id"]
    if row["rating"] is not None:
        out["my_past_rating"] = row["rating"]
    if row["oc"]:
        out["oc"] = list(row["oc"])
        if row["oc_failed"] is not None:
            out["oc_failed"] = row["oc_failed"]
    n = len(clean_gpu_array(server["gpu_array"])) if server is not None else 0
    # GPU slots (SPEC §8): every index for a whole-server order, else the ones it holds now
    out["gpus"] = list(range(n)) if row.get("gpu_count") is None else list(row.get("gpus") or [])
    out["gpu_count"] = n if row.get("gpu_count") is None else row["gpu_count"]
    out["running"] = row["running"]
    state = lifecycle_state(row)
    if state is not None:
        out["state"] = state
    if row["runtime_state"]:
        out["container_state"] = row["runtime_state"]
    if row["runtime_error"]:
        out["error"] = row["runtime_error"]
    out.update(_keeping_view(row))
    if row.get("template_id") is not None:
        out["template_id"] = row["template_id"]
    if row.get("image_digest") is not None:
        out["image_digest"] = row["image_digest"]
    if server is not None and server["simulated"]:
        out["simulated"] = True  # a demo server: no host, nothing answers on its ports
    return out


def lifecycle_state(row: Row) -> str | None:
    """``state`` (SPEC §8): ``ended``, ``stopped`` (keeps its disk), ``waiting`` (a bid holding
    no GPU), ``paused`` (its server is offline), else what its container does (``running``,
    ``pulling``, ``starting``, ``crash_loop``…; None before the agent said anything)."""
    if row["expired"]:
        return "ended"
    if row.get("stopped"):
        return "stopped"
    if not row["running"]:
        return "waiting" if row["spot"] else "paused"
    runtime = row["runtime_state"]
    return None if runtime in (None, "stopped", "halted") else str(runtime)


def _keeping_view(row: Row) -> dict[str, Any]:
    """The order's disk, storage, volumes and timers, where it has any (SPEC §8)."""
    out: dict[str, Any] = {}
    if row.get("disk_gb") is not None:
        out["disk_gb"] = row["disk_gb"]
        out["storage_per_day"] = to_coins(row["storage_rate"])
        out["storage_spend"] = to_coins(row["storage_spend"])
    if row.get("stopped"):
        out["stop_reason"] = row["stop_reason"]
    if row.get("mounts"):
        out["volumes"] = [
            {"id": int(vid), "path": path}
            for vid, path in sorted(row["mounts"].items(), key=lambda kv: int(kv[0]))
        ]
    if row.get("stop_at") is not None and not row["expired"]:
        out["stop_at"] = row["stop_at"]
    if row.get("restart_requested"):
        out["restarts"] = row["restart_requested"]
    if row.get("generation"):
        out["resets"] = row["generation"]
    if row.get("api_key_id") is not None:
        out["api_key_id"] = row["api_key_id"]  # the key it was created with (SPEC §8)
    return out


def my_orders(
    conn: Connection, user_id: int, return_completed: bool, settings: Settings
) -> dict[str, Any]:
    query = select(orders).where(orders.c.user_id == user_id).order_by(orders.c.id.desc())
    if not return_completed:
        query = query.where(orders.c.expired.is_(False))
    rows = [dict(r._mapping) for r in conn.execute(query)]
    server_ids = {r["server_id"] for r in rows}
    server_rows = (
        {
            s.id: dict(s._mapping)
            for s in conn.execute(select(servers).where(servers.c.id.in_(server_ids)))
        }
        if server_ids
        else {}
    )
    templates = http_urls(conn) if rows else {}
    return {
        "orders": [
            order_view(r, server_rows.get(r["server_id"]), settings, templates) for r in rows
        ],
        "limit": settings.max_active_orders,
    }


def order_detail(conn: Connection, order_id: int, settings: Settings) -> dict[str, Any]:
    row = dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)
    server = conn.execute(select(servers).where(servers.c.id == row["server_id"])).first()
    server_row = None if server is None else dict(server._mapping)
    return order_view(row, server_row, settings, http_urls(conn))
