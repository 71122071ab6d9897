"""The market as Vast.ai's API v0/v1 shows it (docs/vast-compat.md): offers, instances, labels.

Translation only: every change goes through the same use cases the Clore API uses
(:func:`openclore.market.orders.create_order`, :mod:`openclore.market.keeping`,
:func:`openclore.market.orders.cancel_order`), so every rule, event and audit entry holds.

* **Offers** (the search): :mod:`openclore.market.vast_offers`; an offer id names a server and
  a GPU count, which ``PUT /asks/{id}/`` rents as an order.
* **Instances** are the caller's live orders; the id is the order id.
* **Labels** are kept in the audit log (``order.label`` entries: who set which label when); an
  instance's label is the latest one.
"""

from __future__ import annotations

import itertools
import math
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, select

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import UNITS_PER_COIN, Coins
from openclore.domain.slots import slot_minimum
from openclore.domain.specs import clean_gpu_array, clean_specs
from openclore.domain.usd import NANO, usd_of
from openclore.ledger.ledger import balance, wallet_id
from openclore.market import inputs
from openclore.market.account_keys import account_keys
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.market.orders import create_order, lifecycle_state, set_spot_price
from openclore.market.servers import prices_of
from openclore.market.vast_offers import (
    number,
    pick_currency,
    server_facts,
    split_offer_id,
    threads_of,
    units_per_day,
    usd_per_hour,
)
from openclore.store.schema import audit_log, orders, servers, users

MAX_LABEL = 256
ORDER_LABEL = "order.label"  # the audit action that sets an instance's label


# ------------------------------------------------------------------------------------- create


@dataclass
class CreateInstance:
    """``PUT /asks/{id}/``, read."""

    image: str
    disk: float | None
    label: str | None
    onstart: str
    runtype: str
    args: list[str] | None
    env: dict[str, str]
    ports: dict[str, str]
    price: Decimal | None  # USD per hour (None: on demand; 0: the minimum bid)
    image_login: str | None
    currency: str | None


