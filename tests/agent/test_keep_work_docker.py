"""Keeping work end to end (SPEC §8): market server + host agent + real Docker containers.

A renter writes a file, stops the order, another renter rents the server and leaves, the first
starts again and finds the file; a volume's file passes from one order to the next. Mandatory
when ``CI=true`` (see tests/agent/test_agent_docker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_agent_docker import containers, docker_agent, web_order

from agent_support import host_server, wait_for, wait_order_state
from support import Market, ok


def exec_in(client: Any, labels: dict[str, str], order_id: int, command: str) -> str:
    (container,) = containers(client, labels, f"order-{order_id}")
    code, output = container.exec_run(["/bin/sh", "-c", command])
    assert code == 0, output
    return str(output.decode()).strip()


def offer_storage(market: Market, host: str) -> None:
    body = {"name": "rig", "disk_gb": 20, "storage_price": 0.0001}
    ok(market.client(host).post("/v1/set_server_settings", json=body))


def test_a_stopped_order_finds_its_file_after_someone_else_rented_the_server(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    offer_storage(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        oid = ok(alice.post("/v1/create_order", json=web_order(sid)))["order_id"]
        wait_order_state(alice, oid, "running")
        exec_in(docker_client, docker_run, oid, "echo kept-across-stop > /root/work.txt")

        ok(alice.post("/v1/stop_order", json={"id": oid}))
        wait_order_state(alice, oid, "halted")
        (kept,) = containers(docker_client, docker_run, f"order-{oid}")
        assert kept.status == "exited"

        other = ok(bob.post("/v1/create_order", json=web_order(sid)))["order_id"]
        wait_order_state(bob, other, "running")
        ok(bob.post("/v1/cancel_order", json={"id": other}))
        wait_for(
            lambda: not containers(docker_client, docker_run, f"order-{other}"),
            15,
            what="the other renter's container removed",
        )

        started = ok(alice.post("/v1/start_order", json={"id": oid}))["order"]
        assert started["running"] is True
        wait_order_state(alice, oid, "running")
        (again,) = containers(docker_client, docker_run, f"order-{oid}")
        assert again.id == kept.id  # the same container, with its disk
        assert exec_in(docker_client, docker_run, oid, "cat /root/work.txt") == "kept-across-stop"
        ok(alice.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="containers removed")
    finally:
        agent.stop()


def test_a_volume_passes_its_data_from_one_order_to_the_next(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    alice = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    offer_storage(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    volume_id = None
    try:
        wait_for(lambda: ok(market.client(host).get("/v1/my_servers"))["servers"][0]["online"], 10)
        body = {"server_id": sid, "size_gb": 1, "name": "datasets"}
        volume_id = ok(alice.post("/v1/create_volume", json=body))["volume_id"]

        def ready() -> bool:
            (volume,) = ok(alice.get("/v1/volumes"))["volumes"]
            return bool(volume["state"] == "ready")

        wait_for(ready, 15, what="the agent holds the volume")
        mounted = web_order(sid, volumes={str(volume_id): "/data"})
        first = ok(alice.post("/v1/create_order", json=mounted))["order_id"]
        wait_order_state(alice, first, "running")
        exec_in(docker_client, docker_run, first, "echo from-the-first > /data/shared.txt")
        ok(alice.post("/v1/cancel_order", json={"id": first}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="first removed")

        second = ok(alice.post("/v1/create_order", json=mounted))["order_id"]
        wait_order_state(alice, second, "running")
        assert exec_in(docker_client, docker_run, second, "cat /data/shared.txt") == (
            "from-the-first"
        )
        ok(alice.post("/v1/cancel_order", json={"id": second}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="second removed")
        ok(alice.post("/v1/delete_volume", json={"id": volume_id}))
        wait_for(
            lambda: not docker_client.volumes.list(filters={"name": f"openclore-vol-{volume_id}"}),
            15,
            what="the volume removed by the agent",
        )
    finally:
        agent.stop()
        if volume_id is not None:
            for volume in docker_client.volumes.list(
                filters={"name": f"openclore-vol-{volume_id}"}
            ):
                volume.remove(force=True)
