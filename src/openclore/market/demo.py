"""The demo world (SPEC §6): the seed's examples replayed, plus a lively, deterministic market.

Seeded through the same services and ledger as real traffic, so every balance, spend and fee in
the demo is backed by transfers. Demo hosts are simulated agents: always online, no Docker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.money import percent_to_bp, to_units
from openclore.engine.billing import lock_server, resolve_server, settle
from openclore.engine.clock import SandboxClock
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import system_account_id, transfer, wallet_id
from openclore.market.accounts import authenticate, create_user, issue_token
from openclore.market.wallets import deposit
from openclore.store.db import get_meta, listing_changed, set_meta
from openclore.store.schema import accounts, metadata, orders, server_prices, servers, users

RENTER_HOST_TOKEN = "b8qwqRAL5W7YDyDJeB4XANVvKndbrrPk"  # user 1: owns "Jan Vykydal", "Michael"
RENTER_TOKEN = "6FcuR7ibcwKR1Z32lEFoSotzUUtzKO2H"  # user 2: the create_order examples
MICHAEL_INIT_TOKEN = "qnwVIMsZPjUWS7jw6gAbTOeoGQNgTH9XVxJaiCEbG0OlmfjF"
USER1_BTC_ADDRESS = "tb1q6erw7v02t7hakgmlcl4wfnlykzqj05alndruwr"
DEMO_SEED = 20221102

JAN_SPECS = {
    "mb": "Z590 GAMING X",
    "cpu": "Intel Core i9-11900",
    "cpus": "8/16",
    "ram": 64,
    "disk": "NVMe 512GB",
    "disk_speed": 2000,
    "gpu": "1x GeForce GTX 1080 Ti",
    "gpuram": 11,
    "net": {"down": 119.61, "up": 25.24},
}
SERVER6_SPECS = {
    "mb": "Z590 GAMING X",
    "cpu": "11th Gen Intel(R) Core(TM) i9-11900 @ 2.50GHz",
    "cpus": "8/16",
    "ram": 62.67348861694336,
    "disk": "NVMe disk 247.3623046875GB",
    "disk_speed": 2000,
    "gpu": "1x NVIDIA GeForce GTX 1080 Ti",
    "gpuram": 11,
    "net": {"up": 26.38, "down": 118.42, "cc": "CZ"},
}

# (name, VRAM GB, on-demand BTC/day at one GPU) — prices scale with the GPU count
GPUS = [
    ("NVIDIA GeForce RTX 4090", 24, "0.00009"),
    ("NVIDIA GeForce RTX 3090", 24, "0.00005"),
    ("NVIDIA GeForce RTX 3080", 10, "0.00003"),
    ("NVIDIA GeForce RTX 3060", 12, "0.000015"),
    ("NVIDIA GeForce RTX 4080", 16, "0.00007"),
    ("NVIDIA RTX A6000", 48, "0.00012"),
    ("NVIDIA A100-SXM4-80GB", 80, "0.0004"),
    ("NVIDIA H100 80GB HBM3", 80, "0.0007"),
    ("Tesla V100-SXM2-16GB", 16, "0.00006"),
    ("NVIDIA GeForce GTX 1080 Ti", 11, "0.00001"),
]
CPUS = [
    ("AMD Ryzen 9 7950X 16-Core Processor", "16/32", "ASUS ROG STRIX X670E-E"),
    ("AMD EPYC 7543 32-Core Processor", "32/64", "Supermicro H12SSL-i"),
    ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "32/64", "Supermicro X12DPi-NT6"),
    ("Intel(R) Core(TM) i7-12700K", "12/20", "MSI PRO Z690-A"),
    ("AMD Ryzen 7 5800X 8-Core Processor", "8/16", "Gigabyte B550 AORUS ELITE"),
]
COUNTRIES = ["CZ", "DE", "US", "PL", "FI", "NL", "CA", "JP", "BR", "UA", "FR", "SE"]
NAMES = ["Aurora", "Basalt", "Cobalt", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Iris"]
BTC_PER_CLORE = 0.0000002
BTC_PER_USD = 0.000011


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
    background: tuple[str, int] | None = None,
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
        bg_image=background[0] if background else None,
        bg_command="",
        bg_env=[] if background else None,
        bg_times_updated=background[1] if background else 0,
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


def _history_order(
    conn: Connection,
    order_id: int,
    *,
    user: int,
    server: int,
    spot: bool,
    price: str,
    fee: str,
    creation_fee: str,
    ct: int,
    seconds: int,
    settings: Settings,
    connection: dict[str, Any],
) -> None:
    """An ended order, billed through the real settlement path."""
    _set_explicit(
        conn,
        "orders",
        order_id,
        user_id=user,
        server_id=server,
        spot=spot,
        currency="bitcoin",
        price=to_units(price),
        fee_bp=percent_to_bp(Decimal(fee)),
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
        tcp_ports=connection.get("tcp_ports", []),
        pub_cluster=connection.get("pub_cluster"),
        http_port=connection.get("http_port"),
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
    settle(conn, row, ct + seconds)
    conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(expired=True, running=False, ended_at=ct + seconds, end_reason="cancelled")
    )


def seed(conn: Connection, settings: Settings, now: int) -> DemoWorld:
    """Seed the demo world into an empty database (one transaction)."""
    rng = random.Random(DEMO_SEED)
    set_meta(conn, DEMO_WORLD_KEY, 1)
    ensure_system_accounts(conn, settings.currencies)
    names = ["jan", "renter", "hosting-cz", "michael", "gpu-farm", "lab-pool"]
    for expected_id, name in enumerate(names, start=1):
        user_id = create_user(conn, name, now - 86400 * 60, settings)
        assert user_id == expected_id
    conn.execute(
        update(accounts)
        .where(accounts.c.key == "wallet:bitcoin:1")
        .values(deposit_address=USER1_BTC_ADDRESS)
    )
    issue_token(conn, 1, now, RENTER_HOST_TOKEN)
    issue_token(conn, 2, now, RENTER_TOKEN)
    host_tokens = {
        name: issue_token(conn, uid, now, _init(rng)[:32])
        for uid, name in enumerate(names, 1)
        if uid > 2
    }

    # user 1's servers: "Michael" (never connected), a hidden one, "Jan Vykydal" (id 4, offline)
    _server(
        conn,
        1,
        1,
        "Michael",
        now=now,
        init_token=MICHAEL_INIT_TOKEN,
        connected=False,
        online=False,
        visibility="hidden",
        mrl=72,
        specs=None,
        prices={},
    )
    _server(
        conn,
        2,
        1,
        "Tomas",
        now=now,
        init_token=_init(rng),
        connected=True,
        online=False,
        visibility="hidden",
        mrl=48,
        specs=dict(JAN_SPECS, gpu="2x GeForce RTX 2080 Ti", gpuram=11),
        prices={"bitcoin": ("0.00004", "0.00002")},
    )
    _server(
        conn,
        3,
        3,
        "Brno-3090",
        now=now,
        init_token=_init(rng),
        connected=True,
        online=True,
        visibility="public",
        mrl=168,
        specs=_specs(rng, 0),
        prices=_prices(rng, 1),
        reliability=0.991,
        rating=(4.8, 37),
    )
    _server(
        conn,
        4,
        1,
        "Jan Vykydal",
        now=now,
        init_token=_init(rng),
        connected=True,
        online=False,
        visibility="public",
        mrl=72,
        specs=JAN_SPECS,
        prices={"bitcoin": ("0.00010337", "0.00005168")},
        background=("cloreai/ubuntu20.04-jupyter", 1),
    )
    _server(
        conn,
        5,
        3,
        "Brno-4090",
        now=now,
        init_token=_init(rng),
        connected=True,
        online=True,
        visibility="public",
        mrl=96,
        specs=_specs(rng, 1),
        prices=_prices(rng, 2),
        reliability=0.973,
        rating=(4.6, 12),
    )
    _server(
        conn,
        6,
        4,
        "michael-1080ti",
        now=now,
        init_token=_init(rng),
        connected=True,
        online=True,
        visibility="public",
        mrl=73,
        specs=SERVER6_SPECS,
        prices={"bitcoin": ("0.00001", "0.000001")},
        reliability=0.998,
        rating=(4.9, 102),
    )
    hosts = [3, 4, 5, 6]
    for server_id in range(7, 43):
        owner = hosts[server_id % len(hosts)]
        _server(
            conn,
            server_id,
            owner,
            f"{NAMES[server_id % len(NAMES)]}-{server_id}",
            now=now,
            init_token=_init(rng),
            connected=True,
            online=True,
            visibility="public",
            mrl=rng.choice([24, 48, 72, 168, 336, 720]),
            specs=_specs(rng, server_id),
            prices=_prices(rng, server_id),
            reliability=round(rng.uniform(0.85, 1.0), 3),
            rating=(round(rng.uniform(3.5, 5.0), 1), rng.randint(0, 250)),
        )

    # money: user 1 ends at the seed's 0.00153176 BTC after paying for orders 36 and 38
    deposit(
        conn,
        1,
        "bitcoin",
        to_units("0.00153176") + 138 + 6 + 100 + 300,
        settings,
        now - 86400 * 45,
        key="demo:1:bitcoin",
    )
    deposit(conn, 2, "bitcoin", to_units("0.05"), settings, now - 86400, key="demo:2:bitcoin")
    deposit(
        conn, 2, "CLORE-Blockchain", to_units("2500"), settings, now - 86400, key="demo:2:clore"
    )
    deposit(conn, 2, "USD-Blockchain", to_units("120"), settings, now - 86400, key="demo:2:usd")
    deposit(conn, 1, "CLORE-Blockchain", to_units("300"), settings, now - 86400, key="demo:1:clore")

    _history_order(
        conn,
        36,
        user=1,
        server=6,
        spot=True,
        price="0.00001",
        fee="2.5",
        creation_fee="0.0000001",
        ct=1667248597,
        seconds=1200,
        settings=settings,
        connection={"tcp_ports": []},
    )
    _history_order(
        conn,
        38,
        user=1,
        server=6,
        spot=False,
        price="0.00001",
        fee="5",
        creation_fee="0.0000003",
        ct=1667401396,
        seconds=60,
        settings=settings,
        connection={
            "pub_cluster": ["n1.c1.clorecloud.net", "n2.c1.clorecloud.net"],
            "tcp_ports": ["22:10000"],
            "http_port": "8888",
        },
    )
    # offer 39: user 1's active spot bid on server 6 (bought from now on, never lowered yet)
    _set_explicit(
        conn,
        "orders",
        39,
        user_id=1,
        server_id=6,
        spot=True,
        currency="bitcoin",
        price=to_units("0.0000042"),
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
        tcp_ports=["22:10039"],
        pub_cluster=["localhost"],
        http_port="8888",
        runtime_state="running",
    )
    lock_server(conn, 6)
    resolve_server(conn, 6, now)
    _fix_sequences(conn)
    return DemoWorld(
        tokens={
            "user 1 (jan: hosts 'Jan Vykydal', 'Michael'; spot offer 39)": RENTER_HOST_TOKEN,
            "user 2 (renter: the create_order examples)": RENTER_TOKEN,
            **{f"host {name}": token for name, token in host_tokens.items()},
        }
    )


def _init(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(48))


def _specs(rng: random.Random, index: int) -> dict[str, Any]:
    gpu, vram, _ = GPUS[index % len(GPUS)]
    count = rng.choice([1, 1, 2, 4, 8]) if vram >= 24 else rng.choice([1, 2, 4])
    cpu, cpus, board = CPUS[rng.randrange(len(CPUS))]
    return {
        "mb": board,
        "cpu": cpu,
        "cpus": cpus,
        "ram": rng.choice([32, 64, 128, 256, 512]),
        "disk": f"NVMe {rng.choice([512, 1000, 2000, 4000])}GB",
        "disk_speed": rng.choice([1800, 2500, 3200, 5000, 6800]),
        "gpu": f"{count}x {gpu}",
        "gpuram": vram,
        "net": {
            "up": round(rng.uniform(20, 900), 2),
            "down": round(rng.uniform(50, 1000), 2),
            "cc": COUNTRIES[rng.randrange(len(COUNTRIES))],
        },
    }


def _prices(rng: random.Random, index: int) -> dict[str, tuple[str, str]]:
    _, _, base = GPUS[index % len(GPUS)]
    btc = float(base) * rng.uniform(0.7, 1.4)
    out = {"bitcoin": (f"{btc:.8f}", f"{btc * 0.4:.8f}")}
    if rng.random() < 0.7:
        clore = btc / BTC_PER_CLORE
        out["CLORE-Blockchain"] = (f"{clore:.2f}", f"{clore * 0.4:.2f}")
    if rng.random() < 0.5:
        usd = btc / BTC_PER_USD
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
    listing_changed(conn)
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
