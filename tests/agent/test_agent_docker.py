"""The host agent end to end with real containers: market server + agent + dockerd.

Needs a Docker engine and the local image ``openclore-test/busybox:latest``
(``scripts/setup-docker.sh`` provides both). Mandatory when ``CI=true``; skipped with a message
elsewhere. Every container a test starts carries a per-test label and is removed by the fixture.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import httpx
import pytest

from openclore.agent.runtime import LABEL_AGENT, LABEL_KEY, ImageRefused, LaunchSpec
from openclore.agent.runtime.docker import (
    DockerRuntime,
    Hardening,
    host_resolvers,
    remove_isolation,
)

from agent_support import (
    RestartableServer,
    RunningAgent,
    host_server,
    start_agent,
    wait_for,
    wait_order_state,
)
from support import IN_CI, Market, ok, order_body, spot_body

IMAGE = "openclore-test/busybox:latest"
NETWORK = "openclore-test"
TEST_LABEL = "openclore.test"
SERVE = "httpd -f -p 8000 -h /www"
AGENT_PORTS = (42000, 42999)  # the host ports the tests' agents publish on


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    problem = None
    try:
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
    url: str,
    state_dir: Path,
    labels: dict[str, str],
    token: str | None = None,
    runtime_kw: dict[str, Any] | None = None,
    port_range: tuple[int, int] = AGENT_PORTS,
    **kw: Any,
) -> RunningAgent:
    return start_agent(
        url,
        state_dir,
        init_token=token,
        runtime_factory=lambda agent_id: DockerRuntime(
            agent_id, network=NETWORK, **(runtime_kw or {})
        ),
        port_range=port_range,
        probe_ports=True,
        extra_labels=labels,
        **kw,
    )


def containers(client: Any, labels: dict[str, str], key: str | None = None) -> list[Any]:
    filters = [f"{TEST_LABEL}={labels[TEST_LABEL]}"]
    if key:
        filters.append(f"{LABEL_KEY}={key}")
    found = []
    for summary in client.api.containers(all=True, filters={"label": filters}):
        try:
            found.append(client.containers.get(summary["Id"]))
        except docker.errors.NotFound:
            continue  # removed since it was listed
    return found


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
        assert AGENT_PORTS[0] <= port <= AGENT_PORTS[1]
        assert fetch(order["pub_cluster"][0], port, "/env.txt").strip() == "hello-from-env"

        (container,) = containers(docker_client, docker_run, f"order-{oid}")
        attrs = container.attrs
        assert attrs["HostConfig"]["Init"] is True
        assert NETWORK in attrs["NetworkSettings"]["Networks"]
        assert "GREETING=hello-from-env" in attrs["Config"]["Env"]
        assert container.labels["openclore.order"] == str(oid)
        # the image it was created from: imported on this host, so no repository digest but
        # its id, reported by the agent and kept on the order
        assert order["image_digest"] == docker_client.images.get(IMAGE).id
        assert order["image_digest"].startswith("sha256:")

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
        # the outbid bid is stopped, not ended: its container is kept, stopped, with its disk
        # (SPEC §8), and starts again when the bid wins again
        wait_order_state(low, first["order_id"], "halted")

        def kept() -> bool:
            found = {x.labels[LABEL_KEY]: x.status for x in containers(docker_client, docker_run)}
            return found == {
                f"order-{second['order_id']}": "running",
                f"order-{first['order_id']}": "exited",
            }

        wait_for(kept, 15, what="the outbid container kept, stopped")
        ok(high.post("/v1/cancel_order", json={"id": second["order_id"]}))
        wait_order_state(low, first["order_id"], "running")
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
        # generic: the daemon's own text (registry, DNS, connection errors) stays in the log
        assert order["error"] == (
            "image openclore-test/does-not-exist:latest is unavailable: pull failed"
        )
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
    if shutil.which("iptables") is None:
        message = "iptables not available: isolation rules cannot be installed here"
        if IN_CI:
            pytest.fail(message + " (CI=true: the isolation test is mandatory)")
        pytest.skip(message)
    listener = _HostListener()
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        # a private address that is not the host's: a web server on Docker's default bridge,
        # also on port 53 (DNS is let through to the host's resolvers only, not to every address)
        neighbour = docker_client.containers.run(
            IMAGE,
            ["sh", "-c", f"httpd -p 53 -h /www; exec httpd -f -p {listener.port} -h /www"],
            labels=docker_run,
            detach=True,
        )
        neighbour.reload()
        neighbour_ip = neighbour.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        # the host on the rental's own bridge, the host on another bridge, a private neighbour
        targets = [
            (_gateway(docker_client, NETWORK), listener.port),
            (_gateway(docker_client, "bridge"), listener.port),
            (neighbour_ip, listener.port),
            (neighbour_ip, 53),
        ]
        probe = "\n".join(
            f"if {_http_probe(ip, p)} | grep -q '200 OK'; "
            f"then echo {ip}:{p} reached >> /tmp/r; else echo {ip}:{p} blocked >> /tmp/r; fi"
            for ip, p in targets
        )
        probe += "\nmv /tmp/r /www/result.txt"
        # names still resolve: through Docker's embedded DNS, to the host's resolvers
        probe += f"\n({LOOKUP} > /tmp/dns; mv /tmp/dns /www/dns.txt) &"
        body = order_body(sid, image=IMAGE, ports={"8000": "tcp"}, command=f"{probe}\n{SERVE}")
        oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
        port = published(wait_order_state(renter, oid, "running"), "8000")
        result = fetch("127.0.0.1", port, "/result.txt", timeout=20).split("\n")
        assert [line for line in result if line] == [f"{ip}:{p} blocked" for ip, p in targets]

        # control: the same probes from Docker's default bridge reach the host and the neighbour
        for ip, p in targets[1:]:
            out = docker_client.containers.run(
                IMAGE, ["sh", "-c", _http_probe(ip, p)], labels=docker_run
            )
            assert b"200 OK" in out, (ip, p)

        # the DNS exception names exactly the host's resolvers
        resolvers = host_resolvers()
        bridge = agent.runtime.bridge  # type: ignore[attr-defined]
        for chain in (f"OC-F-{bridge}", f"OC-I-{bridge}"):
            rules = subprocess.run(
                ["iptables", "-w", "5", "-S", chain], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            dns = [r for r in rules if "--dport 53" in r]
            assert len(dns) == 2 * len(resolvers), rules
            assert all(any(f"-d {ip}/32 " in r for ip in resolvers) for r in dns), rules
        # and name resolution works from the rental exactly when it does from the default bridge
        control = docker_client.containers.run(
            IMAGE, ["sh", "-c", LOOKUP], labels=docker_run
        ).decode()
        assert fetch("127.0.0.1", port, "/dns.txt", timeout=20) == control
    finally:
        agent.stop()
        listener.close()


# pip's index: resolvable wherever the host has DNS (if nowhere, both sides agree on rc=1)
LOOKUP = "nslookup -timeout=3 pypi.org >/dev/null 2>&1; echo rc=$?"


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


def _above_ephemeral_ports(size: int) -> tuple[int, int]:
    """A range of ``size`` ports above the kernel's ephemeral (outgoing) ports, where only a
    listener can hold one; the agents' usual range when there is no room up there."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        high = 65535
    if high + size <= 65535:
        return high + 1, high + size
    return AGENT_PORTS


