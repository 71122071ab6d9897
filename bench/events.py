"""Event delivery latency: a change committed → its webhook received, at 100 events/s.

An ``openclore serve`` process (sandbox mode, so a loopback receiver is allowed) delivers the
webhooks of one user; the benchmark credits that user's wallet through ``/sandbox/deposit`` on a
fixed schedule (``--rate`` per second for ``--seconds``), each deposit a ``deposit.credited``
event, and a receiver on loopback notes when each event arrives. The latency of an event is
arrival − the moment its deposit request was *sent* (the commit happens after that, so the
figure is an upper bound of commit → received).

The ceiling, in the same run: a bare HTTP POST loop sending the same number of bodies of the
same size on the same schedule straight to the same receiver (sent → received). Rounds alternate
the two; each target's figures are those of its median round (by p99). Every event must arrive
(at least once; duplicates are counted) or the run fails.

Run: ``.venv/bin/python bench/events.py`` (SQLite) or ``--database-url postgresql://…/postgres``
(a scratch database is created on that server and dropped afterwards); the result goes to
``bench/results/events[-postgresql].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from openclore.config import Settings
from openclore.ledger import ensure_system_accounts
from openclore.market.accounts import create_user, issue_token
from openclore.market.wallets import deposit
from openclore.store.db import Database, normalize_url

from _common import BenchmarkFailed, free_port, machine, median_run, process, write_result

UNIT = Decimal("0.000000001")


class Receiver:
    """The webhook receiver, in a process of its own (so that it never waits for the benchmark's
    own Python): a minimal asyncio HTTP/1.1 server with keep-alive that notes the arrival time
    (``time.perf_counter``, CLOCK_MONOTONIC: comparable across processes) of every POST, keyed by
    the sequence number in its body. ``GET /dump`` answers the arrivals and forgets them."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(self.port)], stdout=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}/hook"
        deadline = time.time() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/dump", timeout=1)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise RuntimeError("receiver did not start") from None
                time.sleep(0.1)

    def dump(self) -> dict[int, list[float]]:
        got = httpx.get(f"http://127.0.0.1:{self.port}/dump", timeout=30).json()
        return {int(k): v for k, v in got.items()}

    def count(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.port}/count", timeout=30).json())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def sequence(body: bytes) -> int:
    data = json.loads(body, parse_float=Decimal)["data"]
    if "seq" in data:  # the bare loop's bodies
        return int(data["seq"])
    return int(Decimal(str(data["amount"])) / UNIT) - 1  # deposit i credits i+1 units


def serve_receiver(port: int) -> None:
    arrivals: dict[int, list[float]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                now = time.perf_counter()
                if head.startswith(b"POST"):
                    arrivals.setdefault(sequence(body), []).append(now)
                    answer = b""
                elif head.startswith(b"GET /count"):
                    answer = str(len(arrivals)).encode()
                else:
                    answer = json.dumps(arrivals).encode()
                    arrivals.clear()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def paced(rate: float, count: int, send: Any) -> dict[int, float]:
    """Call ``send(i)`` for i in range(count) at ``rate`` per second; returns send times."""
    sent: dict[int, float] = {}
    start = time.perf_counter() + 0.2
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i] = time.perf_counter()
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    return sent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(
    name: str, sent: dict[int, float], arrivals: dict[int, list[float]], seconds: float
) -> dict[str, Any]:
    missing = [i for i in sent if i not in arrivals]
    if missing:
        raise BenchmarkFailed(f"{name}: {len(missing)} of {len(sent)} never arrived")
    latencies = [(arrivals[i][0] - sent[i]) * 1000 for i in sent]
    return {
        "events": len(sent),
        "rate_per_s": round(len(sent) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "duplicates": sum(len(a) - 1 for a in arrivals.values()),
    }


async def wait_for(receiver: Receiver, count: int, timeout: float) -> dict[int, list[float]]:
    deadline = time.perf_counter() + timeout
    while await asyncio.to_thread(receiver.count) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # duplicates, were any coming
    return await asyncio.to_thread(receiver.dump)


async def round_openclore(
    receiver: Receiver, api: str, tokens: list[str], rate: float, count: int, offset: int
) -> dict[str, Any]:
    answered: dict[int, float] = {}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:

        async def send(i: int) -> None:
            amount = (offset + i + 1) * UNIT
            r = await client.post(
                "/sandbox/deposit",
                json={"currency": "bitcoin", "amount": float(amount)},
                headers={"auth": tokens[i % len(tokens)]},
            )
            answered[i] = time.perf_counter()
            if r.json().get("code") != 0:
                raise BenchmarkFailed(f"deposit refused: {r.text}")

        sent = await paced(rate, count, send)
        arrivals = await wait_for(receiver, count, 30)
    shifted = {i - offset: t for i, t in arrivals.items()}
    out = figures("openclore", sent, shifted, count / rate)
    # the deposit's answer comes after its commit: arrival - answer is a lower bound of
    # commit -> received, as arrival - send is an upper bound; the API's own time between
    api_ms = [(answered[i] - sent[i]) * 1000 for i in sent]
    after = [(shifted[i][0] - answered[i]) * 1000 for i in sent]
    out["api_p50_ms"] = round(percentile(api_ms, 0.5), 2)
    out["api_p99_ms"] = round(percentile(api_ms, 0.99), 2)
    out["after_answer_p50_ms"] = round(percentile(after, 0.5), 2)
    out["after_answer_p99_ms"] = round(percentile(after, 0.99), 2)
    return out


async def round_committed(
    receiver: Receiver, db: Database, uids: list[int], rate: float, count: int, offset: int
) -> dict[str, Any]:
    """PostgreSQL: the changes are committed by this process (as by another replica) and the
    serve process hears of them through NOTIFY; latency is arrival - the end of the commit."""
    settings = Settings(database_url=db.url)
    committed: dict[int, float] = {}

    def commit(i: int) -> None:
        with db.write() as conn:
            deposit(conn, uids[i % len(uids)], "bitcoin", offset + i + 1, settings, 0)
        committed[i] = time.perf_counter()

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=16) as pool:

        async def send(i: int) -> None:
            await loop.run_in_executor(pool, commit, i)

        sent = await paced(rate, count, send)
    arrivals = await wait_for(receiver, count, 30)
    shifted = {i - offset: t for i, t in arrivals.items()}
    out = figures("openclore", committed, shifted, count / rate)
    lag = [(committed[i] - sent[i]) * 1000 for i in sent]
    out["commit_p50_ms"] = round(percentile(lag, 0.5), 2)
    out["commit_p99_ms"] = round(percentile(lag, 0.99), 2)
    return out


