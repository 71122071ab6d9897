"""The engine: liveness, idempotent ticks, several tickers at once, the set-based fast path."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, update

from openclore.engine.settlement import settle_running_orders
from openclore.engine.ticker import tick
from openclore.store.schema import accounts, orders, servers, transfers

from support import Market, ok, order_body, spot_body


def agent_server(market: Market, host: str, name: str = "rig") -> int:
    """A server run by a (silent) agent: not simulated, heard from now."""
    sid = market.server(host, name)
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == sid)
            .values(simulated=False, last_seen=market.now())
        )
    return sid


def heartbeat(market: Market, sid: int) -> None:
    from openclore.engine.billing import lock_server, resolve_server

    with market.db.write() as conn:
        lock_server(conn, sid)
        conn.execute(
            update(servers).where(servers.c.id == sid).values(online=True, last_seen=market.now())
        )
        resolve_server(conn, sid, market.now())


def spend_units(market: Market, oid: int) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(orders.c.spend).where(orders.c.id == oid)).scalar_one())


def test_a_silent_server_goes_offline_and_is_not_billed_for_downtime(market: Market) -> None:
    host = market.user()
    sid = agent_server(market, host)
    c = market.client(market.user(bitcoin="0.01"))
    # 0.0864 BTC/day = 1000 units per second
    ok(
        market.client(host).post(
            "/v1/set_server_settings", json={"name": "rig", "on_demand": 0.0864}
        )
    )
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(10)
    assert spend_units(market, oid) == 10_000
    market.advance(50)  # no heartbeat for 60 s: billed only up to the last one + the grace
    assert spend_units(market, oid) == 15 * 1000
    market.advance(1)  # past the agent timeout: offline, off the marketplace
    assert ok(market.client().get("/v1/marketplace"))["servers"] == []
    assert ok(c.get("/v1/my_orders"))["orders"][0]["running"] is False
    market.advance(3600)
    assert spend_units(market, oid) == 15 * 1000
    heartbeat(market, sid)  # the agent is back: billing resumes from now
    market.advance(5)
    assert spend_units(market, oid) == (15 + 5) * 1000
    assert [s["id"] for s in ok(market.client().get("/v1/marketplace"))["servers"]] == [sid]


def test_ticks_are_idempotent(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="0.01"))
    ok(c.post("/v1/create_order", json=order_body(sid)))
    market.advance(12345)
    with market.db.read() as conn:
        before = conn.execute(select(func.count()).select_from(transfers)).scalar()
    for _ in range(3):
        tick(market.db, market.now(), 60)
    with market.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(transfers)).scalar() == before


def test_concurrent_tickers_bill_each_second_once(market: Market) -> None:
    host = market.user()
    renters = [market.user(bitcoin="1") for _ in range(4)]
    oids = []
    for i, token in enumerate(renters):
        sid = market.server(host, f"rig{i}", on_demand="0.0864")
        oids.append(
            ok(market.client(token).post("/v1/create_order", json=order_body(sid)))["order_id"]
        )
    for step in range(1, 6):
        now = market.now() + step * 7
        errors: list[BaseException] = []

        def run(now: int = now, errors: list[BaseException] = errors) -> None:
            try:
                tick(market.db, now, 60)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    for oid in oids:
        assert spend_units(market, oid) == 35 * 1000
    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0


def test_fast_path_leaves_short_wallets_and_endings_to_the_exact_path(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0864")
    poor = market.client(market.user(bitcoin="0.0036103"))  # 300 fee + 3600 s + 10 s
    oid = ok(poor.post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:
        result = settle_running_orders(conn, market.now() + 5000, 15)
    assert result.settled == 0 and result.deferred_servers == [sid]
    market.advance(5000)
    (order,) = ok(poor.get("/v1/my_orders?return_completed=true"))["orders"]
    assert order["id"] == oid and order["expired"] is True
    assert spend_units(market, oid) == 3_610_000


@pytest.mark.parametrize("seconds", [1, 59, 86400])
def test_spot_offers_expire_even_when_never_active(market: Market, seconds: int) -> None:
    sid = market.server(market.user(), mrl=1)
    high = market.client(market.user(bitcoin="0.01"))
    low = market.client(market.user(bitcoin="0.01"))
    ok(high.post("/v1/create_order", json=spot_body(sid, "0.000003")))
    lo = ok(low.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    market.advance(3600 - 1)
    market.advance(seconds)
    (order,) = ok(low.get("/v1/my_orders?return_completed=true"))["orders"]
    assert order["id"] == lo and order["expired"] is True and order["spend"] == 0
