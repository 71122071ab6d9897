"""The access gateway end to end: real Docker containers bound to the host's loopback only,
reached through the agent's SSH tunnel on the gateway's public ports and HTTP router.

Needs the Docker engine and image of ``test_agent_docker.py`` (mandatory when ``CI=true``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select

from openclore.agent.runtime.docker import DockerRuntime
from openclore.cli.commands.orders import order_ready
from openclore.client import Client, Order
from openclore.client._base import ssh_banner
from openclore.store.schema import orders
from test_agent_docker import (
    IMAGE,
    NETWORK,
    containers,
    docker_client,
    docker_run,
    published,
)

from agent_support import (
    GatewayThread,
    RunningAgent,
    host_server,
    start_agent,
    wait_for,
    wait_order_state,
)
from support import IN_CI, Market, free_port, ok, order_body

__all__ = ["docker_client", "docker_run"]  # fixtures

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# port 22: an SSH-style banner, then an echo. Port 80: a one-request-per-connection HTTP server
# in busybox sh: /ws upgrades to a WebSocket (greets with a text frame, then echoes bytes), /big
# sends 32 MiB, /upload counts the bytes of the body, anything else a small page.
RENTAL = r"""
echo rental-started-on-port-22-and-80
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
    accept=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | sha1sum \
      | cut -d' ' -f1 | xxd -r -p | base64)
    printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n'
    printf 'Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
    printf '\x81\x05hello'
    exec cat;;
  /big) reply 33554432; exec cat /www/big.bin;;
  /upload) got=$(head -c "$length" | wc -c); body="received $got"
    reply ${#body}; printf '%s' "$body";;
  *) reply 26; cat /www/index.html;;
esac
HTTP
chmod +x /banner.sh /http.sh
nc -ll -p 22 -e /banner.sh &
httpd -p 8000 -h /www
nc -ll -p 80 -e /http.sh
"""


def start_gateway(market: Market, **settings: Any) -> GatewayThread:
    """A gateway named ``localhost`` on free ports, the market configured to assign it."""
    # below the kernel's ephemeral ports (32768 and up), where an outgoing connection of anything
    # on the machine could hold one of them
    base = 30000 + (os.getpid() % 40) * 20
    ssh_port = free_port()
    market.reconfigure(
        gateway_name="localhost",
        gateway_ssh_port=ssh_port,
        gateway_ssh_address=f"127.0.0.1:{ssh_port}",
        gateway_http_port=free_port(),
        gateway_port_range=f"{base}-{base + 19}",
        **settings,
    )
    return GatewayThread(market)


@pytest.fixture
def gateway(market: Market) -> Iterator[GatewayThread]:
    gw = start_gateway(market)
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


def http_label(market: Market, order_id: int) -> str:
    """The order's random http label, as the database holds it (96 bits of hex)."""
    with market.db.read() as conn:
        label = conn.execute(select(orders.c.http_label).where(orders.c.id == order_id)).scalar()
    assert isinstance(label, str) and len(label) == 24 and int(label, 16) >= 0
    return label


