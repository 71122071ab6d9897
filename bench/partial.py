"""Per-GPU rentals at 10,000 servers: the engine's tick and the marketplace listing's build, with
partial rentals against today's whole-server market, in the same run.

Two markets of the same size (``--servers``, 10,000 by default), each server with 4 GPUs and one
running on-demand order (so both have as many orders to bill):

- ``whole``: the servers are sold whole (``partial_gpu_rental`` off); each order holds the server;
- ``partial``: the servers have per-GPU rentals on; each order holds one GPU (``gpus: [0]``,
  a quarter of the server's price), so each listed server shows three free GPUs and its price per
  GPU.

For each: one tick billing five seconds of every order (``openclore.engine.ticker.tick``, checked:
every order billed its five seconds at its own price, the ledger sums to zero), and the listing
built from the database as the API's cache builds it on a version change
(``MarketCache.at``: the listed servers, their free GPUs and prices, serialized). Each is
measured ``--rounds`` times on a fresh market, the two markets taking turns to go first; the
median is reported with the spread, and the ratio partial ÷ whole (the issue's goal: ≤ 1.2).
Run: ``.venv/bin/python bench/partial.py [--postgres URL]``; the result goes to
``bench/results/partial.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text

sys.path.insert(0, str(Path(__file__).parent))
from openclore.api.market_cache import MarketCache
from openclore.config import Settings
from openclore.domain.money import spend_for
from openclore.engine.ticker import tick
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import account_key
from openclore.store.db import Database, listing_changed, listing_version
from openclore.store.schema import accounts, orders, server_prices, servers, users

from _common import BenchmarkFailed, machine, write_result

T0 = 1_700_000_000
TICK_SECONDS = 5
GPUS = 4
PRICE = 400_000  # the server's on-demand price per day (nano-units)
RICH = 10**15
VARIANTS = ("whole", "partial")


def populate(db: Database, n: int, partial: bool) -> None:
    settings = Settings(database_url=db.url)
    renters = max(1, n // 100)
    host = renters + 1
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        conn.execute(
            insert(users), [{"id": i, "name": f"u{i}", "created_at": 0} for i in range(1, host + 1)]
        )
        conn.execute(
            insert(accounts),
            [
                {
                    "key": account_key("wallet", "bitcoin", user),
                    "kind": "wallet",
                    "user_id": user,
                    "currency": "bitcoin",
                    "balance": RICH if user != host else 0,
                }
                for user in range(1, host + 1)
            ],
        )
        conn.execute(
            accounts.update()
            .where(accounts.c.key == "external:bitcoin")
            .values(balance=-RICH * renters)
        )
        gpu = "NVIDIA GeForce RTX 4090"
        conn.execute(
            insert(servers),
            [
                {
                    "id": i,
                    "owner_id": host,
                    "name": f"s{i}",
                    "init_token": f"{i:048d}",
                    "connected": True,
                    "online": True,
                    "simulated": True,
                    "visibility": "public",
                    "mrl_hours": 720,
                    "reliability": 1.0,
                    "rating_avg": 0.0,
                    "rating_cnt": 0,
                    "bg_command": "",
                    "bg_times_updated": 0,
                    "created_at": T0,
                    "last_seen": T0,
                    "gpu_array": [gpu] * GPUS,
                    "specs": {"gpu": f"{GPUS}x {gpu}", "gpuram": 24, "net": {"cc": "DE"}},
                    "partial_gpu_rental": partial,
                    "min_gpus": 1,
                }
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(server_prices),
            [
                {"server_id": i, "currency": "bitcoin", "on_demand": PRICE, "spot": PRICE // 2}
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "user_id": 1 + (i - 1) // 100,
                    "server_id": i,
                    "spot": False,
                    "currency": "bitcoin",
                    "price": PRICE // GPUS if partial else PRICE,
                    "fee_bp": 500,
                    "creation_fee": 0,
                    "mrl": 720 * 3600,
                    "ct": T0,
                    "image": "img",
                    "command": "",
                    "env": {},
                    "ports": {},
                    "autossh_entrypoint": False,
                    "running": True,
                    "expired": False,
                    "active_seconds": 0,
                    "billed_at": T0,
                    "spend": 0,
                    "fee_paid": 0,
                    "tcp_ports": [],
                    "gpu_count": 1 if partial else None,
                    "gpus": [0] if partial else None,
                }
                for i in range(1, n + 1)
            ],
        )
        listing_changed(conn)
    with db.engine.connect() as conn:  # a live market has planner statistics
        if db.is_postgres:
            conn.execute(text("ANALYZE"))
        conn.commit()


def reset(db: Database) -> None:
    if db.is_postgres:
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.create_all()


def measure(url: str, n: int, partial: bool) -> dict[str, Any]:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).unlink(missing_ok=True)  # a fresh market each time
    db = Database(url)
    try:
        reset(db)
        populate(db, n, partial)
        settings = Settings(database_url=url)
        cache = MarketCache(settings)
        with db.read() as conn:
            version = listing_version(conn)
            start = time.perf_counter()
            listing = cache.at(version, lambda: conn)
            listing_s = time.perf_counter() - start
        if len(listing.items_json) != n:
            raise BenchmarkFailed(f"the listing has {len(listing.items_json)} servers, not {n}")
        if partial and b'"free_indices":[1,2,3]' not in listing.items_json[0]:
            first = listing.items_json[0][:300]
            raise BenchmarkFailed(f"a partial server's free GPUs are wrong: {first!r}")
        now = T0 + TICK_SECONDS
        start = time.perf_counter()
        report = tick(db, now, 60)
        tick_s = time.perf_counter() - start
        each = spend_for(PRICE // GPUS if partial else PRICE, TICK_SECONDS)
        with db.read() as conn:
            billed = conn.execute(
                select(func.count()).where(
                    orders.c.active_seconds == TICK_SECONDS, orders.c.spend == each
                )
            ).scalar_one()
            total = conn.execute(select(func.sum(accounts.c.balance))).scalar_one()
        if billed != n or total != 0:
            raise BenchmarkFailed(
                f"{billed} of {n} orders billed right; the ledger sums to {total}"
            )
    finally:
        db.dispose()
    return {
        "tick_s": round(tick_s, 4),
        "fast_path_orders": report.settled,
        "listing_build_s": round(listing_s, 4),
        "listing_bytes": len(listing.anonymous),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def run_database(url: str, n: int, rounds: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        row: dict[str, Any] = {"round": i + 1}
        # the two alternate which goes first, so neither always meets a cold cache
        for variant in VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS)):
            row[variant] = measure(url, n, variant == "partial")
        runs.append(row)
        print(
            f"  round {i + 1}: tick whole {row['whole']['tick_s']:.3f} s, partial "
            f"{row['partial']['tick_s']:.3f} s; listing whole {row['whole']['listing_build_s']:.3f}"
            f" s, partial {row['partial']['listing_build_s']:.3f} s",
            flush=True,
        )
    out: dict[str, Any] = {"runs": runs}
    for metric in ("tick_s", "listing_build_s"):
        whole = [r["whole"][metric] for r in runs]
        part = [r["partial"][metric] for r in runs]
        ratios = [p / w for p, w in zip(part, whole, strict=True)]
        out[metric] = {"whole": spread(whole), "partial": spread(part), "ratio": spread(ratios)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (a scratch database)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="openclore-bench-partial-"))
    databases = {"sqlite": f"sqlite:///{tmp / 'market.sqlite'}"}
    if args.postgres:
        databases["postgresql"] = args.postgres
    result: dict[str, Any] = {"machine": machine(), "servers": args.servers, "gpus": GPUS}
    for name, url in databases.items():
        print(f"{name}: {args.servers} servers of {GPUS} GPUs, one order each", flush=True)
        result[name] = run_database(url, args.servers, args.rounds)
        for metric in ("tick_s", "listing_build_s"):
            m = result[name][metric]
            print(
                f"  {metric}: whole {m['whole']['median']} s, partial {m['partial']['median']} s,"
                f" ratio {m['ratio']['median']} (range {m['ratio']['min']}–{m['ratio']['max']})"
            )
    write_result("partial", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
