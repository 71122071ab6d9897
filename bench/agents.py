"""How many host agents one ``openclore serve`` process holds: memory per connection, the cost of
heartbeats, and push latency (order committed → the agent's WebSocket receives it) while all are
connected.

    .venv/bin/python bench/agents.py [--steps 1000,3000,10000] [--clients 4]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--orders 200]

For each step N: a fresh database (``openclore_bench_agents_<N>`` on the PostgreSQL server named,
or a SQLite file with ``--database-url sqlite``) holds N public servers whose agents are already
registered (their credentials' hashes written directly, as ``/agent/v1/register`` would), a host
and a few funded renters. One ``openclore serve`` process (``OPENCLORE_GATEWAY=0``,
``OPENCLORE_MAX_CONNECTIONS`` raised to N + 1000, its open-files limit raised to the hard limit)
serves them. ``--clients`` processes open the N agents' WebSockets (the ``websockets`` client,
real TCP connections to 127.0.0.1), each speaking the agent protocol: ``hello`` with specs, then a
heartbeat every ``heartbeat_interval`` seconds as the market's ``hello`` asks (each agent starts at
a random phase), and every ``desired`` set received is stamped with ``time.time()``.

Once all N are connected:

- **memory**: the server's RSS (psutil, its process tree) before the first agent and with all N
  connected, divided by N;
- **heartbeats**: for ``--window`` seconds nothing but heartbeats flow; the server process's CPU
  seconds (user + system) and PostgreSQL's (all its processes) over the window, per heartbeat sent
  in it, and as a share of one core;
- **push latency**: ``--orders`` orders on distinct servers are created through the market's use
  case (``openclore.market.orders.create_order``, one transaction each, as another API replica
  would: the serving process hears of them through PostgreSQL ``NOTIFY``) at ``--rate`` per
  second; the commit's time is ``time.time()`` when the transaction has committed, the receipt's
  the agent's ``time.time()`` when the ``desired`` set naming the order arrived (client and
  server on this machine: one clock). Every order must reach its own server's agent, and only it.

An agent that fails to connect, or is dropped while connected, fails the step. The largest N
whose push p99 stays under ``--goal`` seconds is reported as what one process holds. Everything
here shares the machine (server, PostgreSQL and clients); the result goes to
``bench/results/agents.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))

from _common import BenchmarkFailed, free_port, machine, write_result

SPECS = {
    "mb": "BENCH-BOARD",
    "cpu": "Bench CPU",
    "cpus": "4/8",
    "ram": 31.2,
    "disk": "NVMe 100.0GB",
    "disk_speed": 1000.0,
    "gpu": "1x NVIDIA GeForce RTX 4090",
    "gpuram": 24,
    "net": {"up": 100.0, "down": 500.0, "cc": "CZ"},
}
GPU_ARRAY = ["NVIDIA GeForce RTX 4090"]
ORDERS_PER_RENTER = 10


def agent_token(server_id: int) -> str:
    return f"oca_bench_{server_id:012d}_" + "x" * 20


# ----------------------------------------------------------------------------- the market


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fresh_database(base_url: str, n: int, tmp: Path) -> str:
    if base_url.startswith("sqlite"):
        return f"sqlite:///{tmp / f'agents-{n}.sqlite'}"
    import psycopg

    url = make_url(base_url)
    name = f"openclore_bench_agents_{n}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg.execute(f"CREATE DATABASE {name}")
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    if url.startswith("sqlite"):
        return
    import psycopg

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {parsed.database} WITH (FORCE)")


def seed(url: str, n: int, orders: int) -> dict[str, Any]:
    """N registered public servers of one host, and funded renters for the sampled orders."""
    from sqlalchemy import insert

    from openclore.config import Settings
    from openclore.domain.money import to_units
    from openclore.ledger import ensure_system_accounts
    from openclore.market.accounts import create_user
    from openclore.market.wallets import deposit
    from openclore.store.db import Database, listing_changed
    from openclore.store.schema import server_prices, servers

    settings = Settings(database_url=url)
    db = Database(url)
    db.create_all()
    now = int(time.time())
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        host = create_user(conn, "bench-host", now, settings)
        renters = []
        for r in range((orders + ORDERS_PER_RENTER - 1) // ORDERS_PER_RENTER):
            renter = create_user(conn, f"bench-renter-{r}", now, settings)
            deposit(conn, renter, "bitcoin", to_units(Decimal("10")), settings, now)
            renters.append(renter)
        rows = [
            {
                "owner_id": host,
                "name": f"rig-{i}",
                "init_token": f"bench{i:043d}",
                "connected": True,
                "agent_token_hash": hashlib.sha256(agent_token(i).encode()).hexdigest(),
                "online": False,
                "simulated": False,
                "visibility": "public",
                "mrl_hours": 720,
                "reliability": 1.0,
                "rating_avg": 0.0,
                "rating_cnt": 0,
                "bg_command": "",
                "bg_times_updated": 0,
                "created_at": now,
            }
            for i in range(1, n + 1)
        ]
        for start in range(0, n, 1000):
            conn.execute(insert(servers), rows[start : start + 1000])
        ids = sorted(
            r.id for r in conn.execute(servers.select().with_only_columns(servers.c.id)).all()
        )
        conn.execute(
            insert(server_prices),
            [
                {
                    "server_id": sid,
                    "currency": "bitcoin",
                    "on_demand": to_units(Decimal("0.00001")),
                    "spot": 0,
                }
                for sid in ids
            ],
        )
        listing_changed(conn)
    # agent tokens were derived from the row's position: re-key them by the real ids
    with db.write() as conn:
        for i, sid in enumerate(ids, start=1):
            if i != sid:
                conn.execute(
                    servers.update()
                    .where(servers.c.id == sid)
                    .values(agent_token_hash=hashlib.sha256(agent_token(sid).encode()).hexdigest())
                )
    db.dispose()
    return {"servers": ids, "renters": renters}


def server_env(url: str, port: int, n: int) -> dict[str, str]:
    return {
        "OPENCLORE_DATABASE_URL": url,
        "OPENCLORE_HOST": "127.0.0.1",
        "OPENCLORE_PORT": str(port),
        "OPENCLORE_GATEWAY": "0",
        "OPENCLORE_MAX_CONNECTIONS": str(n + 1000),
        "OPENCLORE_LOG_LEVEL": "warning",
        "OPENCLORE_ADDRESS_SECRET": "bench-address-secret",  # `serve` refuses the default
    }


def tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def tree_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving ``database`` (its process title names it;
    other databases on the same server are not counted). Backends come and go: compare pid by
    pid."""
    out: dict[int, float] = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if (p.info["name"] or "").startswith("postgres") and f" {database} " in f"{title} ":
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
    return out


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


