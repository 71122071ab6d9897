"""Standing orders (SPEC §8) through the API, on both databases: placed, listed, cancelled, and
filled by the engine in placement order inside the transaction that makes a server available,
before any direct create_order can see the server; each fill an ordinary order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import select, update

from openclore.store.schema import orders, servers
from test_api_keys import make_key

from support import Market, error, ok, order_body

WANT = {
    "query": {"gpu": "3090"},
    "max_price_per_day": 0.00002,
    "currency": "bitcoin",
    "image": "cloreai/ubuntu20.04-jupyter",
    "ports": {"22": "tcp", "8888": "http"},
}


def place(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    standing: dict[str, Any] = ok(client.post("/v1/create_standing_order", json={**WANT, **extra}))[
        "standing_order"
    ]
    return standing


def mine(client: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ok(client.get("/v1/standing_orders"))["standing_orders"]
    return found


def offline_server(market: Market, host: str, name: str, **kw: Any) -> int:
    return market.server(host, name, online=False, **kw)


def bring_online(market: Market, *server_ids: int) -> None:
    """The servers come online in one transaction, as an agent's heartbeat does."""
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id.in_(server_ids)).values(online=True))


def orders_on(market: Market, server_id: int) -> list[tuple[int, int]]:
    """(order id, user id) of the live orders on a server."""
    with market.db.read() as conn:
        rows = conn.execute(
            select(orders.c.id, orders.c.user_id)
            .where(orders.c.server_id == server_id, orders.c.expired.is_(False))
            .order_by(orders.c.id)
        )
        return [(r.id, r.user_id) for r in rows]


def test_two_standing_orders_fill_in_placement_order_before_a_direct_order(
    market: Market,
) -> None:
    host = market.user()
    a = offline_server(market, host, "a", on_demand="0.00001")
    b = offline_server(market, host, "b", on_demand="0.000015")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    carol = market.client(market.user(bitcoin="0.01"))
    first = place(alice)
    market.clock.advance(1)
    second = place(bob)
    assert first["state"] == second["state"] == "open" and first["order_ids"] == []
    assert first["max_price_per_day"] == 0.00002 and first["type"] == "on-demand"

    bring_online(market, a, b)
    # the earlier one got the cheaper server, the later one the other; nobody else got either
    (alice_so,) = mine(alice)
    (bob_so,) = mine(bob)
    assert alice_so["state"] == bob_so["state"] == "filled"
    assert alice_so["filled"] == bob_so["filled"] == 1
    (alice_order,) = alice_so["order_ids"]
    (bob_order,) = bob_so["order_ids"]
    assert alice_order < bob_order
    assert orders_on(market, a) == [(alice_order, market.user_id(alice.headers["auth"]))]
    assert orders_on(market, b) == [(bob_order, market.user_id(bob.headers["auth"]))]
    assert error(carol.post("/v1/create_order", json=order_body(a))) == "server-already-rented"
    assert error(carol.post("/v1/create_order", json=order_body(b))) == "server-already-rented"


def test_a_freed_server_goes_to_the_standing_order_in_the_cancel_transaction(
    market: Market,
) -> None:
    host = market.user()
    a = market.server(host, "a")
    dave = market.client(market.user(bitcoin="0.01"))
    alice = market.client(market.user(bitcoin="0.01"))
    carol = market.client(market.user(bitcoin="0.01"))
    dave_order = ok(dave.post("/v1/create_order", json=order_body(a)))["order_id"]
    standing = place(alice)
    assert standing["state"] == "open"  # the server is taken
    ok(dave.post("/v1/cancel_order", json={"id": dave_order}))
    assert error(carol.post("/v1/create_order", json=order_body(a))) == "server-already-rented"
    (filled,) = mine(alice)
    assert filled["state"] == "filled"
    assert orders_on(market, a) == [(filled["order_ids"][0], market.user_id(alice.headers["auth"]))]


