"""Order rules (market/orders.py) that a mutant the rest of the suite let through changed
(scripts/mutation, docs/testing.md), each pinned with numbers written here; moved from the former
tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from openclore.ledger.addresses import deposit_address
from openclore.ledger.ledger import (
    wallet_id,
)
from openclore.store.schema import accounts, orders, servers, transfers

from support import Market, error, ok, order_body, spot_body

pytestmark = pytest.mark.origin("mutant")


def order_row(market: Market, oid: int) -> dict[str, object]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == oid)).one()._mapping)


def test_demo_servers_publish_ports_from_the_order_id(market: Market) -> None:
    """A simulated server publishes each tcp port at 10000 + (8 × order id) mod 50000 plus its
    place among the order's ports (sorted); the http port is named, not published."""
    c = market.client(market.user(bitcoin="1"))
    ports = {"9000": "tcp", "8888": "http", "22": "tcp"}
    first = market.server(market.user(), "a")
    oid = ok(c.post("/v1/create_order", json=order_body(first, ports=ports)))["order_id"]
    assert oid == 1
    second = market.server(market.user(), "b")
    with market.db.write() as conn:  # the next order id is 6,250: 8 × 6,250 is 50,000
        if market.backend == "sqlite":
            conn.execute(update(orders).where(orders.c.id == oid).values(id=6249))
        else:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('orders', 'id'), 6249)"))
    wrapped = ok(c.post("/v1/create_order", json=order_body(second, ports={"22": "tcp"})))
    assert wrapped["order_id"] == 6250
    shown = {o["id"]: o for o in ok(c.get("/v1/my_orders"))["orders"]}
    first_id = 6249 if market.backend == "sqlite" else 1
    assert shown[first_id]["tcp_ports"] == ["22:10008", "9000:10010"]
    assert shown[first_id]["http_port"] == "8888"
    assert shown[first_id]["state"] == "running"
    assert shown[6250]["tcp_ports"] == ["22:10000"]
    assert "http_port" not in shown[6250]
    assert shown[6250]["state"] == "running"
    # the server's own public hostnames, else the market's, else localhost
    assert shown[first_id]["pub_cluster"] == ["localhost"]
    named = market.server(market.user(), "named")
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == named).values(pub_cluster=["gpu.test"]))
    ok(c.post("/v1/create_order", json=order_body(named)))
    market.reconfigure(public_hostnames=["market.test"])
    ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), "unnamed"))))
    clusters = [o["pub_cluster"] for o in ok(c.get("/v1/my_orders"))["orders"][:2]]
    assert clusters == [["market.test"], ["gpu.test"]]


def test_an_issue_of_2048_characters_is_kept(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": oid, "issue": "y" * 2048}))
    assert order_row(market, oid)["issue"] == "y" * 2048


def test_an_ended_bid_cannot_be_repriced(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    for price in (0.00002, 0.000009):
        answer = c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": price})
        assert error(answer) == "order_dont_exist"


def test_asking_for_the_same_bid_changes_nothing(market: Market) -> None:
    """The same price again is neither a raise (it needs no runway) nor a lowering (it neither
    waits for the window nor opens one)."""
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="0.0001001"))  # creation fee 100 + an hour at 0.0024
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0024")))["order_id"]
    market.advance(60)  # less than an hour of 0.0024 is left now
    same = {"order_id": oid, "desired_price": 0.0024}
    assert c.post("/v1/set_spot_price", json=same).json() == {"code": 0}
    lower = {"order_id": oid, "desired_price": 0.0023999}
    assert c.post("/v1/set_spot_price", json=lower).json() == {"code": 0}
    market.clock.advance(10)
    again = {"order_id": oid, "desired_price": 0.0023999}
    assert c.post("/v1/set_spot_price", json=again).json() == {"code": 0}
    market.clock.advance(590)
    lower = {"order_id": oid, "desired_price": 0.0023998}
    assert c.post("/v1/set_spot_price", json=lower).json() == {"code": 0}
    assert order_row(market, oid)["last_lowered_at"] == market.now()