# ----------------------------------------------------------------------------- the agents


class Fleet:
    """One client process's agents: connected count, failures, receipts of desired sets."""

    def __init__(self, url: str, servers: list[int], parallel: int) -> None:
        self.url = url
        self.servers = servers
        self.sem = asyncio.Semaphore(parallel)
        self.connected = 0
        self.failed = 0
        self.dropped = 0
        self.heartbeats = 0
        self.errors: list[str] = []
        # (server id of the agent, order id) → when the desired set naming it arrived
        self.received: dict[str, float] = {}
        self.stop = asyncio.Event()

    async def agent(self, sid: int) -> None:
        from websockets.asyncio.client import connect

        from openclore.protocol import PROTOCOL_VERSION

        headers = {"Authorization": f"Bearer {agent_token(sid)}"}
        hello = {
            "type": "hello",
            "version": "bench",
            "protocol": PROTOCOL_VERSION,
            "agent_id": f"bench-{sid}",
            "specs": SPECS,
            "gpu_array": GPU_ARRAY,
            "public_host": ["127.0.0.1"],
            "containers": [],
        }
        try:
            async with self.sem:
                ws = await connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=120,
                    ping_interval=None,  # the market pings; an agent only answers
                    close_timeout=2,
                    max_size=2**20,
                )
                await ws.send(json.dumps(hello))
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if welcome.get("server_id") != sid:
                    raise BenchmarkFailed(f"agent {sid} welcomed as {welcome}")
        except Exception as exc:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"{sid}: {exc!r}")
            return
        self.connected += 1
        interval = float(welcome.get("heartbeat_interval", 5))
        beats = asyncio.create_task(self.beat(ws, interval))
        try:
            async for raw in ws:
                now = time.time()
                message = json.loads(raw)
                if message.get("type") == "desired":
                    for c in message.get("containers", []):
                        if c.get("order_id") is not None:
                            self.received.setdefault(f"{sid}:{c['order_id']}", now)
        except Exception as exc:
            if not self.stop.is_set() and len(self.errors) < 5:
                self.errors.append(f"{sid} dropped: {exc!r}")
        finally:
            beats.cancel()
            if not self.stop.is_set():
                self.dropped += 1
            self.connected -= 1

    async def beat(self, ws: Any, interval: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            await ws.send('{"type":"heartbeat"}')
            self.heartbeats += 1
            await asyncio.sleep(interval)


def client_main(url: str, servers: list[int], parallel: int, pipe: Pipe) -> None:
    raise_nofile()
    asyncio.run(_client(url, servers, parallel, pipe))


async def _client(url: str, servers: list[int], parallel: int, pipe: Pipe) -> None:
    fleet = Fleet(url, servers, parallel)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_commands() -> None:
        while True:
            try:
                command = pipe.recv()
            except EOFError:
                command = "stop"
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command == "stop":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    tasks = [asyncio.create_task(fleet.agent(sid)) for sid in servers]
    while True:
        try:
            command = await asyncio.wait_for(commands.get(), 0.5)
        except TimeoutError:
            command = None
        if command == "stop":
            break
        if command == "report" or command is None:
            pipe.send(
                {
                    "connected": fleet.connected,
                    "failed": fleet.failed,
                    "dropped": fleet.dropped,
                    "heartbeats": fleet.heartbeats,
                    "errors": fleet.errors,
                    "received": fleet.received if command == "report" else None,
                }
            )
    fleet.stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Clients:
    """The client processes, and their latest reports."""

    def __init__(self, url: str, servers: list[int], processes: int, parallel: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Pipe] = []
        self.latest: list[dict[str, Any]] = [{} for _ in range(processes)]
        for k in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=client_main, args=(url, servers[k::processes], parallel, child), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)

    def poll(self) -> dict[str, Any]:
        for k, pipe in enumerate(self.pipes):
            while pipe.poll():
                report = pipe.recv()
                if report.get("received") is None:
                    self.latest[k] = report
        keys = ("connected", "failed", "dropped", "heartbeats")
        out: dict[str, Any] = {key: sum(r.get(key, 0) for r in self.latest) for key in keys}
        out["errors"] = [e for r in self.latest for e in r.get("errors", [])][:5]
        return out

    def received(self) -> dict[str, float]:
        for pipe in self.pipes:
            pipe.send("report")
        merged: dict[str, float] = {}
        for pipe in self.pipes:
            while True:
                report = pipe.recv()
                if report.get("received") is not None:
                    merged.update(report["received"])
                    break
        return merged

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in self.procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()


