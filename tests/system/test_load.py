"""Load and fault tests: two ``openclore serve`` processes on one PostgreSQL database, 200
concurrent clients with 200 tokens on a mix of reads and writes, for a bounded time.

- plain load: no 5xx, no lost or duplicated order, the ledger sums to zero, p50/p99 reported;
- one replica killed with SIGKILL under load: the other keeps serving, every write either
  happened once or not at all;
- the servers' database connections terminated (``pg_terminate_backend``) under load: requests
  retry or fail cleanly, the pools recover, no 5xx after recovery;
- three replicas behind a real PgBouncer in transaction pooling (their LISTEN and session locks
  on direct connections): the plain load's checks, with the pooler's few server connections.

Every create_order carries a unique attempt id in its ``env``, so each order in the database is
traced to the one request that asked for it. Marked ``load`` (run alone with ``-m load``); the
load lasts ``OPENCLORE_LOAD_SECONDS`` (default 12) per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, insert, select, text

from openclore.market.accounts import issue_token
from openclore.store.schema import accounts, orders, server_prices, servers

from support import ADDRESS_SECRET, Market, booked_by_order, free_port

pytestmark = [pytest.mark.load, pytest.mark.parametrize("backend", ["postgresql"])]

SECONDS = float(os.environ.get("OPENCLORE_LOAD_SECONDS", "12"))
CLIENTS = 200
USERS = 100  # two tokens each
SERVERS = 400
ATTEMPT = "OPENCLORE_LOAD_ATTEMPT"
TRANSPORT_ERRORS = (httpx.TransportError,)
THINK = 0.1  # mean pause of a client between two requests (seconds)
TIMEOUT = 60.0


# ----------------------------------------------------------------------------- the market


def populate(market: Market) -> list[str]:
    """USERS renters with two tokens each and SERVERS online servers; returns the tokens."""
    tokens: list[str] = []
    for i in range(USERS):
        first = market.user(name=f"renter{i}", bitcoin="10")
        with market.db.write() as conn:
            tokens += [first, issue_token(conn, market.user_id(first), market.now())]
    host = market.user_id(market.user(name="host"))
    now = int(time.time())
    with market.db.write() as conn:
        conn.execute(
            insert(servers),
            [
                {
                    "id": 1000 + i,
                    "owner_id": host,
                    "name": f"rig{i}",
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
                    "created_at": now,
                    "last_seen": now,
                    "specs": {"gpu": "1x NVIDIA GeForce RTX 3090", "gpuram": 24},
                    "gpu_array": ["NVIDIA GeForce RTX 3090"],
                }
                for i in range(SERVERS)
            ],
        )
        conn.execute(
            insert(server_prices),
            [
                {"server_id": 1000 + i, "currency": "bitcoin", "on_demand": 10**6, "spot": 10**4}
                for i in range(SERVERS)
            ],
        )
    return tokens


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_replicas(
    market: Market, tmp_path: Path, count: int = 2, extra_env: dict[str, str] | None = None
) -> list[Replica]:
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_TICK_INTERVAL": "1",
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_LOG_LEVEL": "warning",
        "OPENCLORE_GATEWAY": "0",  # the access gateway is not under test here
        "OPENCLORE_ADDRESS_SECRET": ADDRESS_SECRET,
        # as behind any load balancer: the server keeps an idle connection open longer than the
        # balancer (the clients here, 2 s) reuses one, so the server never closes a connection
        # just as a request goes out on it (a race of keep-alive itself, not a server fault; with
        # 5 s and a loaded machine, a client that read its answer seconds late lost that race)
        "OPENCLORE_KEEP_ALIVE_TIMEOUT": "30",
        # the 200 clients share one process whose event loop lags by seconds under this load (and
        # coverage): between opening a connection and writing its request, a client can stall
        # past the 10 s header timeout, which the server rightly treats as a slow client and cuts
        # (one write lost its connection so in CI); the clients here are not the slow ones tested
        "OPENCLORE_HEADER_TIMEOUT": "60",
        **(extra_env or {}),
    }
    replicas = []
    for i in range(count):
        port = free_port()
        log = tmp_path / f"replica{i}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "openclore", "serve", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replicas.append(Replica(f"http://127.0.0.1:{port}", proc, log))
    deadline = time.time() + 60
    for replica in replicas:
        while True:
            try:
                if httpx.get(replica.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert replica.proc.poll() is None, replica.log.read_text()[-3000:]
            assert time.time() < deadline, "a replica did not get ready"
            time.sleep(0.1)
    return replicas


def stop_replicas(replicas: list[Replica]) -> None:
    """SIGTERM each replica still running, then wait (SIGKILL after 15 s)."""
    for replica in replicas:
        if replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    for replica in replicas:
        try:
            replica.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait(timeout=5)


@pytest.fixture
def replicas(market: Market, tmp_path: Path) -> Iterator[list[Replica]]:
    started = start_replicas(market, tmp_path)
    yield started
    stop_replicas(started)


# ----------------------------------------------------------------------------- the load


@dataclass
class Outcome:
    """What the clients saw."""

    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)
    by_endpoint: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: int = 0
    transport_kinds: Counter[str] = field(default_factory=Counter)
    # reads whose connection failed and that the balancer sent again, as a balancer does for
    # idempotent requests (nginx's proxy_next_upstream)
    retried: Counter[str] = field(default_factory=Counter)
    # writes whose connection failed and that the client sent again with their Idempotency-Key,
    # as a careful client does: the market acts on such a write at most once (SPEC)
    resent: Counter[str] = field(default_factory=Counter)
    # (sent at, endpoint, status, body) of each 5xx
    server_errors: list[tuple[float, str, int, str]] = field(default_factory=list)
    ok_after: dict[str, list[float]] = field(default_factory=dict)  # replica url → times of 200s
    acked: dict[str, int] = field(default_factory=dict)  # attempt → order id
    refused: set[str] = field(default_factory=set)  # answered with an error: no order
    uncertain: set[str] = field(default_factory=set)  # no answer (or a 5xx): once or never

    def at(self) -> float:
        return time.monotonic() - self.started

    def percentile(self, p: float, endpoint: str | None = None) -> float:
        ordered = sorted(self.latencies if endpoint is None else self.by_endpoint[endpoint])
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0

    def report(self) -> str:
        total = len(self.latencies)
        return (
            f"{total} answers in {SECONDS:.0f} s ({total / SECONDS:.0f}/s), "
            f"p50 {self.percentile(0.5) * 1000:.0f} ms, p99 {self.percentile(0.99) * 1000:.0f} ms, "
            f"max {max(self.latencies, default=0) * 1000:.0f} ms; p99 by endpoint "
            + ", ".join(
                f"{name} {self.percentile(0.99, name) * 1000:.0f} ms"
                for name in sorted(self.by_endpoint)
            )
            + f"; statuses {dict(self.statuses)}"
            + f" (5xx: {dict(Counter(e[1] for e in self.server_errors))}); "
            f"transport errors {dict(self.transport_kinds)}, reads retried {dict(self.retried)}, "
            f"writes resent {dict(self.resent)}; "
            f"orders acked {len(self.acked)}, "
            f"refused {len(self.refused)}, uncertain {len(self.uncertain)}"
        )


async def client_loop(
    http: httpx.AsyncClient,
    worker: int,
    token: str,
    targets: list[str],
    deadline: float,
    out: Outcome,
) -> None:
    rng = random.Random(worker)
    mine: list[tuple[int, bool]] = []  # (order id, spot) of this client's live orders
    headers = {"auth": token}
    if True:
        attempt_no = writes = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0, 2 * THINK))
            base = rng.choice(targets)  # the load balancer's pick (the list drops dead ones)
            roll = rng.random()
            attempt: str | None = None
            if roll < 0.30:
                name, method, body = "marketplace", "GET", None
            elif roll < 0.45:
                name, method, body = "wallets", "GET", None
            elif roll < 0.60:
                name, method, body = "my_orders", "GET", None
            elif roll < 0.65:
                name, method, body = "spot_marketplace", "GET", None
            elif roll < 0.85 or not mine:
                attempt_no += 1
                attempt = f"w{worker}-{attempt_no}"
                spot = rng.random() < 0.3
                body = {
                    "currency": "bitcoin",
                    "image": "cloreai/ubuntu20.04-jupyter",
                    "renting_server": 1000 + rng.randrange(SERVERS),
                    "type": "spot" if spot else "on-demand",
                    "ports": {"22": "tcp"},
                    "env": {ATTEMPT: attempt},
                }
                if spot:
                    body["spotprice"] = 0.00002
                name, method = "create_order", "POST"
            elif roll < 0.95:
                order_id, _ = mine.pop(rng.randrange(len(mine)))
                name, method, body = "cancel_order", "POST", {"id": order_id}
            else:
                spots = [o for o, spot in mine if spot]
                if not spots:
                    continue
                body = {"order_id": rng.choice(spots), "desired_price": 0.00003}
                name, method = "set_spot_price", "POST"
            url = f"{base}/v1/{name}"
            if name == "spot_marketplace":
                url += f"?market={1000 + rng.randrange(SERVERS)}"
            sent = time.monotonic()
            try:
                if method == "GET":
                    try:
                        answer = await http.get(url, headers=headers)
                    except TRANSPORT_ERRORS as exc:
                        out.retried[f"{name}: {type(exc).__name__}"] += 1
                        base = rng.choice(targets)  # the balancer's next pick
                        url = f"{base}{url[url.index('/v1/') :]}"
                        answer = await http.get(url, headers=headers)
                else:
                    writes += 1
                    keyed = {**headers, "Idempotency-Key": attempt or f"w{worker}-x{writes}"}
                    try:
                        answer = await http.post(url, json=body, headers=keyed)
                    except TRANSPORT_ERRORS as exc:
                        out.resent[f"{name}: {type(exc).__name__}"] += 1
                        base = rng.choice(targets)
                        url = f"{base}{url[url.index('/v1/') :]}"
                        answer = await http.post(url, json=body, headers=keyed)
            except TRANSPORT_ERRORS as exc:
                out.transport_errors += 1
                out.transport_kinds[f"{name}: {type(exc).__name__}"] += 1
                if attempt is not None:
                    out.uncertain.add(attempt)
                continue
            took = time.monotonic() - sent
            out.latencies.append(took)
            out.by_endpoint.setdefault(name, []).append(took)
            out.statuses[answer.status_code] += 1
            if answer.status_code >= 500:
                # when it was sent: a request sent before the pools recovered may be answered
                # (with its error) long after, on a slow machine
                out.server_errors.append(
                    (sent - out.started, name, answer.status_code, answer.text[:200])
                )
                if attempt is not None:
                    out.uncertain.add(attempt)
                continue
            answered = orjson.loads(answer.content)
            code = int(answered["code"])
            out.codes[(name, code)] += 1
            if answer.status_code == 200:
                out.ok_after.setdefault(base, []).append(out.at())
            if attempt is not None:
                if code == 0:
                    out.acked[attempt] = int(answered["order_id"])
                    mine.append((out.acked[attempt], body["type"] == "spot"))  # type: ignore[index]
                else:
                    out.refused.add(attempt)


async def run_load(tokens: list[str], targets: list[str], out: Outcome, seconds: float) -> None:
    # a small pool per client, as 200 separate clients have: one pool for all scans its 400
    # connections for every request (most of the clients' CPU, which this machine shares with
    # the replicas); one TLS context for all (each client building its own costs seconds);
    # idle connections are dropped long before the servers' keep-alive timeout (30 s, see
    # start_replicas) could close one just as a request goes out on it
    tls = ssl.create_default_context()
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=2.0)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(timeout=TIMEOUT, limits=limits, verify=tls)
            )
            for _ in range(CLIENTS)
        ]
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(
                client_loop(http, i, tokens[i % len(tokens)], targets, deadline, out)
                for i, http in enumerate(clients)
            )
        )


# ----------------------------------------------------------------------------- the checks


def check_orders_and_books(market: Market, out: Outcome) -> None:
    # one snapshot for every read below: the replicas still tick, and under READ COMMITTED a
    # tick committing between reading the bookings and reading the orders looks like a lost
    # booking
    with (
        market.db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        conn.begin(),
    ):
        by_attempt: dict[str, list[int]] = {}
        for row in conn.execute(select(orders.c.id, orders.c.env)):
            attempt = (row.env or {}).get(ATTEMPT)
            if attempt is not None:
                by_attempt.setdefault(attempt, []).append(int(row.id))
        duplicated = {a: ids for a, ids in by_attempt.items() if len(ids) > 1}
        assert not duplicated, f"orders created twice: {duplicated}"
        lost = {a: o for a, o in out.acked.items() if by_attempt.get(a) != [o]}
        assert not lost, f"acknowledged orders missing: {lost}"
        ghosts = {a: by_attempt[a] for a in out.refused if a in by_attempt}
        assert not ghosts, f"refused requests that left an order: {ghosts}"
        unknown = set(by_attempt) - set(out.acked) - out.uncertain - out.refused
        assert not unknown, f"orders no request asked for: {unknown}"

        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        for currency, total in conn.execute(
            select(accounts.c.currency, func.sum(accounts.c.balance)).group_by(accounts.c.currency)
        ):
            assert total == 0, currency
        booked = booked_by_order(conn)
        wrong = []
        for o in conn.execute(select(orders)):
            spend, fee = booked.get((o.id, "spend"), 0), booked.get((o.id, "fee"), 0)
            if spend + fee != o.spend or fee != o.fee_paid:
                wrong.append((o.id, spend, fee, o.spend, o.fee_paid, o.spot, o.running, o.expired))
        assert not wrong, f"booked (id, spend, fee) differs from the orders' totals: {wrong}"


def logged_errors(replicas: list[Replica]) -> str:
    """The error lines the replicas logged (shown when a check fails)."""
    lines = []
    for replica in replicas:
        for line in replica.log.read_text(errors="replace").splitlines():
            if "Error" in line or "error" in line or line.startswith("  File"):
                lines.append(line)
    return "\n".join(lines[-60:])


def report(out: Outcome, record_property: Any, label: str) -> None:
    line = f"{label}: {out.report()}"
    print("\n" + line)
    record_property("load", line)
    assert out.acked and out.codes[("marketplace", 0)], "the load did not get through"


# ----------------------------------------------------------------------------- the tests


def test_two_replicas_under_200_clients(
    market: Market, replicas: list[Replica], record_property: Any
) -> None:
    tokens = populate(market)
    out = Outcome()
    asyncio.run(run_load(tokens, [r.url for r in replicas], out, SECONDS))
    report(out, record_property, "two replicas, 200 clients")
    assert not out.server_errors, (out.server_errors[:5], logged_errors(replicas))
    # nothing was left without an answer. A request whose connection was reset is sent again:
    # a read by the balancer, a write by the client with its Idempotency-Key (it acts once).
    # That is rare: one request in several hundred to several thousand, only in CI's
    # coverage-slowed runs of 200 clients on two cores (a write's replica then logged that its
    # client went away while it read the body; the cause of the reset is not found yet)
    assert out.transport_errors == 0, out.transport_kinds
    assert sum(out.retried.values()) + sum(out.resent.values()) <= 2, (out.retried, out.resent)
    assert not out.uncertain
    assert all(out.ok_after.get(r.url) for r in replicas)  # both served
    check_orders_and_books(market, out)


def test_kill_9_one_replica_under_load(
    market: Market, replicas: list[Replica], record_property: Any
) -> None:
    tokens = populate(market)
    out = Outcome()
    targets = [r.url for r in replicas]
    victim, survivor = replicas

    async def scenario() -> float:
        load = asyncio.create_task(run_load(tokens, targets, out, SECONDS))
        await asyncio.sleep(SECONDS / 3)
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = out.at()
        targets.remove(victim.url)  # the balancer's health check drops it
        await load
        return killed_at

    killed_at = asyncio.run(scenario())
    victim.proc.wait(timeout=10)
    report(out, record_property, "kill -9 of one replica")
    assert not out.server_errors, (out.server_errors[:5], logged_errors(replicas))
    served_after = [t for t in out.ok_after.get(survivor.url, []) if t > killed_at + 1]
    assert len(served_after) > 50, "the surviving replica stopped serving"
    assert survivor.proc.poll() is None
    check_orders_and_books(market, out)


def test_database_connections_terminated_under_load(
    market: Market, replicas: list[Replica], record_property: Any
) -> None:
    tokens = populate(market)
    out = Outcome()
    terminated: list[int] = []
    recovery = 2.0
    cuts = 3
    # three cuts 1.5 s apart after a quarter of the run, and the recovery after them: longer
    # than the other load tests, so a slow machine still leaves time to see the recovery
    duration = SECONDS * 1.5

    def cut() -> int:
        with market.db.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )

    cut_at: list[float] = []

    def terminator() -> None:
        # a thread of its own, not a task: the load's 200 clients keep the loop so busy under
        # coverage that its sleeps woke seconds late and the cuts ran into the recovery time
        time.sleep(duration / 4)
        for _ in range(cuts):
            terminated.append(cut())
            cut_at.append(out.at())
            time.sleep(1.5)

    async def scenario() -> None:
        cutting = threading.Thread(target=terminator, name="terminator")
        load = asyncio.create_task(run_load(tokens, [r.url for r in replicas], out, duration))
        cutting.start()
        await load
        await asyncio.to_thread(cutting.join)

    asyncio.run(scenario())
    last = cut_at[-1]
    report(out, record_property, f"pg_terminate_backend x{len(terminated)}")
    assert len(terminated) == cuts and min(terminated) > 0, terminated  # connections were cut
    assert last + recovery < duration - 1, "no time left to see the recovery: raise the duration"
    late = [e for e in out.server_errors if e[0] > last + recovery]
    assert not late, f"5xx for requests sent after the pools recovered: {late[:5]}"
    # in flight: a clean code-1 answer at worst, never a traceback or a dropped connection
    assert all('"code":1' in e[3] for e in out.server_errors), out.server_errors[:5]
    assert out.transport_errors == 0  # no request failed twice
    # a request whose connection dropped while the database connections were cut is rare (1 or
    # 2 of about 800 under CI's coverage-slowed load, none without it) and is sent again (a
    # write with its Idempotency-Key)
    resent = sum(out.retried.values()) + sum(out.resent.values())
    assert resent <= max(3, len(out.latencies) // 100), (out.retried, out.resent)
    for replica in replicas:
        assert [t for t in out.ok_after.get(replica.url, []) if t > last + recovery]
    check_orders_and_books(market, out)


# ----------------------------------------------------------------------------- behind PgBouncer

PGBOUNCER_POOL = 6  # server connections per database and user: far fewer than the clients'


@dataclass
class Pooler:
    url: str  # the market's database, through the pooler (SQLAlchemy form, like market.db.url)
    admin: str  # libpq URL of PgBouncer's admin console
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def pgbouncer(market: Market, tmp_path: Path) -> Iterator[Pooler]:
    """A real PgBouncer (Debian's) in transaction pooling in front of the suite's PostgreSQL."""
    import pwd
    import shutil
    import tempfile

    from sqlalchemy.engine import make_url

    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is not installed (.ci/run installs Debian's pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    direct = make_url(market.db.url)
    port = free_port()
    # PgBouncer refuses to run as root: it drops to `postgres`, so its files live in a
    # directory that user can read
    home = Path(tempfile.mkdtemp(prefix="openclore-pgbouncer-"))
    home.chmod(0o755)
    user = direct.username or "postgres"
    (home / "users.txt").write_text(f'"{user}" ""\n"pgbouncer" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={direct.host or '127.0.0.1'} port={direct.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\nadmin_users = {user}\n"
        "pool_mode = transaction\nmax_client_conn = 2000\n"
        f"default_pool_size = {PGBOUNCER_POOL}\nreserve_pool_size = 0\n"
        + ("user = postgres\n" if os.geteuid() == 0 else "")
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (home / name).chmod(0o644)
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")  # the user PgBouncer runs as
    log = tmp_path / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, str(home / "pgbouncer.ini")], stdout=out, stderr=subprocess.STDOUT
        )
    admin = f"postgresql://{user}@127.0.0.1:{port}/pgbouncer"
    pooled = direct.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    import psycopg

    deadline = time.time() + 20
    while True:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SHOW VERSION")
            break
        except psycopg.Error:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "pgbouncer did not start: " + log.read_text()[-3000:]
            time.sleep(0.1)
    yield Pooler(pooled, admin, proc, log)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    shutil.rmtree(home, ignore_errors=True)


def pooler_show(pooler: Pooler, what: str) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(pooler.admin, autocommit=True, row_factory=dict_row) as conn:
        return list(conn.execute(f"SHOW {what}").fetchall())


def test_three_replicas_behind_pgbouncer_in_transaction_pooling(
    market: Market, pgbouncer: Pooler, tmp_path: Path, record_property: Any
) -> None:
    """Operators put PgBouncer in front of PostgreSQL for many replicas. Through it, psycopg's
    prepared statements would land on server connections that do not have them, and LISTEN and
    session locks would stay on connections the pooler hands to others: with
    OPENCLORE_DATABASE_DIRECT_URL, requests go through the pooler without prepared statements and
    LISTEN goes to the database itself."""
    tokens = populate(market)
    replicas = start_replicas(
        market,
        tmp_path,
        count=3,
        extra_env={
            "OPENCLORE_DATABASE_URL": pgbouncer.url,
            "OPENCLORE_DATABASE_DIRECT_URL": market.db.url,
        },
    )
    try:
        out = Outcome()
        asyncio.run(run_load(tokens, [r.url for r in replicas], out, SECONDS))
        report(out, record_property, "three replicas behind PgBouncer, 200 clients")
        assert not out.server_errors, (out.server_errors[:5], logged_errors(replicas))
        # nothing left without an answer; a request whose connection was reset is sent again,
        # as in the two-replica test (one in about 500 was, on CI's coverage-slowed runs of
        # three replicas on two cores: a connection reset whose cause is not found yet)
        assert out.transport_errors == 0, out.transport_kinds
        resent = sum(out.retried.values()) + sum(out.resent.values())
        assert resent <= 2, (out.retried, out.resent)
        assert not out.uncertain
        assert all(out.ok_after.get(r.url) for r in replicas)  # each served
        check_orders_and_books(market, out)
        # the pooler held its few server connections for all three replicas' pools
        pools = [p for p in pooler_show(pgbouncer, "POOLS") if p["database"] != "pgbouncer"]
        assert pools and all(
            p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] + p["sv_login"]
            <= PGBOUNCER_POOL
            for p in pools
        ), pools
        # every replica's LISTEN connections reach the database itself, not the pooler
        pooled_ports = {int(s["local_port"]) for s in pooler_show(pgbouncer, "SERVERS")}
        with market.db.engine.connect() as conn:
            listeners = conn.execute(
                text(
                    "SELECT client_port FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            ).all()
        ports = {int(row.client_port) for row in listeners}
        assert len(ports) >= len(replicas) and not ports & pooled_ports, (ports, pooled_ports)
    finally:
        stop_replicas(replicas)


def test_a_session_lock_behind_pgbouncer_is_held_on_the_database_itself(
    market: Market, pgbouncer: Pooler
) -> None:
    """A gateway's name lock is a session advisory lock. Taken through a transaction pooler, it
    stays on a server connection the pooler then gives to the next client, who would take the
    same lock as well."""
    from openclore.gateway.service import NameLock
    from openclore.store.db import Database

    first = Database(pgbouncer.url, pool_size=1, direct_url=market.db.url)
    second = Database(pgbouncer.url, pool_size=1, direct_url=market.db.url)
    try:
        held = NameLock(first, "edge")
        assert held.acquire()
        for _ in range(5):  # the pooler's most recent server connection, each time
            assert not NameLock(second, "edge").acquire()
        held.release()
        again = NameLock(second, "edge")
        assert again.acquire()
        again.release()
    finally:
        first.dispose()
        second.dispose()