def test_a_standing_order_fills_at_once_when_a_server_is_free(market: Market) -> None:
    host = market.user()
    a = market.server(host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    assert standing["state"] == "filled" and len(standing["order_ids"]) == 1
    assert orders_on(market, a)[0][0] == standing["order_ids"][0]


def test_a_cancelled_standing_order_never_fills(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    first = place(alice)
    market.clock.advance(1)
    place(bob)
    cancelled = ok(alice.post("/v1/cancel_standing_order", json={"id": first["id"]}))
    assert cancelled["standing_order"]["state"] == "cancelled"
    assert error(alice.post("/v1/cancel_standing_order", json={"id": first["id"]})) == (
        "standing_order_not_open"
    )
    assert error(bob.post("/v1/cancel_standing_order", json={"id": first["id"]})) == (
        "standing_order_dont_exist"
    )
    bring_online(market, a)
    (alice_so,) = mine(alice)
    assert alice_so["state"] == "cancelled" and alice_so["order_ids"] == []
    assert orders_on(market, a) == [
        (mine(bob)[0]["order_ids"][0], market.user_id(bob.headers["auth"]))
    ]


def test_count_fills_several_servers_and_stops_there(market: Market) -> None:
    host = market.user()
    ids = [offline_server(market, host, f"s{i}") for i in range(3)]
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice, count=2)
    bring_online(market, *ids)
    (filled,) = mine(alice)
    assert filled["state"] == "filled" and filled["filled"] == 2
    assert len(filled["order_ids"]) == 2
    taken = [s for s in ids if orders_on(market, s)]
    assert taken == ids[:2]  # the same price: lowest id first
    assert standing["count"] == 2


def test_the_query_and_the_price_decide_what_fills(market: Market) -> None:
    host = market.user()
    dear = offline_server(market, host, "dear", on_demand="0.0001")
    other = offline_server(
        market, host, "other", specs={"gpu": "1x NVIDIA A100", "gpuram": 80, "net": {"cc": "US"}}
    )
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice, query={"gpu": "rtx 3090", "country": "cz"})  # other is in the US
    bring_online(market, dear, other)
    (so,) = mine(alice)
    assert so["state"] == "open" and so["order_ids"] == []
    assert orders_on(market, dear) == orders_on(market, other) == []