async def round_bare(receiver: Receiver, rate: float, count: int, size: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def send(i: int) -> None:
            body = json.dumps({"id": i, "type": "bare", "data": {"seq": i}})
            body += " " * max(0, size - len(body))  # the same size as an event
            await client.post(
                receiver.url, content=body, headers={"Content-Type": "application/json"}
            )

        sent = await paced(rate, count, send)
        arrivals = await wait_for(receiver, count, 30)
    return figures("bare", sent, arrivals, count / rate)


def prepare(url: str, users: int) -> tuple[list[str], list[int]]:
    db = Database(url)
    db.create_all()
    settings = Settings(database_url=url)
    tokens, uids = [], []
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        for n in range(users):
            uid = create_user(conn, f"bench{n}", int(time.time()), settings)
            tokens.append(issue_token(conn, uid, int(time.time())))
            uids.append(uid)
    db.dispose()
    return tokens, uids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--users",
        type=int,
        default=10,
        help="the events are spread over this many users (each with a webhook to the receiver): "
        "one user's deposits queue on their wallet's row lock, a market's do not",
    )
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server (scratch db)")
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        serve_receiver(args.receiver)
        return
    count = int(args.rate * args.seconds)
    host = machine()  # the load average at the start, before our own processes

    scratch_pg = None
    producer: Database | None = None
    if args.database_url:
        server_url = make_url(normalize_url(args.database_url))
        scratch_pg = f"openclore_bench_events_{int(time.time())}"
        admin = Database(str(server_url))
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE DATABASE "{scratch_pg}"'))
        admin.dispose()
        url = server_url.set(database=scratch_pg).render_as_string(hide_password=False)
        backend = "postgresql"
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/events.sqlite"
        backend = "sqlite"
    receiver = Receiver()
    try:
        tokens, uids = prepare(url, args.users)
        if backend == "postgresql":  # changes committed by another process, as by a replica
            producer = Database(url, pool_size=16)
        port = free_port()
        env = {
            "OPENCLORE_DATABASE_URL": url,
            "OPENCLORE_SANDBOX": "1",
            "OPENCLORE_TICK_INTERVAL": "0",
            "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
            "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        }
        api = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "openclore", "serve", "--port", str(port)]
        with process(cmd, env, api + "/openapi.json"):
            for token in tokens:
                made = httpx.post(
                    api + "/v1/webhooks",
                    json={"url": receiver.url, "events": ["deposit.credited"]},
                    headers={"auth": token},
                ).json()
                if made.get("code") != 0:
                    raise BenchmarkFailed(f"webhook refused: {made}")
            sample = '{"id":1000,"type":"deposit.credited","time":1790000000,"data":'
            size = len(sample + '{"currency":"bitcoin","amount":0.000001}}')
            rounds: dict[str, list[dict[str, Any]]] = {"openclore": [], "bare": []}
            for n in range(args.rounds):
                rounds["bare"].append(asyncio.run(round_bare(receiver, args.rate, count, size)))
                if producer is not None:
                    one = round_committed(receiver, producer, uids, args.rate, count, n * count)
                else:
                    one = round_openclore(receiver, api, tokens, args.rate, count, n * count)
                rounds["openclore"].append(asyncio.run(one))
                print(
                    f"round {n + 1}: bare {rounds['bare'][-1]}  openclore {rounds['openclore'][-1]}"
                )
    finally:
        receiver.stop()
        if producer is not None:
            producer.dispose()
        if scratch_pg is not None:
            admin = Database(args.database_url)
            with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch_pg}" WITH (FORCE)'))
            admin.dispose()

    best = {name: median_run(runs, "p99_ms") for name, runs in rounds.items()}
    result = {
        "benchmark": "events",
        "backend": backend,
        "what": "change committed -> webhook received on loopback (upper bound: from the "
        "deposit request's send), at a fixed rate, against a bare HTTP POST loop to the same "
        "receiver in the same run; median round by p99",
        "rate_per_s": args.rate,
        "users": args.users,
        "changes": "deposits through the serve process's /sandbox/deposit (latency from the "
        "request's send)"
        if backend == "sqlite"
        else "deposits committed by the benchmark process, as by another replica; the serve "
        "process hears of them through NOTIFY (latency from the end of each commit)",
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "openclore": best["openclore"],
        "bare_post_loop": best["bare"],
        "p99_ratio_to_bare": round(best["openclore"]["p99_ms"] / best["bare"]["p99_ms"], 1),
        "p99_under_1s": best["openclore"]["p99_ms"] < 1000,
        "all_rounds": rounds,
        "machine": host,
    }
    path = write_result("events" if backend == "sqlite" else "events-postgresql", result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("all_rounds", "machine")}, indent=2
        )
    )
    print(f"written to {path}")
    if not result["p99_under_1s"]:
        raise SystemExit("p99 over 1 s")


if __name__ == "__main__":
    main()
