"""How long from ``create_order`` (HTTP) to the rental's container running, as the agent reports
it in ``my_orders``, against creating and starting the same container through the Docker API
(the ``docker`` SDK, as the agent does; no CLI process start-up) measured in the same run.

    .venv/bin/python bench/agent_start.py [--runs 10] [--image openclore-test/busybox:latest]

Needs a Docker engine and the image (``scripts/setup-docker.sh``). Everything runs on this
machine: a market on a temporary SQLite database (in-process uvicorn), one agent with the Docker
runtime (network ``openclore-bench``, iptables isolation off), one renter. The bare container has
the agent's options: init, a published port, the same network and hardening. Runs alternate
which path goes first; the reported figures are those of the median run (by the agent's time),
its ratio to the bare start of that same run. The push time (the desired set naming the order
reaching the agent) is null when it was not recorded, never 0. Every container started here is
removed, and the network too. Target: the agent path adds less than 0.5 s to the bare start.
The result goes to ``bench/results/agent_start.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))

from openclore.agent.channel import Agent, AgentThread, ChannelConfig
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LABEL_AGENT
from openclore.agent.runtime.docker import DockerRuntime
from openclore.agent.specs import SpecsConfig, collect
from openclore.agent.state import register
from openclore.api.app import create_app
from openclore.config import Settings
from openclore.domain.money import to_units
from openclore.ledger import ensure_system_accounts
from openclore.market.accounts import create_user, issue_token
from openclore.market.servers import add_server
from openclore.market.wallets import deposit
from openclore.protocol import DesiredContainer
from openclore.store.db import Database, listing_changed
from openclore.store.schema import server_prices, servers

from _common import BenchmarkFailed, free_port, machine, median_run, write_result

BENCH_LABEL = "openclore.bench"
COMMAND = "httpd -f -p 8000 -h /www"
NETWORK = "openclore-bench"


def start_market(
    tmp: Path, extra: dict[str, Any] | None = None
) -> tuple[Database, Settings, str, uvicorn.Server]:
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'bench.sqlite'}",
        rate_limit_interval=0,
        create_order_interval=0,
        tick_interval=0,
        **(extra or {}),
    )
    db = Database(settings.database_url)
    db.create_all()
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
    port = free_port()
    app = create_app(settings, db=db)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return db, settings, f"http://127.0.0.1:{port}", server


def make_world(db: Database, settings: Settings) -> tuple[str, int, str]:
    now = int(time.time())
    with db.write() as conn:
        host = create_user(conn, "bench-host", now, settings)
        renter = create_user(conn, "bench-renter", now, settings)
        token = issue_token(conn, renter, now)
        deposit(conn, renter, "bitcoin", to_units(Decimal("10")), settings, now)
        server_id, init_token = add_server(conn, host, "bench-rig", now, settings)
        conn.execute(servers.update().where(servers.c.id == server_id).values(visibility="public"))
        conn.execute(
            server_prices.insert().values(
                server_id=server_id,
                currency="bitcoin",
                on_demand=to_units(Decimal("0.00001")),
                spot=to_units(Decimal("0.000001")),
            )
        )
        listing_changed(conn)
    return token, server_id, init_token


def wait(predicate: Any, timeout: float, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(interval)


def order_state(client: httpx.Client, order_id: int) -> str | None:
    reply = client.get("/v1/my_orders").json()
    if reply.get("code") != 0:
        raise BenchmarkFailed(f"my_orders answered {reply}")
    for o in reply["orders"]:
        if o["id"] == order_id:
            return o.get("state")  # type: ignore[no-any-return]
    return None


class PushClock:
    """When a desired set naming each order first reached the agent (instrumentation of the
    reconciler's ``set_desired``, the agent's own entry point for a pushed desired set)."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.seen: dict[int, float] = {}
        original = reconciler.set_desired

        def set_desired(containers: list[DesiredContainer]) -> None:
            now = time.monotonic()
            for c in containers:
                if c.order_id is not None:
                    self.seen.setdefault(c.order_id, now)
            original(containers)

        reconciler.set_desired = set_desired  # type: ignore[method-assign]


def bench_agent(
    client: httpx.Client, server_id: int, image: str, runtime: DockerRuntime, clock: PushClock
) -> tuple[float, float | None]:
    """Seconds to 'running' in my_orders, and to the desired set naming the order reaching the
    agent (None when that was not seen: never 0)."""
    body = {
        "currency": "bitcoin",
        "image": image,
        "renting_server": server_id,
        "type": "on-demand",
        "ports": {"8000": "tcp"},
        "command": COMMAND,
    }
    t0 = time.monotonic()
    reply = client.post("/v1/create_order", json=body).json()
    if reply.get("code") != 0:
        raise BenchmarkFailed(f"create_order answered {reply}")
    order_id = int(reply["order_id"])
    wait(lambda: order_state(client, order_id) == "running", 60)
    elapsed = time.monotonic() - t0
    seen = clock.seen.get(order_id)
    pushed = None if seen is None else seen - t0
    reply = client.post("/v1/cancel_order", json={"id": order_id}).json()
    if reply.get("code") != 0:
        raise BenchmarkFailed(f"cancel_order answered {reply}")
    wait(lambda: not agent_containers(runtime), 60, 0.05)
    return elapsed, pushed


