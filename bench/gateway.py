"""Through the access gateway against a direct connection to the same container port, in one run:
the throughput of a 100 MB transfer, and the p50/p99 latency of small request/response round
trips on one connection.

    .venv/bin/python bench/gateway.py [--mb 100] [--trips 2000] [--rounds 3]

Needs a Docker engine and the image (``scripts/setup-docker.sh``). Everything runs on this
machine: a market on a temporary SQLite database (in-process uvicorn), the gateway on its own
event loop in a thread, one agent with the Docker runtime tunnelling to it, and one rental
(busybox) with two tcp ports bound on the host's loopback: 9000 echoes (``cat``), 9001 sends
``--mb`` MB of zeros. "Direct" is the container port on the host's loopback (Docker's proxy);
"gateway" is the gateway's public port, through the agent's SSH tunnel. Rounds alternate which
path goes first; each figure is the median round's. Goals: throughput ≥ 0.5× direct, < 1 ms
added p50. The result goes to ``bench/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import httpx

sys.path.insert(0, str(Path(__file__).parent))

from agent_start import NETWORK, make_world, start_market, wait

from openclore.agent.channel import Agent, AgentThread, ChannelConfig
from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import LABEL_AGENT
from openclore.agent.runtime.docker import DockerRuntime
from openclore.agent.specs import SpecsConfig, collect
from openclore.agent.state import register
from openclore.gateway.server import Gateway

from _common import BenchmarkFailed, free_port, machine, median_index, write_result

COMMAND = (
    "nc -ll -p 9000 -e /bin/cat &\n"
    "printf '#!/bin/sh\\nexec head -c $((MB * 1048576)) /dev/zero\\n' > /zeros.sh\n"
    "chmod +x /zeros.sh\n"
    "exec nc -ll -p 9001 -e /zeros.sh\n"
)


def gateway_settings(ssh_port: int) -> dict[str, Any]:
    return {
        "gateway_name": "localhost",
        "gateway_ssh_port": ssh_port,
        "gateway_ssh_address": f"127.0.0.1:{ssh_port}",
        "gateway_http_port": 0,
        "gateway_port_range": "45100-45119",
    }


def transfer(port: int, size: int) -> float:
    """MB/s of reading ``size`` bytes from one connection to ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        got = 0
        started = time.perf_counter()
        while got < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        elapsed = time.perf_counter() - started
    if got != size:
        raise BenchmarkFailed(f"port {port}: {got} of {size} bytes arrived")
    return size / elapsed / 1e6


def round_trips(port: int, trips: int) -> list[float]:
    """Milliseconds per 64-byte request/echo round trip on one connection (after 50 warm-up)."""
    payload = b"x" * 63 + b"\n"
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(trips + 50):
            started = time.perf_counter()
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    raise BenchmarkFailed(f"port {port} closed during the round trips")
                got += chunk
            if i >= 50:
                out.append((time.perf_counter() - started) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default="openclore-test/busybox:latest")
    args = parser.parse_args()

    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        db, settings, url, server = start_market(tmp, gateway_settings(free_port()))
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        gateway = Gateway(db, settings)
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(30)
        token, server_id, init_token = make_world(db, settings)
        state = register(url, init_token, tmp / "agent")
        runtime = DockerRuntime(state.agent_id, network=NETWORK, isolation="off")
        runtime.prepare()
        reconciler = Reconciler(
            runtime,
            ReconcileSettings(
                agent_id=state.agent_id, port_range=(45200, 45299), poll_interval=0.2
            ),
        )
        agent = Agent(
            ChannelConfig(server_url=url, agent_token=state.agent_token, agent_id=state.agent_id),
            reconciler,
            collect(SpecsConfig(disk_path=str(tmp))),
        )
        thread = AgentThread(agent).start()
        http = httpx.Client(base_url=url, headers={"auth": token}, timeout=30)
        try:
            wait(agent.connected.is_set, 20)
            body = {
                "currency": "bitcoin",
                "image": args.image,
                "renting_server": server_id,
                "type": "on-demand",
                "ports": {"9000": "tcp", "9001": "tcp"},
                "env": {"MB": str(args.mb)},
                "command": COMMAND,
            }
            reply = http.post("/v1/create_order", json=body).json()
            if reply.get("code") != 0:
                raise BenchmarkFailed(f"create_order answered {reply}")
            order_id = int(reply["order_id"])

            def published() -> dict[str, int] | None:
                for o in http.get("/v1/my_orders").json()["orders"]:
                    if o["id"] == order_id and o.get("state") == "running" and o["tcp_ports"]:
                        return {p.split(":")[0]: int(p.split(":")[1]) for p in o["tcp_ports"]}
                return None

            wait(lambda: published() is not None and len(gateway.listeners) == 2, 60, 0.1)
            public = published()
            assert public is not None
            (status,) = [s for s in reconciler.snapshot() if s.order_id == order_id]
            direct = {port: int(host_port) for port, host_port in status.tcp_ports.items()}
            time.sleep(1.0)  # the container's servers are up
            size = args.mb * 1048576
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                paths = [("direct", direct), ("gateway", public)]
                if r % 2:
                    paths.reverse()
                result: dict[str, Any] = {}
                for name, ports in paths:
                    trips = round_trips(ports["9000"], args.trips)
                    result[name] = {
                        "throughput_mb_s": round(transfer(ports["9001"], size), 1),
                        "p50_ms": round(statistics.median(trips), 4),
                        "p99_ms": round(percentile(trips, 0.99), 4),
                    }
                result["throughput_ratio"] = round(
                    result["gateway"]["throughput_mb_s"] / result["direct"]["throughput_mb_s"], 3
                )
                result["added_p50_ms"] = round(
                    result["gateway"]["p50_ms"] - result["direct"]["p50_ms"], 4
                )
                rounds.append(result)
                print(f"round {r + 1}: {result}", flush=True)
            best = rounds[median_index([x["throughput_ratio"] for x in rounds])]
            payload = {
                "benchmark": "gateway",
                "command": "bench/gateway.py " + shlex.join(sys.argv[1:]),
                "transfer_mb": args.mb,
                "round_trips": args.trips,
                "median_round": best,
                "rounds": rounds,
                "goals": {"throughput_ratio_min": 0.5, "added_p50_ms_max": 1.0},
                "machine": machine(),
            }
            path = write_result("gateway", payload)
            print(f"median round: {best}\nwritten to {path}")
            http.post("/v1/cancel_order", json={"id": order_id})
        finally:
            thread.stop()
            for c in client.api.containers(
                all=True, filters={"label": f"{LABEL_AGENT}={state.agent_id}"}
            ):
                client.api.remove_container(c["Id"], force=True)
            asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(30)
            server.should_exit = True
            http.close()
            runtime.close()
            db.dispose()


if __name__ == "__main__":
    main()
