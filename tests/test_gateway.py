"""The access gateway end to end: real Docker containers bound to the host's loopback only,
reached through the agent's SSH tunnel on the gateway's public ports and HTTP router.

Needs the Docker engine and image of ``test_agent_docker.py`` (mandatory when ``CI=true``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from openclore.agent.runtime.docker import DockerRuntime

from agent_support import (
    GatewayThread,
    RunningAgent,
    host_server,
    start_agent,
    wait_for,
    wait_order_state,
)
from support import Market, free_port, ok, order_body
from test_agent_docker import IMAGE, NETWORK, containers, docker_client, docker_run

__all__ = ["docker_client", "docker_run"]  # fixtures

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# port 22: an SSH-style banner, then an echo. Port 80: a one-request-per-connection HTTP server
# in busybox sh: /ws upgrades to a WebSocket (greets with a text frame, then echoes bytes), /big
# sends 32 MiB, /upload counts the bytes of the body, anything else a small page.
RENTAL = r"""
mkdir -p /www && echo hello-through-the-gateway > /www/index.html
dd if=/dev/zero of=/www/big.bin bs=1M count=32 2>/dev/null
printf '#!/bin/sh\nprintf "SSH-2.0-OpenSSH_9.6 rental\\r\\n"\nexec cat\n' > /banner.sh
cat > /http.sh <<'HTTP'
#!/bin/sh
read -r method path version
key=""
length=0
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in
    [Ss]ec-[Ww]eb[Ss]ocket-[Kk]ey:*) key=$(echo "${line#*:}" | tr -d ' ');;
    [Cc]ontent-[Ll]ength:*) length=$(echo "${line#*:}" | tr -d ' ');;
  esac
done
reply() { printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' "$1"; }
case "$path" in
  /ws)
    accept=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
    printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
    printf '\x81\x05hello'
    exec cat;;
  /big) reply 33554432; exec cat /www/big.bin;;
  /upload) got=$(head -c "$length" | wc -c); body="received $got"; reply ${#body}; printf '%s' "$body";;
  *) reply 26; cat /www/index.html;;
esac
HTTP
chmod +x /banner.sh /http.sh
nc -ll -p 22 -e /banner.sh &
nc -ll -p 80 -e /http.sh
"""


@pytest.fixture
def gateway(market: Market) -> Iterator[GatewayThread]:
    base = 43000 + (os.getpid() % 40) * 20
    market.reconfigure(
        gateway_name="localhost",
        gateway_ssh_port=free_port(),
        gateway_http_port=free_port(),
        gateway_port_range=f"{base}-{base + 19}",
    )
    market.settings = market.settings.model_copy(
        update={"gateway_ssh_address": f"127.0.0.1:{market.settings.gateway_ssh_port}"}
    )
    gw = GatewayThread(market)
    yield gw
    gw.stop()


def tunnel_agent(
    market: Market, tmp_path: Path, labels: dict[str, str], token: str
) -> RunningAgent:
    agent = start_agent(
        market.url,
        tmp_path / "agent",
        init_token=token,
        runtime_factory=lambda agent_id: DockerRuntime(agent_id, network=NETWORK),
        port_range=(44000, 44999),
        probe_ports=True,
        extra_labels=labels,
    )
    assert agent.agent.tunnel is not None
    agent.agent.tunnel.backoff_max = 1.0
    return agent


def rental_order(server_id: int, ports: dict[str, str] | None = None) -> dict[str, Any]:
    return order_body(
        server_id, image=IMAGE, ports=ports or {"22": "tcp", "80": "http"}, command=RENTAL
    )


def public(order: dict[str, Any], container_port: str) -> int:
    return int(dict(p.split(":") for p in order["tcp_ports"])[container_port])


def read_banner(port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data


def wait_banner(port: int, timeout: float = 20.0) -> bytes:
    got: list[bytes] = []

    def attempt() -> bool:
        try:
            banner = read_banner(port, 2)
        except OSError:
            return False
        if banner.startswith(b"SSH-2.0-"):
            got.append(banner)
            return True
        return False

    wait_for(attempt, timeout, interval=0.1, what=f"an SSH banner on port {port}")
    return got[0]


def http_get(port: int, host: str, path: str, timeout: float = 20.0) -> httpx.Response:
    """GET ``path`` of ``host`` (``<order>-<port>.localhost``) from the gateway's router on the
    loopback (``*.localhost`` resolves there in browsers and curl), retrying while it opens."""
    result: list[httpx.Response] = []

    def attempt() -> bool:
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=5
            )
        except httpx.HTTPError:
            return False
        if response.status_code == 200:
            result.append(response)
            return True
        return False

    wait_for(attempt, timeout, interval=0.1, what=f"{host}{path}")
    return result[0]


def connection_refused(port: int) -> bool:
    """Nothing of the rental answers on this port (refused, or closed before any byte)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            return sock.recv(64) == b""
    except ConnectionRefusedError:
        return True
    except OSError:
        return True


def test_rental_ports_are_reached_through_the_gateway_only(
    market: Market,
    gateway: GatewayThread,
    tmp_path: Path,
    docker_client: Any,
    docker_run: dict[str, str],
) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = tunnel_agent(market, tmp_path, docker_run, token)
    try:
        wait_for(lambda: agent.agent.tunnel.connected.is_set(), 10, what="tunnel up")
        oid = ok(
            renter.post(
                "/v1/create_order",
                json=rental_order(sid),
            )
        )["order_id"]
        order = wait_order_state(renter, oid, "running", timeout=30)
        assert order["pub_cluster"] == ["localhost"]
        lo, hi = market.settings.gateway_ports
        ssh_port = public(order, "22")
        assert lo <= ssh_port <= hi
        http_port = gateway.gateway.http_port
        assert order["http_port"] == "80"
        assert order["http_pub"] == f"http://{oid}-80.localhost:{http_port}"

        # the container's ports are bound on the host's loopback only
        (container,) = containers(docker_client, docker_run, f"order-{oid}")
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert {b[0]["HostIp"] for b in bindings.values()} == {"127.0.0.1"}

        # TCP: the banner through the public port
        assert wait_banner(ssh_port).startswith(b"SSH-2.0-OpenSSH_9.6 rental")

        # HTTP: routed by Host
        page = http_get(http_port, f"{oid}-80.localhost:{http_port}", "/")
        assert page.text.strip() == "hello-through-the-gateway"
    finally:
        agent.stop()
