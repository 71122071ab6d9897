"""Hostile transport: an oversize body gets its 413 (not a reset), slow clients cannot hold more
connections than the settings allow."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from openclore.api.transport import DRAIN_LIMIT_BYTES, configure_protocol, server_options
from openclore.config import Settings

from support import HEADER_TIMEOUT, Market, free_port, ok

MiB = 1024 * 1024


def _port(market: Market) -> int:
    return int(market.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("backend", ["sqlite"])  # the transport, not the database
def test_a_body_up_to_16_mib_over_the_cap_gets_413_not_a_reset(market: Market) -> None:
    cap = market.settings.max_body_bytes
    c = market.client(market.user())
    for size in (cap + 1, 5 * MiB, cap + DRAIN_LIMIT_BYTES):
        answer = c.post("/v1/cancel_order", content=b"x" * size)
        assert answer.status_code == 413 and answer.json()["code"] == 2, size
    # the connection survived the drain: the next request on it is answered
    assert len(c._transport._pool.connections) == 1  # type: ignore[attr-defined]
    ok(c.get("/v1/wallets"))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit trips while streaming
        for _ in range(5 * 16):
            yield b"x" * 65536

    answer = c.post("/v1/cancel_order", content=chunks())
    assert answer.status_code == 413 and answer.json()["code"] == 2
    ok(c.get("/v1/wallets"))


@pytest.mark.timing
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_slow_oversize_upload_still_gets_its_413(market: Market) -> None:
    """A client on a slow link is still sending when the server has its answer ready: answering
    at once would leave the connection idle by the server's count, and the header or keep-alive
    timeout would cut it under the client (a reset, no answer). The excess is read first."""
    size = 4 * MiB
    chunk = 64 * 1024
    pause = (HEADER_TIMEOUT + 1.5) / (size // chunk)  # the upload outlasts the header timeout
    with socket.create_connection(("127.0.0.1", _port(market))) as sock:
        sock.sendall(
            b"POST /v1/cancel_order HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(size).encode()
            + b"\r\n\r\n"
        )
        for _ in range(size // chunk):
            sock.sendall(b"x" * chunk)
            time.sleep(pause)
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b'"code":2' in answer


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_client_waiting_for_100_continue_gets_413_before_sending(market: Market) -> None:
    with socket.create_connection(("127.0.0.1", _port(market))) as sock:
        sock.sendall(
            b"POST /v1/cancel_order HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b'"code":2' in answer


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_body_far_over_the_cap_is_refused_at_once(market: Market) -> None:
    """Beyond the drain allowance nothing is read: the 413 comes before the body."""
    size = market.settings.max_body_bytes + DRAIN_LIMIT_BYTES + 1
    with socket.create_connection(("127.0.0.1", _port(market))) as sock:
        sock.sendall(
            b"POST /v1/cancel_order HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(size).encode()
            + b"\r\n\r\n"
        )
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")


async def _tiny_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, int]:
    port = free_port()
    options = server_options(settings)
    server = uvicorn.Server(
        uvicorn.Config(_tiny_app, host="0.0.0.0", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert time.time() < deadline
        time.sleep(0.02)
    return server, thread, port


def _refused(sock: socket.socket, within: float) -> bool:
    """True when the server answered 503 without waiting for a request."""
    sock.settimeout(within)
    try:
        return sock.recv(64).startswith(b"HTTP/1.1 503")
    except TimeoutError:
        return False


@pytest.mark.timing
def test_one_slow_client_holds_at_most_its_share_of_connections() -> None:
    """Slowloris: a client that never finishes its headers keeps at most
    ``max_connections_per_client`` connections; more are refused at accept, and other clients
    are served meanwhile."""
    server, thread, port = _serve(
        Settings(max_connections_per_client=8, max_connections=64, header_timeout=30)
    )
    slow: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        # the refusals come at once (waited for generously: CI runs this under CPU load); the
        # first eight stay open and silent
        assert all(_refused(sock, 10) for sock in slow[8:])
        assert not any(_refused(sock, 0.3) for sock in slow[:8])
        # another address is served while the slow one holds its eight
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport) as elsewhere:
            assert elsewhere.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 503
        for sock in slow[:8]:
            sock.close()
        deadline = time.time() + 10
        while httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code != 200:
            assert time.time() < deadline, "the slots were not given back"
            time.sleep(0.05)
    finally:
        for sock in slow:
            sock.close()
        server.should_exit = True
        thread.join(timeout=10)
        configure_protocol(Settings(header_timeout=HEADER_TIMEOUT))  # the suite's server's


@pytest.mark.timing
def test_slow_clients_from_many_addresses_are_capped_at_accept() -> None:
    """uvicorn counts its cap when headers are complete; connections that never complete them are
    refused at accept once the process holds ``max_connections``."""
    server, thread, port = _serve(Settings(max_connections=16, header_timeout=30))
    slow: list[socket.socket] = []
    try:
        for i in range(24):
            sock = socket.create_connection(
                ("127.0.0.1", port), source_address=(f"127.0.0.{10 + i}", 0)
            )
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        assert all(_refused(sock, 10) for sock in slow[16:])
        assert not any(_refused(sock, 0.3) for sock in slow[:16])
    finally:
        for sock in slow:
            sock.close()
        server.should_exit = True
        thread.join(timeout=10)
        configure_protocol(Settings(header_timeout=HEADER_TIMEOUT))
