"""The demo world (SPEC §6): the seed's examples replayed, plus a lively, deterministic market.

Seeded through the same services and ledger as real traffic, so every balance, spend and fee in
the demo is backed by transfers. Demo hosts are simulated agents: always online, no Docker.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.money import percent_to_bp, to_units
from openclore.domain.usd import rate_units
from openclore.engine.billing import lock_server, resolve_server, settle
from openclore.engine.clock import SandboxClock
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import system_account_id, transfer, wallet_id
from openclore.market.accounts import (
    authenticate,
    create_user,
    issue_token,
    set_password,
    set_role,
)
from openclore.market.wallets import deposit
from openclore.store.db import get_meta, set_meta, tokens_changed
from openclore.store.schema import (
    accounts,
    metadata,
    orders,
    server_prices,
    servers,
    templates,
    usd_rates,
    users,
)

WORLD_FILE = Path(__file__).with_name("demo_world.toml")
WORLD: dict[str, Any] = tomllib.loads(WORLD_FILE.read_text(encoding="utf-8"))
RENTER_HOST_TOKEN: str = WORLD["users"][0]["token"]  # user 1: owns "Jan Vykydal", "Michael"
RENTER_TOKEN: str = WORLD["users"][1]["token"]  # user 2: the create_order examples
GENERATOR: dict[str, Any] = WORLD["generator"]


@dataclass(frozen=True)
class DemoWorld:
    tokens: dict[str, str]  # description → token


def _set_explicit(conn: Connection, table: str, row_id: int, **values: Any) -> None:
    tbl = {"servers": servers, "orders": orders, "users": users}[table]
    conn.execute(insert(tbl).values(id=row_id, **values))


def _server(
    conn: Connection,
    server_id: int,
    owner: int,
    name: str,
    *,
    now: int,
    init_token: str,
    connected: bool,
    online: bool,
    visibility: str,
    mrl: int,
    specs: dict[str, Any] | None,
    prices: dict[str, tuple[str, str]],
    reliability: float = 1.0,
    rating: tuple[float, int] = (0.0, 0),
    background: dict[str, Any] | None = None,
) -> None:
    gpu_array: list[str] = []
    if specs and specs.get("gpu"):
        count, _, gpu_name = str(specs["gpu"]).partition("x ")
        gpu_array = [gpu_name] * int(count)
    _set_explicit(
        conn,
        "servers",
        server_id,
        owner_id=owner,
        name=name,
        init_token=init_token,
        connected=connected,
        online=online,
        last_seen=now if online else None,
        simulated=True,
        visibility=visibility,
        mrl_hours=mrl,
        specs=specs,
        gpu_array=gpu_array,
        pub_cluster=None,
        reliability=reliability,
        rating_avg=rating[0],
        rating_cnt=rating[1],
        bg_image=background["image"] if background else None,
        bg_command="",
        bg_env=[] if background else None,
        bg_times_updated=background["times_updated"] if background else 0,
        created_at=now - 86400 * 30,
    )
    for currency, (on_demand, spot) in prices.items():
        conn.execute(
            insert(server_prices).values(
                server_id=server_id,
                currency=currency,
                on_demand=to_units(on_demand),
                spot=to_units(spot),
            )
        )


def _history_order(conn: Connection, order: dict[str, Any], settings: Settings) -> None:
    """An ended order, billed through the real settlement path."""
    order_id, user, ct = order["id"], order["user"], order["ct"]
    creation_fee = order["creation_fee"]
    _set_explicit(
        conn,
        "orders",
        order_id,
        user_id=user,
        server_id=order["server"],
        spot=order["spot"],
        currency="bitcoin",
        price=to_units(order["price"]),
        fee_bp=percent_to_bp(Decimal(order["fee"])),
        creation_fee=to_units(creation_fee),
        mrl=262800,
        ct=ct,
        image="cloreai/ubuntu20.04-jupyter",
        command="",
        env={},
        ports={"22": "tcp", "8888": "http"},
        autossh_entrypoint=False,
        running=True,
        expired=False,
        active_seconds=0,
        billed_at=ct,
        spend=0,
        fee_paid=0,
        tcp_ports=order.get("tcp_ports", []),
        pub_cluster=order.get("pub_cluster"),
        http_port=order.get("http_port"),
    )
    wallet = wallet_id(conn, user, "bitcoin")
    assert wallet is not None  # every demo user has all wallets
    platform = system_account_id(conn, "platform", "bitcoin")
    transfer(
        conn,
        key=f"order:{order_id}:creation_fee",
        debit=wallet,
        credit=platform,
        amount=to_units(creation_fee),
        kind="creation_fee",
        now=ct,
        order_id=order_id,
    )
    row = dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)
    ended = ct + order["seconds"]
    settle(conn, row, ended)
    conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(expired=True, running=False, ended_at=ended, end_reason="cancelled")
    )


def seed(conn: Connection, settings: Settings, now: int) -> DemoWorld:
    """Seed the demo world (``demo_world.toml``) into an empty database (one transaction)."""
    world = WORLD
    rng = random.Random(world["seed"])
    set_meta(conn, DEMO_WORLD_KEY, 1)
    ensure_system_accounts(conn, settings.currencies)
    for currency, dollars in world.get("usd_rates", {}).items():
        conn.execute(
            insert(usd_rates).values(currency=currency, rate=rate_units(dollars), updated_at=now)
        )
    tokens: dict[str, str] = {}
    for expected_id, user in enumerate(world["users"], start=1):
        user_id = create_user(conn, user["name"], now - 86400 * 60, settings)
        assert user_id == expected_id
        if "password" in user:  # the web console's sign-in (the demo's passwords are public)
            set_password(conn, user_id, user["password"])
        if "role" in user:
            set_role(conn, user_id, user["role"])
    conn.execute(
        update(accounts)
        .where(accounts.c.key == "wallet:bitcoin:1")
        .values(deposit_address=world["user1_bitcoin_address"])
    )
    for user_id, user in enumerate(world["users"], start=1):
        token = issue_token(conn, user_id, now, user.get("token") or _init(rng)[:32])
        tokens[user.get("describe", f"host {user['name']}")] = token

    for server in world["servers"]:
        # drawn in this order: init token, specs, prices (the world stays the same)
        init_token = server.get("init_token") or _init(rng)
        specs = server.get("specs")
        if specs is not None and specs.startswith("generated:"):
            specs = _specs(rng, int(specs.split(":")[1]))
        elif specs is not None:
            specs = dict(world["specs"][specs], **server.get("specs_override", {}))
        _server(
            conn,
            server["id"],
            server["owner"],
            server["name"],
            now=now,
            init_token=init_token,
            connected=server["connected"],
            online=server["online"],
            visibility=server["visibility"],
            mrl=server["mrl"],
            specs=specs,
            prices=_price_table(rng, server["prices"]),
            reliability=server.get("reliability", 1.0),
            rating=tuple(server.get("rating", (0.0, 0))),
            background=server.get("background"),
        )
    generated = world["generated_servers"]
    owners = generated["owners"]
    for server_id in range(generated["first_id"], generated["last_id"] + 1):
        names = GENERATOR["names"]
        _server(
            conn,
            server_id,
            owners[server_id % len(owners)],
            f"{names[server_id % len(names)]}-{server_id}",
            now=now,
            init_token=_init(rng),
            connected=True,
            online=True,
            visibility="public",
            mrl=rng.choice(generated["mrl_choices"]),
            specs=_specs(rng, server_id),
            prices=_prices(rng, server_id),
            reliability=round(rng.uniform(0.85, 1.0), 3),
            rating=(round(rng.uniform(3.5, 5.0), 1), rng.randint(0, 250)),
        )

    _partial_rental(conn, world["partial_gpu_rental"], generated)
    for template in world.get("templates", []):
        conn.execute(
            insert(templates).values(
                user_id=template["owner"],
                name=template["name"],
                image=template["image"],
                ports=template.get("ports"),
                command=template.get("command"),
                readme=template.get("readme"),
                public=True,
                created_at=now - 86400 * 30,
            )
        )
    _storage(conn, world["storage"], generated)
    for item in world["deposits"]:
        amount = to_units(item["amount"]) + item.get("extra_units", 0)
        when = now - 86400 * item["days_ago"]
        deposit(conn, item["user"], item["currency"], amount, settings, when, key=item["key"])
    for order in world["history"]:
        _history_order(conn, order, settings)
    _offer(conn, world["offer"], settings, now)
    lock_server(conn, world["offer"]["server"])
    resolve_server(conn, world["offer"]["server"], now)
    _fix_sequences(conn)
    return DemoWorld(tokens=tokens)


def _partial_rental(conn: Connection, rule: dict[str, Any], generated: dict[str, Any]) -> None:
    """The generated servers with the most GPUs (ties: the lowest id) rent per GPU (SPEC §8), so
    a sandbox shows per-GPU rentals. No draw: the rest of the world stays the same."""
    rows = conn.execute(
        select(servers.c.id, servers.c.gpu_array).where(
            servers.c.id.between(generated["first_id"], generated["last_id"])
        )
    ).all()
    multi = sorted(
        (r for r in rows if len(r.gpu_array or []) >= 2),
        key=lambda r: (-len(r.gpu_array), r.id),
    )
    for row in multi[: rule["count"]]:
        conn.execute(
            update(servers)
            .where(servers.c.id == row.id)
            .values(partial_gpu_rental=True, min_gpus=rule["min_gpus"])
        )


def _storage(conn: Connection, rule: dict[str, Any], generated: dict[str, Any]) -> None:
    """The generated servers offer a disk and price storage (no draw: the rest of the world
    stays the same)."""
    ids = servers.c.id.between(generated["first_id"], generated["last_id"])
    conn.execute(update(servers).where(ids).values(disk_gb=rule["disk_gb"]))
    conn.execute(
        update(server_prices)
        .where(server_prices.c.server_id.between(generated["first_id"], generated["last_id"]))
        .values(storage=server_prices.c.on_demand // rule["price_divisor"])
    )


def _price_table(rng: random.Random, prices: Any) -> dict[str, tuple[str, str]]:
    if isinstance(prices, str):  # "generated:N"
        return _prices(rng, int(prices.split(":")[1]))
    return {currency: (pair[0], pair[1]) for currency, pair in prices.items()}


def _offer(conn: Connection, offer: dict[str, Any], settings: Settings, now: int) -> None:
    """A live spot bid, bought from now on and never lowered yet."""
    _set_explicit(
        conn,
        "orders",
        offer["id"],
        user_id=offer["user"],
        server_id=offer["server"],
        spot=True,
        currency="bitcoin",
        price=to_units(offer["price"]),
        fee_bp=percent_to_bp(settings.fee_spot),
        creation_fee=0,
        mrl=262800,
        ct=now,
        image="cloreai/ubuntu20.04-jupyter",
        command="",
        env={},
        ports={"22": "tcp", "8888": "http"},
        autossh_entrypoint=False,
        running=False,
        expired=False,
        active_seconds=0,
        spend=0,
        fee_paid=0,
        tcp_ports=offer["tcp_ports"],
        pub_cluster=offer["pub_cluster"],
        http_port=offer["http_port"],
        runtime_state="running",
    )


def _init(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(48))


def _specs(rng: random.Random, index: int) -> dict[str, Any]:
    gpus, cpus, countries = GENERATOR["gpus"], GENERATOR["cpus"], GENERATOR["countries"]
    gpu, vram, _ = gpus[index % len(gpus)]
    cuda = GENERATOR["cuda_versions"][index % len(gpus)]
    count = rng.choice([1, 1, 2, 4, 8]) if vram >= 24 else rng.choice([1, 2, 4])
    cpu, threads, board = cpus[rng.randrange(len(cpus))]
    return {
        "mb": board,
        "cpu": cpu,
        "cpus": threads,
        "ram": rng.choice([32, 64, 128, 256, 512]),
        "disk": f"NVMe {rng.choice([512, 1000, 2000, 4000])}GB",
        "disk_speed": rng.choice([1800, 2500, 3200, 5000, 6800]),
        "gpu": f"{count}x {gpu}",
        "gpuram": vram,
        "net": {
            "up": round(rng.uniform(20, 900), 2),
            "down": round(rng.uniform(50, 1000), 2),
            "cc": countries[rng.randrange(len(countries))],
        },
        "cuda_version": cuda,
    }


def _prices(rng: random.Random, index: int) -> dict[str, tuple[str, str]]:
    gpus = GENERATOR["gpus"]
    _, _, base = gpus[index % len(gpus)]
    btc = float(base) * rng.uniform(0.7, 1.4)
    out = {"bitcoin": (f"{btc:.8f}", f"{btc * 0.4:.8f}")}
    if rng.random() < 0.7:
        clore = btc / GENERATOR["btc_per_clore"]
        out["CLORE-Blockchain"] = (f"{clore:.2f}", f"{clore * 0.4:.2f}")
    if rng.random() < 0.5:
        usd = btc / GENERATOR["btc_per_usd"]
        out["USD-Blockchain"] = (f"{usd:.4f}", f"{usd * 0.4:.4f}")
    return out


def _fix_sequences(conn: Connection) -> None:
    """Explicit ids were inserted: move PostgreSQL's sequences past them (SQLite needs nothing)."""
    if conn.dialect.name != "postgresql":
        return
    for table in ("users", "servers", "orders"):
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        )