def test_fills_are_ordinary_orders_billed_with_events(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    bring_online(market, a)
    (order_id,) = mine(alice)[0]["order_ids"]
    (order,) = ok(alice.get("/v1/my_orders"))["orders"]
    assert order["id"] == order_id and order["si"] == a and order["image"] == WANT["image"]
    assert order["price"] == 0.00001
    market.advance(3600)
    (order,) = ok(alice.get("/v1/my_orders"))["orders"]
    assert order["spend"] > 0
    events = ok(alice.get("/v1/events", params={"after": 0}))["events"]
    types = [e["type"] for e in events]
    assert "order.created" in types and "standing_order.filled" in types
    filled = next(e for e in events if e["type"] == "standing_order.filled")["data"]
    assert filled["standing_order_id"] == standing["id"] and filled["order_id"] == order_id
    assert filled["server_id"] == a and filled["filled"] == 1 and filled["count"] == 1


def test_expired_and_unfundable_standing_orders_are_skipped_with_a_reason(
    market: Market,
) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    carol = market.client(market.user(bitcoin="0.01"))
    place(alice, expires_at=market.now() + 60)
    place(bob)
    place(carol)
    market.clock.advance(120)
    assert mine(alice)[0]["state"] == "expired"  # shown so before the engine records it
    market.reconfigure(max_active_orders=0)  # nobody may hold another order now
    bring_online(market, a)
    assert mine(alice)[0]["state"] == "expired"
    (bob_so,) = mine(bob)
    assert bob_so["state"] == "open" and bob_so["last_error"] == "order_limit_reached"
    market.reconfigure()
    with market.db.write() as conn:  # any change to what the listing shows: matched again
        conn.execute(update(servers).where(servers.c.id == a).values(reliability=0.99))
    (bob_so,) = mine(bob)
    assert bob_so["state"] == "filled" and bob_so["last_error"] is None
    assert mine(carol)[0]["state"] == "open"


def test_bad_standing_orders_are_refused_with_clore_errors(market: Market) -> None:
    alice = market.client(market.user(bitcoin="0.01"))
    poor = market.client(market.user())

    def code2(**body: Any) -> str:
        answer = alice.post("/v1/create_standing_order", json={**WANT, **body}).json()
        assert answer["code"] == 2, answer
        return str(answer["error"])

    assert "query" in code2(query={"nonsense": 1})
    assert "max_price" in code2(query={"max_price": "cheap"})
    assert "max_price_per_day" in code2(max_price_per_day="0.1")
    assert "max_price_per_day" in code2(max_price_per_day=0)
    assert "type" in code2(type="forever")
    assert "count" in code2(count=0)
    assert "image" in code2(image="not an image!")
    assert "ports" in code2(ports={"22": "udp"})
    assert "expires_at" in code2(expires_at=market.now() - 1)
    assert "image" in code2(image=None)
    answer = alice.post("/v1/create_standing_order", json={**WANT, "currency": "dogecoin"})
    assert answer.json()["code"] == 6 and answer.json()["error"] == "currency-not-allowed"
    assert error(poor.post("/v1/create_standing_order", json=WANT)) == "not_enough_balance"
    assert error(alice.post("/v1/create_standing_order", json={**WANT, "template_id": 999})) == (
        "template_dont_exist"
    )
    assert error(alice.post("/v1/cancel_standing_order", json={"id": 12345})) == (
        "standing_order_dont_exist"
    )
    market.reconfigure(max_active_orders=0)
    assert error(alice.post("/v1/create_standing_order", json=WANT)) == "order_limit_reached"
    assert mine(alice) == []


def test_concurrent_freeing_and_direct_orders_never_beat_a_standing_order(
    market: Market,
) -> None:
    """Real concurrent requests: two renters free their servers while others hammer
    create_order on them; the two standing orders placed before get one server each, and no
    direct order ever gets either."""
    host = market.user()
    a = market.server(host, "a")
    b = market.server(host, "b")
    dave = market.client(market.user(bitcoin="0.01"))
    erin = market.client(market.user(bitcoin="0.01"))
    held = [
        ok(dave.post("/v1/create_order", json=order_body(a)))["order_id"],
        ok(erin.post("/v1/create_order", json=order_body(b)))["order_id"],
    ]
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    place(alice)
    market.clock.advance(1)
    place(bob)
    bots = [market.client(market.user(bitcoin="0.01")) for _ in range(4)]
    start = threading.Barrier(6)

    def free(client: httpx.Client, order_id: int) -> None:
        start.wait()
        ok(client.post("/v1/cancel_order", json={"id": order_id}))

    def bot(client: httpx.Client) -> list[int]:
        start.wait()
        won = []
        for _ in range(5):
            for server_id in (a, b):
                answer = client.post("/v1/create_order", json=order_body(server_id)).json()
                if answer["code"] == 0:
                    won.append(server_id)
                else:
                    assert answer["error"] == "server-already-rented", answer
        return won

    with ThreadPoolExecutor(6) as pool:
        freed = [pool.submit(free, dave, held[0]), pool.submit(free, erin, held[1])]
        bots_won = [pool.submit(bot, c) for c in bots]
        for f in freed:
            f.result()
        assert [f.result() for f in bots_won] == [[]] * 4
    (alice_so,) = mine(alice)
    (bob_so,) = mine(bob)
    assert alice_so["state"] == bob_so["state"] == "filled"
    got = {orders_on(market, a)[0][1], orders_on(market, b)[0][1]}
    assert got == {market.user_id(alice.headers["auth"]), market.user_id(bob.headers["auth"])}


def test_standing_orders_follow_the_reference_model(market: Market) -> None:
    """Seeded random steps (standing orders placed and cancelled, servers coming online, direct
    orders, rentals ending) through the API; after each, who holds each server and each standing
    order's state are what the reference model (tests/market_model.py) says."""
    import random

    from openclore.domain.money import to_units

    from market_model import StandingBook

    rng = random.Random(25)
    host = market.user()
    prices = ["0.00001", "0.000012", "0.000015", "0.00002"]
    model = StandingBook()
    ids = []
    for i in range(6):
        price = rng.choice(prices)
        sid = offline_server(market, host, f"s{i}", on_demand=price)
        model.prices[sid] = to_units(price)
        ids.append(sid)
    tokens = [market.user(bitcoin="0.01") for _ in range(4)]
    renters = [market.client(t) for t in tokens]
    uid = {market.user_id(t): i for i, t in enumerate(tokens)}
    placed: list[tuple[int, int]] = []  # (standing id, renter index)
    for _ in range(40):
        step = rng.choice(["place", "place", "cancel", "online", "direct", "end"])
        if step == "place":
            who = rng.randrange(3)  # renters 0-2 place standing orders, 3 orders directly
            price, count = rng.choice(prices), rng.choice([1, 1, 2])
            so = place(renters[who], max_price_per_day=float(price), count=count)
            placed.append((so["id"], who))
            model.place(so["id"], who, to_units(price), count)
        elif step == "cancel" and placed:
            standing_id, who = rng.choice(placed)
            answer = renters[who].post("/v1/cancel_standing_order", json={"id": standing_id})
            assert (answer.json()["code"] == 0) == model.cancel(standing_id)
        elif step == "online":
            batch = [s for s in ids if s not in model.online and rng.random() < 0.5]
            bring_online(market, *batch)
            model.come_online(batch)
        elif step == "direct":
            server = rng.choice(ids)
            answer = renters[3].post("/v1/create_order", json=order_body(server)).json()
            assert (answer["code"] == 0) == model.direct(server, 3), answer
        elif step == "end" and model.holder:
            server = rng.choice(sorted(model.holder))
            ((order_id, user_id),) = orders_on(market, server)
            ok(renters[uid[user_id]].post("/v1/cancel_order", json={"id": order_id}))
            model.end(server)
        held = {s: uid[live[0][1]] for s in ids if (live := orders_on(market, s))}
        assert held == model.holder, step
        states = {so["id"]: (so["state"], so["filled"]) for r in renters[:3] for so in mine(r)}
        assert states == {so.id: (so.state, so.filled) for so in model.book}, step
    # the run went through the interesting cases
    assert sum(so.filled for so in model.book) >= 3
    assert {so.state for so in model.book} >= {"open", "filled"}


def test_a_per_gpu_standing_order_takes_gpus_of_one_server(market: Market) -> None:
    from test_partial_rentals import four_gpu_server

    host = market.user()
    quad = four_gpu_server(market, host)  # 0.0001 BTC per GPU per day
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == quad).values(online=False))
    alice = market.client(market.user(bitcoin="0.1"))
    bob = market.client(market.user(bitcoin="0.1"))
    query = {"gpu": "4090"}
    place(alice, query=query, gpu_count=1, count=2, max_price_per_day=0.0001)
    place(bob, query=query, gpu_count=2, max_price_per_day=0.0002, type="spot")
    bring_online(market, quad)
    (alice_so,) = mine(alice)
    (bob_so,) = mine(bob)
    assert alice_so["state"] == "filled" and len(alice_so["order_ids"]) == 2
    assert bob_so["state"] == "filled" and len(bob_so["order_ids"]) == 1
    held = {o["id"]: o for o in ok(alice.get("/v1/my_orders"))["orders"]}
    assert sorted(len(held[i]["gpus"]) for i in alice_so["order_ids"]) == [1, 1]
    assert all(held[i]["price"] == 0.0001 for i in alice_so["order_ids"])
    (bid,) = ok(bob.get("/v1/my_orders"))["orders"]
    assert bid["spot"] and bid["gpu_count"] == 2 and bid["price"] == 0.00002  # the minimum
    assert bid["running"] and len(bid["gpus"]) == 2


