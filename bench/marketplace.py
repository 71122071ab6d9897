"""GET /v1/marketplace with 10,000 listed servers: openclore against a bare ASGI app.

Both run under uvicorn the same way (one worker, same port options) in the same run; wrk drives
them alternately for ``--rounds`` rounds and the medians are compared. Rate limits are off for
openclore (a setting). Run: ``.venv/bin/python bench/marketplace.py`` (needs ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parent))
from openclore.config import Settings
from openclore.ledger import ensure_system_accounts
from openclore.market.accounts import create_user, issue_token
from openclore.store.db import Database, listing_changed
from openclore.store.schema import server_prices, servers

from _common import free_port, median_runs, process, uvicorn_args, wrk

GPUS = ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090", "NVIDIA A100-SXM4-80GB"]


def populate(url: str, count: int) -> str:
    settings = Settings(database_url=url)
    db = Database(url)
    db.create_all()
    rng = random.Random(7)
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        host = create_user(conn, "host", 0, settings)
        token = issue_token(conn, create_user(conn, "renter", 0, settings), 0)
        rows = []
        for i in range(1, count + 1):
            gpu = GPUS[i % len(GPUS)]
            n = rng.choice([1, 2, 4, 8])
            rows.append(
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
                    "created_at": 0,
                    "gpu_array": [gpu] * n,
                    "specs": {
                        "mb": "Supermicro H12SSL-i",
                        "cpu": "AMD EPYC 7543 32-Core Processor",
                        "cpus": "32/64",
                        "ram": 256,
                        "disk": "NVMe 2000GB",
                        "disk_speed": 3200,
                        "gpu": f"{n}x {gpu}",
                        "gpuram": 24,
                        "net": {"up": 500.5, "down": 900.25, "cc": "DE"},
                    },
                }
            )
        conn.execute(insert(servers), rows)
        conn.execute(
            insert(server_prices),
            [
                {"server_id": i, "currency": "bitcoin", "on_demand": 10_000 + i, "spot": 5_000 + i}
                for i in range(1, count + 1)
            ],
        )
        listing_changed(conn)
    db.dispose()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="openclore-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'market.sqlite'}"
    token = populate(url, args.servers)
    port_app, port_bare = free_port(), free_port()
    env = {
        "OPENCLORE_DATABASE_URL": url,
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_TICK_INTERVAL": "0",
    }
    app_url = f"http://127.0.0.1:{port_app}/v1/marketplace"
    bare_url = f"http://127.0.0.1:{port_bare}/v1/marketplace"
    results: dict[str, list[dict[str, float]]] = {"bare": [], "anon": [], "auth": []}
    with process(
        uvicorn_args("openclore.api.server:app_factory", port_app, factory=True), env, app_url
    ):
        body = httpx.get(app_url, headers={"Accept-Encoding": "identity"}).content
        assert json.loads(body)["code"] == 0 and len(json.loads(body)["servers"]) == args.servers
        (tmp / "body.json").write_bytes(body)
        bare_env = {
            "BENCH_BODY_FILE": str(tmp / "body.json"),
            "PYTHONPATH": str(Path(__file__).parent),
        }
        with process(uvicorn_args("bare_app:app", port_bare), bare_env, bare_url):
            assert httpx.get(bare_url).content == body
            for _ in range(args.rounds):
                for name, target, headers in (
                    ("bare", bare_url, None),
                    ("anon", app_url, None),
                    ("auth", app_url, {"auth": token}),
                ):
                    results[name].append(
                        wrk(
                            target,
                            seconds=args.seconds,
                            connections=args.connections,
                            headers=headers,
                        )
                    )
                    time.sleep(0.5)
    summary = {name: median_runs(runs) for name, runs in results.items()}
    bare_rps = summary["bare"]["rps"]
    print(
        f"marketplace: {args.servers} servers, body {len(body) / 1e6:.2f} MB, "
        f"wrk -c{args.connections} {args.seconds}s x{args.rounds} (medians)"
    )
    print(f"{'target':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}")
    labels = {
        "bare": "bare ASGI (ceiling)",
        "anon": "openclore anonymous",
        "auth": "openclore with token",
    }
    for name, row in summary.items():
        print(
            f"{labels[name]:<28}{row['rps']:>10.1f}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}"
            f"{row['rps'] / bare_rps:>8.2f}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "marketplace.json").write_text(
        json.dumps({"summary": summary, "runs": results}, indent=2)
    )


if __name__ == "__main__":
    main()
