"""GET /v1/marketplace with 10,000 listed servers: openclore against a bare ASGI app.

Both run under uvicorn the same way (one worker, same port options) in the same run; wrk drives
them alternately for ``--rounds`` rounds. Each target's figures are those of its median round (by
req/s), and its ratio is to the bare app measured in that same round. ``bench/check_code.lua``
checks every answer: a status other than 2xx, a ``code`` other than 0 (openclore answers errors with
HTTP 200) or a socket error fails the benchmark. Rate limits are off for the first two targets
(anonymous and with a token); the third, ``limits``, is a second openclore process at the default
settings (1 call per second per token, decided in memory while it is the only process deciding
them), each request with the next of ``--tokens`` tokens (``bench/rotate_tokens.lua``), so that
no call is refused.
Run: ``.venv/bin/python bench/marketplace.py`` (needs ``wrk``: ``apt-get install wrk``); the result
goes to ``bench/results/marketplace.json``.
"""

from __future__ import annotations

import argparse
import json
import random
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
from openclore.market.accounts import create_user, issue_token
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

GPUS = ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090", "NVIDIA A100-SXM4-80GB"]


def populate(url: str, count: int, tokens: int = 1) -> list[str]:
    """The listed servers and a renter with ``tokens`` tokens."""
    settings = Settings(database_url=url)
    db = Database(url)
    db.create_all()
    rng = random.Random(7)
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
        host = create_user(conn, "host", 0, settings)
        renter = create_user(conn, "renter", 0, settings)
        issued = [issue_token(conn, renter, 0) for _ in range(tokens)]
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
    return issued


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--tokens", type=int, default=4000, help="tokens the default-limits target rotates"
    )
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "marketplace",
        "command": shlex.join(["bench/marketplace.py", *sys.argv[1:]]),
        "machine": machine(),
        "parameters": vars(args) | {"threads": 2, "wrk_script": "bench/check_code.lua"},
    }
    try:
        run(args, result)
    except BenchmarkFailed as exc:
        result |= {"ok": False, "error": str(exc)}
        write_result("marketplace", result)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    write_result("marketplace", result)
    return 0


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="openclore-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'market.sqlite'}"
    tokens = populate(url, args.servers, args.tokens)
    token = tokens[0]
    (tmp / "tokens.txt").write_text("\n".join(tokens) + "\n")
    port_app, port_bare, port_limits = free_port(), free_port(), free_port()
    env = {
        "OPENCLORE_DATABASE_URL": url,
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_TICK_INTERVAL": "0",
    }
    limits_env = {"OPENCLORE_DATABASE_URL": url, "OPENCLORE_TICK_INTERVAL": "0"}
    app_url = f"http://127.0.0.1:{port_app}/v1/marketplace"
    bare_url = f"http://127.0.0.1:{port_bare}/v1/marketplace"
    limits_url = f"http://127.0.0.1:{port_limits}/v1/marketplace"
    targets: tuple[tuple[str, str, dict[str, str] | None, Path | None], ...] = (
        ("bare", bare_url, None, None),
        ("anon", app_url, None, None),
        ("auth", app_url, {"auth": token}, None),
        ("limits", limits_url, None, tmp / "tokens.txt"),
    )
    rounds: list[dict[str, Any]] = []
    factory = "openclore.serve:api_app_factory"
    with (
        process(uvicorn_args(factory, port_app, factory=True), env, app_url),
        process(uvicorn_args(factory, port_limits, factory=True), limits_env, limits_url),
    ):
        body = httpx.get(app_url, headers={"Accept-Encoding": "identity"}).content
        parsed = json.loads(body)
        if parsed.get("code") != 0 or len(parsed.get("servers", [])) != args.servers:
            raise BenchmarkFailed(f"the listing is not the {args.servers} servers: {body[:200]!r}")
        authed = json.loads(
            httpx.get(app_url, headers={"Accept-Encoding": "identity", "auth": token}).content
        )
        if authed.get("code") != 0 or len(authed.get("servers", [])) != args.servers:
            raise BenchmarkFailed("the listing with a token is not the same servers")
        (tmp / "body.json").write_bytes(body)
        # every token known to the default-limits process (each one's first call reads it)
        with httpx.Client(base_url=limits_url.removesuffix("/marketplace")) as client:
            for t in tokens:
                answer = client.post("/wallets", headers={"auth": t}).json()
                if answer.get("code") != 0:
                    raise BenchmarkFailed(f"a token's first call at default limits: {answer}")
        time.sleep(1.0)  # each token's slot taken above has passed
        bare_env = {"BENCH_BODY_FILE": str(tmp / "body.json"), "PYTHONPATH": str(BENCH_DIR)}
        with process(uvicorn_args("bare_app:app", port_bare), bare_env, bare_url):
            if httpx.get(bare_url).content != body:
                raise BenchmarkFailed("the bare app does not serve the same body")
            for i in range(args.rounds):
                row: dict[str, Any] = {"round": i + 1}
                for name, target, headers, token_file in targets:
                    measured = wrk(
                        target,
                        seconds=args.seconds,
                        connections=args.connections,
                        headers=headers,
                        tokens=token_file,
                    )
                    require_clean(f"round {i + 1}, {name}", measured)
                    row[name] = measured
                    time.sleep(0.5)
                for name in ("anon", "auth", "limits"):
                    row[name]["ratio_to_bare"] = round(row[name]["rps"] / row["bare"]["rps"], 3)
                rounds.append(row)
    median = {}
    for name, *_ in targets:
        i = median_index([r[name]["rps"] for r in rounds])
        median[name] = {"round": rounds[i]["round"], **rounds[i][name]}
    result |= {
        "ok": True,
        "body_bytes": len(body),
        "runs": rounds,
        "median_run": median,
    }
    print(
        f"marketplace: {args.servers} servers, body {len(body) / 1e6:.2f} MB, "
        f"wrk -c{args.connections} {args.seconds}s x{args.rounds} rounds; median run of each "
        "target, ratio to the bare app measured in the same round; every answer's code checked"
    )
    print(
        f"{'target':<24}{'round':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}"
        f"{'errors':>8}"
    )
    labels = {
        "bare": "bare ASGI (ceiling)",
        "anon": "openclore anonymous",
        "auth": "openclore with token",
        "limits": "openclore, default limits",
    }
    for name, row in median.items():
        ratio = row.get("ratio_to_bare", 1.0)
        print(
            f"{labels[name]:<24}{row['round']:>6}{row['rps']:>10.1f}{row['p50_ms']:>10.1f}"
            f"{row['p99_ms']:>10.1f}{ratio:>8.2f}{row['errors']:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())
