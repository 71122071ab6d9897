"""Small authenticated endpoints (wallets, my_orders with a few orders) against a raw ASGI app
answering ``{"code":0}``.

Both run under uvicorn the same way (one worker) in the same run; wrk drives them alternately for
``--rounds`` rounds. Each target's figures are those of its median round (by req/s), and its
ratio is to the raw app measured in that same round. ``bench/check_code.lua`` checks every answer
(a status other than 2xx, a ``code`` other than 0 or a socket error fails the benchmark). Rate
limits are off for openclore (a setting); the caller has 3 wallets and 3 running orders.
Run: ``.venv/bin/python bench/endpoints.py`` (needs ``wrk``); the result goes to
``bench/results/endpoints.json`` (``endpoints-postgresql.json`` with ``--database-url``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parent))
from openclore.config import Settings
from openclore.ledger import ensure_system_accounts
from openclore.market import inputs
from openclore.market import orders as order_service
from openclore.market.accounts import create_user, issue_token
from openclore.market.wallets import deposit
from openclore.store.db import Database, listing_changed
from openclore.store.schema import server_prices, servers

from _common import (
    BENCH_DIR,
    BenchmarkFailed,
    free_port,
    machine,
    median_index,
    process,
    require_clean,
    uvicorn_args,
    write_result,
    wrk,
)

ORDERS = 3


def populate(url: str) -> str:
    """A host with a few servers, a renter with money in every wallet and ORDERS running
    orders; returns the renter's token."""
    settings = Settings(database_url=url)
    db = Database(url)
    db.create_all()
    now = int(time.time())
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        host = create_user(conn, "host", now, settings)
        renter = create_user(conn, "renter", now, settings)
        token = issue_token(conn, renter, now)
        for currency in settings.currencies:
            deposit(conn, renter, currency, 10**9, settings, now)
        conn.execute(
            insert(servers),
            [
                {
                    "id": i,
                    "owner_id": host,
                    "name": f"rig-{i}",
                    "init_token": f"{i:048d}",
                    "connected": True,
                    "online": True,
                    "simulated": True,
                    "visibility": "public",
                    "mrl_hours": 72,
                    "reliability": 0.99,
                    "rating_avg": 4.5,
                    "rating_cnt": 10,
                    "bg_command": "",
                    "bg_times_updated": 0,
                    "created_at": now,
                    "last_seen": now,
                    "gpu_array": ["NVIDIA GeForce RTX 4090"],
                    "specs": {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 24},
                }
                for i in range(1, ORDERS + 1)
            ],
        )
        conn.execute(
            insert(server_prices),
            [
                {"server_id": i, "currency": "bitcoin", "on_demand": 1_000, "spot": 500}
                for i in range(1, ORDERS + 1)
            ],
        )
        listing_changed(conn)
    for i in range(1, ORDERS + 1):
        body = {
            "currency": "bitcoin",
            "image": "cloreai/ubuntu20.04-jupyter",
            "type": "on-demand",
            "ports": {"22": "tcp", "8888": "http"},
            "renting_server": i,
        }
        req = inputs.validate_body(inputs.CreateOrderRequest, body)
        with db.write() as conn:
            order_service.create_order(conn, renter, req, settings, now)
    db.dispose()
    return token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    name = "endpoints-postgresql" if args.database_url else "endpoints"
    result: dict[str, Any] = {
        "benchmark": "endpoints",
        "command": shlex.join(["bench/endpoints.py", *sys.argv[1:]]),
        "machine": machine(),
        "parameters": vars(args) | {"threads": 2, "wrk_script": "bench/check_code.lua"},
    }
    try:
        run(args, result)
    except BenchmarkFailed as exc:
        result |= {"ok": False, "error": str(exc)}
        write_result(name, result)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    write_result(name, result)
    return 0


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="openclore-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'market.sqlite'}"
    token = populate(url)
    port_app, port_bare = free_port(), free_port()
    env = {
        "OPENCLORE_DATABASE_URL": url,
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_TICK_INTERVAL": "0",
    }
    app = f"http://127.0.0.1:{port_app}"
    bare_url = f"http://127.0.0.1:{port_bare}/"
    auth = {"auth": token}
    targets = (
        ("bare", bare_url, None),
        ("wallets", f"{app}/v1/wallets", auth),
        ("my_orders", f"{app}/v1/my_orders", auth),
    )
    rounds: list[dict[str, Any]] = []
    with process(
        uvicorn_args("openclore.serve:api_app_factory", port_app, factory=True),
        env,
        f"{app}/healthz",
    ):
        wallets = httpx.get(f"{app}/v1/wallets", headers=auth).json()
        orders = httpx.get(f"{app}/v1/my_orders", headers=auth).json()
        if wallets.get("code") != 0 or not wallets.get("wallets"):
            raise BenchmarkFailed(f"wallets did not answer: {wallets}")
        if orders.get("code") != 0 or len(orders.get("orders", [])) != ORDERS:
            raise BenchmarkFailed(f"my_orders is not the {ORDERS} orders: {orders}")
        bare_env = {"PYTHONPATH": str(BENCH_DIR)}
        with process(uvicorn_args("bare_app:app", port_bare), bare_env, bare_url):
            if httpx.get(bare_url).content != b'{"code":0}':
                raise BenchmarkFailed('the bare app does not answer {"code":0}')
            for i in range(args.rounds):
                row: dict[str, Any] = {"round": i + 1}
                for name, target, headers in targets:
                    measured = wrk(
                        target, seconds=args.seconds, connections=args.connections, headers=headers
                    )
                    require_clean(f"round {i + 1}, {name}", measured)
                    row[name] = measured
                    time.sleep(0.5)
                for name in ("wallets", "my_orders"):
                    row[name]["ratio_to_bare"] = round(row[name]["rps"] / row["bare"]["rps"], 3)
                rounds.append(row)
    median = {}
    for name, _, _ in targets:
        i = median_index([r[name]["rps"] for r in rounds])
        median[name] = {"round": rounds[i]["round"], **rounds[i][name]}
    result |= {
        "ok": True,
        "database": "postgresql" if args.database_url else "sqlite",
        "wallets_body": wallets,
        "orders": ORDERS,
        "runs": rounds,
        "median_run": median,
    }
    print(
        f"endpoints: wallets and my_orders ({ORDERS} orders), {result['database']}, "
        f"wrk -c{args.connections} {args.seconds}s x{args.rounds} rounds; median run of each "
        "target, ratio to the raw app measured in the same round; every answer's code checked"
    )
    print(
        f"{'target':<28}{'round':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}"
        f"{'errors':>8}"
    )
    labels = {
        "bare": 'raw ASGI {"code":0} (ceiling)',
        "wallets": "openclore wallets",
        "my_orders": "openclore my_orders",
    }
    for name, row in median.items():
        ratio = row.get("ratio_to_bare", 1.0)
        print(
            f"{labels[name]:<28}{row['round']:>6}{row['rps']:>10.1f}{row['p50_ms']:>10.1f}"
            f"{row['p99_ms']:>10.1f}{ratio:>8.2f}{row['errors']:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())