def _text(body: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: expected a string")
    if len(value) > limit:
        raise InvalidInput(f"{name}: at most {limit} characters")
    return value


def read_create(body: Mapping[str, Any]) -> CreateInstance:
    """The create-instance body as the vastai clients send it; clear errors for bad input."""
    image = _text(body, "image", 512)
    if image is None:
        if body.get("template_hash_id"):
            raise InvalidInput("templates are not supported: send image")
        raise InvalidInput("image: required")
    runtype = _text(body, "runtype", 64) or ("args" if body.get("args") is not None else "ssh")
    raw_args = body.get("args")
    args: list[str] | None = None
    if isinstance(raw_args, str):
        args = shlex.split(raw_args) if raw_args.strip() else None
    elif isinstance(raw_args, list) and all(isinstance(a, str) for a in raw_args):
        args = list(raw_args) or None
    elif raw_args is not None:
        raise InvalidInput("args: expected a list of strings")
    env_raw = body.get("env") or {}
    if isinstance(env_raw, str):
        raise InvalidInput("env: expected an object (the vastai client parses '-e K=V -p 80:80')")
    if not isinstance(env_raw, dict):
        raise InvalidInput("env: expected an object")
    env: dict[str, str] = {}
    ports: dict[str, str] = {}
    for key, value in env_raw.items():
        if not isinstance(key, str):
            raise InvalidInput("env: names are strings")
        if key.startswith("-p "):
            ports[_container_port(key[3:])] = "tcp"
        elif key.startswith(("-v ", "-n ", "-h ")) or key == "-h":
            continue  # docker options openclore does not take (docs/vast-compat.md)
        else:
            if not isinstance(value, str | int | float | Decimal) or isinstance(value, bool):
                raise InvalidInput(f"env: {key[:32]!r} must be a string")
            env[key] = str(value)
    if "ssh" in runtype or "jupyter" in runtype:
        ports.setdefault("22", "tcp")
    if "jupyter" in runtype:
        ports["8080"] = "http"
    price = read_price(body.get("price"))
    disk = body.get("disk")
    return CreateInstance(
        image=image,
        disk=None if disk is None else number(disk, "disk"),
        label=_text(body, "label", MAX_LABEL),
        onstart=_text(body, "onstart", 16000) or "",
        runtype=runtype,
        args=args,
        env=env,
        ports=ports,
        price=price,
        image_login=_text(body, "image_login", 2048),
        currency=_text(body, "currency", 32),
    )


def read_price(raw: Any) -> Decimal | None:
    """A price in USD per hour (null: none, i.e. on demand)."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal | str):
        raise InvalidInput("price: expected a number (USD per hour) or null")
    try:
        price = Decimal(str(raw))
    except InvalidOperation:
        raise InvalidInput("price: expected a number (USD per hour) or null") from None
    if not price.is_finite() or price < 0:
        raise InvalidInput("price: expected a number ≥ 0 (USD per hour) or null")
    return price


def _container_port(spec: str) -> str:
    """``-p 8080:8080`` (host:container[/proto]) → the container port ``8080``."""
    spec = spec.strip()
    port, _, proto = spec.rpartition(":")[2].partition("/")
    if proto not in ("", "tcp"):
        raise InvalidInput(f"env -p {spec[:32]}: only TCP ports are published")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"env -p {spec[:32]}: not a port number")
    return str(int(port))


def registry_auth(login: str | None) -> str | None:
    """Vast's ``image_login`` (``-u USER -p SECRET [REGISTRY]``) as ``user:secret``."""
    if login is None:
        return None
    words = shlex.split(login)
    user = secret = None
    for flag, value in itertools.pairwise(words):
        if flag in ("-u", "--username"):
            user = value
        elif flag in ("-p", "--password"):
            secret = value
    if not user or not secret:
        raise InvalidInput("image_login: expected '-u USER -p PASSWORD [REGISTRY]'")
    return f"{user}:{secret}"


def onstart_command(ask: CreateInstance) -> str:
    """The order's onstart script: Vast's ``onstart``, then the ``args`` runtype's command."""
    parts = [ask.onstart] if ask.onstart else []
    if ask.args:
        parts.append("exec " + shlex.join(ask.args))
    return "\n".join(parts)


def _funded_currency(
    conn: Connection, user_id: int, item: Mapping[str, Any], rates: Mapping[str, int], bid: bool
) -> str | None:
    """The offer's currency, unless another of the server's rated currencies is the one the
    caller's wallet holds money in (the cheapest such)."""
    price = item.get("price") or {}
    side = price.get("spot" if bid else "on_demand") or {}
    funded = []
    for currency, value in side.items():
        rate = rates.get(currency)
        if rate is None or not isinstance(value, Coins) or value.units <= 0:
            continue
        wallet = wallet_id(conn, user_id, currency)
        if wallet is not None and balance(conn, wallet) > 0:
            funded.append((usd_of(value.units, rate), currency))
    if funded:
        return str(min(funded)[1])
    return pick_currency(item, rates, bid)


def create_instance(
    conn: Connection,
    user_id: int,
    offer_id: int,
    ask: CreateInstance,
    listing: Sequence[Mapping[str, Any]],
    rates: Mapping[str, int],
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> int:
    """``PUT /asks/{id}/`` as a ``create_order``; returns the order (instance) id."""
    server_id, k = split_offer_id(offer_id)
    item = next((s for s in listing if s["id"] == server_id), None)
    if item is None:
        raise MarketError("server-dont-exist")
    n = len(clean_gpu_array(item.get("gpu_array")))
    if k != n and not (item.get("partial_gpu_rental") or {}).get("enabled"):
        raise MarketError("server-dont-exist")
    bid = ask.price is not None
    currency = ask.currency or _funded_currency(conn, user_id, item, rates, bid)
    if currency is None or currency not in rates:
        raise InvalidInput("this offer has no price in a currency with a USD rate")
    body: dict[str, Any] = {
        "currency": currency,
        "image": ask.image,
        "renting_server": server_id,
        "type": "spot" if bid else "on-demand",
        "ports": ask.ports or None,
        "env": ask.env or None,
        "command": onstart_command(ask) or None,
        "autossh_entrypoint": "ssh" in ask.runtype or "jupyter" in ask.runtype,
        "dockerhub_auth": registry_auth(ask.image_login),
    }
    if "jupyter" in ask.runtype:
        body["jupyter_token"] = secrets.token_hex(16)
    if k != n:
        body["gpu_count"] = k
    if ask.disk is not None and (item.get("storage") or {}).get("disk_gb") is not None:
        offered = int((item.get("storage") or {})["disk_gb"])
        if k != n:
            offered = max(1, offered * k // n)
        body["disk_gb"] = max(1, min(offered, math.ceil(ask.disk)))
    if bid:
        assert ask.price is not None
        held = prices_of(conn, [server_id], enabled_only=True)[server_id]
        if currency not in held:  # switched off by its host, or never priced
            raise MarketError("currency-not-allowed")
        spot_min = held[currency][1]
        least = slot_minimum(spot_min, k, n) if n else spot_min  # k of n GPUs: their share
        bid_units = least if ask.price == 0 else units_per_day(ask.price, rates[currency])
        if ask.price != 0 and bid_units < least:
            raise MarketError(
                "too_low_price",
                min_price=Coins(least),
                min_bid=usd_per_hour(least, rates[currency]),
            )
        body["spotprice"] = Decimal(bid_units) / UNITS_PER_COIN
    req = inputs.validate_body(inputs.CreateOrderRequest, body)
    order_id = create_order(conn, user_id, req, settings, now, actor=actor)
    if ask.label:
        set_label(conn, user_id, order_id, ask.label, actor=actor)
    return order_id


def change_bid(
    conn: Connection,
    user_id: int,
    order_id: int,
    usd_hour: Decimal | None,
    rates: Mapping[str, int],
    settings: Settings,
    now: int,
    *,
    actor: Actor = SYSTEM,
) -> None:
    """``PUT /instances/bid_price/{id}/``: a bid's new price in USD per hour, through
    ``set_spot_price`` (every spot rule holds: the lowering window, the step); ``None`` or 0:
    the least the bid may be."""
    row = conn.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None or row.user_id != user_id:
        raise MarketError("order_dont_exist")
    if not row.spot:
        raise InvalidInput("not an interruptible instance: only a bid has a bid price")
    rate = rates.get(row.currency)
    if rate is None:
        raise InvalidInput(f"no USD rate for {row.currency}: the bid cannot be priced in USD")
    if usd_hour is None or usd_hour == 0:
        server = conn.execute(select(servers.c.gpu_array).where(servers.c.id == row.server_id))
        n = len(clean_gpu_array(server.scalar()))
        spot_min = prices_of(conn, [row.server_id])[row.server_id].get(row.currency, (0, 0))[1]
        k = n if row.gpu_count is None else int(row.gpu_count)
        # a server that now reports no GPUs has no share to take: its whole minimum
        desired = slot_minimum(spot_min, k, n) if n else spot_min
    else:
        desired = units_per_day(usd_hour, rate)
    set_spot_price(conn, user_id, order_id, desired, settings, now, actor=actor)


# ------------------------------------------------------------------------------------- labels


def set_label(
    conn: Connection, user_id: int, order_id: int, label: str | None, *, actor: Actor = SYSTEM
) -> None:
    """Label one's own live order (an ``order.label`` audit entry; ``None`` or "" clears it)."""
    if label is not None and len(label) > MAX_LABEL:
        raise InvalidInput(f"label: at most {MAX_LABEL} characters")
    row = conn.execute(
        select(orders.c.user_id, orders.c.expired).where(orders.c.id == order_id)
    ).first()
    if row is None or row.user_id != user_id:
        raise MarketError("order_dont_exist")
    if row.expired:
        raise MarketError("order_not_active")
    record_by(
        conn, actor, ORDER_LABEL, f"order:{order_id}", {"label": label or None}, about=user_id
    )


def labels(conn: Connection, user_id: int) -> dict[int, str | None]:
    """The latest label of each of the user's labelled orders."""
    out: dict[int, str | None] = {}
    rows = conn.execute(
        select(audit_log.c.target, audit_log.c.detail)
        .where(audit_log.c.user_id == user_id, audit_log.c.action == ORDER_LABEL)
        .order_by(audit_log.c.id)
    )
    for row in rows:
        target = str(row.target)
        if target.startswith("order:") and target[6:].isdigit():
            detail = row.detail if isinstance(row.detail, dict) else {}
            label = detail.get("label")
            out[int(target[6:])] = label if isinstance(label, str) else None
    return out


# ------------------------------------------------------------------------------------- instances


def actual_status(row: Mapping[str, Any]) -> str:
    """Vast's ``actual_status`` (loading, running, exited, stopped) of a live order."""
    state = lifecycle_state(row)
    if state in ("stopped", "waiting"):
        return "stopped"
    if state == "paused":
        return "exited"
    if state == "running":
        return "running"
    if state in ("crash_loop", "exited", "error", "dead", "failed"):
        return "exited"
    return "loading"


def docker_ports(tcp_ports: Sequence[str], host: str | None) -> dict[str, list[dict[str, str]]]:
    """``["22:40001"]`` → Docker's ``{"22/tcp": [{"HostIp": ..., "HostPort": "40001"}]}``."""
    out: dict[str, list[dict[str, str]]] = {}
    for mapping in tcp_ports:
        inner, _, outer = str(mapping).partition(":")
        if inner.isdigit() and outer.isdigit():
            out[f"{inner}/tcp"] = [{"HostIp": host or "0.0.0.0", "HostPort": outer}]
    return out


def _runtype(row: Mapping[str, Any]) -> str:
    ports = row.get("ports") or {}
    if "8080" in ports and row.get("jupyter_token"):
        return "jupyter_proxy ssh_proxy"
    return "ssh_proxy" if row.get("autossh_entrypoint") else "args"


def instance_row(
    row: Mapping[str, Any],
    server: Mapping[str, Any] | None,
    rates: Mapping[str, int],
    label: str | None,
    now: int,
) -> dict[str, Any]:
    """One live order as a Vast instance."""
    item: dict[str, Any] = {"id": row["server_id"], "specs": None, "gpu_array": []}
    if server is not None:
        item = {
            "id": server["id"],
            "owner": server["owner_id"],
            "specs": clean_specs(server["specs"]),
            "gpu_array": server["gpu_array"],
            "reliability": server["reliability"],
        }
    facts = server_facts(item)
    n = len(clean_gpu_array(item.get("gpu_array")))
    k = n if row.get("gpu_count") is None else int(row["gpu_count"])
    share = 1.0 if n == 0 else k / n
    specs = item.get("specs") or {}
    threads = threads_of(specs)
    rate = rates.get(row["currency"])
    dph = None if rate is None else usd_per_hour(int(row["price"]), rate)
    hosts = row.get("pub_cluster") or []
    host = str(hosts[0]) if hosts else None
    ports = docker_ports(row.get("tcp_ports") or [], host)
    ssh = ports.get("22/tcp")
    status = actual_status(row)
    stopped = bool(row.get("stopped"))
    running_now = bool(row["running"]) and not stopped
    storage = None
    if rate is not None and row.get("storage_rate"):
        storage = usd_per_hour(int(row["storage_rate"]), rate)
    out = dict(facts)
    out.update(
        {
            "id": row["id"],
            "actual_status": status,
            "cur_state": "running" if running_now else "stopped",
            "next_state": "stopped" if stopped else "running",
            "intended_status": "stopped" if stopped else "running",
            "status_msg": row.get("runtime_error") or lifecycle_state(row) or "loading",
            "label": label,
            "image_uuid": row["image"],
            "image_runtype": _runtype(row),
            "image_args": [],
            "onstart": row.get("command") or "",
            "extra_env": [[k2, v] for k2, v in sorted((row.get("env") or {}).items())],
            "jupyter_token": row.get("jupyter_token"),
            "num_gpus": k,
            "gpu_frac": share,
            "gpu_totalram": None if facts["gpu_ram"] is None else facts["gpu_ram"] * k,
            "cpu_cores": threads,
            "cpu_cores_effective": None if threads is None else threads * share,
            "disk_space": row.get("disk_gb"),
            "disk_usage": None,
            "gpu_util": None,
            "dph_base": dph,
            "dph_total": dph,
            "storage_total_cost": storage,
            "is_bid": bool(row["spot"]),
            "min_bid": dph if row["spot"] else None,
            "public_ipaddr": host,
            "ssh_host": host if ssh else None,
            "ssh_port": int(ssh[0]["HostPort"]) if ssh else None,
            "ssh_idx": None,
            "ports": ports,
            "local_ipaddrs": "",
            "start_date": float(row["ct"]),
            "end_date": float(row["ct"] + row["mrl"]),
            "duration": float(max(0, now - row["ct"])),
            "currency": row["currency"],  # openclore: the coin it is billed in
            "openclore_state": lifecycle_state(row),
        }
    )
    return out


def instances(
    conn: Connection, user_id: int, rates: Mapping[str, int], now: int
) -> list[dict[str, Any]]:
    """The user's live orders as Vast instances (oldest first)."""
    rows = [
        dict(r._mapping)
        for r in conn.execute(
            select(orders)
            .where(orders.c.user_id == user_id, orders.c.expired.is_(False))
            .order_by(orders.c.id)
        )
    ]
    if not rows:
        return []
    ids = {r["server_id"] for r in rows}
    by_id = {
        s.id: dict(s._mapping) for s in conn.execute(select(servers).where(servers.c.id.in_(ids)))
    }
    named = labels(conn, user_id)
    return [
        instance_row(r, by_id.get(r["server_id"]), rates, named.get(r["id"]), now) for r in rows
    ]


def instance(
    conn: Connection, user_id: int, order_id: int, rates: Mapping[str, int], now: int
) -> dict[str, Any] | None:
    """One of the user's orders as an instance; None once it ended (Vast: destroyed);
    ``order_dont_exist`` for an order that is not the user's."""
    row = conn.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None or row.user_id != user_id:
        raise MarketError("order_dont_exist")
    if row.expired:
        return None
    found = dict(row._mapping)
    server = conn.execute(select(servers).where(servers.c.id == found["server_id"])).first()
    return instance_row(
        found,
        None if server is None else dict(server._mapping),
        rates,
        labels(conn, user_id).get(order_id),
        now,
    )


def current_user(
    conn: Connection, user_id: int, rates: Mapping[str, int], settings: Settings
) -> dict[str, Any]:
    """``GET /users/current``: the account, its balance as USD (wallets that have a rate)."""
    name = str(conn.execute(select(users.c.name).where(users.c.id == user_id)).scalar_one())
    usd = 0
    for currency in settings.currencies:
        wallet = wallet_id(conn, user_id, currency)
        rate = rates.get(currency)
        if wallet is not None and rate is not None:
            usd += usd_of(balance(conn, wallet), rate)
    return {
        "id": user_id,
        "username": name,
        "email": None,
        "fullname": name,
        "balance": usd / NANO,
        "credit": usd / NANO,
        "has_billing": True,
        "can_pay": True,
        "ssh_key": account_keys(conn, user_id) or "",
        "billed_verification": None,
    }