def test_with_no_open_standing_order_a_listing_change_pays_one_query(market: Market) -> None:
    from sqlalchemy import event

    host = market.user()
    a = offline_server(market, host, "a")
    seen: list[str] = []

    def watch(*args: Any) -> None:
        if "standing_orders" in args[2]:
            seen.append(args[2])

    event.listen(market.db.engine, "before_cursor_execute", watch)
    try:
        bring_online(market, a)
    finally:
        event.remove(market.db.engine, "before_cursor_execute", watch)
    (query,) = seen
    assert query.lstrip().upper().startswith("SELECT")


def test_a_failing_match_does_not_refuse_the_change_that_ran_it(
    market: Market, monkeypatch: Any
) -> None:
    from openclore.market import standing

    def broken(*_args: Any) -> list[tuple[int, int]]:
        raise RuntimeError("a bug in the match")

    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice)
    monkeypatch.setattr(standing, "_candidates", broken)
    bring_online(market, a)
    with market.db.read() as conn:
        assert conn.execute(select(servers.c.online).where(servers.c.id == a)).scalar() is True
    assert mine(alice)[0]["state"] == "open"
    monkeypatch.undo()
    with market.db.write() as conn:  # the next change matches again
        conn.execute(update(servers).where(servers.c.id == a).values(reliability=0.9))
    assert mine(alice)[0]["state"] == "filled"


