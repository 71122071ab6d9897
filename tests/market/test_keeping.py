"""Keeping work through the API (SPEC §8), on both databases: stop and start, a preempted spot
order that stops and resumes by itself, storage billed exactly, volumes, timers, restart, reset
and extend, and the errors of each."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select, update

from openclore.domain.money import spend_for, to_coins, to_units
from openclore.market.agents import desired_for
from openclore.market.demo import seed
from openclore.market.servers import remove_server
from openclore.market.volumes import apply_volume_reports
from openclore.protocol import VolumeStatus
from openclore.store.schema import orders, server_prices, servers

from support import Market, error, ok, order_body, spot_body

DAY = 86400


def storage_server(market: Market, host: str, *, gpus: int = 1, **settings: Any) -> int:
    """A server offering 50 GB per rental at 0.0002 BTC per GB per day (0.01 a day for a
    stopped order's disk), 0.0001 BTC a day on demand."""
    sid = market.server(host, "keeper", on_demand="0.0001", spot="0.00001", mrl=72 * 10)
    if gpus > 1:
        with market.db.write() as conn:
            conn.execute(
                update(servers).where(servers.c.id == sid).values(gpu_array=["RTX 4090"] * gpus)
            )
    body = {"name": "keeper", "disk_gb": 50, "storage_price": 0.0002, **settings}
    ok(market.client(host).post("/v1/set_server_settings", json=body))
    return sid


def order_of(client: httpx.Client, oid: int) -> dict[str, Any]:
    found = ok(client.post("/v1/my_orders?return_completed=true", json={}))["orders"]
    (order,) = [o for o in found if o["id"] == oid]
    return order


def btc(client: httpx.Client) -> Decimal:
    wallets = ok(client.get("/v1/wallets"))["wallets"]
    (wallet,) = [w for w in wallets if w["name"] == "bitcoin"]
    return Decimal(str(wallet["balance"]))


def event_types(client: httpx.Client) -> list[tuple[str, Any]]:
    found = ok(client.get("/v1/events", params={"after": 0, "limit": 1000}))["events"]
    return [(e["type"], e["data"].get("reason")) for e in found]


def test_a_stopped_order_frees_its_server_keeps_its_disk_and_pays_storage_exactly(
    market: Market,
) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="1"))
    oid = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    order = order_of(alice, oid)
    assert order["disk_gb"] == 50 and order["storage_per_day"] == 0.01
    assert order["state"] == "running"
    market.advance(100)
    stopped = ok(alice.post("/v1/stop_order", json={"id": oid}))["order"]
    assert stopped["state"] == "stopped" and stopped["running"] is False
    assert stopped["stop_reason"] == "user"
    rent = Decimal(str(order_of(alice, oid)["spend"]))
    assert rent == Decimal(str(to_coins(spend_for(to_units("0.0001"), 100))))
    assert error(alice.post("/v1/stop_order", json={"id": oid})) == "order_already_stopped"
    # the listing shows the server free at once (a stopped order holds no GPU)
    (listed,) = [s for s in ok(market.client().get("/v1/marketplace"))["servers"] if s["id"] == sid]
    assert listed["rented"] is False
    assert listed["storage"] == {"disk_gb": 50, "price_per_gb_day": {"bitcoin": 0.0002}}

    # someone else rents the whole server meanwhile; the stopped order cannot start
    bob = market.client(market.user(bitcoin="1"))
    bob_order = ok(bob.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert order_of(bob, bob_order)["running"] is True
    assert error(alice.post("/v1/start_order", json={"id": oid})) == "gpus_not_free"
    assert order_of(alice, oid)["state"] == "stopped"  # the refused start changed nothing
    ok(bob.post("/v1/cancel_order", json={"id": bob_order}))

    # one day stopped costs disk_gb × storage_price, to the unit, and the host earns it less fee
    before, host_before = btc(alice), btc(market.client(host))
    market.advance(DAY)
    assert btc(alice) == before - Decimal("0.01")
    assert btc(market.client(host)) == host_before + Decimal("0.0095")  # 5 % platform fee
    after = order_of(alice, oid)
    assert after["storage_spend"] == 0.01 and after["spend"] == float(rent)

    started = ok(alice.post("/v1/start_order", json={"id": oid}))["order"]
    assert started["running"] is True and started["state"] == "running"
    assert error(alice.post("/v1/start_order", json={"id": oid})) == "order_not_stopped"
    kinds = event_types(alice)
    assert ("order.stopped", "user") in kinds
    assert kinds.count(("order.running", None)) == 2
    # running again: rent, not storage
    market.advance(DAY)
    assert order_of(alice, oid)["storage_spend"] == 0.01


def test_a_preempted_spot_order_stops_and_starts_again_by_itself(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="1"))
    oid = ok(alice.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    assert order_of(alice, oid)["state"] == "running"
    bob = market.client(market.user(bitcoin="1"))
    bob_order = ok(bob.post("/v1/create_order", json=order_body(sid)))["order_id"]
    preempted = order_of(alice, oid)
    assert preempted["state"] == "stopped" and preempted["stop_reason"] == "preempted"
    market.advance(3600)
    assert order_of(alice, oid)["storage_spend"] > 0  # its disk is kept and paid for
    ok(bob.post("/v1/cancel_order", json={"id": bob_order}))
    resumed = order_of(alice, oid)
    assert resumed["state"] == "running" and "stop_reason" not in resumed
    found = ok(alice.get("/v1/events", params={"after": 0}))["events"]
    outbid = [e["data"] for e in found if e["type"] == "order.outbid"]
    assert outbid == [{**outbid[0], "reason": "preempted", "stopped": True}]
    assert [e["type"] for e in found].count("order.running") == 2


def test_a_per_gpu_order_stops_and_starts_on_as_many_free_gpus(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host, gpus=4, partial_gpu_rental=True)
    alice = market.client(market.user(bitcoin="1"))
    oid = ok(alice.post("/v1/create_order", json=order_body(sid, gpu_count=2)))["order_id"]
    assert order_of(alice, oid)["disk_gb"] == 25  # k/n of the host's offer
    ok(alice.post("/v1/stop_order", json={"id": oid}))
    with market.db.write() as conn:  # as if an agent of protocol 3 held it
        conn.execute(update(servers).where(servers.c.id == sid).values(agent_protocol=3))
        (kept,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    assert kept.stopped and kept.share == (2, 4) and kept.gpus is not None
    bob = market.client(market.user(bitcoin="1"))
    bob_order = ok(bob.post("/v1/create_order", json=order_body(sid, gpu_count=3)))["order_id"]
    assert error(alice.post("/v1/start_order", json={"id": oid})) == "gpus_not_free"
    ok(bob.post("/v1/cancel_order", json={"id": bob_order}))
    started = ok(alice.post("/v1/start_order", json={"id": oid}))["order"]
    assert started["running"] and len(started["gpus"]) == 2


def test_volumes_are_billed_until_deleted_and_cannot_be_deleted_while_mounted(
    market: Market,
) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="1"))
    created = ok(
        alice.post("/v1/create_volume", json={"server_id": sid, "size_gb": 10, "name": "data"})
    )
    vid = created["volume_id"]
    assert created["volume"]["price_per_day"] == 0.002 and created["volume"]["state"] == "ready"
    body = order_body(sid, volumes={str(vid): "/workspace"})
    oid = ok(alice.post("/v1/create_order", json=body))["order_id"]
    assert order_of(alice, oid)["volumes"] == [{"id": vid, "path": "/workspace"}]
    refused = alice.post("/v1/delete_volume", json={"id": vid}).json()
    assert refused["error"] == "volume_in_use" and refused["orders"] == [oid]
    ok(alice.post("/v1/cancel_order", json={"id": oid}))
    market.advance(DAY)
    (listed,) = ok(alice.get("/v1/volumes"))["volumes"]
    assert listed["spend"] == 0.002 and listed["mounted_by"] == []
    # the next order mounts the same volume
    second = ok(alice.post("/v1/create_order", json=body))["order_id"]
    assert order_of(alice, second)["volumes"] == [{"id": vid, "path": "/workspace"}]
    ok(alice.post("/v1/cancel_order", json={"id": second}))
    ok(alice.post("/v1/delete_volume", json={"id": vid}))
    assert ok(alice.get("/v1/volumes"))["volumes"] == []
    assert error(alice.post("/v1/delete_volume", json={"id": vid})) == "volume_dont_exist"
    kinds = [k for k, _ in event_types(alice)]
    assert kinds.count("volume.created") == 1 and kinds.count("volume.deleted") == 1
    # someone else's volume, or one on another server, cannot be mounted
    other = storage_server(market, market.user())
    bob = market.client(market.user(bitcoin="1"))
    vol = ok(bob.post("/v1/create_volume", json={"server_id": sid, "size_gb": 1, "name": "b"}))
    foreign = order_body(other, volumes={str(vol["volume_id"]): "/data"})
    assert error(bob.post("/v1/create_order", json=foreign)) == "volume_not_on_server"
    theirs = order_body(sid, volumes={str(vol["volume_id"]): "/data"})
    assert error(alice.post("/v1/create_order", json=theirs)) == "volume_dont_exist"
    too_big = {"server_id": sid, "size_gb": 51, "name": "big"}
    assert error(bob.post("/v1/create_volume", json=too_big)) == "disk_gb_out_of_range"