def reset_world(conn: Connection, settings: Settings, now: int) -> DemoWorld:
    """Empty every market table and seed the demo world again (sandbox ``reset``).

    ``meta`` survives, with the clock offset back to zero and the marketplace version bumped,
    so no process can serve a listing cached from the world before.
    """
    if not is_demo_world(conn):
        raise reset_refused()
    tables = [t for t in reversed(metadata.sorted_tables) if t.name != "meta"]
    if conn.dialect.name == "postgresql":
        names = ", ".join(t.name for t in tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    else:
        for table in tables:
            conn.execute(table.delete())
    SandboxClock.reset(conn)
    world = seed(conn, settings, now)
    tokens_changed(conn)  # every token was thrown away (the demo's are issued again)
    return world


DEMO_WORLD_KEY = "demo_world"


def is_seeded(conn: Connection) -> bool:
    return conn.execute(select(users.c.id).limit(1)).first() is not None


def is_demo_world(conn: Connection) -> bool:
    """Whether the database holds the demo world (or nothing at all), not a real market: only
    then may the sandbox throw it away. A world seeded before the marker existed is recognised
    by its first user's public demo token."""
    if not is_seeded(conn) or get_meta(conn, DEMO_WORLD_KEY) == 1:
        return True
    return authenticate(conn, RENTER_HOST_TOKEN) == 1


def reset_refused() -> MarketError:
    return MarketError("not_a_demo_world")
