"""The host agent end to end with real containers: market server + agent + dockerd.

Needs a Docker engine and the local image ``openclore-test/busybox:latest``
(``scripts/setup-docker.sh`` provides both). Mandatory when ``CI=true``; skipped with a message
elsewhere. Every container a test starts carries a per-test label and is removed by the fixture.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_support import (
    RestartableServer,
    RunningAgent,
    host_server,
    start_agent,
    wait_for,
    wait_order_state,
)
from openclore.agent.runtime import LABEL_KEY
from openclore.agent.runtime.docker import DockerRuntime

from conftest import IN_CI, Market, ok, order_body, spot_body

IMAGE = "openclore-test/busybox:latest"
NETWORK = "openclore-test"
TEST_LABEL = "openclore.test"
SERVE = "httpd -f -p 8000 -h /www"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    problem = None
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=60)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem is not None:
        message = f"no Docker engine with {IMAGE} ({problem}); run scripts/setup-docker.sh"
        if IN_CI:
            pytest.fail(message + " (CI=true: the Docker tests are mandatory)")
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture
def docker_run(docker_client: Any) -> Iterator[dict[str, str]]:
    """Labels for this test's containers; everything carrying them is removed afterwards."""
    labels = {TEST_LABEL: uuid.uuid4().hex[:12]}
    yield labels
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{TEST_LABEL}={labels[TEST_LABEL]}"}
    ):
        container.remove(force=True)


def docker_agent(
    url: str, state_dir: Path, labels: dict[str, str], token: str | None = None, **kw: Any
) -> RunningAgent:
    return start_agent(
        url,
        state_dir,
        init_token=token,
        runtime_factory=lambda agent_id: DockerRuntime(agent_id, network=NETWORK),
        port_range=(42000, 42999),
        probe_ports=True,
        extra_labels=labels,
        **kw,
    )


def containers(client: Any, labels: dict[str, str], key: str | None = None) -> list[Any]:
    filters = [f"{TEST_LABEL}={labels[TEST_LABEL]}"]
    if key:
        filters.append(f"{LABEL_KEY}={key}")
    return list(client.containers.list(all=True, filters={"label": filters}))


def fetch(host: str, port: int, path: str, timeout: float = 10.0) -> str:
    """GET a published port from outside the container, retrying while the server starts."""
    result: list[str] = []

    def attempt() -> bool:
        try:
            response = httpx.get(f"http://{host}:{port}{path}", timeout=1)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        result.append(response.text)
        return True

    wait_for(attempt, timeout, interval=0.1, what=f"http://{host}:{port}{path}")
    return result[0]


def published(order: dict[str, Any], container_port: str) -> int:
    ports = dict(p.split(":") for p in order["tcp_ports"])
    return int(ports[container_port])


def web_order(server_id: int, **extra: Any) -> dict[str, Any]:
    return order_body(
        server_id,
        image=IMAGE,
        ports={"8000": "tcp"},
        env={"GREETING": "hello-from-env"},
        command=f'echo "$GREETING" > /www/env.txt\n{SERVE}',
        **extra,
    )


def test_rental_runs_in_a_container_reachable_from_outside(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
        order = wait_order_state(renter, oid, "running")
        port = published(order, "8000")
        assert 42000 <= port <= 42999
        assert fetch(order["pub_cluster"][0], port, "/env.txt").strip() == "hello-from-env"

        (container,) = containers(docker_client, docker_run, f"order-{oid}")
        attrs = container.attrs
        assert attrs["HostConfig"]["Init"] is True
        assert NETWORK in attrs["NetworkSettings"]["Networks"]
        assert "GREETING=hello-from-env" in attrs["Config"]["Env"]
        assert container.labels["openclore.order"] == str(oid)

        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="container removed")
        assert wait_order_state(renter, oid, "stopped")["tcp_ports"] == []
    finally:
        agent.stop()


def test_agent_restart_adopts_the_running_container(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    first = docker_agent(market.url, tmp_path / "s", docker_run, token)
    oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
    order = wait_order_state(renter, oid, "running")
    port = published(order, "8000")
    fetch("127.0.0.1", port, "/env.txt")
    (before,) = containers(docker_client, docker_run)
    first.stop()

    second = docker_agent(market.url, tmp_path / "s", docker_run)
    try:
        wait_for(lambda: second.reconciler.passes > 3, 10)
        (after,) = containers(docker_client, docker_run)
        assert after.id == before.id
        assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
        assert published(wait_order_state(renter, oid, "running"), "8000") == port
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "hello-from-env"
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="container removed")
    finally:
        second.stop()


def test_agent_reconnects_after_a_server_restart_and_keeps_the_rental(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid, token = host_server(market, host)
    server = RestartableServer(market)
    server.start()
    agent = docker_agent(server.url, tmp_path / "s", docker_run, token)
    try:
        c = market.client(renter)
        oid = ok(c.post("/v1/create_order", json=web_order(sid)))["order_id"]
        port = published(wait_order_state(c, oid, "running"), "8000")
        server.stop()
        wait_for(lambda: not agent.agent.connected.is_set(), 10, what="disconnect seen")
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "hello-from-env"
        server.start()
        wait_for(lambda: agent.agent.connections == 2, 15, what="reconnected")
        assert [x.status for x in containers(docker_client, docker_run)] == ["running"]
        ok(c.post("/v1/cancel_order", json={"id": oid}))
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="container removed")
    finally:
        agent.stop()
        server.stop()