def rental_order(server_id: int, ports: dict[str, str] | None = None) -> dict[str, Any]:
    ports = ports or {"22": "tcp", "8000": "tcp", "80": "http"}
    return order_body(server_id, image=IMAGE, ports=ports, command=RENTAL)


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
    tunnel = agent.agent.tunnel
    assert tunnel is not None
    try:
        wait_for(tunnel.connected.is_set, 10, what="tunnel up")
        oid = ok(
            renter.post(
                "/v1/create_order",
                json=rental_order(sid),
            )
        )["order_id"]
        order = wait_order_state(renter, oid, "running", timeout=30)
        assert order["pub_cluster"] == ["localhost"]
        lo, hi = market.settings.gateway_ports
        ssh_port = published(order, "22")
        assert lo <= ssh_port <= hi
        http_port = gateway.gateway.http_port
        assert order["http_port"] == "80"
        label = http_label(market, oid)
        assert order["http_pub"] == f"http://{label}-80.localhost:{http_port}"

        # the container's ports are bound on the host's loopback only
        (container,) = containers(docker_client, docker_run, f"order-{oid}")
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert {b[0]["HostIp"] for b in bindings.values()} == {"127.0.0.1"}

        # TCP: the banner through the public port; the CLI's --wait sees the order reachable
        assert wait_banner(ssh_port).startswith(b"SSH-2.0-OpenSSH_9.6 rental")
        assert ssh_banner("127.0.0.1", ssh_port) == "SSH-2.0-OpenSSH_9.6 rental"
        seen = Order.model_validate({**order, "pub_cluster": ["127.0.0.1"]})
        assert order_ready(seen, want_ssh=True)
        sdk = Client(renter.headers["auth"], base_url=market.url, rate_limit=False)
        assert sdk.wait_for_order(oid, timeout=20).ssh_port == ssh_port

        # the container's output, fetched from the host through the market
        logs = ok(renter.get("/v1/order_logs", params={"id": oid}))["logs"]
        assert "rental-started-on-port-22-and-80" in logs

        # HTTP: routed by Host; an unknown host or port gets the 404 page
        host = f"{label}-80.localhost:{http_port}"
        page = http_get(http_port, host, "/")
        assert page.text.strip() == "hello-through-the-gateway"
        # the order's id no longer names it (ids are sequential: anyone could enumerate them),
        # nor does a label one digit off
        near = label[:-1] + ("0" if label[-1] != "0" else "1")
        for other in (
            f"{oid}-80.localhost",
            f"{near}-80.localhost",
            f"{label.upper()}x-80.localhost",
            f"{label}-22.localhost",
            "localhost",
            "x.example",
        ):
            missing = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": other})
            assert missing.status_code == 404 and "No rental answers" in missing.text

        # a 32 MiB response streams through intact; a 5 MiB upload arrives whole
        big = httpx.get(f"http://127.0.0.1:{http_port}/big", headers={"Host": host}, timeout=30)
        assert big.status_code == 200 and big.content == bytes(32 * 1024 * 1024)
        upload = httpx.post(
            f"http://127.0.0.1:{http_port}/upload",
            headers={"Host": host},
            content=os.urandom(5 * 1024 * 1024),
            timeout=30,
        )
        assert upload.text == f"received {5 * 1024 * 1024}"

        # WebSocket: the upgrade, the server's greeting and an echo, through the http port
        websocket_echo(http_port, host)

        # 100 concurrent connections to a tcp port (busybox httpd on 8000 behind it)
        concurrent_requests(published(order, "8000"), 100)

        # slow readers: ten 32 MiB downloads nobody reads keep the gateway's memory bounded
        grew = stalled_readers_memory(published(order, "8000"), 10)
        assert grew < 48 * 1024 * 1024, f"gateway memory grew by {grew} bytes"

        # a gateway restart: the agent's tunnel comes back and new connections work
        before = tunnel.connections
        gateway.restart()
        wait_for(lambda: tunnel.connections > before, 20, what="tunnel back")
        assert wait_banner(ssh_port).startswith(b"SSH-2.0-")
        assert http_get(http_port, host, "/").status_code == 200

        # stopped (SPEC §8): its URL is kept and says so; after the start it routes again
        ok(renter.post("/v1/stop_order", json={"id": oid}))
        stopped = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": host})
        assert stopped.status_code == 503 and "stopped" in stopped.text
        assert wait_order_state(renter, oid, "halted", timeout=20)["http_pub"] == (
            f"http://{label}-80.localhost:{http_port}"
        )
        ok(renter.post("/v1/start_order", json={"id": oid}))
        wait_order_state(renter, oid, "running", timeout=20)
        assert http_get(http_port, host, "/").text.strip() == "hello-through-the-gateway"

        # the order ends: its public port refuses and its URL answers 404 at once
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        assert connection_refused(ssh_port)
        gone = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": host})
        assert gone.status_code == 404
        wait_for(lambda: ssh_port not in gateway.gateway.listeners, 2, what="listener closed")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ssh_port), timeout=2).close()
        assert "http_pub" not in wait_order_state(renter, oid, "stopped", timeout=20)
    finally:
        agent.stop()


