"""The transport against a hostile client (api/transport.py): spaces around a token, slow headers
and bodies, the connection cap. Each test reproduced a defect before its fix; moved from the
former tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openclore.store.schema import orders

from support import HEADER_TIMEOUT, Market, ok

pytestmark = pytest.mark.origin("hostile")


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize("auth", [" {t}", "{t} ", " {t} "])
def test_spaces_around_a_token_are_ignored(market: Market, auth: str) -> None:
    token = market.user()
    port = int(market.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"GET /v1/wallets HTTP/1.1\r\nHost: x\r\nConnection: close\r\nauth:"
            + auth.format(t=token).encode()
            + b"\r\n\r\n"
        )
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b'"code":0' in answer, answer


@pytest.mark.timing
def test_slow_headers_cannot_hold_connections(market: Market) -> None:
    socks = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", int(market.url.rsplit(":", 1)[1])))
        sock.sendall(b"GET /v1/marketplace HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(sock)
    quiet = socket.create_connection(("127.0.0.1", int(market.url.rsplit(":", 1)[1])))
    socks.append(quiet)  # one that sends nothing at all
    try:
        closed = 0
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += sock.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
        assert closed == len(socks)
    finally:
        for sock in socks:
            sock.close()
    ok(market.client().get("/v1/marketplace"))


@pytest.mark.timing
def test_a_slow_request_body_is_not_cut_by_the_header_timeout(market: Market) -> None:
    """The timeout covers the headers only: a request already being answered is not cut."""
    token = market.user()
    port = int(market.url.rsplit(":", 1)[1])
    body = json.dumps({"name": "slow"}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/add_server HTTP/1.1\r\nHost: x\r\nauth: "
            + token.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        time.sleep(HEADER_TIMEOUT + 1)
        sock.sendall(body)
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert b'"code":0' in answer


@pytest.mark.timing
def test_connections_beyond_the_cap_get_503() -> None:
    """Each process holds at most `max_connections` open connections (agents included)."""
    import uvicorn

    from openclore.api.transport import server_options
    from openclore.config import Settings

    from support import free_port

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    port = free_port()
    options = server_options(Settings(max_connections=16, header_timeout=30))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    try:
        time.sleep(0.2)
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert answer.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200)
    server.should_exit = True
    thread.join(timeout=10)


def test_a_body_arriving_after_its_answer_does_not_start_the_header_timeout() -> None:
    """An endpoint may answer before it reads the body (a refusal, a database error at sign-in).
    The rest of the body then arrives on a connection with no request in progress; it armed the
    header timeout, which then cut the idle keep-alive connection long before the keep-alive
    timeout, just as the client sent its next request on it (a reset: a write lost)."""
    import uvicorn

    from openclore.api.transport import HeaderTimeoutProtocol, server_options
    from openclore.config import Settings

    from support import free_port

    class Quick(HeaderTimeoutProtocol):
        header_timeout = 0.3

    async def app(scope: Any, receive: Any, send: Any) -> None:  # answers without reading
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    port = free_port()
    settings = Settings(header_timeout=HEADER_TIMEOUT, keep_alive_timeout=30)
    options = {**server_options(settings), "http": Quick}  # the suite's timeout stays as it is
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"{}")  # the body, after its answer
            time.sleep(1.0)  # idle: more than the header timeout, less than the keep-alive
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET / HTTP/1.1\r\nHo")  # a request that stops in its headers
            assert sock.recv(1) == b""  # is still cut by the header timeout
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize(
    "path",
    ["/v1/create_order", "/api/v0/asks/101/", "/payments/deposit", "/agent/v1/register"],
)
def test_a_client_gone_before_its_body_is_no_internal_error(
    market: Market, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection before the body it announced has come in: nothing is
    done, and the log says the client went away (no traceback, no "internal error" for an
    operator to chase). Seen under load, where a balancer or a starved client drops
    connections."""
    token = market.user(bitcoin="1")
    port = int(market.url.rsplit(":", 1)[1])
    caplog.set_level("INFO", logger="openclore.api")
    method = "PUT" if path.startswith("/api/") else "POST"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nauth: {token}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 500\r\n\r\n".encode()
            + b'{"renting_server": 1,'
        )
        time.sleep(0.3)  # the endpoint is reading the body
    gone = wait_until(lambda: [r for r in caplog.records if "client went away" in r.message])
    assert gone and gone[0].levelname == "INFO" and path in gone[0].getMessage()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], [
        r.getMessage() for r in caplog.records
    ]
    with market.db.read() as conn:
        assert conn.execute(select(orders.c.id)).first() is None
    ok(market.client(token).get("/v1/wallets"))  # the server goes on serving