def test_timers_stop_and_end_an_order_at_their_market_second(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="1"))
    body = order_body(sid, stop_after=3600, disk_gb=10)
    oid = ok(alice.post("/v1/create_order", json=body))["order_id"]
    assert order_of(alice, oid)["stop_at"] == market.now() + 3600
    market.advance(7200)
    order = order_of(alice, oid)
    assert order["state"] == "stopped" and order["stop_reason"] == "timer"
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == oid)).one()
    assert row.active_seconds == 3600  # rent for exactly the hour before the timer
    assert row.stored_seconds == 3600  # storage for the hour after it
    assert ("order.stopped", "timer") in event_types(alice)

    bob = market.client(market.user(bitcoin="1"))
    other = storage_server(market, market.user())
    ended = ok(bob.post("/v1/create_order", json=order_body(other, terminate_after=600)))
    market.advance(1000)
    final = order_of(bob, ended["order_id"])
    assert final["state"] == "ended" and final["mrl"] == 600


def test_restart_reset_and_extend(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host, mrl=3)
    alice = market.client(market.user(bitcoin="1"))
    oid = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert ok(alice.post("/v1/restart_order", json={"id": oid}))["restart"] == 1
    assert ok(alice.post("/v1/reset_order", json={"id": oid}))["generation"] == 1
    order = order_of(alice, oid)
    assert order["restarts"] == 1 and order["resets"] == 1
    # mrl: 3 h on this server; an hour in, 1 more hour fits, 2 more do not
    market.advance(3600)
    assert ok(alice.post("/v1/extend_order", json={"id": oid, "hours": 1}))["mrl"] == 4 * 3600
    refused = alice.post("/v1/extend_order", json={"id": oid, "hours": 2}).json()
    assert refused["error"] == "extend_out_of_range" and refused["max_hours"] == 0
    ok(alice.post("/v1/stop_order", json={"id": oid}))
    assert error(alice.post("/v1/restart_order", json={"id": oid})) == "order_not_running"
    kinds = [k for k, _ in event_types(alice)]
    assert {"order.restarted", "order.reset", "order.extended"} <= set(kinds)
    # nobody else may touch it
    bob = market.client(market.user(bitcoin="1"))
    for name in ("stop_order", "start_order", "restart_order", "reset_order"):
        assert error(bob.post(f"/v1/{name}", json={"id": oid})) == "order_dont_exist"


