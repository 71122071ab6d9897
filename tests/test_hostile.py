"""What a hostile host agent, renter or anonymous client tried, and what the market does now
(both databases, real HTTP and WebSocket). Each test reproduced a defect before its fix."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from sqlalchemy import func, select, text, update
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from openclore.api.ratelimit import RateLimiter
from openclore.domain.money import to_units
from openclore.engine.billing import lock_server, resolve_server
from openclore.engine.clock import ManualClock
from openclore.ledger.ledger import system_account_id, transfer, wallet_id
from openclore.market.accounts import create_user
from openclore.market.servers import add_server, remove_server
from openclore.store.db import bump_meta, get_meta
from openclore.store.schema import accounts, orders, rate_limits, servers

from support import (
    HEADER_TIMEOUT,
    Market,
    booked_by_order,
    error,
    ok,
    order_body,
    spot_body,
)


def parallel(n: int, fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def outcome(response: httpx.Response) -> str:
    assert response.status_code in (200, 429), response.text  # never a 500
    body = response.json()
    return "ok" if body["code"] == 0 else str(body.get("error", body["code"]))


def order_row(market: Market, order_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)


def ledger_holds(market: Market) -> None:
    """The ledger sums to zero per currency and no wallet is negative."""
    with market.db.read() as conn:
        sums = conn.execute(
            select(accounts.c.currency, func.sum(accounts.c.balance)).group_by(accounts.c.currency)
        ).all()
        negative = conn.execute(
            select(func.count()).where(accounts.c.kind == "wallet", accounts.c.balance < 0)
        ).scalar()
    assert all(int(total) == 0 for _, total in sums), sums
    assert negative == 0


# ----------------------------------------------------------------------------- a hostile agent


def ws_url(market: Market) -> str:
    return market.url.replace("http://", "ws://") + "/agent/v1/connect"


def agent_for(market: Market, host: str, name: str = "rig") -> tuple[int, str]:
    """A registered server of ``host`` priced for rent: ``(server id, agent token)``."""
    owner = market.user_id(host)
    with market.db.write() as conn:
        sid, init = add_server(conn, owner, name, market.now(), market.settings)
        conn.execute(
            update(servers).where(servers.c.id == sid).values(visibility="public", mrl_hours=72)
        )
        conn.execute(
            text(
                "INSERT INTO server_prices (server_id, currency, on_demand, spot) "
                "VALUES (:s, 'bitcoin', :o, :p)"
            ),
            {"s": sid, "o": to_units(Decimal("0.00001")), "p": to_units(Decimal("0.000001"))},
        )
    got = httpx.post(f"{market.url}/agent/v1/register", json={"init_token": init}, timeout=10)
    assert got.status_code == 200, got.text
    return sid, got.json()["agent_token"]


def open_channel(market: Market, token: str, hello: dict[str, Any]) -> ClientConnection:
    ws = connect(
        ws_url(market),
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        open_timeout=10,
    )
    ws.send(json.dumps({"type": "hello", **hello}))
    welcome = json.loads(ws.recv(timeout=10))
    assert welcome["type"] == "hello"
    return ws


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def specs_of(market: Market, server_id: int) -> Any:
    with market.db.read() as conn:
        return conn.execute(select(servers.c.specs).where(servers.c.id == server_id)).scalar()


HOSTILE_SPECS: dict[str, Any] = {
    "ram": 18446744073709551616,  # 2**64: not serializable as a 64-bit JSON integer
    "cpu": "\x1b]0;pwned\x07\x1b[2J Intel",  # terminal escape sequences
    "gpu": "1x RTX 4090\u202e",  # a direction override
    "gpuram": -4,
    "disk_speed": True,
    "net": {"up": 100, "down": "fast", "cc": "CZ"},
    "mb": "B650",
    "cpus": "16/32",
    "unknown": "x" * 100,
}


def test_hostile_specs_cannot_break_the_marketplace(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid, token = agent_for(market, host)
    with open_channel(market, token, {"specs": {"gpu": "1x RTX 4090", "ram": 64}}) as ws:
        wait_until(lambda: specs_of(market, sid) == {"gpu": "1x RTX 4090", "ram": 64})
        ws.send(json.dumps({"type": "specs", "specs": HOSTILE_SPECS, "gpu_array": ["\x1b[31m"]}))
        # only the valid fields are kept; the invalid gpu_array is ignored whole
        kept = {"net": {"up": 100, "cc": "CZ"}, "mb": "B650", "cpus": "16/32"}
        wait_until(lambda: specs_of(market, sid) == kept)
        assert specs_of(market, sid) == kept

        listed = ok(market.client().get("/v1/marketplace"))["servers"]
        assert [s["specs"] for s in listed] == [kept]
        assert ok(market.client(host).get("/v1/my_servers"))["servers"][0]["specs"]
        ok(market.client(host).get("/v1/server_config", params={"server_name": "rig"}))
        created = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))
        assert ok(market.client(renter).get("/v1/my_orders"))["orders"][0]["si"] == sid
        assert order_row(market, created["order_id"])["running"] is True


def test_stored_specs_that_cannot_be_served_never_break_a_listing(market: Market) -> None:
    """Data written before the rules existed: every view leaves the bad fields out."""
    host, renter = market.user(), market.user(bitcoin="0.01")
    bad = market.server(host, "bad", specs={"ram": 2**64, "cpu": "\x1b[2J", "gpu": "1x A100"})
    good = market.server(host, "good")
    listed = ok(market.client().get("/v1/marketplace"))["servers"]
    assert {s["id"] for s in listed} == {bad, good}
    assert next(s for s in listed if s["id"] == bad)["specs"] == {"gpu": "1x A100"}
    listed = ok(market.client(renter).get("/v1/marketplace"))["servers"]
    assert len(listed) == 2
    ok(market.client(renter).post("/v1/create_order", json=order_body(bad)))
    orders_seen = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    assert orders_seen[0]["specs"] == {"gpu": "1x A100"}
    ok(market.client(host).get("/v1/my_servers"))
    assert ok(market.client(host).get("/v1/server_config?server_name=bad"))["config"]["specs"] == {
        "gpu": "1x A100"
    }


def test_hostile_container_reports_are_checked(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid, token = agent_for(market, host)
    with open_channel(market, token, {"public_host": ["\x1b[2Jevil", "gw.example.org"]}) as ws:
        oid = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))["order_id"]
        for report in (
            {"key": "k", "order_id": 10**30, "state": "running"},  # out of any id range
            {"key": "k", "order_id": oid, "state": "owned"},  # not a state
        ):
            ws.send(json.dumps({"type": "status", "containers": [report]}))
        ws.send(
            json.dumps(
                {
                    "type": "status",
                    "containers": [
                        {
                            "key": f"order-{oid}",
                            "order_id": oid,
                            "state": "error",
                            "error": "pull \x1b[31mfailed\x1b[0m",
                            "tcp_ports": {"22": 70000, "x": 5},
                        }
                    ],
                }
            )
        )
        wait_until(lambda: order_row(market, oid)["runtime_state"] == "error")
    row = order_row(market, oid)
    assert row["runtime_error"] == "pull  [31mfailed [0m"
    assert row["tcp_ports"] == []
    with market.db.read() as conn:
        cluster = conn.execute(select(servers.c.pub_cluster).where(servers.c.id == sid)).scalar()
    assert cluster == ["gw.example.org"]


@pytest.mark.timing
def _stream_huge_frame(ws: ClientConnection, length: int) -> None:
    """Send one text frame of ``length`` bytes as a hostile client would: the header announces
    it all, the payload follows in 64 KiB writes of one reused buffer (so that the memory that
    grows is the market's, not this client's own copy of the frame)."""
    header = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big") + b"\0\0\0\0"  # mask 0
    ws.socket.sendall(header)
    chunk = b"x" * 65536
    sent = 0
    while sent < length:
        ws.socket.sendall(chunk[: length - sent])
        sent += len(chunk)


def test_huge_frames_are_refused_before_they_are_buffered(market: Market) -> None:
    _sid, token = agent_for(market, market.user())
    process = psutil.Process()
    before = process.memory_info().rss
    for _ in range(5):
        ws = connect(
            ws_url(market), additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
        )
        try:
            _stream_huge_frame(ws, 15_000_000)
            ws.recv(timeout=10)
        except (ConnectionClosed, OSError):
            pass
        finally:
            ws.close()
        assert ws.close_code in (1009, 1006, None) or ws.close_code >= 1000
    grown = process.memory_info().rss - before
    assert grown < 60_000_000, f"memory grew by {grown} bytes"
    # the market still serves, and a well-behaved agent still connects
    ok(market.client().get("/v1/marketplace"))
    with open_channel(market, token, {}):
        pass


@pytest.mark.parametrize(
    "frame",
    [b"\x00\x01binary", "[" * 5000 + "]" * 5000, '{"type": "hello"' + " " * 70000 + "}"],
    ids=["binary", "deep", "over-the-cap"],
)
def test_a_bad_hello_closes_the_channel_cleanly(market: Market, frame: Any) -> None:
    _sid, token = agent_for(market, market.user())
    with connect(ws_url(market), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send(frame)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        assert ws.close_code in (4400, 1009)
    ok(market.client().get("/v1/marketplace"))


def test_registration_refuses_bad_bodies_with_json(market: Market) -> None:
    url = f"{market.url}/agent/v1/register"
    deep = httpx.post(url, content=b"[" * 5000 + b"]" * 5000, timeout=10)
    assert deep.status_code == 400 and "error" in deep.json()

    def chunks() -> Any:
        for _ in range(80):
            yield b"x" * 1024

    big = httpx.post(url, content=chunks(), timeout=10)
    assert big.status_code == 413 and "error" in big.json()
    assert httpx.post(url, json={"init_token": 5}, timeout=10).status_code == 400


def test_concurrent_first_listing_changes_never_clash(market: Market) -> None:
    """A fresh database has no market version yet: the first writers all create it at once."""
    hosts = [market.user() for _ in range(8)]
    for i, host in enumerate(hosts):
        with market.db.write() as conn:
            add_server(conn, market.user_id(host), f"r{i}", market.now(), market.settings)
    with market.db.write() as conn:  # (adding a server moves the version too)
        conn.execute(text("DELETE FROM meta"))
    answers = parallel(
        8,
        lambda i: (
            market.client(hosts[i])
            .post("/v1/set_server_settings", json={"name": f"r{i}", "mrl": 100 + i})
            .json()["code"]
        ),
    )
    assert answers == [0] * 8
    with market.db.read() as conn:
        assert get_meta(conn, "market_version") == 8


def test_bump_meta_from_many_transactions_at_once(market: Market) -> None:
    def bump(_: int) -> None:
        with market.db.write() as conn:
            bump_meta(conn, "fresh_counter")

    parallel(10, bump)
    with market.db.read() as conn:
        assert get_meta(conn, "fresh_counter") == 10


@pytest.mark.timing
def test_a_removed_servers_agent_is_sent_away(market: Market) -> None:
    host = market.user()
    sid, token = agent_for(market, host)
    with open_channel(market, token, {}) as ws:
        with market.db.write() as conn:
            remove_server(conn, market.user_id(host), "rig", market.now())
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=15)
        assert ws.close_code == 4401
    with market.db.read() as conn:
        online = conn.execute(select(servers.c.online).where(servers.c.id == sid)).scalar()
    assert online is False
    with pytest.raises(ConnectionClosed):  # its credential no longer opens a channel
        open_channel(market, token, {})


# ----------------------------------------------------------------------------- a hostile renter


def test_raising_a_bid_needs_the_runway_of_the_new_price(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    victim = market.client(market.user(bitcoin="0.1"))
    attacker = market.client(market.user(bitcoin="0.0002"))
    v = ok(victim.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    a = ok(attacker.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    assert order_row(market, v)["running"] is True
    refused = attacker.post("/v1/set_spot_price", json={"order_id": a, "desired_price": 1000000})
    assert error(refused) == "not_enough_balance"
    assert order_row(market, v)["running"] is True
    assert order_row(market, a)["price"] == to_units(Decimal("0.00001"))
    # a raise the wallet can fund (an hour of 0.0024/day = 0.0001) goes through and wins
    ok(attacker.post("/v1/set_spot_price", json={"order_id": a, "desired_price": 0.0024}))
    assert order_row(market, a)["running"] is True
    assert order_row(market, v)["running"] is False


def test_a_bid_that_cannot_pay_never_takes_the_server(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    victim = market.client(market.user(bitcoin="0.1"))
    attacker_token = market.user(bitcoin="0.0002")
    attacker = market.client(attacker_token)
    v = ok(victim.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    a = ok(attacker.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    uid = market.user_id(attacker_token)
    with market.db.write() as conn:  # the wallet is emptied, then the bid raised past the check
        wallet = wallet_id(conn, uid, "bitcoin")
        assert wallet is not None
        left = conn.execute(select(accounts.c.balance).where(accounts.c.id == wallet)).scalar_one()
        external = system_account_id(conn, "external", "bitcoin")
        transfer(conn, key="drain", debit=wallet, credit=external, amount=left, kind="x", now=0)
        lock_server(conn, sid)
        conn.execute(update(orders).where(orders.c.id == a).values(price=to_units(1000000)))
        resolve_server(conn, sid, market.now())
    assert order_row(market, v)["running"] is True
    ended = order_row(market, a)
    assert ended["expired"] is True and ended["end_reason"] == "balance"
    assert ended["spend"] == 0 and ended["ended_at"] == market.now()
    ledger_holds(market)


def test_concurrent_cancels_of_orders_that_outran_their_wallet(market: Market) -> None:
    """12 on-demand orders whose spend together passes the balance, cancelled all at once."""
    market.reconfigure(max_active_orders=20, max_servers_per_user=20)
    host = market.user()
    sids = [market.server(host, f"r{i}", on_demand="10") for i in range(12)]
    token = market.user(bitcoin="1")
    c = market.client(token)
    oids = [ok(c.post("/v1/create_order", json=order_body(s)))["order_id"] for s in sids]
    market.clock.advance(1000)  # 12 × 1000 s at 10 BTC/day is 1.39 BTC: more than the wallet
    results = parallel(12, lambda i: outcome(c.post("/v1/cancel_order", json={"id": oids[i]})))
    assert results == ["ok"] * 12
    reasons = Counter(order_row(market, o)["end_reason"] for o in oids)
    assert set(reasons) <= {"cancelled", "balance"} and reasons["balance"] >= 1
    ledger_holds(market)
    with market.db.read() as conn:
        booked = booked_by_order(conn)
    for oid in oids:
        row = order_row(market, oid)
        assert row["expired"] is True
        assert booked.get((oid, "spend"), 0) + booked.get((oid, "fee"), 0) == row["spend"]


def test_cancel_when_settling_ends_the_order_frees_the_server(market: Market) -> None:
    sid = market.server(market.user(), on_demand="10")
    token = market.user(bitcoin="0.5")
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(86400)  # the wallet ran dry long ago; no tick has noticed yet
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    row = order_row(market, oid)
    assert row["expired"] is True and row["end_reason"] == "balance"
    assert error(c.post("/v1/cancel_order", json={"id": oid})) == "order_not_active"
    other = market.client(market.user(bitcoin="10"))
    ok(other.post("/v1/create_order", json=order_body(sid)))  # not server-already-rented
    ledger_holds(market)


def test_order_limit_holds_under_concurrent_creates(market: Market) -> None:
    hosts = [market.user(), market.user()]
    sids = [market.server(hosts[i % 2], f"r{i}") for i in range(20)]
    first = market.user(bitcoin="1")
    uid = market.user_id(first)
    from openclore.market.accounts import issue_token

    with market.db.write() as conn:
        tokens = [first] + [issue_token(conn, uid, market.now()) for _ in range(19)]
    clients = [market.client(t) for t in tokens]
    results = parallel(
        20, lambda i: outcome(clients[i].post("/v1/create_order", json=order_body(sids[i])))
    )
    assert Counter(results) == {"ok": 13, "order_limit_reached": 7}
    with market.db.read() as conn:
        live = conn.execute(
            select(func.count()).where(orders.c.user_id == uid, orders.c.expired.is_(False))
        ).scalar()
    assert live == 13


def test_server_limit_holds_under_concurrent_adds(market: Market) -> None:
    first = market.user()
    uid = market.user_id(first)
    from openclore.market.accounts import issue_token

    with market.db.write() as conn:
        tokens = [first] + [issue_token(conn, uid, market.now()) for _ in range(19)]
    clients = [market.client(t) for t in tokens]
    results = parallel(
        20, lambda i: outcome(clients[i].post("/v1/add_server", json={"name": f"s{i}"}))
    )
    assert Counter(results) == {"ok": 16, "server_limit_reached": 4}


# ----------------------------------------------------------------------------- anyone


def test_random_tokens_share_their_address_limit(market: Market) -> None:
    market.reconfigure(rate_limit_interval=1.0, rate_clock=ManualClock(5000.0))
    client = market.client()
    codes: Counter[int] = Counter()
    for _ in range(40):
        answer = client.get("/v1/wallets", headers={"auth": secrets.token_hex(16)})
        codes[answer.json()["code"]] += 1
    assert codes == {3: 1, 5: 39}, codes  # one call a second, like anonymous callers
    with market.db.read() as conn:
        rows = conn.execute(select(func.count()).select_from(rate_limits)).scalar_one()
    assert rows <= 3
    # a real token keeps its own budget
    token = market.user()
    assert market.client(token).get("/v1/wallets").json()["code"] == 0


def test_rate_limit_rows_expire(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, 0.1)
    now = time.time()
    with market.db.write() as conn:
        for i in range(100):
            conn.execute(rate_limits.insert().values(key=f"old{i}", tat=now - 5))
    limiter.hit("fresh", 1.0, now)
    with market.db.read() as conn:
        keys = set(conn.execute(select(rate_limits.c.key)).scalars())
    assert keys == {"fresh"}


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


NUL = "a\u0000b"


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("add_server", {"name": NUL}),
        ("server_config", {"server_name": NUL}),
        ("set_server_settings", {"name": NUL, "availability": True}),
        ("create_order", {**order_body(1), "command": NUL}),
        ("cancel_order", {"id": 1, "issue": NUL}),
        ("create_order", {**order_body(1), "env": {"A": "1"}, NUL: 1}),
    ],
)
def test_nul_characters_are_invalid_input(market: Market, endpoint: str, body: Any) -> None:
    answer = market.client(market.user()).post(f"/v1/{endpoint}", json=body)
    assert answer.status_code == 200 and answer.json()["code"] == 2, answer.text
    assert "NUL" in answer.json()["error"]


@pytest.mark.parametrize("name", ["\x1b[2Jrig", "rig\u202e", "tab\there"])
def test_control_characters_in_names_are_invalid(market: Market, name: str) -> None:
    answer = market.client(market.user()).post("/v1/add_server", json={"name": name})
    assert answer.json()["code"] == 2


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("set_spot_price", {"order_id": 1, "desired_price": " 2e-3 "}),
        ("set_spot_price", {"order_id": 1, "desired_price": "0.001"}),
        ("create_order", spot_body(1, "0.001") | {"spotprice": "0.001"}),
        ("create_order", order_body(1, required_price="0.00001")),
        ("set_server_settings", {"name": "rig", "on_demand": "1"}),
        ("deposit", {"currency": "bitcoin", "amount": "1"}),
    ],
)
def test_money_must_be_a_json_number(market: Market, endpoint: str, body: Any) -> None:
    prefix = "/sandbox" if endpoint == "deposit" else "/v1"
    answer = market.client(market.user()).post(f"{prefix}/{endpoint}", json=body)
    assert answer.json()["code"] == 2, answer.text


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


# ----------------------------------------------------------------------------- the sandbox


def test_sandbox_reset_refuses_a_real_market(market: Market) -> None:
    token = market.user(bitcoin="1")
    answer = market.client(token).post("/sandbox/reset")
    assert error(answer) == "not_a_demo_world"
    assert market.client(token).get("/v1/wallets").json()["code"] == 0  # nothing was wiped


def test_serve_demo_refuses_a_database_holding_a_market(market: Market) -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app

    with market.db.write() as conn:
        create_user(conn, "alice", market.now(), market.settings)
    result = CliRunner().invoke(app, ["serve", "--demo", "--database-url", market.db.url])
    assert result.exit_code == 1
    assert "holds a market, not a demo world" in result.output
    with market.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(accounts)).scalar()


def test_database_errors_never_show_the_password_or_a_traceback() -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app

    url = "postgresql://market:s3cr3t-pw@127.0.0.1:1/market"
    for args in (["db", "upgrade"], ["admin", "user", "add", "bob"], ["serve"]):
        env = {"OPENCLORE_ADDRESS_SECRET": "test-address-secret"}  # (`serve` checks it first)
        result = CliRunner().invoke(app, [*args, "--database-url", url], env=env)
        assert result.exit_code == 1, result.output
        assert "s3cr3t-pw" not in result.output and "Traceback" not in result.output
        assert "cannot use database postgresql://market:***@127.0.0.1:1/market" in result.output


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


def test_an_invalid_field_of_net_drops_only_that_field() -> None:
    from openclore.domain.specs import check_specs

    clean, problems = check_specs({"net": {"up": 10.5, "down": 90, "cc": ""}, "ram": 64})
    assert clean == {"net": {"up": 10.5, "down": 90}, "ram": 64}
    assert problems == []
    assert check_specs({"net": "fast"}) == ({}, ["invalid net"])


BAD_TEXT = {"nul": "al\u0000ice", "surrogate": "al\ud800ice"}
TEXT_KEYS = ["name", "server_name", "id", "order_id", "currency", "market", "cursor", "month"]


@pytest.mark.parametrize("bad", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
def test_nul_or_a_lone_surrogate_anywhere_is_invalid_input(market: Market, bad: str) -> None:
    """In any JSON body (keys included) and any query string of every endpoint: code 2, never
    an internal error, on both databases (PostgreSQL refuses NUL, every encoder a lone
    surrogate)."""
    from openclore.api.v1 import SANDBOX_ENDPOINTS, V1_ENDPOINTS

    client = market.client(market.user(bitcoin="0.01"))
    paths = [f"/v1/{ep.name}" for ep in V1_ENDPOINTS]
    paths += [f"/sandbox/{ep.name}" for ep in SANDBOX_ENDPOINTS]
    body = json.dumps({**{key: bad for key in TEXT_KEYS}, bad: 1}).encode()
    for path in paths:
        for answer in (
            client.post(path, content=body, headers={"Content-Type": "application/json"}),
            client.post(path, content=json.dumps([{"order_id": 1, "image": bad}]).encode()),
        ):
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json()["code"] == 2, (path, answer.text)
        if "\x00" in bad:  # a query string cannot carry a lone surrogate (it is UTF-8)
            for key in TEXT_KEYS:
                answer = client.get(f"{path}?{key}=al%00ice")
                assert answer.status_code == 200, (path, key, answer.text)
                assert answer.json()["code"] == 2, (path, key, answer.text)
    # the agents' registration and the signed deposit webhook
    url = f"{market.url}/agent/v1/register"
    for sent in ({"init_token": bad}, {"init_token": "x", bad: 1}):
        answer = httpx.post(url, content=json.dumps(sent).encode(), timeout=10)
        assert answer.status_code == 400 and answer.json()["error"], answer.text
    from openclore.market.payments import sign

    market.reconfigure(payments_webhook_secret="whsec-test-0123456789")
    raw = json.dumps(
        {"external_id": bad, "currency": "bitcoin", "amount": "0.001", "user": "x"}
    ).encode()
    answer = market.client().post(
        "/payments/deposit",
        content=raw,
        headers={"Openclore-Signature": sign("whsec-test-0123456789", int(time.time()), raw)},
    )
    assert answer.status_code == 400 and answer.json()["code"] == 2, answer.text
    ok(market.client().get("/v1/marketplace"))


def test_an_agent_message_with_a_lone_surrogate_is_ignored(market: Market) -> None:
    """A lone surrogate is not text any database takes: the message is dropped (as malformed
    JSON is), and the channel goes on."""
    sid, token = agent_for(market, market.user())
    with open_channel(market, token, {"specs": {"gpu": "1x RTX 4090"}}) as ws:
        wait_until(lambda: specs_of(market, sid) == {"gpu": "1x RTX 4090"})
        ws.send(json.dumps({"type": "specs", "specs": {"gpu": "1x RTX\ud800", "ram": 8}}))
        ws.send(json.dumps({"type": "specs", "specs": {"gpu": "1x A100", "ram": 64}}))
        assert wait_until(lambda: specs_of(market, sid) == {"gpu": "1x A100", "ram": 64})
        ws.send(json.dumps({"type": "specs", "specs": {"gpu": "1x RTX\udfff", "ram": 8}}))
        ws.send(json.dumps({"type": "heartbeat"}))
        time.sleep(0.5)
        assert specs_of(market, sid) == {"gpu": "1x A100", "ram": 64}
    (listed,) = ok(market.client().get("/v1/marketplace"))["servers"]
    assert listed["specs"] == {"gpu": "1x A100", "ram": 64}