# ----------------------------------------------------------------------------- one step


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def create_orders(
    url: str, sample: list[int], renters: list[int], rate: float
) -> dict[int, tuple[int, float]]:
    """Order id → (server id, commit time), one transaction each, ``rate`` per second."""
    from openclore.config import Settings
    from openclore.market.inputs import CreateOrderRequest, validate_body
    from openclore.market.orders import create_order
    from openclore.store.db import Database, run_write

    settings = Settings(database_url=url)
    db = Database(url, pool_size=2)
    committed: dict[int, tuple[int, float]] = {}
    start = time.monotonic()
    try:
        for k, sid in enumerate(sample):
            due = start + k / rate
            time.sleep(max(0.0, due - time.monotonic()))
            body = {
                "currency": "bitcoin",
                "image": "openclore-bench/idle:latest",
                "renting_server": sid,
                "type": "on-demand",
                "ports": {"22": "tcp"},
            }
            req = validate_body(CreateOrderRequest, body)
            renter = renters[k // ORDERS_PER_RENTER]
            oid = run_write(
                db,
                lambda c, r=renter, q=req: create_order(c, r, q, settings, int(time.time())),
            )
            committed[int(oid)] = (sid, time.time())
    finally:
        db.dispose()
    return committed


def run_step(args: argparse.Namespace, n: int, tmp: Path) -> dict[str, Any]:
    url = fresh_database(args.database_url, n, tmp)
    try:
        return _run_step(args, n, url)
    finally:
        drop_database(url)


def _run_step(args: argparse.Namespace, n: int, url: str) -> dict[str, Any]:
    orders = min(args.orders, n)
    world = seed(url, n, orders)
    servers = world["servers"]
    port = free_port()
    env = {**os.environ, **server_env(url, port, n)}
    serve = [str(Path(sys.executable).parent / "openclore"), "serve"]
    log_path = Path(tempfile.gettempdir()) / f"openclore-bench-agents-{n}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            serve, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=raise_nofile
        )
    server = psutil.Process(proc.pid)
    base = f"http://127.0.0.1:{port}"
    clients: Clients | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkFailed(f"serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        httpx.get(f"{base}/v1/marketplace", timeout=10)  # warm: imports, caches, pool
        time.sleep(1)
        rss_idle = tree_rss(server)

        t0 = time.monotonic()
        ws_url = base.replace("http://", "ws://") + "/agent/v1/connect"
        clients = Clients(ws_url, servers, args.clients, args.parallel)
        state: dict[str, Any] = {}
        while True:
            time.sleep(0.5)
            state = clients.poll()
            if state["failed"] or state["dropped"]:
                raise BenchmarkFailed(f"{n} agents: {state}")
            if state["connected"] == n:
                break
            if time.monotonic() - t0 > args.connect_timeout:
                raise BenchmarkFailed(f"{n} agents: only {state} after {args.connect_timeout}s")
        connect_s = time.monotonic() - t0
        print(f"  {n} agents connected in {connect_s:.1f}s", flush=True)
        time.sleep(args.settle)  # every agent's first heartbeat, the hello storm's writes done

        # heartbeats only
        database = "" if url.startswith("sqlite") else str(make_url(url).database)
        beats0, cpu0, pg0 = clients.poll()["heartbeats"], tree_cpu(server), postgres_cpu(database)
        client_procs = [psutil.Process(p.pid) for p in clients.procs]
        client0 = sum(tree_cpu(p) for p in client_procs)
        w0 = time.monotonic()
        spy = None
        if args.profile:  # py-spy samples the server during the window (its CPU counts too)
            out = Path(args.profile).with_suffix(f".{n}.txt")
            spy_bin = Path(sys.executable).parent / "py-spy"  # pip install py-spy
            cmd = [str(spy_bin) if spy_bin.exists() else "py-spy", "record", "-p", str(proc.pid)]
            cmd += ["-d", str(int(args.window))]
            cmd += ["-r", "50", "-f", "raw", "--nonblocking", "-o", str(out)]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.window)
        if spy is not None:
            spy.wait(30)
        state = clients.poll()
        window = time.monotonic() - w0
        beats = state["heartbeats"] - beats0
        cpu = tree_cpu(server) - cpu0
        pg = cpu_since(pg0, postgres_cpu(database))
        client_cpu = sum(tree_cpu(p) for p in client_procs) - client0
        rss_full = tree_rss(server)
        if state["dropped"] or state["connected"] != n:
            raise BenchmarkFailed(f"{n} agents during heartbeats: {state}")

        # pushes
        sample = random.Random(n).sample(servers, orders)
        committed = create_orders(url, sample, world["renters"], args.rate)
        deadline = time.monotonic() + args.push_timeout
        received: dict[str, float] = {}
        while time.monotonic() < deadline:
            received = clients.received()
            if all(f"{sid}:{oid}" in received for oid, (sid, _t) in committed.items()):
                break
            time.sleep(0.5)
        state = clients.poll()
        if state["dropped"] or state["connected"] != n:
            raise BenchmarkFailed(f"{n} agents during pushes: {state}")
        # every order reached its own server's agent and no other
        expected = {f"{sid}:{oid}" for oid, (sid, _t) in committed.items()}
        stray = sorted(set(received) - expected)
        if stray:
            raise BenchmarkFailed(f"orders reached the wrong agents: {stray[:10]}")
        latencies = []
        missing = 0
        first = min(t for _sid, t in committed.values())
        slow: list[tuple[float, float]] = []  # (commit, seconds after the first; latency ms)
        for oid, (sid, t_commit) in committed.items():
            got = received.get(f"{sid}:{oid}")
            if got is None:
                missing += 1
            else:
                latencies.append(got - t_commit)
                if got - t_commit > 0.1:
                    slow.append((round(t_commit - first, 2), round((got - t_commit) * 1000)))
        if missing:  # never delivered within push_timeout: counts as that long
            latencies += [float(args.push_timeout)] * missing
        return {
            "agents": n,
            "connect_seconds": round(connect_s, 1),
            "rss_idle_mib": round(rss_idle / 2**20, 1),
            "rss_connected_mib": round(rss_full / 2**20, 1),
            "rss_per_agent_kib": round((rss_full - rss_idle) / n / 1024, 1),
            "heartbeat_interval_s": 5.0,
            "heartbeats_per_s": round(beats / window, 1),
            "server_cpu_share": round(cpu / window, 3),
            "server_cpu_us_per_heartbeat": round(cpu / beats * 1e6, 1) if beats else None,
            "postgres_cpu_share": round(pg / window, 3),
            "postgres_cpu_us_per_heartbeat": round(pg / beats * 1e6, 1) if beats else None,
            "clients_cpu_share": round(client_cpu / window, 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "orders": len(committed),
            "orders_not_delivered": missing,
            "push_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "push_p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "push_max_ms": round(max(latencies) * 1000, 1),
            "push_mean_ms": round(statistics.fmean(latencies) * 1000, 1),
            # when the slow ones were committed: together (a stall) or spread (a queue)
            "push_over_100ms": sorted(slow)[:40],
        }
    finally:
        if clients is not None:
            clients.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="1000,3000,10000")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--parallel", type=int, default=50, help="connects in flight per client")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="orders per second")
    parser.add_argument("--window", type=float, default=20.0, help="heartbeat-only seconds")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--connect-timeout", type=float, default=600.0)
    parser.add_argument("--push-timeout", type=float, default=30.0)
    parser.add_argument("--goal", type=float, default=1.0, help="push p99 goal (seconds)")
    parser.add_argument("--output", default="agents")
    parser.add_argument(
        "--profile", default=None, help="py-spy the server during the window into PATH.<N>.txt"
    )
    args = parser.parse_args()
    raise_nofile()
    steps = [int(s) for s in args.steps.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in steps:
            print(f"step: {n} agents", flush=True)
            try:
                row = run_step(args, n, Path(tmp))
            except BenchmarkFailed as exc:
                row = {"agents": n, "failed": str(exc)[:2000]}
            print("  " + json.dumps(row), flush=True)
            rows.append(row)
    held = [r["agents"] for r in rows if "failed" not in r and r["push_p99_ms"] < args.goal * 1000]
    result = {
        "benchmark": "agents",
        "database": "sqlite" if args.database_url.startswith("sqlite") else "postgresql",
        "client_processes": args.clients,
        "goal_push_p99_ms": args.goal * 1000,
        "largest_held_within_goal": max(held) if held else None,
        "steps": rows,
        "machine": machine(),
    }
    path = write_result(args.output, result)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