def test_an_agent_without_protocol_3_cannot_keep_a_stopped_order(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    with market.db.write() as conn:
        conn.execute(
            update(servers).where(servers.c.id == sid).values(simulated=False, agent_protocol=2)
        )
    alice = market.client(market.user(bitcoin="1"))
    oid = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert error(alice.post("/v1/stop_order", json={"id": oid})) == "stop_not_supported"
    body = {"server_id": sid, "size_gb": 1, "name": "v"}
    assert error(alice.post("/v1/create_volume", json=body)) == "stop_not_supported"
    with market.db.read() as conn:
        (container,) = desired_for(conn, sid) or []
    assert container.stopped is False and container.disk_gb == 50


def test_a_stopped_order_whose_renter_cannot_pay_its_storage_ends(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="0.0021"))
    oid = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(alice.post("/v1/stop_order", json={"id": oid}))
    market.advance(DAY)  # 0.0021 BTC pays about 0.2 days of 0.01 BTC storage
    order = order_of(alice, oid)
    assert order["state"] == "ended"
    assert btc(alice) < Decimal("0.0000001")
    assert ("order.ended", "balance") in event_types(alice)


def test_a_volume_the_agent_lost_is_gone_and_a_removed_servers_volumes_end(
    market: Market,
) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.client(market.user(bitcoin="1"))
    lost = ok(alice.post("/v1/create_volume", json={"server_id": sid, "size_gb": 2, "name": "a"}))
    kept = ok(alice.post("/v1/create_volume", json={"server_id": sid, "size_gb": 2, "name": "b"}))
    market.advance(DAY)
    with market.db.write() as conn:  # the agent reports only the second one
        held = [VolumeStatus(name=f"openclore-vol-{kept['volume_id']}", ok=True, quota=False)]
        apply_volume_reports(conn, sid, held, market.now())
    states = {v["id"]: v for v in ok(alice.get("/v1/volumes"))["volumes"]}
    assert states[lost["volume_id"]]["state"] == "gone"
    assert states[lost["volume_id"]]["spend"] == 0.0004  # billed up to the report, then no more
    assert states[kept["volume_id"]]["quota"] is False
    market.advance(DAY)
    assert ok(alice.get("/v1/volumes"))["volumes"][-1]["spend"] == 0.0004
    with market.db.write() as conn:
        remove_server(conn, market.user_id(host), "keeper", market.now())
    (ended,) = [
        v
        for v in ok(alice.get("/v1/volumes?include_ended=true"))["volumes"]
        if v["id"] == kept["volume_id"]
    ]
    assert ended["state"] == "ended" and ended["spend"] == 0.0008
    kinds = event_types(alice)
    assert ("volume.gone", None) in kinds and ("volume.ended", "server_removed") in kinds


def test_the_sandbox_bills_a_stopped_day_at_disk_times_storage_price(market: Market) -> None:
    """The demo world's generated servers offer 100 GB at a thousandth of their on-demand price
    per GB per day: one stopped day in the sandbox costs disk_gb × storage_price, to the unit."""
    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
        row = conn.execute(
            select(servers.c.id, server_prices.c.on_demand, server_prices.c.storage)
            .join(server_prices, server_prices.c.server_id == servers.c.id)
            .where(
                servers.c.disk_gb == 100,
                servers.c.partial_gpu_rental.is_(False),
                server_prices.c.currency == "bitcoin",
                server_prices.c.on_demand > 0,
            )
            .order_by(servers.c.id)
        ).first()
    assert row is not None and row.storage == row.on_demand // 1000
    renter = market.client(market.user(bitcoin="1"))
    body = order_body(row.id, disk_gb=40)
    oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
    ok(renter.post("/v1/stop_order", json={"id": oid}))
    market.advance(DAY)  # the sandbox's time travel: the clock moves, the engine ticks
    order = order_of(renter, oid)
    assert order["storage_spend"] == float(str(to_coins(40 * row.storage)))
    assert order["storage_per_day"] == order["storage_spend"]