def websocket_echo(port: int, host: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 101")
        headers = {}
        while (line := stream.readline().strip()) != b"":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert headers["sec-websocket-accept"] == expected
        assert stream.read(7) == b"\x81\x05hello"  # the server's text frame
        mask = os.urandom(4)
        payload = b"ping through the tunnel"
        frame = bytes([0x81, 0x80 | len(payload)]) + mask
        frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(frame)
        assert stream.read(len(frame)) == frame  # echoed byte for byte


def concurrent_requests(port: int, count: int) -> None:
    """``count`` connections open at once, each a whole HTTP exchange."""
    errors: list[str] = []
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        try:
            # from eight client addresses: one address's connections to an order are capped
            source = (f"127.0.0.{2 + i % 8}", 0)
            with socket.create_connection(
                ("127.0.0.1", port), timeout=30, source_address=source
            ) as sock:
                barrier.wait(30)
                sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.") and b"hello-through-the-gateway" in data
        except Exception as exc:
            errors.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def stalled_readers_memory(port: int, count: int) -> int:
    """RSS growth of this process (the gateway runs in it) while ``count`` clients ask for
    32 MiB each and read nothing for two seconds."""
    process = psutil.Process()
    before = process.memory_info().rss
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /big.bin HTTP/1.0\r\n\r\n")
            socks.append(sock)
        time.sleep(2.0)
        grew = int(process.memory_info().rss - before)
        # the streams were only paused: they still deliver everything once read
        for sock in socks[1:]:
            sock.close()
        got = 0
        socks[0].settimeout(20)
        while got < 32 * 1024 * 1024:
            chunk = socks[0].recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        assert got > 32 * 1024 * 1024  # the file and the response head
        return grew
    finally:
        for sock in socks:
            sock.close()


def test_an_agent_cannot_forward_another_servers_order(
    market: Market, gateway: GatewayThread, tmp_path: Path
) -> None:
    """The gateway grants a forward only for a port of a live order on the agent's own server,
    and logs in only the key recorded for that server."""
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid_a, token_a = host_server(market, host, "a")
    sid_b, token_b = host_server(market, host, "b")
    agent_a = start_agent(market.url, tmp_path / "a", init_token=token_a)
    agent_b = start_agent(market.url, tmp_path / "b", init_token=token_b)
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid_a, ports={"22": "tcp"})))[
            "order_id"
        ]
        wait_order_state(renter, oid, "running")
        assert agent_b.agent.tunnel is not None and agent_a.agent.tunnel is not None
        wait_for(agent_b.agent.tunnel.connected.is_set, 10, what="tunnel of b")
        key_b = agent_b.agent.tunnel.key
        ssh = ("127.0.0.1", gateway.gateway.ssh_port)
        trusted = gateway.call(_host_key(market))

        async def attempts() -> list[str]:
            results = []
            async with asyncssh.connect(
                *ssh,
                username=str(sid_b),
                client_keys=[key_b],
                known_hosts=([trusted], [], []),
                config=None,
                agent_path=None,
            ) as conn:
                for host_name, port in ((f"order-{oid}", 22), ("order-999", 22), ("localhost", 22)):
                    try:
                        await conn.forward_remote_port(host_name, port, "127.0.0.1", 1)
                        results.append("granted")
                    except asyncssh.ChannelListenError:
                        results.append("refused")
                for kind in ("direct", "session"):  # no open proxy, no shell
                    try:
                        if kind == "direct":
                            await conn.open_connection("127.0.0.1", 5432)
                        else:
                            await conn.run("id", check=True)
                        results.append("opened")
                    except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
                        results.append("refused")
            # b's key does not log in as a's server, nor does an unknown key
            for user, key in (
                (str(sid_a), key_b),
                (str(sid_b), asyncssh.generate_private_key("ssh-ed25519")),
            ):
                try:
                    async with asyncssh.connect(
                        *ssh,
                        username=user,
                        client_keys=[key],
                        known_hosts=([trusted], [], []),
                        config=None,
                        agent_path=None,
                    ):
                        results.append("logged in")
                except asyncssh.PermissionDenied:
                    results.append("denied")
            return results

        assert gateway.call(attempts()) == ["refused"] * 5 + ["denied"] * 2
    finally:
        agent_a.stop()
        agent_b.stop()