@contextlib.contextmanager
def _busy_port_before_a_free_one(lo: int, hi: int) -> Iterator[int]:
    """Hold a port p of [lo, hi] whose next one is free (anything on the machine, an outgoing
    connection included, may hold a fixed one); yields p."""
    for port in range(lo, hi):
        busy = socket.socket()
        try:
            busy.bind(("0.0.0.0", port))
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", port + 1))
        except OSError:
            busy.close()
            continue
        busy.listen()
        try:
            yield port
        finally:
            busy.close()
        return
    raise AssertionError(f"no two free ports in {lo}-{hi}")


def test_ports_never_collide_with_ports_in_use(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    """A host port already taken (by anything) is skipped."""
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    # ports above the kernel's ephemeral range: no outgoing connection of a test running beside
    # this one can take the free port after the busy one between the check and the agent's pick
    lo, hi = _above_ephemeral_ports(1000)
    with _busy_port_before_a_free_one(lo, hi - 1) as taken:
        agent = docker_agent(market.url, tmp_path / "s", docker_run, token, port_range=(lo, hi))
        agent.reconciler._port_cursor = taken
        try:
            oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
            order = wait_order_state(renter, oid, "running")
            assert published(order, "8000") == taken + 1
        finally:
            agent.stop()


# ----------------------------------------------------------------------------- hardening

# bit numbers in /proc/<pid>/status's CapBnd (linux/capability.h)
CAP_BITS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
DROPPED = {"NET_RAW", "MKNOD", "SETFCAP"}
PIDS_MAX = "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"


def sh(container: Any, script: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", script])
    return int(result.exit_code), bytes(result.output).decode("utf-8", "replace")


def test_rentals_run_hardened(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    """The agent's default settings, on the real container and inside it."""
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(market.url, tmp_path / "s", docker_run, token)
    try:
        oid = ok(renter.post("/v1/create_order", json=web_order(sid)))["order_id"]
        port = published(wait_order_state(renter, oid, "running"), "8000")
        (container,) = containers(docker_client, docker_run, f"order-{oid}")
        config = container.attrs["HostConfig"]
        assert set(config["CapDrop"]) == DROPPED
        assert not config.get("CapAdd")
        assert "no-new-privileges" in config["SecurityOpt"]
        assert config["PidsLimit"] == 4096
        assert config["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-size": "50m", "max-file": "3"},
        }
        assert config["Privileged"] is False

        # what the kernel applies to the rental's processes (pid 1: the init)
        _, status = sh(container, "cat /proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["NoNewPrivs"].strip() == "1"
        bounding = int(fields["CapBnd"].strip(), 16)
        for cap, bit in CAP_BITS.items():
            assert bool(bounding & (1 << bit)) is (cap not in DROPPED), cap
        assert sh(container, PIDS_MAX) == (0, "4096\n")
        code, out = sh(container, "mknod /tmp/null c 1 3")
        assert code != 0 and "not permitted" in out
        # what sshd needs still works: chroot (privilege separation), binding port 22, setuid
        assert sh(container, "chroot / true")[0] == 0
        assert sh(container, "httpd -p 22 -h /www")[0] == 0
        assert "200 OK" in sh(container, _http_probe("127.0.0.1", 22))[1]
        assert sh(container, "su nobody -s /bin/sh -c 'id -u'") == (0, "65534\n")
        # and the rental still serves renters
        assert fetch("127.0.0.1", port, "/env.txt").strip() == "hello-from-env"
    finally:
        agent.stop()


def test_hardening_settings_are_enforced(docker_client: Any, docker_run: dict[str, str]) -> None:
    """The host's own limits: a small pids limit and log size, an extra dropped capability,
    no-new-privileges off, and a disk quota that this engine may or may not support."""
    hardening = Hardening(
        cap_drop=("NET_RAW", "MKNOD", "SETFCAP", "SYS_CHROOT"),
        no_new_privileges=False,
        pids_limit=32,
        log_max_size="16k",
        log_max_files=2,
        disk_quota=1024**3,
    )
    runtime = DockerRuntime(
        "hardening-" + docker_run[TEST_LABEL], network=None, hardening=hardening
    )
    try:
        notes = runtime.prepare()
        assert any("pids limit 32" in n and "16k x 2" in n for n in notes), notes
        if runtime.disk_quota is None:  # e.g. overlay2 on ext4: said so at start
            assert any("no disk quota" in n for n in notes), notes
        # whatever the first look said, a refusal by the engine at create time is survived
        runtime.disk_quota = 1024**3
        spec = LaunchSpec(
            name=f"openclore-hardening-{docker_run[TEST_LABEL]}",
            image=IMAGE,
            labels={**docker_run, LABEL_AGENT: runtime.agent_id},
        )
        observed = runtime.launch(spec)
        assert observed.state == "running"
        container = docker_client.containers.get(observed.id)
        config = container.attrs["HostConfig"]
        if runtime.disk_quota:
            assert config["StorageOpt"] == {"size": str(1024**3)}
        else:
            assert not config.get("StorageOpt")
        assert set(config["CapDrop"]) == {"NET_RAW", "MKNOD", "SETFCAP", "SYS_CHROOT"}
        assert not config.get("SecurityOpt")
        assert config["PidsLimit"] == 32
        assert config["LogConfig"]["Config"] == {"max-size": "16k", "max-file": "2"}
        assert sh(container, "grep NoNewPrivs /proc/1/status")[1].split() == ["NoNewPrivs:", "0"]
        assert sh(container, "chroot / true")[0] != 0

        # 60 processes where 32 are allowed: forks fail, the host is not exhausted
        fork = "i=0; while [ $i -lt 60 ]; do sleep 1 & i=$((i+1)); done"
        assert "can't fork" in sh(container, fork)[1]
        wait_for(lambda: sh(container, PIDS_MAX) == (0, "32\n"), 10, what="sleeps gone")

        # ~400 KB of output: the log on the host stays within 2 files of about 16 KB
        spam = f"i=0; while [ $i -lt 4000 ]; do echo $i{'x' * 100}; i=$((i+1)); done"
        sh(container, f"({spam}) >/proc/1/fd/1")
        log_path = Path(container.attrs["LogPath"])
        files = sorted(log_path.parent.glob(log_path.name + "*"))
        assert 1 <= len(files) <= 2, files
        assert sum(f.stat().st_size for f in files) < 2 * 16 * 1024 + 4096
    finally:
        for c in runtime.containers():
            runtime.remove(c.id, 0)
        runtime.close()


# ----------------------------------------------------------------------------- registries


class _CountingListener:
    """A TCP port on the host's loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def test_images_from_private_registries_are_refused_before_any_pull(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    """Defect 9: an image name must not make the host's daemon probe the host's ports."""
    probed, allowed = _CountingListener(), _CountingListener()
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = docker_agent(
        market.url,
        tmp_path / "s",
        docker_run,
        token,
        runtime_kw={"allowed_registries": [f"127.0.0.1:{allowed.port}"]},
    )

    def outcome(image: str) -> str:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, image=image)))["order_id"]
        error = str(wait_order_state(renter, oid, "error")["error"])
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        # (a cancelled order that never ran keeps showing "error": no container, no "stopped")
        wait_for(lambda: f"order-{oid}" not in agent.reconciler.statuses(), 10, what="dropped")
        return error

    try:
        image = f"127.0.0.1:{probed.port}/probe:latest"
        assert outcome(image) == (
            f"image {image} is unavailable: registry 127.0.0.1:{probed.port} is not allowed"
        )
        image = f"localhost:{probed.port}/probe:latest"
        assert outcome(image) == (
            f"image {image} is unavailable: registry localhost:{probed.port} is not allowed"
        )
        # references the market itself refuses, straight to the runtime
        with pytest.raises(ImageRefused, match=r"registry \[::1\]:\d+ is not allowed"):
            agent.runtime.pull(f"[::1]:{probed.port}/probe")
        with pytest.raises(ImageRefused, match="not a valid image reference"):
            agent.runtime.pull(f"127.0.0.1:{probed.port}/Probe")
        time.sleep(0.5)
        assert probed.accepted == 0  # the daemon never connected

        # the host's own registry is allowed: the daemon does connect (so the refusals above are
        # what kept it away), and its error reaches the renter in generic terms only
        image = f"127.0.0.1:{allowed.port}/probe:latest"
        assert outcome(image) == f"image {image} is unavailable: pull failed"
        assert allowed.accepted >= 1
        assert not containers(docker_client, docker_run)
    finally:
        agent.stop()
        probed.close()
        allowed.close()


def test_the_agent_removes_its_isolation_rules_when_no_rental_is_left(
    docker_client: Any, docker_run: dict[str, str]
) -> None:
    if shutil.which("iptables") is None:
        message = "iptables not available: isolation rules cannot be installed here"
        if IN_CI:
            pytest.fail(message + " (CI=true: the isolation test is mandatory)")
        pytest.skip(message)
    network = f"oc-iso-{os.getpid()}"

    def rules() -> str:
        return subprocess.run(
            ["iptables", "-w", "5", "-S"], capture_output=True, text=True, check=True
        ).stdout

    first = DockerRuntime("iso-a", network=network, isolation="on")
    rental = None
    try:
        first.prepare()
        bridge = first.bridge
        assert bridge and f"-N OC-F-{bridge}" in rules() and f"-j OC-I-{bridge}" in rules()
        # a rental still runs on the bridge: the agent stops (to restart), the rules stay
        rental = docker_client.containers.run(
            IMAGE, ["sleep", "60"], labels=docker_run, network=network, detach=True
        )
        first.close()
        assert f"-N OC-F-{bridge}" in rules()
        rental.remove(force=True)
        rental = None
        # the agent starts again and stops with no rental left: nothing of it stays
        second = DockerRuntime("iso-a", network=network, isolation="on")
        second.prepare()
        second.close()
        ours = (f"OC-F-{bridge}", f"OC-I-{bridge}")  # Docker's own rules for the network stay
        left = [line for line in rules().splitlines() if any(c in line for c in ours)]
        assert left == [], left
    finally:
        if rental is not None:
            rental.remove(force=True)
        with contextlib.suppress(Exception):
            remove_isolation(first.bridge or "")
        with contextlib.suppress(Exception):
            docker_client.networks.get(network).remove()
