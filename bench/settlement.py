"""Engine tick: settle 1k, 10k and 100k running orders, on SQLite and PostgreSQL.

Each size gets a fresh market with that many running orders (one per server, 100 orders per
renter), then one tick bills five seconds of all of them. The ceiling is the same number of rows
updated by one bare ``UPDATE orders SET spend = spend + 1`` in the same database, measured in the
same run. Run: ``.venv/bin/python bench/settlement.py [--postgres URL]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from openclore.config import Settings
from openclore.engine.ticker import tick
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import account_key
from openclore.store.db import Database
from openclore.store.schema import accounts, orders, server_prices, servers, users

T0 = 1_700_000_000


def populate(db: Database, n: int) -> None:
    settings = Settings(database_url=db.url)
    renters = max(1, n // 100)
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        conn.execute(
            insert(users),
            [{"id": i, "name": f"u{i}", "created_at": 0} for i in range(1, renters + 2)],
        )
        conn.execute(
            insert(accounts),
            [
                {
                    "key": account_key("wallet", "bitcoin", i),
                    "kind": "wallet",
                    "user_id": i,
                    "currency": "bitcoin",
                    "balance": 10**15,
                }
                for i in range(1, renters + 2)
            ],
        )
        external = conn.execute(
            select(accounts.c.id).where(accounts.c.key == "external:bitcoin")
        ).scalar_one()
        conn.execute(
            accounts.update()
            .where(accounts.c.id == external)
            .values(balance=-(10**15) * (renters + 1))
        )
        host = renters + 1
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
                }
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(server_prices),
            [
                {"server_id": i, "currency": "bitcoin", "on_demand": 100_000, "spot": 0}
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "user_id": 1 + (i % renters),
                    "server_id": i,
                    "spot": False,
                    "currency": "bitcoin",
                    "price": 100_000 + i,
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
                }
                for i in range(1, n + 1)
            ],
        )


def analyze(db: Database) -> None:
    """Fresh bulk loads have no planner statistics yet; a live market has them."""
    with db.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def reset(db: Database) -> None:
    if db.is_postgres:
        _create_database(db.url)
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.create_all()


def _create_database(url: str) -> None:
    parsed = make_url(url)
    server = Database(str(parsed.set(database="postgres")))
    with server.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": parsed.database}
        ).first():
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    server.dispose()


def measure(url: str, n: int) -> dict[str, float]:
    db = Database(url)
    reset(db)
    populate(db, n)
    analyze(db)
    start = time.perf_counter()
    report = tick(db, T0 + 5, 60)
    tick_s = time.perf_counter() - start
    assert report.settled == n, report
    with db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        billed = conn.execute(select(func.count()).where(orders.c.spend > 0)).scalar()
    assert billed == n
    start = time.perf_counter()
    with db.write() as conn:
        conn.execute(text("UPDATE orders SET active_seconds = active_seconds + 1"))
    bare_s = time.perf_counter() - start
    db.dispose()
    return {"orders": n, "tick_s": tick_s, "orders_per_s": n / tick_s, "bare_update_s": bare_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/openclore_bench",
        help="a database the benchmark may wipe (created if missing)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="openclore-settle-"))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        backends = [("sqlite", f"sqlite:///{tmp / f'settle-{size}.sqlite'}")]
        if not args.skip_postgres:
            backends.append(("postgresql", args.postgres))
        for name, url in backends:
            row = {"backend": name, **measure(url, size)}
            rows.append(row)
            print(
                f"{name:<11}{size:>8} orders  tick {row['tick_s']:.3f} s  "
                f"{row['orders_per_s']:>10.0f} orders/s  (bare UPDATE of the same rows "
                f"{row['bare_update_s']:.3f} s, ratio {row['bare_update_s'] / row['tick_s']:.2f})"
            )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "settlement.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