async def _host_key(market: Market) -> asyncssh.SSHKey:
    from openclore.market.tunnels import gateway_identity

    with market.db.read() as conn:
        identity = gateway_identity(conn, "localhost")
    assert identity is not None
    return asyncssh.import_public_key(identity[1])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a wildcard certificate for ``*.gw.localhost`` it signed (TLS clients
    refuse a wildcard right under a top-level name such as ``*.localhost``)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openclore test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.gw.localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("*.gw.localhost")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def https_get(port: int, host: str, ca: Path, path: str = "/") -> bytes:
    """GET over TLS from the loopback, verifying the chain and the name ``host``."""
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_https_through_the_gateway_with_a_wildcard_certificate(
    market: Market, tmp_path: Path, docker_client: Any, docker_run: dict[str, str]
) -> None:
    import ssl

    ca, cert, key = make_certificates(tmp_path)
    gw = start_gateway(
        market, http_domain="gw.localhost", gateway_tls_cert=str(cert), gateway_tls_key=str(key)
    )
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = tunnel_agent(market, tmp_path, docker_run, token)
    try:
        oid = ok(renter.post("/v1/create_order", json=rental_order(sid)))["order_id"]
        order = wait_order_state(renter, oid, "running", timeout=30)
        port = gw.gateway.http_port
        name = f"{http_label(market, oid)}-80.gw.localhost"
        assert order["http_pub"] == f"https://{name}:{port}"
        answers: list[bytes] = []

        def served() -> bool:
            answers.append(https_get(port, name, ca))
            return b"hello-through-the-gateway" in answers[-1]

        wait_for(served, 20, interval=0.2, what="the page over https")
        assert answers[-1].startswith(b"HTTP/1.1 200")
        # a client that does not trust the CA refuses the connection
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=name)
    finally:
        agent.stop()
        gw.stop()