def agent_containers(runtime: DockerRuntime) -> list[dict[str, Any]]:
    """The agent's containers, from one sparse list call: ``runtime.containers()`` inspects each
    listed container and fails when one is removed in between (the agent is removing them)."""
    found: list[dict[str, Any]] = runtime.client.api.containers(
        all=True, filters={"label": f"{LABEL_AGENT}={runtime.agent_id}"}
    )
    return found


def bench_bare(client: docker.DockerClient, runtime: DockerRuntime, image: str, port: int) -> float:
    """The ceiling: the same container created and started through the Docker API (the SDK, as
    the agent does), with the agent's options: init, a published port, its network and its
    hardening (capabilities, no-new-privileges, pids limit, log rotation)."""
    kwargs: dict[str, Any] = {
        "name": f"openclore-bench-bare-{port}",
        "labels": {BENCH_LABEL: "1"},
        "environment": {},
        "detach": True,
        "init": True,
        "ports": {"8000/tcp": ("0.0.0.0", port)},
        **runtime.hardening.container_options(),
    }
    if runtime.network:
        kwargs["network"] = runtime.network
    t0 = time.monotonic()
    container = client.containers.create(image, **kwargs)
    try:
        container.start()
        elapsed = time.monotonic() - t0
    finally:
        container.remove(force=True, v=True)
    return elapsed


def remove_leftovers(client: docker.DockerClient) -> int:
    leftovers = client.containers.list(all=True, filters={"label": BENCH_LABEL})
    for c in leftovers:
        c.remove(force=True, v=True)
    return len(leftovers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default="openclore-test/busybox:latest")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "agent_start",
        "command": shlex.join(["bench/agent_start.py", *sys.argv[1:]]),
        "machine": machine(),
        "parameters": vars(args) | {"network": NETWORK, "isolation": "off"},
    }
    client = docker.from_env(timeout=120)
    try:
        runs = measure(args, client)
    except (BenchmarkFailed, TimeoutError) as exc:
        result |= {"ok": False, "error": str(exc) or type(exc).__name__}
        write_result("agent_start", result)
        print(f"FAILED: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        remove_leftovers(client)
        with contextlib.suppress(docker.errors.DockerException):
            client.networks.get(NETWORK).remove()
        client.close()
    med = median_run(runs, "agent_s")
    missing = sum(1 for r in runs if r["push_s"] is None)
    result |= {"ok": True, "runs": runs, "median_run": med, "push_missing": missing}
    write_result("agent_start", result)
    push = "not recorded" if med["push_s"] is None else f"{med['push_s']:.3f} s"
    print(f"median run (#{med['run']} of {args.runs}, by create_order -> running):")
    slowest = max(r["agent_s"] for r in runs)
    print(
        f"  create_order -> running (agent-reported): {med['agent_s']:.3f} s "
        f"(order reached the agent after {push}; slowest run {slowest:.3f} s)"
    )
    print(f"  bare create + start through the Docker API, same run: {med['bare_s']:.3f} s")
    print(
        f"  ratio {med['ratio_to_ceiling']:.2f}, extra {med['extra_s']:+.3f} s "
        f"({'within' if med['extra_s'] < 0.5 else 'OVER'} the 0.5 s target)"
        + (f"; push time missing in {missing} runs" if missing else "")
    )
    return 0


def measure(args: argparse.Namespace, client: docker.DockerClient) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        db, settings, url, server = start_market(tmp)
        token, server_id, init_token = make_world(db, settings)
        state = register(url, init_token, tmp / "agent")
        # isolation off: the iptables rules are installed once at start-up, not per container,
        # and a benchmark has no business changing this host's firewall
        runtime = DockerRuntime(state.agent_id, network=NETWORK, isolation="off")
        runtime.prepare()
        reconciler = Reconciler(
            runtime,
            ReconcileSettings(
                agent_id=state.agent_id,
                port_range=(43000, 43998),
                stop_timeout=1,
                extra_labels={BENCH_LABEL: "1"},
            ),
        )
        clock = PushClock(reconciler)
        agent = Agent(
            ChannelConfig(server_url=url, agent_token=state.agent_token, agent_id=state.agent_id),
            reconciler,
            collect(SpecsConfig(disk_path=str(tmp), disk_test_mb=8)),
        )
        thread = AgentThread(agent).start()
        runs: list[dict[str, Any]] = []
        try:
            wait(agent.connected.is_set, 30)
            with httpx.Client(base_url=url, headers={"auth": token}, timeout=30) as http:
                # warm-up: first create/start pays for caches on both paths
                bench_agent(http, server_id, args.image, runtime, clock)
                bench_bare(client, runtime, args.image, 43999)
                for i in range(args.runs):
                    if i % 2:
                        bare = bench_bare(client, runtime, args.image, 43999)
                        a, p = bench_agent(http, server_id, args.image, runtime, clock)
                    else:
                        a, p = bench_agent(http, server_id, args.image, runtime, clock)
                        bare = bench_bare(client, runtime, args.image, 43999)
                    runs.append(
                        {
                            "run": i + 1,
                            "agent_s": round(a, 4),
                            "push_s": None if p is None else round(p, 4),
                            "bare_s": round(bare, 4),
                            "ratio_to_ceiling": round(a / bare, 3),
                            "extra_s": round(a - bare, 4),
                        }
                    )
        finally:
            thread.stop()
            for c in runtime.containers():
                runtime.remove(c.id, 1)
            runtime.close()
            server.should_exit = True
            db.dispose()
    return runs


if __name__ == "__main__":
    sys.exit(main())
