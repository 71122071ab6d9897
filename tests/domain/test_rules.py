"""The market's rules, each pinned by numbers written here (never by the constants under test),
chosen so that a plausible mistake in the code changes an answer."""

from __future__ import annotations

from sqlalchemy import select, update

from openclore.api.ratelimit import RateLimiter
from openclore.engine.billing import lock_server, resolve_server
from openclore.store.schema import orders, servers

from support import Market, booked_by_order, error, ok, order_body, spot_body


def order_row(market: Market, oid: int) -> dict[str, object]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == oid)).one()._mapping)


def test_on_demand_beats_a_higher_spot_bid(market: Market) -> None:
    """On-demand holds the server whatever the bids: even a bid above the on-demand price."""
    sid = market.server(market.user(), on_demand="0.00001", spot="0.000001")
    bidder = market.client(market.user(bitcoin="1"))
    renter = market.client(market.user(bitcoin="1"))
    high = ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.5")))["order_id"]
    assert order_row(market, high)["running"] is True
    od = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert order_row(market, od)["running"] is True
    assert order_row(market, high)["running"] is False
    # the bid cannot win it back by bidding more while the on-demand order lives
    ok(bidder.post("/v1/set_spot_price", json={"order_id": high, "desired_price": 0.9}))
    assert order_row(market, od)["running"] is True
    assert order_row(market, high)["running"] is False
    ok(renter.post("/v1/cancel_order", json={"id": od}))
    assert order_row(market, high)["running"] is True


def test_every_lowering_opens_a_new_600_second_window(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]

    def lower(price: float) -> dict[str, object]:
        return dict(
            c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": price}).json()
        )

    assert lower(0.000009) == {"code": 0}  # the first lowering: no window yet
    market.clock.advance(600)
    assert lower(0.000008) == {"code": 0}  # exactly 600 s later: allowed
    market.clock.advance(100)
    assert lower(0.000007) == {
        "error": "can_lower_every_600_seconds",
        "time_to_lowering": 500,
        "code": 6,
    }
    market.clock.advance(499)
    assert lower(0.000007)["time_to_lowering"] == 1
    market.clock.advance(1)
    assert lower(0.000007) == {"code": 0}  # the third window, counted from the second lowering
    market.clock.advance(599)
    assert lower(0.000006)["time_to_lowering"] == 1


def test_a_second_request_half_a_second_later_is_refused(market: Market) -> None:
    """One request per second per key, with 0.1 s of jitter tolerated (times are injected)."""
    limiter = RateLimiter(market.db.engine, 0.1)
    t = 1_000_000.0
    assert limiter.hit("k", 1.0, t).allowed
    refused = limiter.hit("k", 1.0, t + 0.5)
    assert not refused.allowed and abs(refused.retry_after - 0.4) < 1e-6
    assert not limiter.hit("k", 1.0, t + 0.85).allowed
    assert limiter.hit("k", 1.0, t + 0.9).allowed  # 0.1 s early is jitter, not a burst
    assert not limiter.hit("k", 1.0, t + 1.0).allowed
    assert limiter.hit("k", 1.0, t + 1.9).allowed
    assert limiter.hit("other", 1.0, t + 1.9).allowed  # keys are independent


def test_billing_stops_15_seconds_after_the_last_heartbeat(market: Market) -> None:
    host = market.user()
    sid = market.server(host, on_demand="0.0864")  # 1,000 units a second
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == sid)
            .values(simulated=False, last_seen=market.now())
        )
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(40)  # silent since the order started, still within the agent timeout
    assert order_row(market, oid)["spend"] == 15 * 1000
    assert order_row(market, oid)["active_seconds"] == 15


def test_settling_twice_between_ticks_books_every_unit(market: Market) -> None:
    """Each settlement books the difference to the new totals: an order settled by requests
    several times between ticks has exactly its spend in the ledger, under distinct keys."""
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    # 12,345 units a day and up: no second costs a whole number of units
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.000012345")))["order_id"]
    for seconds, price in ((7000, 0.000012347), (11000, 0.000012349), (13000, 0.000012351)):
        market.clock.advance(seconds)
        ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": price}))
    market.advance(5000)
    row = order_row(market, oid)
    # floor(price × seconds / 86400) for each price the order ran at
    expected = (
        12345 * 7000 // 86400
        + 12347 * 11000 // 86400
        + 12349 * 13000 // 86400
        + 12351 * 5000 // 86400
    )
    assert expected == 1000 + 1571 + 1858 + 714
    assert row["spend"] == expected
    with market.db.read() as conn:
        booked = booked_by_order(conn)
    assert booked[(oid, "spend")] + booked[(oid, "fee")] == expected
    assert booked[(oid, "fee")] == expected * 250 // 10000


def test_the_fast_path_rounds_down(market: Market) -> None:
    """Ticks bill floor(price × seconds / 86400): 7 units a day for 86,399 s is 6 units."""
    sid = market.server(market.user(), on_demand="0.000000007", spot="0.000000001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(86399)
    assert order_row(market, oid)["spend"] == 6
    market.advance(1)
    assert order_row(market, oid)["spend"] == 7
    with market.db.write() as conn:  # and the exact path agrees
        lock_server(conn, sid)
        resolve_server(conn, sid, market.now() + 12343)
    assert order_row(market, oid)["spend"] == 7 * (86400 + 12343) // 86400


def test_a_new_bid_price_bills_only_the_seconds_after_it(market: Market) -> None:
    """Raising or lowering a bid never re-prices the time already run."""
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    market.advance(8640)  # a tenth of a day at 10,000 units a day: 1,000 units
    ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.0001}))
    market.advance(864)  # a hundredth of a day at 100,000 units a day: 1,000 units
    assert order_row(market, oid)["spend"] == 2000
    ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.000099}))
    market.advance(86400)
    assert order_row(market, oid)["spend"] == 2000 + 99000
    with market.db.read() as conn:
        booked = booked_by_order(conn)
    assert booked[(oid, "spend")] + booked[(oid, "fee")] == 101000


def test_a_raise_is_refused_without_the_runway_and_changes_nothing(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="0.0001001"))  # spot creation fee 0.0000001
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    # an hour of 0.0024/day is 0.0001: exactly what is left
    ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.0024}))
    assert (
        error(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.0024001}))
        == "not_enough_balance"
    )
    assert order_row(market, oid)["price"] == 2_400_000