def test_caddy_with_tls_internal_in_front_of_the_gateway(
    market: Market, tmp_path: Path, docker_run: dict[str, str]
) -> None:
    """deploy/Caddyfile as shipped: Caddy terminates TLS for the wildcard with its internal CA
    and proxies to the gateway's plain HTTP router; the client verifies the chain."""
    caddy = shutil.which("caddy")
    if caddy is None:
        message = "caddy is not installed (apt-get install caddy)"
        if IN_CI:
            pytest.fail(message + " (CI=true: the Caddy test is mandatory)")
        pytest.skip(message)
    https_port = free_port()
    gateway = start_gateway(
        market,
        http_domain="gw.localhost",
        gateway_http_url=f"https://{{order}}-{{port}}.gw.localhost:{https_port}",
    )
    env = {
        **os.environ,
        "DOMAIN": "gw.localhost",
        "GATEWAY": f"127.0.0.1:{gateway.gateway.http_port}",
        "HTTPS_PORT": str(https_port),
        "HTTP_PORT": str(free_port()),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    caddyfile = Path(__file__).parents[2] / "deploy" / "Caddyfile"
    log = (tmp_path / "caddy.log").open("wb")
    proxy = subprocess.Popen(
        [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=log,
    )
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, token = host_server(market, host)
    agent = tunnel_agent(market, tmp_path, docker_run, token)
    try:
        oid = ok(renter.post("/v1/create_order", json=rental_order(sid)))["order_id"]
        order = wait_order_state(renter, oid, "running", timeout=30)
        name = f"{http_label(market, oid)}-80.gw.localhost"
        assert order["http_pub"] == f"https://{name}:{https_port}"
        root = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        answers: list[bytes] = []

        def served() -> bool:
            if not root.exists():
                return False
            try:
                answers.append(https_get(https_port, name, root))
            except OSError:
                return False
            return b"hello-through-the-gateway" in answers[-1]

        wait_for(served, 30, interval=0.3, what="the page through Caddy")
        assert answers[-1].startswith(b"HTTP/1.0 200")  # Caddy answers in the client's version
    finally:
        agent.stop()
        gateway.stop()
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        log.close()


def test_a_real_agent_joining_the_demo_tunnels_through_the_gateway(
    market: Market, gateway: GatewayThread, tmp_path: Path
) -> None:
    """The demo's never-connected server (Michael) joined by a real agent: no longer simulated,
    its rentals are reached through the gateway named ``localhost``: bytes sent to the public
    port come back from the rental's port on the host, through the agent's tunnel."""
    from openclore.market.demo import seed

    with market.db.write() as conn:
        world = seed(conn, market.settings, market.now())
    owner = market.client(world.tokens[next(k for k in world.tokens if "jan" in k)])
    renter = market.client(world.tokens[next(k for k in world.tokens if "renter" in k)])
    backend = free_port()  # the one host port the agent's runtime hands out
    agent = start_agent(
        market.url,
        tmp_path / "michael",
        init_token="qnwVIMsZPjUWS7jw6gAbTOeoGQNgTH9XVxJaiCEbG0OlmfjF",
        port_range=(backend, backend),
    )
    echo = None
    try:
        ok(
            owner.post(
                "/v1/set_server_settings",
                json={"name": "Michael", "availability": True, "mrl": 72, "on_demand": 0.0001},
            )
        )
        sid = agent.state.server_id
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp"})))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "running")
        lo, hi = market.settings.gateway_ports
        assert order["pub_cluster"] == ["localhost"] and "simulated" not in order
        assert lo <= published(order, "22") <= hi
        logs = ok(renter.get("/v1/order_logs", params={"id": oid}))["logs"]
        assert logs[0].startswith("[simulated] container ")  # the agent's runtime answered
        (status,) = [s for s in agent.reconciler.snapshot() if s.order_id == oid]
        assert status.tcp_ports["22"] == backend
        echo = EchoServer(backend)
        port = published(order, "22")
        wait_for(lambda: port in gateway.gateway.listeners, 10, what="public port open")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert echoes(conn, b"through-the-tunnel")
    finally:
        if echo is not None:
            echo.close()
        agent.stop()


class EchoServer:
    """A TCP echo server on the loopback port where a simulated agent 'published' a rental."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the other thread
        self.sock.close()
        self.thread.join(5)


def echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    try:
        sock.sendall(payload)
        return sock.recv(64) == payload
    except OSError:
        return False


def test_connection_caps_and_idle_timeout(market: Market, tmp_path: Path) -> None:
    gw = start_gateway(market, gateway_max_conns_per_order=2, gateway_idle_timeout=1.0)
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, init = host_server(market, host)
    backend = free_port()  # the one host port the simulated runtime hands out
    agent = start_agent(
        market.url, tmp_path / "agent", init_token=init, port_range=(backend, backend)
    )
    echo = None
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp"})))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "running")
        (status,) = [s for s in agent.reconciler.snapshot() if s.order_id == oid]
        echo = EchoServer(status.tcp_ports["22"])
        port = published(order, "22")
        wait_for(lambda: port in gw.gateway.listeners, 10, what="public port open")
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        second = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert echoes(first) and echoes(second)
        # a third connection to the same order is over the cap: closed at once
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(64) == b""
        # silent for longer than the idle timeout: the gateway closes both
        time.sleep(2.5)
        for sock in (first, second):
            sock.settimeout(5)
            assert sock.recv(64) == b""
            sock.close()
        # the slots are free again
        with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
            assert echoes(again, b"again")
    finally:
        if echo is not None:
            echo.close()
        agent.stop()
        gw.stop()


def _two_free_ports() -> int:
    """A free port whose next one is free too (the agent's range for an SSH and an http port)."""
    for _ in range(100):
        lo = free_port()
        try:
            with socket.create_server(("127.0.0.1", lo + 1)):
                return lo
        except OSError:
            continue
    raise AssertionError("no two free ports in a row")


def test_the_console_probe_tells_the_rental_from_the_gateway(
    market: Market, tmp_path: Path
) -> None:
    """My orders' Connect probe through a real gateway and agent: the SSH port answers once an
    SSH server runs behind it, the http URL once the rental serves it (before that, the
    gateway's own 502 and 404 pages are not the rental answering)."""
    from openclore.web.probe import Endpoint, answers, http_endpoint, ssh_endpoint

    gw = start_gateway(market)
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, init = host_server(market, host)
    backend = _two_free_ports()
    agent = start_agent(
        market.url, tmp_path / "agent", init_token=init, port_range=(backend, backend + 1)
    )
    servers_: list[socket.socket] = []
    try:
        body = order_body(sid, ports={"22": "tcp", "8888": "http"})
        oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
        order = wait_order_state(renter, oid, "running")
        (status,) = [s for s in agent.reconciler.snapshot() if s.order_id == oid]
        ssh = ssh_endpoint(order)
        assert ssh is not None and ssh.port == published(order, "22")
        wait_for(lambda: ssh.port in gw.gateway.listeners, 10, what="public port open")
        url = order["http_pub"]
        assert url.startswith("http://") and ".localhost:" in url
        http = http_endpoint(url)
        assert http is not None

        def probe(endpoint: Endpoint) -> bool:
            return asyncio.run(answers(endpoint, timeout=3))

        assert not probe(ssh) and not probe(http)  # the gateway answers, nothing behind it
        unknown = http_endpoint(url.replace(url.split("//")[1].split("-")[0], "0" * 24))
        assert unknown is not None and not probe(unknown)  # the gateway's 404

        def serve(port: int, answer: bytes) -> None:
            sock = socket.create_server(("127.0.0.1", port))
            servers_.append(sock)

            def run() -> None:
                while True:
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        return
                    with conn:
                        conn.sendall(answer)

            threading.Thread(target=run, daemon=True).start()

        serve(status.tcp_ports["22"], b"SSH-2.0-OpenSSH_9.6 rental\r\n")
        assert status.http_host_port is not None
        serve(status.http_host_port, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        wait_for(lambda: probe(ssh), 10, what="the SSH banner through the gateway")
        wait_for(lambda: probe(http), 10, what="the rental's http answer through the gateway")
        assert not probe(unknown)
    finally:
        for sock in servers_:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        agent.stop()
        gw.stop()


def test_one_process_serves_a_gateway_name(market: Market) -> None:
    """The name's lock: a second holder is refused until the first lets go."""
    from openclore.gateway.service import NameLock

    first, second = NameLock(market.db, "gw-a"), NameLock(market.db, "gw-a")
    other = NameLock(market.db, "gw-b")
    assert first.acquire()
    try:
        assert not second.acquire()
        assert other.acquire()
        other.release()
    finally:
        first.release()
    assert second.acquire()
    second.release()


def test_a_busy_port_is_tried_again_until_the_gateway_listens(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another program holding the SSH port does not end the gateway for the process's life:
    the name's lock goes back and binding is tried again until the port is free."""
    from openclore.gateway import service

    monkeypatch.setattr(service, "RETRY_SECONDS", 0.2)
    ssh_port = free_port()
    settings = market.settings.model_copy(
        update={
            "gateway_name": "localhost",
            "gateway_ssh_port": ssh_port,
            "gateway_ssh_address": f"127.0.0.1:{ssh_port}",
            "gateway_http_port": 0,
        }
    )
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", ssh_port))
    squatter.listen()

    async def scenario() -> bytes:
        stop = asyncio.Event()
        task = asyncio.create_task(service.serve_gateway(market.db, settings, stop))
        try:
            await asyncio.sleep(1.0)  # several tries, all refused
            squatter.close()
            deadline = time.monotonic() + 10
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", ssh_port)
                    banner = await asyncio.wait_for(reader.readline(), 5)
                    writer.close()
                    if banner:
                        return banner
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the gateway never listened"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.INFO, logger="openclore.gateway"):
        banner = asyncio.run(scenario())
    squatter.close()
    assert banner.startswith(b"SSH-2.0-")
    messages = [r.getMessage() for r in caplog.records]
    refusals = [m for m in messages if "cannot listen" in m]
    assert len(refusals) == 1, messages  # logged once, not at every try
    assert any("listening after" in m for m in messages), messages


def _from(address: str, port: int) -> socket.socket:
    """A connection to the gateway from another loopback address (another client)."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))


def test_one_client_address_cannot_lock_the_renter_out(market: Market, tmp_path: Path) -> None:
    # the idle timeout is far longer than the probe: only the caps can close connections here
    gw = start_gateway(
        market,
        gateway_max_conns_per_order=6,
        gateway_max_conns_per_client_order=3,
        gateway_max_conns_per_client=4,
        gateway_idle_timeout=120.0,
    )
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, init = host_server(market, host)
    backend = free_port()
    agent = start_agent(
        market.url, tmp_path / "agent", init_token=init, port_range=(backend, backend)
    )
    echo = None
    held: list[socket.socket] = []
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp"})))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "running")
        (status,) = [s for s in agent.reconciler.snapshot() if s.order_id == oid]
        echo = EchoServer(status.tcp_ports["22"])
        port = published(order, "22")
        wait_for(lambda: port in gw.gateway.listeners, 10, what="public port open")
        # one address holds its 3 connections to the order; its 4th is closed at once
        for _ in range(3):
            held.append(_from("127.0.0.2", port))
            assert echoes(held[-1])
        with _from("127.0.0.2", port) as fourth:
            assert fourth.recv(64) == b""
        # the renter, from another address, still gets in (and is not over any cap)
        with _from("127.0.0.3", port) as mine:
            assert echoes(mine, b"mine")
        wait_for(lambda: gw.gateway.open_by_order[oid] == 3, 5, what="the renter's slot back")
        # exactly at the caps, not one less: a third address gets its 3 too, making the order's
        # 6; the order's cap then closes the next one from anyone
        others = [_from("127.0.0.4", port) for _ in range(3)]
        held.extend(others)
        assert all(echoes(s) for s in others)
        with _from("127.0.0.5", port) as over:
            assert over.recv(64) == b""  # the order's cap of 6
        # HTTP connections that never finish their head count for their address: the 5th
        # connection of 127.0.0.6 is closed at accept, while another address is served
        idle = [_from("127.0.0.6", gw.gateway.http_port) for _ in range(4)]
        held.extend(idle)
        with _from("127.0.0.6", gw.gateway.http_port) as fifth:
            assert fifth.recv(64) == b""
        with _from("127.0.0.7", gw.gateway.http_port) as other:
            other.sendall(b"GET / HTTP/1.1\r\nHost: nothing.localhost\r\n\r\n")
            assert other.recv(64).startswith(b"HTTP/1.1 404")
        # a released connection frees its address's slot
        held.pop(0).close()
        deadline = time.monotonic() + 5
        while True:
            with _from("127.0.0.2", port) as again:
                if echoes(again, b"again"):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        if echo is not None:
            echo.close()
        agent.stop()
        gw.stop()


def test_a_full_port_range_publishes_nothing_more_and_ended_orders_give_theirs_back(
    market: Market,
) -> None:
    from openclore.market.tunnels import public_ports

    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c = market.client(renter)
    first = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    sid2 = market.server(host, "two")
    second = ok(
        market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(sid2))
    )["order_id"]
    with market.db.write() as conn:
        assert public_ports(conn, "gw", first, [22, 8888], (31000, 31001)) == {
            22: 31000,
            8888: 31001,
        }
        # the range (two ports) is full: nothing past its end is handed out
        assert public_ports(conn, "gw", second, [22], (31000, 31001)) == {}
    ok(c.post("/v1/cancel_order", json={"id": first}))
    with market.db.write() as conn:  # the ended order's ports are free again
        assert public_ports(conn, "gw", second, [22], (31000, 31001)) == {22: 31000}


def test_a_connection_held_across_a_cancel_is_closed(market: Market, tmp_path: Path) -> None:
    gw = start_gateway(market, gateway_idle_timeout=300.0)  # only the cancel can close it
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid, init = host_server(market, host)
    backend = free_port()
    agent = start_agent(
        market.url, tmp_path / "agent", init_token=init, port_range=(backend, backend)
    )
    echo = None
    try:
        oid = ok(renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp"})))[
            "order_id"
        ]
        order = wait_order_state(renter, oid, "running")
        (status,) = [s for s in agent.reconciler.snapshot() if s.order_id == oid]
        echo = EchoServer(status.tcp_ports["22"])
        port = published(order, "22")
        wait_for(lambda: port in gw.gateway.listeners, 10, what="public port open")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            assert echoes(held)
            ok(renter.post("/v1/cancel_order", json={"id": oid}))
            held.settimeout(15)
            started = time.monotonic()
            assert held.recv(64) == b""  # closed by the gateway, long before any idle timeout
            assert time.monotonic() - started < 10
        wait_for(lambda: port not in gw.gateway.listeners, 10, what="public port closed")
        assert connection_refused(port)
    finally:
        if echo is not None:
            echo.close()
        agent.stop()
        gw.stop()