def test_my_orders_lists_the_newest_first(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    ids = [
        ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), n))))["order_id"]
        for n in ("a", "b", "c")
    ]
    assert [o["id"] for o in ok(c.get("/v1/my_orders"))["orders"]] == ids[::-1]


def test_an_order_keeps_and_shows_what_it_was_created_with(market: Market) -> None:
    decoy = {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 48, "net": {"cc": "DE"}}
    market.server(market.user(), "decoy", specs=decoy)  # the specs shown are the order's server's
    specs = {"gpu": "1x NVIDIA GeForce RTX 3090", "gpuram": 24, "net": {"cc": "CZ"}}
    sid = market.server(market.user(), spot="0.000001", specs=specs)
    c = market.client(market.user(bitcoin="1"))
    body = spot_body(
        sid,
        "0.00001",
        ports={"22": "tcp"},
        env={"A": "1"},
        command="sleep 1",
        jupyter_token="tok",
        ssh_key="ssh-ed25519 AAAA",
        ssh_password="pw",
    )
    created = ok(c.post("/v1/create_order", json=body))
    oid = created["order_id"]
    assert created["order"]["image"] == "cloreai/ubuntu20.04-jupyter"
    assert created["order"]["specs"]["gpu"] == "1x NVIDIA GeForce RTX 3090"
    assert created["order"]["spot"] is True and created["order"]["running"] is True
    assert created["order"]["p"] == 1 and created["order"]["state"] == "running"
    row = order_row(market, oid)
    assert (row["env"], row["ports"], row["command"]) == ({"A": "1"}, {"22": "tcp"}, "sleep 1")
    assert (row["jupyter_token"], row["ssh_key"], row["ssh_password"]) == (
        "tok",
        "ssh-ed25519 AAAA",
        "pw",
    )
    with market.db.write() as conn:
        conn.execute(update(orders).where(orders.c.id == oid).values(runtime_error="no GPU"))
    (shown,) = ok(c.get("/v1/my_orders"))["orders"]
    assert shown["image"] == "cloreai/ubuntu20.04-jupyter" and shown["p"] == 1
    assert shown["spot"] is True and shown["running"] is True
    assert shown["state"] == "running" and shown["error"] == "no GPU"
    assert shown["tcp_ports"] and shown["specs"]["gpuram"] == 24
    plain = ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), "p"))))
    assert order_row(market, plain["order_id"])["command"] == ""
    assert order_row(market, plain["order_id"])["jupyter_token"] is None


def test_refusals_say_the_price_and_the_limit(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.00001", spot="0.000002")
    c = market.client(market.user(bitcoin="1"))
    low = c.post("/v1/create_order", json=spot_body(sid, "0.0000019")).json()
    assert low == {"code": 6, "error": "too_low_price", "min_price": 0.000002}
    changed = c.post("/v1/create_order", json=order_body(sid, required_price=0.00002)).json()
    assert changed == {"code": 6, "error": "price_changed", "price": 0.00001}
    market.reconfigure(max_active_orders=1)
    ok(c.post("/v1/create_order", json=spot_body(sid, "0.000002")))  # exactly the minimum
    full = c.post("/v1/create_order", json=order_body(market.server(market.user(), "b"))).json()
    assert full == {"code": 6, "error": "order_limit_reached", "limit": 1}


def test_the_order_limit_counts_only_ones_own_live_orders(market: Market) -> None:
    market.reconfigure(max_active_orders=1)
    a = market.client(market.user(bitcoin="1"))
    b = market.client(market.user(bitcoin="1"))
    first = ok(a.post("/v1/create_order", json=order_body(market.server(market.user(), "x"))))
    ok(b.post("/v1/create_order", json=order_body(market.server(market.user(), "y"))))
    ok(a.post("/v1/cancel_order", json={"id": first["order_id"]}))
    ok(a.post("/v1/create_order", json=order_body(market.server(market.user(), "z"))))


def test_only_live_orders_on_the_same_server_block_a_new_one(market: Market) -> None:
    one = market.server(market.user(), "one", spot="0.000001")
    two = market.server(market.user(), "two", spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    bid = ok(c.post("/v1/create_order", json=spot_body(one, "0.00001")))["order_id"]
    ok(c.post("/v1/create_order", json=spot_body(two, "0.00001")))  # another server: fine
    ok(c.post("/v1/cancel_order", json={"id": bid}))
    ok(c.post("/v1/create_order", json=spot_body(one, "0.00001")))  # the old bid has ended
    d = market.client(market.user(bitcoin="1"))
    od = ok(d.post("/v1/create_order", json=order_body(one)))["order_id"]
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(two)))
    ok(d.post("/v1/cancel_order", json={"id": od}))
    ok(d.post("/v1/create_order", json=order_body(one)))  # the old on-demand order has ended