def test_a_host_lowering_the_price_fills_in_that_request(market: Market) -> None:
    host = market.user()
    market.server(host, "a", on_demand="0.0001")
    alice = market.client(market.user(bitcoin="0.01"))
    assert place(alice)["state"] == "open"  # too dear
    body = {"name": "a", "on_demand": 0.000015, "spot": 0.000001}
    ok(market.client(host).post("/v1/set_server_settings", json=body))
    (so,) = mine(alice)
    assert so["state"] == "filled"
    (order,) = ok(alice.get("/v1/my_orders"))["orders"]
    assert order["price"] == 0.000015


def test_a_spot_standing_order_waits_for_free_gpus_and_bids_the_minimum(
    market: Market,
) -> None:
    from support import spot_body

    host = market.user()
    a = market.server(host, "a", spot="0.000002")
    bob = market.client(market.user(bitcoin="0.01"))
    alice = market.client(market.user(bitcoin="0.01"))
    bid = ok(bob.post("/v1/create_order", json=spot_body(a, "0.000005")))["order_id"]
    assert place(alice, type="spot")["state"] == "open"  # bob's bid holds the server
    ok(bob.post("/v1/cancel_order", json={"id": bid}))
    (so,) = mine(alice)
    assert so["state"] == "filled" and so["type"] == "spot"
    (order,) = ok(alice.get("/v1/my_orders"))["orders"]
    assert order["spot"] and order["price"] == 0.000002 and order["running"]


def test_an_on_demand_standing_order_preempts_a_spot_bid_like_create_order(
    market: Market,
) -> None:
    from support import spot_body

    host = market.user()
    a = market.server(host, "a")
    bob = market.client(market.user(bitcoin="0.01"))
    alice = market.client(market.user(bitcoin="0.01"))
    ok(bob.post("/v1/create_order", json=spot_body(a, "0.000005")))
    assert place(alice)["state"] == "filled"  # on demand takes the server from a bid (SPEC §4)
    (bid,) = ok(bob.get("/v1/my_orders"))["orders"]
    assert not bid["running"]


def test_the_tick_ending_an_order_fills_a_standing_order(market: Market) -> None:
    host = market.user()
    a = market.server(host, "a", mrl=1)
    dave = market.client(market.user(bitcoin="0.01"))
    alice = market.client(market.user(bitcoin="0.01"))
    ok(dave.post("/v1/create_order", json=order_body(a)))
    assert place(alice)["state"] == "open"
    market.advance(3600)  # dave's order reaches its max rental length: the tick ends it
    (so,) = mine(alice)
    assert so["state"] == "filled"
    assert orders_on(market, a) == [(so["order_ids"][0], market.user_id(alice.headers["auth"]))]


def test_a_standing_order_placed_with_a_limited_key_spends_within_its_limit(
    market: Market,
) -> None:
    """A standing order's fills act with the key it was placed with: they carry it, and the
    key's daily spend limit refuses a fill the limit cannot pay (SPEC §8)."""
    host = market.user()
    a = offline_server(market, host, "a", on_demand="0.00001")
    b = offline_server(market, host, "b", on_demand="0.00001")
    owner = market.client(market.user(bitcoin="0.01"))
    key, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.00001"})
    bot = market.client(secret)
    # more per day than the key may spend: refused at placement
    too_dear = bot.post("/v1/create_standing_order", json={**WANT, "max_price_per_day": 0.0001})
    assert too_dear.json()["error"] == "spend_limit_exceeded"
    standing = place(bot, count=2, max_price_per_day=0.00001)
    bring_online(market, a)
    (filled,) = mine(bot)
    (order_id,) = filled["order_ids"]
    order = next(o for o in ok(owner.get("/v1/my_orders"))["orders"] if o["id"] == order_id)
    assert order["api_key_id"] == key["id"]
    # the next market day, a day of rent at 0.00001 reaches the day's limit: the key's order
    # stops at that second, and the second server does not fill for the key
    market.advance(86400)
    bring_online(market, b)
    (after,) = mine(bot)
    assert after["id"] == standing["id"] and after["order_ids"] == [order_id]
    assert after["last_error"] == "spend_limit_reached"
    stopped = next(o for o in ok(owner.get("/v1/my_orders"))["orders"] if o["id"] == order_id)
    assert stopped["state"] == "stopped" and stopped["stop_reason"] == "spend_limit"
