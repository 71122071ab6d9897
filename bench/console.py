"""The web console's marketplace page with 10,000 listed servers: server time per render.

The app (API + console) is called in-process through its ASGI interface (no socket, no client
parsing), signed in with a session cookie, for several page shapes: the first page unfiltered, a
GPU filter sorted by price, "available only" deep in the pages. Each shape is rendered
``--requests`` times after a warm-up (the first request builds the cached listing and its search
index once per market version; that cold figure is reported apart). The ceiling measured in the
same run is the API's own query (``GET /v1/marketplace?…&limit=50``), which serves the same 50
servers as cached JSON bytes: the console's ratio to it is what rendering HTML costs.
Pass: p50 < 50 ms for every shape. Run: ``.venv/bin/python bench/console.py``; the result goes to
``bench/results/console.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from marketplace import populate

from openclore.api.app import create_app
from openclore.config import Settings
from openclore.store.db import Database
from openclore.web.app import install_console

from _common import machine, write_result

SHAPES = {
    "first page": "",
    "gpu=4090, sort by price": "gpu=4090&sort=price",
    "available only, page 20": "available=true&currency=bitcoin&page=20",
}
P50_LIMIT_MS = 50.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def _measure(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        response = await client.get(path)
        samples.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}")
    return samples


async def run(args: argparse.Namespace, result: dict[str, Any]) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/console.sqlite"
        token = populate(url, args.servers)
        settings = Settings(database_url=url, rate_limit_interval=0, tick_interval=0)
        db = Database(url)
        app = create_app(settings, db=db)
        install_console(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/signin")
            match = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert match is not None
            signed = await client.post("/signin", data={"csrf": match.group(1), "token": token})
            assert signed.status_code == 303, signed.text
            start = time.perf_counter()
            cold = await client.get("/market")
            result["cold_first_render_ms"] = round((time.perf_counter() - start) * 1000, 1)
            assert cold.status_code == 200 and cold.text.count("<tr data-id=") == 50
            shapes: dict[str, Any] = {}
            passed = True
            for name, query in SHAPES.items():
                page = "/market" + (f"?{query}" if query else "")
                await _measure(client, page, 5)
                console = _percentiles(await _measure(client, page, args.requests))
                api_query = query.replace("page=20", "offset=950") or "sort=id"
                api = _percentiles(
                    await _measure(client, f"/v1/marketplace?{api_query}&limit=50", args.requests)
                )
                ok = console["p50_ms"] < P50_LIMIT_MS
                passed = passed and ok
                shapes[name] = {
                    "console": console,
                    "api_same_query": api,
                    "ratio_p50": round(console["p50_ms"] / max(api["p50_ms"], 0.01), 2),
                    "pass": ok,
                }
                print(
                    f"{name:28} console p50 {console['p50_ms']:6.2f} ms  p95 "
                    f"{console['p95_ms']:6.2f} ms | API same query p50 {api['p50_ms']:5.2f} ms"
                    f" | {'ok' if ok else 'OVER'}"
                )
            result["shapes"] = shapes
        db.dispose()
    result["ok"] = passed
    print(
        f"cold first render (builds the listing cache and index): "
        f"{result['cold_first_render_ms']} ms"
    )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "console",
        "command": shlex.join(["bench/console.py", *sys.argv[1:]]),
        "machine": machine(),
        "parameters": vars(args) | {"p50_limit_ms": P50_LIMIT_MS},
    }
    passed = asyncio.run(run(args, result))
    write_result("console", result)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
