"""Per-GPU rentals through the API (SPEC §8), on both databases: a host opts a multi-GPU server
in, renters take some of its GPUs on demand or by bidding per GPU, and each order is priced and
billed for its own slots. The allocation rule itself is pinned in tests/domain/test_slots.py."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from openclore.market.agents import desired_for
from openclore.protocol import DesiredContainer
from openclore.store.schema import servers

from support import Market, error, ok, order_body, spot_body

GPU = "NVIDIA GeForce RTX 4090"


def four_gpu_server(
    market: Market, host: str, *, partial: bool = True, min_gpus: int = 1, **prices: str
) -> int:
    """A 4-GPU server at 0.0004 BTC a day on demand (0.0001 per GPU), spot minimum 0.00004."""
    sid = market.server(
        host,
        "quad",
        on_demand=prices.get("on_demand", "0.0004"),
        spot=prices.get("spot", "0.00004"),
    )
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(gpu_array=[GPU] * 4))
    body: dict[str, Any] = {"name": "quad", "partial_gpu_rental": partial, "min_gpus": min_gpus}
    ok(market.client(host).post("/v1/set_server_settings", json=body))
    return sid


def orders_of(client: httpx.Client) -> dict[int, dict[str, Any]]:
    return {o["id"]: o for o in ok(client.post("/v1/my_orders", json={}))["orders"]}


def listed(market: Market, sid: int) -> dict[str, Any]:
    found = ok(market.client().get("/v1/marketplace"))["servers"]
    (server,) = [s for s in found if s["id"] == sid]
    return server


def test_four_renters_each_rent_one_gpu_and_pay_a_quarter(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host)
    assert listed(market, sid)["partial_gpu_rental"] == {
        "enabled": True,
        "min_gpus": 1,
        "free_indices": [0, 1, 2, 3],
        "price_per_gpu": {"on_demand": {"bitcoin": 0.0001}, "spot": {"bitcoin": 0.00001}},
    }
    renters = [market.client(market.user(bitcoin="1")) for _ in range(4)]
    ids = [
        ok(r.post("/v1/create_order", json=order_body(sid, gpu_count=1)))["order_id"]
        for r in renters
    ]
    held = []
    for renter, oid in zip(renters, ids, strict=True):
        order = orders_of(renter)[oid]
        assert order["running"] and order["price"] == 0.0001 and order["gpu_count"] == 1
        held.extend(order["gpus"])
    assert sorted(held) == [0, 1, 2, 3]
    server = listed(market, sid)
    assert server["rented"] is True and server["partial_gpu_rental"]["free_indices"] == []
    mine = ok(market.client(host).get("/v1/my_servers"))["servers"][0]
    assert sorted(mine["gpu_orders"].values()) == sorted(ids)
    # a fifth renter finds no GPU left on demand, and no whole server either
    late = market.client(market.user(bitcoin="1"))
    assert error(late.post("/v1/create_order", json=order_body(sid, gpu_count=1))) == (
        "server-already-rented"
    )
    assert error(late.post("/v1/create_order", json=order_body(sid))) == "server-already-rented"
    market.advance(86400)
    for renter, oid in zip(renters, ids, strict=True):
        assert orders_of(renter)[oid]["spend"] == 0.0001  # a quarter of the server's day


def test_an_on_demand_order_preempts_exactly_the_two_lowest_bids(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host)
    bidders = [market.client(market.user(bitcoin="1")) for _ in range(4)]
    bids = ["0.00005", "0.00002", "0.00004", "0.00001"]  # per day, for one GPU each
    ids = [
        ok(b.post("/v1/create_order", json=spot_body(sid, price, gpu_count=1)))["order_id"]
        for b, price in zip(bidders, bids, strict=True)
    ]
    assert all(orders_of(b)[oid]["running"] for b, oid in zip(bidders, ids, strict=True))
    renter = market.client(market.user(bitcoin="1"))
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, gpu_count=2)))["order_id"]
    mine = orders_of(renter)[oid]
    assert mine["running"] and mine["price"] == 0.0002 and len(mine["gpus"]) == 2
    running = {oid for b, oid in zip(bidders, ids, strict=True) if orders_of(b)[oid]["running"]}
    assert running == {ids[0], ids[2]}  # the two highest bids keep their GPUs
    held = [g for b, i in zip(bidders, ids, strict=True) for g in orders_of(b)[i]["gpus"]]
    assert sorted(held + mine["gpus"]) == [0, 1, 2, 3]
    offers = ok(market.client().get("/v1/spot_marketplace", params={"market": sid}))["market"]
    assert {o["offer_id"]: o["active"] for o in offers["offers"]} == {
        ids[0]: True,
        ids[2]: True,
        ids[1]: False,
        ids[3]: False,
    }
    # the on-demand order ends: the preempted bids run again, on the GPUs it freed
    ok(renter.post("/v1/cancel_order", json={"id": oid}))
    assert all(orders_of(b)[i]["running"] for b, i in zip(bidders, ids, strict=True))


def test_a_spot_bid_competes_per_gpu_against_the_minimum(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host)  # spot minimum 0.00004 a day: 0.00001 per GPU
    bidder = market.client(market.user(bitcoin="1"))
    refused = bidder.post("/v1/create_order", json=spot_body(sid, "0.000019", gpu_count=2))
    assert refused.json()["error"] == "too_low_price"
    assert refused.json()["min_price"] == 0.00002
    ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.00002", gpu_count=2)))


def test_whole_server_orders_and_a_server_rented_whole(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host, partial=False)
    renter = market.client(market.user(bitcoin="1"))
    assert error(renter.post("/v1/create_order", json=order_body(sid, gpu_count=1))) == (
        "partial_gpu_rental_off"
    )
    assert listed(market, sid)["partial_gpu_rental"]["enabled"] is False
    # every GPU, by count or by index, is the whole server
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, gpus=[3, 2, 1, 0])))["order_id"]
    order = orders_of(renter)[oid]
    assert order["gpus"] == [0, 1, 2, 3] and order["price"] == 0.0004
    assert listed(market, sid)["partial_gpu_rental"]["free_indices"] == []


def test_the_count_asked_for_is_checked(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host, min_gpus=2)
    renter = market.client(market.user(bitcoin="1"))
    body = renter.post("/v1/create_order", json=order_body(sid, gpu_count=1)).json()
    assert body == {
        "code": 6,
        "error": "gpu_count_out_of_range",
        "min_gpus": 2,
        "max_gpus": 4,
    }
    for bad in ({"gpu_count": 0}, {"gpus": [1, 1]}, {"gpus": []}, {"gpu_count": "2"}):
        assert renter.post("/v1/create_order", json=order_body(sid, **bad)).json()["code"] == 2
    assert renter.post("/v1/create_order", json=order_body(sid, gpus=[4, 0])).json()["code"] == 2
    mismatch = order_body(sid, gpu_count=3, gpus=[0, 1])
    assert renter.post("/v1/create_order", json=mismatch).json()["code"] == 2
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, gpus=[2, 3])))["order_id"]
    assert orders_of(renter)[oid]["gpus"] == [2, 3]
    other = market.client(market.user(bitcoin="1"))
    taken = other.post("/v1/create_order", json=order_body(sid, gpus=[1, 2]))
    assert error(taken) == "server-already-rented"
    ok(other.post("/v1/create_order", json=order_body(sid, gpus=[0, 1])))


def test_a_host_turns_partial_rental_on_only_for_a_multi_gpu_server(market: Market) -> None:
    host = market.user()
    market.server(host, "single")  # one GPU
    h = market.client(host)
    refused = h.post("/v1/set_server_settings", json={"name": "single", "partial_gpu_rental": True})
    assert refused.json()["code"] == 2
    sid = four_gpu_server(market, host)
    too_many = h.post("/v1/set_server_settings", json={"name": "quad", "min_gpus": 5})
    assert too_many.json()["code"] == 2
    config = ok(h.post("/v1/server_config", json={"server_name": "quad"}))["config"]
    assert config["partial_gpu_rental"] is True and config["min_gpus"] == 1
    assert config["id"] == sid


def test_the_sdk_and_the_cli_rent_some_gpus(market: Market, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app
    from openclore.client import Client, GpuCountOutOfRange

    host = market.user()
    sid = four_gpu_server(market, host, min_gpus=2)
    token = market.user(bitcoin="1")
    with Client(token, base_url=market.url, rate_limit=False) as client:
        server = next(s for s in client.marketplace().servers if s.id == sid)
        assert server.partial_gpu_rental is not None and server.partial_gpu_rental.enabled
        assert server.partial_gpu_rental.free_indices == [0, 1, 2, 3]
        with pytest.raises(GpuCountOutOfRange) as refused:
            client.create_order(sid, "busybox", gpu_count=1)
        assert (refused.value.min_gpus, refused.value.max_gpus) == (2, 4)
        order = client.create_order(sid, "busybox", gpu_count=2)
        assert order.gpu_count == 2 and order.price == Decimal("0.0002")
    env = {
        "OPENCLORE_URL": market.url,
        "OPENCLORE_API_KEY": market.user(bitcoin="1"),
        "OPENCLORE_CONFIG": str(tmp_path / "config.toml"),
        "COLUMNS": "120",
    }
    result = CliRunner().invoke(
        app, ["rent", str(sid), "--image", "busybox", "--gpus", "2", "--spot", "0.00003"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "(2 GPUs)" in result.stdout and "spot bid 0.00003" in result.stdout
    bad = CliRunner().invoke(app, ["rent", str(sid), "--image", "busybox", "--gpus", "0"], env=env)
    assert bad.exit_code == 2


def test_events_say_which_gpus_an_order_got_and_lost(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host)
    bidder_token = market.user(bitcoin="1")
    bidder = market.client(bidder_token)
    oid = ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.00001", gpus=[2])))["order_id"]
    renter = market.client(market.user(bitcoin="1"))
    ok(renter.post("/v1/create_order", json=order_body(sid, gpus=[1, 2])))
    events = ok(bidder.get("/v1/events", params={"after": 0}))["events"]
    mine = [(e["type"], e["data"]) for e in events if e["data"].get("order_id") == oid]
    kinds = [kind for kind, _ in mine]
    assert kinds == ["order.created", "order.running", "order.outbid"]
    assert mine[1][1]["gpus"] == [2]
    assert mine[2][1]["reason"] == "preempted" and mine[2][1]["gpus_lost"] == [2]


def test_the_demo_world_rents_two_multi_gpu_servers_per_gpu(market: Market) -> None:
    from openclore.market.demo import seed

    with market.db.write() as conn:
        world = seed(conn, market.settings, market.now())
    listing = ok(market.client().get("/v1/marketplace"))["servers"]
    partial = [s for s in listing if s["partial_gpu_rental"]["enabled"]]
    assert len(partial) == 2 and all(len(s["gpu_array"]) >= 2 for s in partial)
    renter = market.client(world.tokens[next(k for k in world.tokens if "renter" in k)])
    sid = partial[0]["id"]
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, gpu_count=1)))["order_id"]
    order = orders_of(renter)[oid]
    assert order["running"] and len(order["gpus"]) == 1 and order.get("simulated") is True


def test_a_bid_waiting_past_the_starvation_setting_keeps_lower_bids_off(market: Market) -> None:
    from openclore.engine.billing import STARVATION_KEY, publish_rules
    from openclore.store.db import get_meta

    publish_rules(market.db, 100)
    with market.db.read() as conn:
        assert get_meta(conn, STARVATION_KEY) == 100
    host = market.user()
    sid = four_gpu_server(market, host)
    holder = market.client(market.user(bitcoin="1"))
    ok(holder.post("/v1/create_order", json=order_body(sid, gpus=[0])))
    big = market.client(market.user(bitcoin="1"))  # all four GPUs at 0.00002 each: waits
    big_id = ok(big.post("/v1/create_order", json=spot_body(sid, "0.00008")))["order_id"]
    low = market.client(market.user(bitcoin="1"))  # two GPUs at 0.000015 each: runs meanwhile
    low_id = ok(low.post("/v1/create_order", json=spot_body(sid, "0.00003", gpu_count=2)))[
        "order_id"
    ]
    assert orders_of(low)[low_id]["running"] and not orders_of(big)[big_id]["running"]
    market.advance(60)
    assert orders_of(low)[low_id]["running"]  # not waited long enough yet
    market.advance(60)  # the big bid has waited 120 s > 100 s: the tick reserves its GPUs
    assert not orders_of(low)[low_id]["running"] and not orders_of(big)[big_id]["running"]
    assert listed(market, sid)["partial_gpu_rental"]["free_indices"] == [1, 2, 3]


def test_the_free_gpus_filter_counts_what_can_be_rented_now(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host, min_gpus=2)
    single = market.server(host, "single")
    anyone = market.client()

    def found(free: int) -> set[int]:
        body = ok(anyone.get("/v1/marketplace", params={"free_gpus": free}))
        return {s["id"] for s in body["servers"]}

    assert found(1) == {sid, single} and found(4) == {sid}
    renter = market.client(market.user(bitcoin="1"))
    ok(renter.post("/v1/create_order", json=order_body(sid, gpus=[0, 1])))
    ok(renter.post("/v1/create_order", json=order_body(single)))
    assert found(2) == {sid} and found(3) == set() and found(1) == {sid}
    other = market.client(market.user(bitcoin="1"))
    ok(other.post("/v1/create_order", json=order_body(sid, gpu_count=2)))
    assert found(1) == set()
    bad = anyone.get("/v1/marketplace", params={"free_gpus": "two"}).json()
    assert bad["code"] == 2


def test_the_agent_is_sent_every_running_order_on_its_own_gpus(market: Market) -> None:
    host = market.user()
    sid = four_gpu_server(market, host)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(bg_image="miner:1"))

    def desired() -> list[DesiredContainer]:
        with market.db.read() as conn:
            found = desired_for(conn, sid)
        assert found is not None
        return found

    (background,) = desired()
    assert background.kind == "background" and background.gpus is None
    assert background.share is None
    renters = [market.client(market.user(bitcoin="1")) for _ in range(2)]
    one = ok(renters[0].post("/v1/create_order", json=order_body(sid, gpus=[3])))["order_id"]
    two = ok(renters[1].post("/v1/create_order", json=order_body(sid, gpu_count=2)))["order_id"]
    first, second = desired()  # by order id; no background job while any order runs
    assert (first.order_id, first.gpus, first.share) == (one, [3], (1, 4))
    assert (second.order_id, second.gpus, second.share) == (two, [0, 1], (2, 4))
    assert second.gpus == orders_of(renters[1])[two]["gpus"]
    # what the agent receives over the wire is the same
    assert [DesiredContainer.from_wire(d.to_wire()) for d in (first, second)] == [first, second]
    for renter, oid in zip(renters, (one, two), strict=True):
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
    # a whole-server order (by count or by every index) is the whole machine, as before
    whole = ok(renters[0].post("/v1/create_order", json=order_body(sid, gpu_count=4)))
    (container,) = desired()
    assert container.order_id == whole["order_id"]
    assert container.gpus is None and container.share is None


def test_a_server_whose_agent_cannot_keep_rentals_apart_is_rented_whole(market: Market) -> None:
    """An agent from before per-GPU rentals would give every rental every GPU: its server is
    rented whole until the agent is updated."""
    host = market.user()
    sid = four_gpu_server(market, host)
    with market.db.write() as conn:  # a real agent that named protocol 1 in its hello
        conn.execute(
            update(servers).where(servers.c.id == sid).values(simulated=False, agent_protocol=1)
        )
    h = market.client(host)
    refused = h.post("/v1/set_server_settings", json={"name": "quad", "partial_gpu_rental": True})
    assert refused.json()["code"] == 2 and "update it" in refused.json()["error"]
    assert listed(market, sid)["partial_gpu_rental"]["enabled"] is False
    renter = market.client(market.user(bitcoin="1"))
    assert error(renter.post("/v1/create_order", json=order_body(sid, gpu_count=1))) == (
        "partial_gpu_rental_off"
    )
    with market.db.write() as conn:  # the agent is updated
        conn.execute(update(servers).where(servers.c.id == sid).values(agent_protocol=2))
    assert listed(market, sid)["partial_gpu_rental"]["enabled"] is True
    ok(renter.post("/v1/create_order", json=order_body(sid, gpu_count=1)))
