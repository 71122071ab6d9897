"""Market events on both databases: each change's events, in order, over JSON polling and the
server-sent-event stream (resumed with Last-Event-ID), and the wallets' runway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import update

from openclore.cli.commands.events import describe_event
from openclore.client import Client, Event
from openclore.engine.ticker import tick
from openclore.market.accounts import issue_token, revoke_token
from openclore.market.agents import agent_heartbeat, apply_statuses
from openclore.market.servers import remove_server
from openclore.market.wallets import deposit
from openclore.protocol import ERROR, KIND_ORDER, ContainerStatus
from openclore.store.schema import servers

from support import Market, ok, order_body, spot_body


def events(market: Market, token: str, after: int = 0) -> list[dict[str, Any]]:
    params = {"after": after, "limit": 1000}
    with market.client(token).stream("GET", "/v1/events", params=params) as answer:
        # a polling answer, never a stream (which would not end)
        assert answer.headers["content-type"] == "application/json", answer.headers
        answer.read()
    body = ok(answer)
    found: list[dict[str, Any]] = body["events"]
    assert body["last_id"] == (found[-1]["id"] if found else after)
    return found


def kinds(found: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for e in found:
        data = e["data"]
        extra = data.get("reason") or data.get("order_id") or data.get("currency") or ""
        out.append((e["type"], str(extra)) if extra else (e["type"],))
    return out


def test_an_orders_whole_life_in_order(market: Market) -> None:
    host = market.user()
    alice = market.user(bitcoin="1")
    bob = market.user(bitcoin="1")
    sid = market.server(host, mrl=2)
    a = ok(market.client(alice).post("/v1/create_order", json=spot_body(sid, "0.000002")))
    b = ok(market.client(bob).post("/v1/create_order", json=order_body(sid)))
    ok(market.client(bob).post("/v1/cancel_order", json={"id": b["order_id"]}))
    market.advance(3 * 3600)  # alice's order reaches its mrl (2 h)

    found = events(market, alice)
    assert [e["type"] for e in found] == [
        "deposit.credited",
        "order.created",
        "order.running",
        "order.outbid",
        "order.running",
        "order.ended",
    ]
    ids = [e["id"] for e in found]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    outbid, ended = found[3]["data"], found[5]["data"]
    assert outbid == {
        "order_id": a["order_id"],
        "server_id": sid,
        "spot": True,
        "currency": "bitcoin",
        "reason": "preempted",  # by bob's on-demand order
        "stopped": True,  # it keeps its disk and starts again by itself (SPEC §8)
    }
    assert ended["reason"] == "expired" and ended["order_id"] == a["order_id"]
    assert ended["ended_at"] == found[0]["time"] + 2 * 3600
    assert found[1]["data"]["price"] == 0.000002  # exact numbers, as the wire writes amounts
    assert found[0]["data"] == {"currency": "bitcoin", "amount": 1}

    bobs = [(e["type"], e["data"].get("reason")) for e in events(market, bob)]
    assert bobs == [
        ("deposit.credited", None),
        ("order.created", None),
        ("order.running", None),
        ("order.ended", "cancelled"),
    ]
    # nobody sees another user's events
    assert events(market, host) == []


def test_outbid_by_a_higher_spot_bid(market: Market) -> None:
    host = market.user()
    alice, bob = market.user(bitcoin="1"), market.user(bitcoin="1")
    sid = market.server(host)
    ok(market.client(alice).post("/v1/create_order", json=spot_body(sid, "0.000002")))
    ok(market.client(bob).post("/v1/create_order", json=spot_body(sid, "0.000003")))
    assert [(e["type"], e["data"].get("reason")) for e in events(market, alice)][-1] == (
        "order.outbid",
        "outbid",
    )


def test_balance_exhausted_and_server_removed(market: Market) -> None:
    host = market.user()
    poor = market.user(bitcoin="0.0000006")  # creation fee 0.0000003 + one hour's runway
    rich = market.user(bitcoin="1")
    sid = market.server(host, on_demand="0.0000024")  # 0.0000001 an hour
    other = market.server(host, "other")
    p = ok(market.client(poor).post("/v1/create_order", json=order_body(sid)))
    r = ok(market.client(rich).post("/v1/create_order", json=order_body(other)))
    market.advance(5 * 3600)
    with market.db.write() as conn:
        remove_server(conn, market.user_id(host), "other", market.now())
    poor_end = events(market, poor)[-1]
    assert poor_end["type"] == "order.ended"
    assert poor_end["data"]["reason"] == "balance" and poor_end["data"]["order_id"] == p["order_id"]
    assert poor_end["data"]["spend"] == 0.0000003
    rich_end = events(market, rich)[-1]
    assert (rich_end["type"], rich_end["data"]["reason"]) == ("order.ended", "server_removed")
    assert rich_end["data"]["order_id"] == r["order_id"]


def test_server_offline_online_and_a_failed_container(market: Market) -> None:
    host = market.user()
    renter = market.user(bitcoin="1")
    sid = market.server(host)
    order = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))
    with market.db.write() as conn:  # an agent's server now, last heard of at T0
        conn.execute(update(servers).where(servers.c.id == sid).values(simulated=False))
    market.advance(120)  # no heartbeat for longer than agent_timeout
    with market.db.write() as conn:
        assert agent_heartbeat(conn, sid, market.now())
    status = ContainerStatus(
        key=f"order-{order['order_id']}",
        kind=KIND_ORDER,
        state=ERROR,
        order_id=order["order_id"],
        error="pull access denied for nosuch/image",
    )
    with market.db.write() as conn:
        apply_statuses(conn, sid, [status], ["h.example"], now=market.now())
    with market.db.write() as conn:  # the same report again is no new event
        apply_statuses(conn, sid, [status], ["h.example"], now=market.now())

    assert [(e["type"], e["data"]["server_id"]) for e in events(market, host)] == [
        ("server.offline", sid),
        ("server.online", sid),
    ]
    assert kinds(events(market, renter))[-4:] == [
        ("order.running", str(order["order_id"])),
        ("order.paused", "server_offline"),
        ("order.running", str(order["order_id"])),
        ("order.failed", str(order["order_id"])),
    ]
    failed = events(market, renter)[-1]["data"]
    assert failed["error"] == "pull access denied for nosuch/image" and failed["state"] == ERROR


def test_polling_pages_and_filters(market: Market) -> None:
    token = market.user()
    for _ in range(5):
        ok(market.client(token).post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))
    c = market.client(token)
    first = ok(c.get("/v1/events", params={"after": 0, "limit": 2}))
    assert len(first["events"]) == 2
    rest = ok(c.get("/v1/events", params={"after": first["last_id"]}))
    assert len(rest["events"]) == 3 and rest["events"][0]["id"] > first["last_id"]
    none = ok(c.get("/v1/events", params={"after": 0, "types": "order.ended"}))
    assert none["events"] == [] and none["last_id"] == 0
    bad = c.get("/v1/events", params={"after": "x"}).json()
    assert bad["code"] == 2
    assert c.get("/v1/events", params={"after": 0, "types": "nope"}).json()["code"] == 2
    assert market.client().get("/v1/events", params={"after": 0}).json()["code"] == 3


class SseReader:
    """Reads one event stream in a thread; ``events`` fills as frames arrive."""

    def __init__(
        self, market: Market, token: str, last_id: int | None, read_timeout: float = 2
    ) -> None:
        headers = {"auth": token}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        self.events: list[dict[str, Any]] = []
        self.frame_ids: list[int] = []
        self.started = threading.Event()
        self.stop = threading.Event()
        self.revoked = False  # the server ended the stream: its token was revoked
        self.client = httpx.Client(
            base_url=market.url, timeout=httpx.Timeout(10, read=read_timeout)
        )
        self.headers = headers
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def run(self) -> None:
        with self.client.stream("GET", "/v1/events", headers=self.headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            frame_id = None
            try:
                for line in response.iter_lines():
                    if line.startswith("retry:"):
                        self.started.set()
                    elif line == "event: revoked":
                        self.revoked = True  # the server's last frame: nothing follows
                        return
                    elif line.startswith("id: "):
                        frame_id = int(line[4:])
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        assert frame_id is not None and event["id"] == frame_id
                        self.frame_ids.append(frame_id)
                        self.events.append(event)
                    if self.stop.is_set():
                        return
            except httpx.HTTPError:  # closed by close(), or quiet for too long
                return

    def wait_for(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} of {count} events"
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.client.close()
        self.thread.join(timeout=5)


def test_sse_resume_with_last_event_id_loses_nothing(market: Market) -> None:
    token = market.user()
    deposit = market.client(token)

    def credit(n: int) -> None:
        for _ in range(n):
            ok(deposit.post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))

    credit(2)  # before the first stream: a stream without Last-Event-ID starts after them
    first = SseReader(market, token, None)
    credit(4)
    first.wait_for(4)
    first.close()
    seen = first.events[:3]  # the client saw three, then the connection broke
    credit(5)  # written while nobody listens
    second = SseReader(market, token, seen[-1]["id"])
    credit(2)
    second.wait_for(4 - 3 + 5 + 2)
    second.close()
    everything = [e["id"] for e in events(market, token)]
    got = [e["id"] for e in seen] + [e["id"] for e in second.events]
    assert got == everything[2:]  # every event after the first two, once, in order
    assert all(e["type"] == "deposit.credited" for e in second.events)


def test_a_revoked_tokens_stream_ends_within_seconds(market: Market) -> None:
    token = market.user()
    with market.db.write() as conn:
        other = issue_token(conn, market.user_id(token), market.now())
    c = market.client(other)
    reader = SseReader(market, token, None, read_timeout=30)
    kept = SseReader(market, other, None, read_timeout=30)  # the same user's other token
    try:
        ok(c.post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))
        reader.wait_for(1)
        with market.db.write() as conn:
            assert revoke_token(conn, token, market.now())
        revoked_at = time.monotonic()
        reader.thread.join(timeout=8)
        assert not reader.thread.is_alive() and reader.revoked
        assert time.monotonic() - revoked_at < 6
        ok(c.post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))
        kept.wait_for(2)
        assert len(reader.events) == 1  # nothing after the revocation
        assert not kept.revoked and kept.thread.is_alive()
    finally:
        reader.close()
        kept.close()


def test_event_streams_per_user_are_capped_and_slots_come_back(market: Market) -> None:
    market.reconfigure(max_event_streams_per_user=2)
    token, other = market.user(), market.user()
    first, second = SseReader(market, token, None), SseReader(market, token, None)
    try:
        refused = market.client(token).get("/v1/events")
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert refused.json() == {"error": "event_stream_limit_reached", "limit": 2, "code": 5}
        SseReader(market, other, None).close()  # another user is not affected
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the closed stream's slot comes back once the server sees it gone
            answer = None
            try:
                with market.client(token).stream("GET", "/v1/events") as answer:
                    if answer.headers["content-type"].startswith("text/event-stream"):
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the slot never came back"
            time.sleep(0.2)
    finally:
        first.close()
        second.close()


def test_an_idle_stream_reads_no_table(market: Market) -> None:
    token = market.user()
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "events" in statement or "api_tokens" in statement:
            reads.append(statement)

    reader = SseReader(market, token, None, read_timeout=30)
    try:
        time.sleep(0.5)  # its first read is done
        sa_event.listen(market.db.engine, "before_cursor_execute", count)
        try:
            time.sleep(3.5)  # three polling intervals, one token check
        finally:
            sa_event.remove(market.db.engine, "before_cursor_execute", count)
        assert reads == []
        ok(market.client(token).post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))
        reader.wait_for(1)  # and it still hears of a new event at once
    finally:
        reader.close()


def test_wallets_show_burn_and_runway_and_low_balance_alerts(market: Market) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.00001")
    s1 = market.server(host, "a", on_demand="0.00000864")  # 0.0000001 per 1000 s
    s2 = market.server(host, "b", on_demand="0.00000864")
    c = market.client(renter)
    ok(c.post("/v1/set_alerts", json={"low_balance_seconds": 50000}))
    assert ok(c.get("/v1/alerts"))["low_balance_seconds"] == 50000
    ok(c.post("/v1/create_order", json=order_body(s1)))
    wallet = next(w for w in ok(c.get("/v1/wallets"))["wallets"] if w["name"] == "bitcoin")
    balance_units = 10_000 - 300  # 0.00001 less the creation fee, in 10⁻⁹
    assert wallet["burn_per_day"] == 0.00000864
    assert wallet["runway_seconds"] == balance_units * 86400 // 8640
    tick(market.db, market.now(), 60)
    assert [e["type"] for e in events(market, renter)].count("balance.low") == 0
    ok(c.post("/v1/create_order", json=order_body(s2)))  # twice the burn: 47,000 s → under
    for _ in range(3):
        market.advance(10)
    low = [e for e in events(market, renter) if e["type"] == "balance.low"]
    assert len(low) == 1  # once per dip, not every tick
    assert low[0]["data"]["currency"] == "bitcoin"
    assert low[0]["data"]["burn_per_day"] == 0.00001728
    assert low[0]["data"]["runway_seconds"] < 50000
    assert low[0]["data"]["threshold_seconds"] == 50000
    usd = next(w for w in ok(c.get("/v1/wallets"))["wallets"] if w["name"] == "bitcoin")
    assert usd["runway_seconds"] < 50000
    ok(c.post("/v1/set_alerts", json={"low_balance_seconds": None}))
    assert ok(c.get("/v1/alerts"))["low_balance_seconds"] is None


def test_sdk_iterator_and_polling(market: Market) -> None:
    token = market.user()
    credit = market.client(token)
    for _ in range(2):
        ok(credit.post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 1}))
    with Client(token, base_url=market.url, rate_limit=False) as client:
        page = client.events_after(0, limit=1)
        assert [e.type for e in page.events] == ["deposit.credited"] and page.last_id == 1
        stream = client.events(after=page.last_id)
        first = next(stream)
        assert first.id == 2 and first.data["amount"] == Decimal(1)  # exact amounts
        later = threading.Timer(
            0.3,
            lambda: credit.post("/sandbox/deposit", json={"currency": "bitcoin", "amount": 2}),
        )
        later.start()
        second = next(stream)  # arrives as it happens
        assert (second.id, second.type, second.data["amount"]) == (3, "deposit.credited", 2)
        stream.close()
        later.join()
        bitcoin = next(w for w in client.wallets() if w.name == "bitcoin")
        assert bitcoin.burn_per_day == 0 and bitcoin.runway_seconds is None


def test_cli_watch_prints_the_stream(market: Market, tmp_path: Path) -> None:
    token = market.user()
    for amount in (1, 2):
        ok(
            market.client(token).post(
                "/sandbox/deposit", json={"currency": "bitcoin", "amount": amount}
            )
        )
    env = {
        **os.environ,
        "OPENCLORE_URL": market.url,
        "OPENCLORE_API_KEY": token,
        "OPENCLORE_CONFIG": str(tmp_path / "config.toml"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "openclore", "watch", "--after", "0", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [(e["id"], e["type"], e["data"]["amount"]) for e in lines] == [
        (1, "deposit.credited", 1),
        (2, "deposit.credited", 2),
    ]
    text = describe_event(
        Event(
            id=7,
            type="order.ended",
            time=1_700_000_000,
            data={"order_id": 12, "server_id": 3, "reason": "cancelled", "spend": Decimal("0.5")},
        )
    )
    assert text == "2023-11-14 22:13:20  #7 order.ended  order 12 on server 3: cancelled, spend 0.5"
    paid = Event(
        id=8,
        type="withdrawal.approved",
        time=1_700_000_000,
        data={
            "withdrawal_id": 4,
            "currency": "bitcoin",
            "amount": Decimal("0.002"),
            "fee": Decimal("0.0001"),
            "address": "bc1q…",
            "txid": "tx-1",
        },
    )
    assert describe_event(paid).endswith(
        "withdrawal.approved  withdrawal 4: amount 0.002, currency bitcoin, fee 0.0001, txid tx-1"
    )
    adjusted = Event(
        id=9,
        type="balance.adjusted",
        time=1_700_000_000,
        data={"currency": "bitcoin", "amount": Decimal("-0.0002"), "order_id": None, "reason": "x"},
    )
    assert describe_event(adjusted).endswith(
        "balance.adjusted  x, amount -0.0002, currency bitcoin"
    )


def test_events_commit_with_their_change_or_not_at_all(market: Market) -> None:
    token = market.user()
    uid = market.user_id(token)
    with pytest.raises(ZeroDivisionError), market.db.write() as conn:  # the change fails
        deposit(conn, uid, "bitcoin", 5, market.settings, market.now())
        _ = 1 / 0
    with market.db.engine.connect() as conn:  # a what-if, rolled back: fine, and nothing stays
        transaction = conn.begin()
        deposit(conn, uid, "bitcoin", 6, market.settings, market.now())
        transaction.rollback()
    with pytest.raises(RuntimeError, match=r"Database\.write"), market.db.engine.begin() as conn:
        deposit(conn, uid, "bitcoin", 7, market.settings, market.now())  # would lose its event
    assert events(market, token) == []
    with market.db.write() as conn:
        deposit(conn, uid, "bitcoin", 8, market.settings, market.now())
    assert [e["data"]["amount"] for e in events(market, token)] == [0.000000008]
