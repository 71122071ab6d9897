"""What a hostile host agent tried on the market's side of the agent channel (registration, the
hello, specs, container reports, frames), and what the market does now (both databases, real
HTTP and WebSocket). Each test reproduced a defect before its fix; moved from the former
tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select, text, update
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from openclore.domain.money import to_units
from openclore.market.servers import add_server, remove_server
from openclore.store.schema import orders, servers

from support import Market, ok, order_body

pytestmark = pytest.mark.origin("hostile")


def order_row(market: Market, order_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)


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
    # a GPU's name in gpu_array, as a real agent sends it: the marketplace lists GPU servers only
    hello = {"specs": {"gpu": "1x RTX 4090", "ram": 64}, "gpu_array": ["RTX 4090"]}
    with open_channel(market, token, hello) as ws:
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
