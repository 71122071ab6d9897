from support import Market, ok, order_body


def test_rent_on_demand(market: Market) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid = market.server(host)
    c = market.client(renter)
    body = ok(c.post("/v1/create_order", json=order_body(sid)))
    assert body["order_id"] > 0
    orders = ok(c.get("/v1/my_orders"))["orders"]
    assert [o["id"] for o in orders] == [body["order_id"]]
