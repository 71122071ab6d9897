"""What a hostile renter tried with orders and bids (market/orders.py), and what the market does
now (both databases, real HTTP). Each test reproduced a defect before its fix; moved from the
former tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from openclore.domain.money import to_units
from openclore.engine.billing import lock_server, resolve_server
from openclore.ledger.ledger import system_account_id, transfer, wallet_id
from openclore.store.schema import accounts, orders

from support import Market, booked_by_order, error, ok, order_body, spot_body

pytestmark = pytest.mark.origin("hostile")


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
