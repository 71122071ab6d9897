"""SPEC §4: on-demand and spot orders, the spot book, cancel, my_orders."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from openclore.store.schema import accounts, orders, transfers

from support import Market, booked_by_order, error, ok, order_body, spot_body


def balance(market: Market, token: str, currency: str = "bitcoin") -> float:
    wallets = ok(market.client(token).get("/v1/wallets"))["wallets"]
    return float(next(w["balance"] for w in wallets if w["name"] == currency))


def book(market: Market, sid: int, token: str | None = None) -> list[dict[str, Any]]:
    offers: list[dict[str, Any]] = ok(
        market.client(token).get(f"/v1/spot_marketplace?market={sid}")
    )["market"]["offers"]
    return offers


def test_on_demand_order_shape_and_creation_fee(market: Market) -> None:
    host = market.user()
    sid = market.server(host, mrl=73)
    renter = market.user(bitcoin="0.001")
    c = market.client(renter)
    body = ok(c.post("/v1/create_order", json=order_body(sid)))
    order = body["order"]
    assert order["id"] == body["order_id"]
    assert order["fee"] == 5
    assert order["creation_fee"] == 0.0000003
    assert order["price"] == 0.00001
    assert order["mrl"] == 73 * 3600  # seconds, from the server's hours
    assert order["currency"] == "bitcoin"
    assert order["ct"] == market.now()
    assert order["si"] == sid
    assert order["spend"] == 0
    # connection fields are left out of the create_order answer (clore-ai's Order model)...
    assert not {"tcp_ports", "pub_cluster", "http_port"} & set(order)
    assert "spot" not in order and "expired" not in order
    assert balance(market, renter) == pytest.approx(0.001 - 0.0000003, abs=1e-12)
    mine = ok(c.get("/v1/my_orders"))
    assert mine["limit"] == market.settings.max_active_orders
    listed = mine["orders"][0]
    assert listed["id"] == order["id"]
    # ...and shown in my_orders, as lists and a string
    assert isinstance(listed["tcp_ports"], list) and isinstance(listed["pub_cluster"], list)
    assert listed["http_port"] == "8888"


def test_on_demand_is_refused_while_another_holds_the_server(market: Market) -> None:
    sid = market.server(market.user())
    a = market.client(market.user(bitcoin="0.01"))
    b = market.client(market.user(bitcoin="0.01"))
    ok(a.post("/v1/create_order", json=order_body(sid)))
    assert error(b.post("/v1/create_order", json=order_body(sid))) == "server-already-rented"
    assert error(a.post("/v1/create_order", json=order_body(sid))) == "server-already-rented"


def test_create_order_errors(market: Market) -> None:
    host = market.user(bitcoin="1")
    sid = market.server(host)
    offline = market.server(host, "off", online=False)
    hidden = market.server(host, "hid", visibility="hidden")
    usd_only = market.server(host, "usd", currency="USD-Blockchain", on_demand="5", spot="1")
    poor = market.client(market.user(bitcoin="0.0000001"))
    rich = market.client(market.user(bitcoin="1"))
    assert error(rich.post("/v1/create_order", json=order_body(9999))) == "server-dont-exist"
    assert error(rich.post("/v1/create_order", json=order_body(hidden))) == "server-dont-exist"
    assert error(rich.post("/v1/create_order", json=order_body(offline))) == "server-offline"
    assert error(market.client(host).post("/v1/create_order", json=order_body(sid))) == (
        "cant_rent_from_yourself"
    )
    assert error(poor.post("/v1/create_order", json=order_body(sid))) == "not_enough_balance"
    assert error(rich.post("/v1/create_order", json=order_body(usd_only))) == (
        "currency-not-allowed"
    )
    assert error(rich.post("/v1/create_order", json=order_body(sid, currency="dogecoin"))) == (
        "currency-not-allowed"
    )
    assert error(rich.post("/v1/create_order", json=spot_body(sid, "0.0000009"))) == (
        "too_low_price"
    )
    assert (
        error(rich.post("/v1/create_order", json=order_body(sid, required_price=0.00002)))
        == "price_changed"
    )
    ok(rich.post("/v1/create_order", json=order_body(sid, required_price=0.00001)))


def test_not_enough_balance_needs_creation_fee_plus_runway(market: Market) -> None:
    # price 0.24/day → one hour of runway is 0.01; creation fee 0.0000003
    sid = market.server(market.user(), on_demand="0.24", spot="0.1")
    just_short = market.client(market.user(bitcoin="0.0100002"))
    assert error(just_short.post("/v1/create_order", json=order_body(sid))) == (
        "not_enough_balance"
    )
    enough = market.client(market.user(bitcoin="0.0100003"))
    ok(enough.post("/v1/create_order", json=order_body(sid)))


def test_nothing_is_written_when_create_order_fails(market: Market) -> None:
    sid = market.server(market.user())
    poor_token = market.user(bitcoin="0.0000001")
    poor = market.client(poor_token)
    with market.db.read() as conn:
        before = (
            conn.execute(select(func.count()).select_from(orders)).scalar(),
            conn.execute(select(func.count()).select_from(transfers)).scalar(),
        )
    assert error(poor.post("/v1/create_order", json=order_body(sid))) == "not_enough_balance"
    with market.db.read() as conn:
        after = (
            conn.execute(select(func.count()).select_from(orders)).scalar(),
            conn.execute(select(func.count()).select_from(transfers)).scalar(),
        )
    assert before == after
    assert balance(market, poor_token) == 0.0000001


def test_spot_highest_bid_is_active_ties_go_to_the_earliest(market: Market) -> None:
    sid = market.server(market.user())
    tokens = [market.user(bitcoin="0.01") for _ in range(3)]
    a, b, c = (market.client(t) for t in tokens)
    oa = ok(a.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    ob = ok(b.post("/v1/create_order", json=spot_body(sid, "0.000003")))["order_id"]
    oc = ok(c.post("/v1/create_order", json=spot_body(sid, "0.000003")))["order_id"]
    offers = {o["offer_id"]: o for o in book(market, sid, tokens[0])}
    assert offers[ob]["active"] and not offers[oa]["active"] and not offers[oc]["active"]
    assert offers[oa]["my"] and not offers[ob]["my"]
    assert offers[oa]["bid"] == 0.000002
    assert offers[oa]["currency"] == "bitcoin"
    # the active bid leaves: the tie goes to the earliest remaining highest bid (c over a)
    ok(b.post("/v1/cancel_order", json={"id": ob}))
    offers = {o["offer_id"]: o for o in book(market, sid)}
    assert offers[oc]["active"] and not offers[oa]["active"]
    # a raises above c: a becomes active at once
    ok(a.post("/v1/set_spot_price", json={"order_id": oa, "desired_price": 0.000004}))
    offers = {o["offer_id"]: o for o in book(market, sid)}
    assert offers[oa]["active"] and not offers[oc]["active"]


def test_one_spot_order_per_user_per_server(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    assert error(c.post("/v1/create_order", json=spot_body(sid, "0.000003"))) == (
        "you_already_have_spot_order"
    )
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    ok(c.post("/v1/create_order", json=spot_body(sid, "0.000003")))


def test_on_demand_preempts_spot_which_comes_back_after(market: Market) -> None:
    sid = market.server(market.user())
    spotter = market.client(market.user(bitcoin="0.01"))
    od = market.client(market.user(bitcoin="0.01"))
    offer = ok(spotter.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    assert book(market, sid)[0]["active"] is True
    order = ok(od.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert book(market, sid)[0]["active"] is False  # preempted, still in the book
    market_view = ok(market.client().get("/v1/marketplace"))["servers"][0]
    assert market_view["rented"] is True
    ok(od.post("/v1/cancel_order", json={"id": order}))
    assert book(market, sid)[0] == {
        "offer_id": offer,
        "bid": 0.000002,
        "active": True,
        "my": False,
        "currency": "bitcoin",
    }


def test_set_spot_price_rules(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    token = market.user(bitcoin="0.01")
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0000042")))["order_id"]

    def bid(price: float) -> dict[str, Any]:
        body: dict[str, Any] = c.post(
            "/v1/set_spot_price", json={"order_id": oid, "desired_price": price}
        ).json()
        return body

    # the seed's sequence: too big a step, a valid step, then the 600 s rule
    assert bid(0.000002) == {"error": "exceeded_max_step", "max_step": 0.0000032, "code": 6}
    assert bid(0.0000032) == {"code": 0}
    market.clock.advance(87)
    assert bid(0.0000022) == {
        "error": "can_lower_every_600_seconds",
        "time_to_lowering": 513,
        "code": 6,
    }
    # raising is always allowed and does not reset the lowering window
    assert bid(0.000005) == {"code": 0}
    market.clock.advance(513)
    assert bid(0.0000009) == {"error": "amount_too_low", "min_price": 0.000001, "code": 6}
    assert bid(0.000004) == {"code": 0}
    # foreign, unknown and on-demand orders do not exist for set_spot_price
    other = market.client(market.user(bitcoin="0.01"))
    assert error(other.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 1})) == (
        "order_dont_exist"
    )
    assert error(c.post("/v1/set_spot_price", json={"order_id": 999, "desired_price": 1})) == (
        "order_dont_exist"
    )
    od = ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), "x"))))
    assert (
        error(c.post("/v1/set_spot_price", json={"order_id": od["order_id"], "desired_price": 1}))
        == "order_dont_exist"
    )


def test_lowering_never_goes_below_the_minimum_in_one_step(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0000015")))["order_id"]
    r = c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.0000001})
    assert r.json()["error"] == "amount_too_low"
    ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.000001}))


def test_cancel_order_rules(market: Market) -> None:
    sid = market.server(market.user())
    owner = market.client(market.user(bitcoin="0.01"))
    other = market.client(market.user(bitcoin="0.01"))
    oid = ok(owner.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert error(other.post("/v1/cancel_order", json={"id": oid})) == "you_dont_own_this_order"
    assert error(owner.post("/v1/cancel_order", json={"id": 4242})) == "order_dont_exist"
    assert error(owner.post("/v1/cancel_order", json={"id": oid, "issue": "x" * 2049})) == (
        "issue_description_too_long"
    )
    ok(owner.post("/v1/cancel_order", json={"id": oid, "issue": "GPU #1 过热并降频" + "x" * 2030}))
    assert error(owner.post("/v1/cancel_order", json={"id": oid})) == "order_not_active"
    with market.db.read() as conn:
        issue = conn.execute(select(orders.c.issue).where(orders.c.id == oid)).scalar_one()
    assert issue.startswith("GPU #1 过热并降频")
    # ended orders leave my_orders and come back with return_completed=true
    assert ok(owner.get("/v1/my_orders"))["orders"] == []
    done = ok(owner.get("/v1/my_orders?return_completed=true"))["orders"]
    assert [(o["id"], o["expired"]) for o in done] == [(oid, True)]
    assert ok(owner.get("/v1/my_orders?return_completed=false"))["orders"] == []
    assert owner.get("/v1/my_orders?return_completed=maybe").json()["code"] == 2


def test_order_expires_at_ct_plus_mrl(market: Market) -> None:
    sid = market.server(market.user(), mrl=2)
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(2 * 3600 - 1)
    assert [o["id"] for o in ok(c.get("/v1/my_orders"))["orders"]] == [oid]
    market.advance(1)
    assert ok(c.get("/v1/my_orders"))["orders"] == []
    ended = ok(c.get("/v1/my_orders?return_completed=true"))["orders"][0]
    assert ended["expired"] is True
    assert ended["spend"] == pytest.approx(0.00001 * 2 / 24, abs=1e-9)


def test_spot_billing_only_while_active(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    low_token = market.user(bitcoin="0.01")
    low = market.client(low_token)
    high = market.client(market.user(bitcoin="0.01"))
    lo = ok(low.post("/v1/create_order", json=spot_body(sid, "0.0000864")))["order_id"]
    market.advance(1000)  # low runs alone: 0.0000864/day = 1 unit per second
    hi = ok(high.post("/v1/create_order", json=spot_body(sid, "0.0001728")))["order_id"]
    market.advance(5000)  # outbid: not billed
    ok(high.post("/v1/cancel_order", json={"id": hi}))
    market.advance(500)  # active again
    spends = {o["id"]: o["spend"] for o in ok(low.get("/v1/my_orders"))["orders"]}
    assert spends[lo] == pytest.approx(1500e-9, abs=1e-15)


def test_spend_equals_transfers_and_host_gets_price_minus_fee(market: Market) -> None:
    host_token = market.user()
    sid = market.server(host_token, on_demand="0.00001")
    renter_token = market.user(bitcoin="0.001")
    c = market.client(renter_token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    for step in (1, 7, 3600, 13, 86400 - 3621):  # one day, split unevenly
        market.advance(step)
    order = ok(c.get("/v1/my_orders"))["orders"][0]
    assert order["spend"] == 0.00001
    with market.db.read() as conn:
        by_order = booked_by_order(conn)
        booked = by_order.get((oid, "spend"), 0) + by_order.get((oid, "fee"), 0)
        host_wallet = conn.execute(
            select(accounts.c.balance).where(
                accounts.c.key == f"wallet:bitcoin:{market.user_id(host_token)}"
            )
        ).scalar_one()
    assert booked == 10000  # units: exactly the day's price
    assert host_wallet == 10000 - 500  # minus the 5 % fee
    assert balance(market, renter_token) == pytest.approx(0.001 - 0.0000003 - 0.00001, abs=1e-15)