def test_expiry_and_outbid_stop_the_container(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    low = market.client(market.user(bitcoin="0.01"))
    high = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host, mrl=1)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token, heartbeat=0.2)
    try:
        oid = ok(low.post("/v1/create_order", json=web_order(sid)))["order_id"]
        wait_order_state(low, oid, "running")
        market.advance(3600 + 1)  # the server's mrl is one hour
        wait_for(lambda: not containers(docker_client, docker_run), 15, what="expired removed")
        assert wait_order_state(low, oid, "stopped")["expired"] is True

        wait_for(lambda: ok(market.client(host).get("/v1/my_servers"))["servers"][0]["online"], 5)
        first = ok(low.post("/v1/create_order", json=spot_body(sid, "0.000002", image=IMAGE)))
        wait_order_state(low, first["order_id"], "running")
        second = ok(high.post("/v1/create_order", json=spot_body(sid, "0.000003", image=IMAGE)))
        wait_order_state(high, second["order_id"], "running")
        wait_order_state(low, first["order_id"], "stopped")
        keys = [x.labels[LABEL_KEY] for x in containers(docker_client, docker_run)]
        assert keys == [f"order-{second['order_id']}"]
    finally:
        agent.stop()


def test_failures_are_reported_truthfully(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        bad = order_body(sid, image="openclore-test/does-not-exist:latest")
        oid = ok(renter.post("/v1/create_order", json=bad))["order_id"]
        order = wait_order_state(renter, oid, "error")
        assert "openclore-test/does-not-exist:latest" in order["error"]
        ok(renter.post("/v1/cancel_order", json={"id": oid}))

        oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
        wait_order_state(renter, oid, "running")
        (container,) = containers(docker_client, docker_run)
        started = container.attrs["State"]["StartedAt"]
        container.kill()  # the rental's main process dies: restarted, and said so meanwhile
        order = wait_order_state(renter, oid, "restarting")
        assert "exited with code 137" in order["error"]
        wait_order_state(renter, oid, "running")
        container.reload()
        assert container.attrs["State"]["StartedAt"] != started
        port = published(wait_order_state(renter, oid, "running"), "8000")
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "hello-from-env"  # onstart again
    finally:
        agent.stop()


def test_autossh_entrypoint_keeps_the_container_and_runs_onstart(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpenCloreTestKey renter@example"
    try:
        body = order_body(
            sid,
            image=IMAGE,
            ports={"8000": "tcp", "22": "tcp"},
            autossh_entrypoint=True,
            ssh_key=key,
            ssh_password="Secret1",
            jupyter_token="tok",
            command=f"cp /root/.ssh/authorized_keys /www/keys.txt\n"
            f'echo "$JUPYTER_TOKEN $SSH_PASSWORD" > /www/env.txt\n{SERVE}',
        )
        oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
        order = wait_order_state(renter, oid, "running")
        port = published(order, "8000")
        assert fetch("127.0.0.1", port, "/keys.txt").strip() == key
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "tok Secret1"
        assert {p.split(":")[0] for p in order["tcp_ports"]} == {"8000", "22"}
    finally:
        agent.stop()


def test_rentals_cannot_reach_the_host_or_private_networks(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    import shutil

    if shutil.which("iptables") is None:
        pytest.skip("iptables not available: isolation rules cannot be installed here")
    listener = _HostListener()
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        # a private address that is not the host's: a web server on Docker's default bridge
        neighbour = docker_client.containers.run(
            IMAGE, ["httpd", "-f", "-p", str(listener.port), "-h", "/www"], labels=docker_run,
            detach=True,
        )
        neighbour.reload()
        neighbour_ip = neighbour.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        # the host on the rental's own bridge, the host on another bridge, a private neighbour
        targets = [
            _gateway(docker_client, NETWORK),
            _gateway(docker_client, "bridge"),
            neighbour_ip,
        ]
        probe = "\n".join(
            f"if {_http_probe(ip, listener.port)} | grep -q '200 OK'; "
            f"then echo {ip} reached >> /tmp/r; else echo {ip} blocked >> /tmp/r; fi"
            for ip in targets
        )
        probe += "\nmv /tmp/r /www/result.txt"
        body = order_body(
            sid, image=IMAGE, ports={"8000": "tcp"}, command=f"{probe}\n{SERVE}"
        )
        oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
        port = published(wait_order_state(renter, oid, "running"), "8000")
        result = fetch("127.0.0.1", port, "/result.txt", timeout=15).split("\n")
        assert [line for line in result if line] == [f"{ip} blocked" for ip in targets]

        # control: the same probes from Docker's default bridge reach the host and the neighbour
        for ip in targets[1:]:
            out = docker_client.containers.run(
                IMAGE, ["sh", "-c", _http_probe(ip, listener.port)], labels=docker_run
            )
            assert b"200 OK" in out, ip
    finally:
        agent.stop()
        listener.close()


def _http_probe(ip: str, port: int) -> str:
    # busybox-static's wget crashes on this glibc build; nc is enough for an HTTP probe
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"


def _gateway(client: Any, network: str) -> str:
    """The host's address on a Docker network."""
    config = client.networks.get(network).attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


class _HostListener:
    """A tiny HTTP server on all the host's addresses."""

    def __init__(self) -> None:
        handler = http.server.SimpleHTTPRequestHandler
        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_ports_never_collide_with_ports_in_use(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    """A host port already taken (by anything) is skipped."""
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 42500))
        busy.listen()
        agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
        agent.reconciler._port_cursor = 42500
        try:
            oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
            order = wait_order_state(renter, oid, "running")
            assert published(order, "8000") == 42501
        finally:
            agent.stop()
