"""Engine tick: settle 1k, 10k and 100k running orders, on SQLite and PostgreSQL, in three cases.

Each measurement gets a fresh market with that many running orders (one per server, 100 orders per
renter), then one call of the engine's tick (``openclore.engine.ticker.tick``) bills five seconds
of all of them. The cases:

- ``rich``: every wallet can pay; the set-based fast path takes every order;
- ``dry``: a share of the wallets (``--dry-share``, 10 %) hold about 2 of the 5 seconds their
  orders cost: those orders go the exact per-server path and end when the money runs out;
- ``mrl``: a share of the orders (``--mrl-share``, 10 %) reach their end of life 3 s into the
  tick: the exact path ends them at that second.

After every tick the books are checked, so a fast wrong answer is a failure: the ledger sums to
zero per currency, no balance is negative, every order's spend and fee follow from its active
seconds, what was booked for it (its own transfers, its shares of the tick's) adds up to them,
every wallet lost or gained exactly that, and every order ran, ended by its balance or ended at
its end of life as the case says.

The ceiling is the same number of rows updated by one bare ``UPDATE orders SET active_seconds =
active_seconds + 1`` in the same database, measured in the same run. Each (case, database, size)
is measured ``--runs`` times on a fresh market; the median run (by orders/s) is reported whole.
Run: ``.venv/bin/python bench/settlement.py [--postgres URL]``; the result goes to
``bench/results/settlement.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from openclore.config import Settings
from openclore.domain.money import fee_for, spend_for
from openclore.engine.ticker import tick
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import account_key
from openclore.ledger.statements import booked_by_order
from openclore.store.db import Database
from openclore.store.schema import accounts, orders, server_prices, servers, users

from _common import BenchmarkFailed, machine, median_run, write_result

T0 = 1_700_000_000
TICK_SECONDS = 5
RICH = 10**15
SCENARIOS = ("rich", "dry", "mrl")
SHORT_MRL = 3  # seconds: these orders end 3 s into the 5 s tick


@dataclass
class Market:
    """What was put in: enough to say what the tick must have done."""

    n: int
    scenario: str
    renters: int
    host: int
    wallets: dict[int, int] = field(default_factory=dict)  # user id -> balance before the tick
    dry: set[int] = field(default_factory=set)  # renters who run dry
    short: set[int] = field(default_factory=set)  # orders that reach their mrl in the tick

    @property
    def exact_orders(self) -> int:
        if self.scenario == "mrl":
            return len(self.short)
        return sum(1 for i in range(1, self.n + 1) if self.renter_of(i) in self.dry)

    def renter_of(self, order_id: int) -> int:
        return 1 + (order_id % self.renters)


def spread(count: int, total: int) -> set[int]:
    """``count`` of 1..total, evenly spread."""
    return {1 + (j * total) // count for j in range(count)} if count else set()


def price_of(order_id: int) -> int:
    return 100_000 + order_id


def populate(db: Database, n: int, scenario: str, share: float) -> Market:
    settings = Settings(database_url=db.url)
    renters = max(1, n // 100)
    market = Market(n=n, scenario=scenario, renters=renters, host=renters + 1)
    if scenario == "dry":
        market.dry = spread(max(1, round(renters * share)), renters)
    elif scenario == "mrl":
        market.short = spread(max(1, round(n * share)), n)
    cost: dict[int, int] = defaultdict(int)  # what the tick would bill each renter
    for i in range(1, n + 1):
        cost[market.renter_of(i)] += spend_for(price_of(i), TICK_SECONDS)
    for user in range(1, renters + 2):
        # a dry wallet holds about 2 of the 5 seconds its orders cost in this tick
        market.wallets[user] = cost[user] * 2 // TICK_SECONDS if user in market.dry else RICH
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
                    "key": account_key("wallet", "bitcoin", user),
                    "kind": "wallet",
                    "user_id": user,
                    "currency": "bitcoin",
                    "balance": amount,
                }
                for user, amount in market.wallets.items()
            ],
        )
        external = conn.execute(
            select(accounts.c.id).where(accounts.c.key == "external:bitcoin")
        ).scalar_one()
        conn.execute(
            accounts.update()
            .where(accounts.c.id == external)
            .values(balance=-sum(market.wallets.values()))
        )
        conn.execute(
            insert(servers),
            [
                {
                    "id": i,
                    "owner_id": market.host,
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
                    "user_id": market.renter_of(i),
                    "server_id": i,
                    "spot": False,
                    "currency": "bitcoin",
                    "price": price_of(i),
                    "fee_bp": 500,
                    "creation_fee": 0,
                    "mrl": SHORT_MRL if i in market.short else 720 * 3600,
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
    return market


def verify(db: Database, market: Market, now: int) -> dict[str, int]:
    """The books after the tick, checked against what the tick had to do; raises
    BenchmarkFailed on the first difference. Returns how the orders ended."""
    problems: list[str] = []

    def fail(message: str) -> None:
        problems.append(message)
        if len(problems) >= 10:
            raise BenchmarkFailed("; ".join(problems))

    with db.read() as conn:
        for currency, total in conn.execute(
            select(accounts.c.currency, text("SUM(balance)")).group_by(accounts.c.currency)
        ):
            if total != 0:
                fail(f"the {currency} ledger sums to {total}, not 0")
        negative = conn.execute(
            select(accounts.c.key, accounts.c.balance).where(
                accounts.c.kind != "external", accounts.c.balance < 0
            )
        ).all()
        for key, amount in negative:
            fail(f"{key} is negative: {amount}")
        balances = {
            int(r.user_id): int(r.balance)
            for r in conn.execute(
                select(accounts.c.user_id, accounts.c.balance).where(accounts.c.kind == "wallet")
            )
        }
        platform = conn.execute(
            select(accounts.c.balance).where(accounts.c.key == "platform:bitcoin")
        ).scalar_one()
        # per order: its own transfers and its shares of the tick's transfers
        paid: dict[tuple[int, str], int] = defaultdict(int, booked_by_order(conn))
        rows = conn.execute(
            select(
                orders.c.id,
                orders.c.user_id,
                orders.c.price,
                orders.c.fee_bp,
                orders.c.active_seconds,
                orders.c.spend,
                orders.c.fee_paid,
                orders.c.billed_at,
                orders.c.running,
                orders.c.expired,
                orders.c.end_reason,
                orders.c.ended_at,
            )
        ).all()
    spent: dict[int, int] = defaultdict(int)
    fees = 0
    ended = {"running": 0, "balance": 0, "expired": 0}
    ended_by_balance: dict[int, list[Any]] = defaultdict(list)
    for o in rows:
        if o.spend != spend_for(o.price, o.active_seconds):
            fail(f"order {o.id}: spend {o.spend} for {o.active_seconds} s")
        if o.fee_paid != fee_for(o.spend, o.fee_bp):
            fail(f"order {o.id}: fee {o.fee_paid} of spend {o.spend}")
        if paid[(o.id, "spend")] != o.spend - o.fee_paid or paid[(o.id, "fee")] != o.fee_paid:
            fail(
                f"order {o.id}: transfers {paid[(o.id, 'spend')]}+{paid[(o.id, 'fee')]} "
                f"for spend {o.spend}, fee {o.fee_paid}"
            )
        spent[o.user_id] += o.spend
        fees += o.fee_paid
        if o.id in market.short:
            if not (
                o.expired
                and not o.running
                and o.end_reason == "expired"
                and o.active_seconds == SHORT_MRL
                and o.ended_at == T0 + SHORT_MRL
            ):
                fail(f"order {o.id} should have ended at its mrl: {tuple(o)}")
            ended["expired"] += 1
        elif o.running and not o.expired:
            if o.active_seconds != now - T0 or o.billed_at != now:
                fail(f"order {o.id} runs but is billed to {o.billed_at} ({o.active_seconds} s)")
            ended["running"] += 1
        elif o.user_id in market.dry and o.expired and o.end_reason == "balance":
            # it ends at the last second its wallet paid for (possibly ``now``: then it could
            # not pay the next one)
            if o.active_seconds > now - T0 or o.ended_at != T0 + o.active_seconds:
                fail(f"order {o.id} ended at {o.ended_at} after {o.active_seconds} s")
            ended["balance"] += 1
            ended_by_balance[o.user_id].append(o)
        else:
            fail(f"order {o.id} should still run: {tuple(o)}")
    for user, before in market.wallets.items():
        after = balances.get(user)
        if user == market.host:
            expected = before + sum(spent.values()) - fees
        else:
            expected = before - spent[user]
        if after != expected:
            fail(f"wallet of user {user}: {after}, expected {expected}")
    if platform != fees:
        fail(f"platform holds {platform}, the fees are {fees}")
    for user in market.dry:
        if not ended_by_balance[user]:
            fail(f"no order of dry renter {user} ended for its balance")
        for o in ended_by_balance[user]:
            next_second = spend_for(o.price, o.active_seconds + 1) - o.spend
            if balances[user] >= next_second:
                fail(f"order {o.id} ended but its wallet still pays its next second")
    if problems:
        raise BenchmarkFailed("; ".join(problems))
    return ended


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


def measure(url: str, n: int, scenario: str, share: float) -> dict[str, Any]:
    db = Database(url)
    try:
        reset(db)
        market = populate(db, n, scenario, share)
        analyze(db)
        now = T0 + TICK_SECONDS
        start = time.perf_counter()
        report = tick(db, now, 60)
        tick_s = time.perf_counter() - start
        fast = n - market.exact_orders
        if report.settled != fast:
            raise BenchmarkFailed(f"the fast path settled {report.settled}, expected {fast}")
        ended = verify(db, market, now)
        start = time.perf_counter()
        with db.write() as conn:
            updated = conn.execute(
                text("UPDATE orders SET active_seconds = active_seconds + 1")
            ).rowcount
        bare_s = time.perf_counter() - start
        if updated != n:
            raise BenchmarkFailed(f"the bare UPDATE touched {updated} rows, not {n}")
    finally:
        db.dispose()
    return {
        "orders": n,
        "tick_s": round(tick_s, 5),
        "orders_per_s": round(n / tick_s, 1),
        "fast_path_orders": report.settled,
        "exact_path_servers": report.exact_servers,
        "ended_balance": ended["balance"],
        "ended_mrl": ended["expired"],
        "still_running": ended["running"],
        "bare_update_s": round(bare_s, 5),
        "ratio_to_ceiling": round(bare_s / tick_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3, help="fresh markets per measurement")
    parser.add_argument("--dry-share", type=float, default=0.1, help="share of wallets (dry)")
    parser.add_argument("--mrl-share", type=float, default=0.1, help="share of orders (mrl)")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/openclore_bench",
        help="a database the benchmark may wipe (created if missing)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}")
    result: dict[str, Any] = {
        "benchmark": "settlement",
        "command": shlex.join(["bench/settlement.py", *sys.argv[1:]]),
        "machine": machine(),
        "parameters": vars(args) | {"tick_seconds": TICK_SECONDS},
        "runs": [],
        "median_run": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="openclore-settle-"))
    print(
        f"{'case':<6}{'database':<12}{'orders':>8}{'tick s':>9}{'orders/s':>11}"
        f"{'exact srv':>10}{'bare s':>9}{'ratio':>7}   (median of {args.runs} runs)"
    )
    try:
        for scenario in scenarios:
            share = args.dry_share if scenario == "dry" else args.mrl_share
            for size in (int(s) for s in args.sizes.split(",")):
                backends = [("sqlite", f"sqlite:///{tmp / f'settle-{size}.sqlite'}")]
                if not args.skip_postgres:
                    backends.append(("postgresql", args.postgres))
                for name, url in backends:
                    runs = []
                    for i in range(args.runs):
                        if name == "sqlite":
                            for suffix in ("", "-wal", "-shm"):
                                Path(f"{tmp / f'settle-{size}.sqlite'}{suffix}").unlink(
                                    missing_ok=True
                                )
                        row = {
                            "case": scenario,
                            "backend": name,
                            "run": i + 1,
                            **measure(url, size, scenario, share),
                        }
                        runs.append(row)
                        result["runs"].append(row)
                    med = median_run(runs, "orders_per_s")
                    result["median_run"].append(med)
                    print(
                        f"{scenario:<6}{name:<12}{size:>8}{med['tick_s']:>9.3f}"
                        f"{med['orders_per_s']:>11.0f}{med['exact_path_servers']:>10}"
                        f"{med['bare_update_s']:>9.3f}{med['ratio_to_ceiling']:>7.2f}",
                        flush=True,
                    )
    except BenchmarkFailed as exc:
        result |= {"ok": False, "error": str(exc)}
        write_result("settlement", result)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    result["ok"] = True
    write_result("settlement", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