def test_one_unit_a_day_is_a_price_and_zero_is_not(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    cheap = market.server(market.user(), "cheap", on_demand="0.000000001", spot="0.000000001")
    ok(c.post("/v1/create_order", json=spot_body(cheap, "0.000000001")))
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(cheap)))
    free = market.server(market.user(), "free", on_demand="0", spot="0")
    for body in (spot_body(free, "0.00001"), order_body(free)):
        assert error(c.post("/v1/create_order", json=body)) == "currency-not-allowed"


def test_a_currency_without_fees_or_prices_configured(market: Market) -> None:
    """ETH, added to the currencies only: no creation fee, and a server that has no ETH price
    takes no ETH order; one that has gets it, and the host's new ETH wallet has its address."""
    host = market.user()
    newcomer = market.user()
    newcomer_id = market.user_id(newcomer)
    sid = market.server(host, "rig")
    plain = market.server(market.user(), "plain")
    market.reconfigure(currencies=["bitcoin", "CLORE-Blockchain", "USD-Blockchain", "ETH"])
    ok(
        market.client(host).post(
            "/v1/set_server_settings",
            json={"name": "rig", "ETH_on_demand": 0.0864, "ETH_spot": 0.001},
        )
    )
    c = market.client(market.user())
    ok(c.post("/sandbox/deposit", json={"currency": "ETH", "amount": 1}))
    for body in (order_body(plain, currency="ETH"), spot_body(plain, "0.01", currency="ETH")):
        assert error(c.post("/v1/create_order", json=body)) == "currency-not-allowed"
    od = ok(c.post("/v1/create_order", json=order_body(sid, currency="ETH")))
    assert od["order"]["creation_fee"] == 0
    ok(c.post("/v1/cancel_order", json={"id": od["order_id"]}))
    bid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.01", currency="ETH")))
    assert bid["order"]["creation_fee"] == 0
    market.advance(100)
    host_id = market.user_id(host)
    with market.db.read() as conn:
        wallet = wallet_id(conn, host_id, "ETH")
        assert wallet is not None
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address(market.settings.address_secret, host_id, "ETH")
    market.reconfigure(
        currencies=["bitcoin", "CLORE-Blockchain", "USD-Blockchain", "ETH"], runway_seconds=0
    )
    # a renter from before ETH, with no ETH wallet (and no runway needed): create_order makes it
    late = market.client(newcomer)
    ok(late.post("/v1/create_order", json=spot_body(sid, "0.02", currency="ETH")))
    with market.db.read() as conn:
        wallet = wallet_id(conn, newcomer_id, "ETH")
        assert wallet is not None
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address(market.settings.address_secret, newcomer_id, "ETH")


def test_a_taken_server_is_refused_before_the_balance_is_looked_at(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.00001", spot="0.000001")
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(sid)))
    broke = market.client(market.user())
    assert error(broke.post("/v1/create_order", json=order_body(sid))) == "server-already-rented"
    bidder = market.client(market.user(bitcoin="0.000001"))  # enough for one low bid only
    ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.000001")))
    again = bidder.post("/v1/create_order", json=spot_body(sid, "1"))
    assert error(again) == "you_already_have_spot_order"


def test_the_creation_fee_is_booked_for_the_order(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid, autossh_entrypoint=True)))["order_id"]
    assert order_row(market, oid)["autossh_entrypoint"] is True
    with market.db.read() as conn:
        fees = conn.execute(
            select(transfers.c.order_id, transfers.c.amount).where(
                transfers.c.kind == "creation_fee"
            )
        ).all()
    assert [tuple(f) for f in fees] == [(oid, 300)]
