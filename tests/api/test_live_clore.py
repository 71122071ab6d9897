"""Live Clore parity (SPEC §7): the fields and endpoints real clients read beyond the v1
reference, on both databases over real HTTP."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from openclore.cli.main import app as cli_app
from openclore.config import Settings, parse_rates
from openclore.domain.money import to_units
from openclore.domain.reliability import PRIOR, PRIOR_SECONDS, WINDOW_SECONDS, reliability
from openclore.domain.usd import rate_units, units_for_usd, usd_of
from openclore.engine.reliability import recompute
from openclore.market import audit
from openclore.market.agents import (
    agent_heartbeat,
    agent_hello,
    apply_statuses,
    desired_for,
    register_agent,
)
from openclore.protocol import RUNNING, ContainerStatus
from openclore.store.schema import online_intervals, orders, server_prices, servers

from agent_support import host_server
from support import Market, error, ok, order_body, spot_body

runner = CliRunner()


def admin(market: Market, *args: str) -> tuple[int, str]:
    result = runner.invoke(cli_app, [*args, "--database-url", market.db.url])
    return result.exit_code, result.output


def listed(market: Market, server_id: int) -> dict[str, Any]:
    body = ok(market.client().get("/v1/marketplace"))
    return next(s for s in body["servers"] if s["id"] == server_id)


def add_price(market: Market, server_id: int, currency: str, on_demand: str, spot: str) -> None:
    with market.db.write() as conn:
        conn.execute(
            server_prices.insert().values(
                server_id=server_id,
                currency=currency,
                on_demand=to_units(Decimal(on_demand)),
                spot=to_units(Decimal(spot)),
            )
        )


# ----------------------------------------------------------------------------- exchange rates


def test_rates_setting_spellings() -> None:
    assert parse_rates("bitcoin=60000, CLORE-Blockchain=0.05") == {
        "bitcoin": Decimal(60000),
        "CLORE-Blockchain": Decimal("0.05"),
    }
    assert parse_rates('{"bitcoin": 61000.5}') == {"bitcoin": Decimal("61000.5")}
    assert parse_rates("") == {}
    for bad in (
        "bitcoin",
        "bitcoin=0",
        "bitcoin=-1",
        "bitcoin=abc",
        "bitcoin=NaN",
        "[1]",
        "bitcoin=0.0000000001",
    ):
        with pytest.raises(ValueError):
            parse_rates(bad)
    import os

    os.environ["OPENCLORE_USD_RATES"] = "bitcoin=60000,CLORE-Blockchain=0.05"
    try:
        assert Settings().usd_rates == {
            "bitcoin": Decimal(60000),
            "CLORE-Blockchain": Decimal("0.05"),
        }
    finally:
        del os.environ["OPENCLORE_USD_RATES"]
    # exact integer arithmetic: 0.00001 BTC at 60000 USD is 0.6 USD; back again
    assert usd_of(to_units(Decimal("0.00001")), rate_units("60000")) == to_units(Decimal("0.6"))
    assert units_for_usd(to_units(Decimal("0.6")), rate_units("60000")) == 10_000
    assert units_for_usd(1, rate_units("60000")) == 1  # never a zero price


def test_marketplace_usd_block_cuda_and_online(market: Market) -> None:
    host = market.user()
    specs = {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 24, "cuda_version": "12.4"}
    sid = market.server(host, "rig", on_demand="0.00001", spot="0.000005", specs=specs)
    plain = market.server(host, "plain")
    add_price(market, sid, "CLORE-Blockchain", "10", "4")
    server = listed(market, sid)
    assert "usd" not in server["price"]  # no rates: no USD prices
    assert server["cuda_version"] == "12.4" and server["online"] is True
    assert listed(market, plain)["cuda_version"] == ""  # unknown: an empty string

    code, out = admin(market, "admin", "rates", "set", "bitcoin=60000", "CLORE-Blockchain=0.05")
    assert code == 0, out
    usd = listed(market, sid)["price"]["usd"]
    # bitcoin 0.00001 × 60000 = 0.6; CLORE 10 × 0.05 = 0.5 (the lowest is on_demand_usd)
    assert usd == {
        "on_demand_usd": 0.5,
        "on_demand_btc": 0.6,
        "on_demand_clore": 0.5,
        "spot_usd": 0.2,
        "spot": 0.2,
        "spot_btc": 0.3,
        "spot_clore": 0.2,
    }
    code, out = admin(market, "admin", "rates", "show")
    assert code == 0 and "bitcoin = 60000 USD (stored)" in out, out
    assert admin(market, "admin", "rates", "set", "dogecoin=1")[0] == 1
    assert admin(market, "admin", "rates", "set", "bitcoin=free")[0] == 1

    spot = ok(market.client().get(f"/v1/spot_marketplace?market={sid}"))
    assert spot["market"]["currency_rates_in_usd"] == {"bitcoin": 60000, "CLORE-Blockchain": 0.05}

    # the setting gives rates too; a stored rate wins over it for its currency
    market.reconfigure(usd_rates={"bitcoin": "50000", "USD-Blockchain": "1"})
    spot = ok(market.client().get(f"/v1/spot_marketplace?market={sid}"))
    assert spot["market"]["currency_rates_in_usd"] == {
        "bitcoin": 60000,
        "CLORE-Blockchain": 0.05,
        "USD-Blockchain": 1,
    }
    assert admin(market, "admin", "rates", "clear", "bitcoin")[0] == 0
    assert listed(market, sid)["price"]["usd"]["on_demand_btc"] == 0.5  # 0.00001 × 50000


# ----------------------------------------------------------------------------- my_orders


def test_my_orders_live_fields(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    specs = {"gpu": "1x NVIDIA GeForce RTX 3090", "gpuram": 24, "cuda_version": "12.2"}
    sid = market.server(host, "rig", specs=specs)
    c = market.client(renter)
    order_id = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    order = ok(c.get("/v1/my_orders"))["orders"][0]
    assert order["id"] == order_id
    assert order["online"] is True
    assert order["cuda_version"] == "12.2"
    assert order["reliability"] == PRIOR  # a new server starts from the prior
    assert order["rating"] == {"avg": 0.0, "cnt": 0}
    assert order["gpu_array"] == ["NVIDIA GeForce RTX 3090"]
    assert order["owner"] == market.user_id(host)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=False))
    assert ok(c.get("/v1/my_orders"))["orders"][0]["online"] is False


# ----------------------------------------------------------------------------- ratings


def test_cancel_order_rating_once_per_order(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = market.server(host, "rig")
    c = market.client(renter)
    first = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert c.post("/v1/cancel_order", json={"id": first, "rating": 6}).json()["code"] == 2
    assert c.post("/v1/cancel_order", json={"id": first, "rating": "5"}).json()["code"] == 2
    ok(c.post("/v1/cancel_order", json={"id": first, "rating": 5}))
    assert listed(market, sid)["rating"] == {"avg": 5.0, "cnt": 1}
    assert error(c.post("/v1/cancel_order", json={"id": first, "rating": 1})) == (
        "order_already_rated"
    )
    second = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": second}))
    assert error(c.post("/v1/cancel_order", json={"id": second})) == "order_not_active"
    ok(c.post("/v1/cancel_order", json={"id": second, "rating": 2}))  # an ended order, rated
    assert listed(market, sid)["rating"] == {"avg": 3.5, "cnt": 2}
    done = ok(c.get("/v1/my_orders?return_completed=true"))["orders"]
    assert {o["id"]: o.get("my_past_rating") for o in done} == {first: 5, second: 2}
    other = market.user()
    assert error(
        market.client(other).post("/v1/cancel_order", json={"id": first, "rating": 1})
    ) == ("you_dont_own_this_order")


def test_cancel_orders_batch(market: Market) -> None:
    host, renter, other = market.user(), market.user(bitcoin="0.01"), market.user(bitcoin="0.01")
    a, b, d = market.server(host, "a"), market.server(host, "b"), market.server(host, "d")
    c = market.client(renter)
    oa = ok(c.post("/v1/create_order", json=order_body(a)))["order_id"]
    ob = ok(c.post("/v1/create_order", json=spot_body(b, "0.000002")))["order_id"]
    foreign = ok(market.client(other).post("/v1/create_order", json=order_body(d)))["order_id"]
    body = ok(c.post("/v1/cancel_orders", json={"order_ids": [oa, ob, foreign, 99999, oa]}))
    assert body["failed_to_cancel"] == [str(foreign), "99999"]
    assert body["results"] == [
        {"id": oa, "cancelled": True},
        {"id": ob, "cancelled": True},
        {"id": foreign, "cancelled": False, "error": "you_dont_own_this_order"},
        {"id": 99999, "cancelled": False, "error": "order_dont_exist"},
    ]
    assert ok(c.get("/v1/my_orders"))["orders"] == []
    assert len(ok(market.client(other).get("/v1/my_orders"))["orders"]) == 1
    assert c.post("/v1/cancel_orders", json={"order_ids": []}).json()["code"] == 2
    assert c.post("/v1/cancel_orders", json={"order_ids": ["1"]}).json()["code"] == 2


def test_renter_fees_and_poh_balance(market: Market) -> None:
    token = market.user()
    fees = ok(market.client().get("/v1/renter_fees"))
    assert fees["renter_fees"]["on_demand"]["base"]["bitcoin"] == 5
    assert fees["renter_fees"]["spot"]["base"]["CLORE-Blockchain"] == 2.5
    assert fees["creation_fees"]["on_demand"]["bitcoin"] == 0.0000003
    assert fees["creation_fees"]["spot"]["USD-Blockchain"] == 0.005
    assert fees["poh_config"] == {"max_reduction_percent": 0, "max_poh_amount": 0}
    assert fees["poh_balance"] == 0
    poh = ok(market.client(token).get("/v1/poh_balance"))
    assert poh["items"] == [] and poh["count"] == 0
    assert poh["balance"]["total"] == 0 and poh["balance"]["offers"]["rented_amount"] == 0
    assert market.client().get("/v1/poh_balance").json()["code"] == 3


# ----------------------------------------------------------------------------- host settings


def test_enabled_currency(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01", CLORE_Blockchain="100")
    sid = market.server(host, "rig")
    add_price(market, sid, "CLORE-Blockchain", "10", "4")
    h = market.client(host)
    ok(h.post("/v1/set_server_settings", json={"name": "rig", "enabled-bitcoin": False}))
    assert listed(market, sid)["allowed_coins"] == ["CLORE-Blockchain"]
    assert "bitcoin" not in listed(market, sid)["price"]["on_demand"]
    config = ok(h.post("/v1/server_config", json={"server_name": "rig"}))["config"]
    assert config["allowed_coins"] == ["CLORE-Blockchain"]
    assert config["pricing"]["bitcoin"] == 0.00001  # the price is kept for when it comes back
    r = market.client(renter)
    assert error(r.post("/v1/create_order", json=order_body(sid))) == "currency-not-allowed"
    ok(r.post("/v1/create_order", json=order_body(sid, currency="CLORE-Blockchain")))
    ok(h.post("/v1/set_server_settings", json={"name": "rig", "enabled-bitcoin": True}))
    assert listed(market, sid)["allowed_coins"] == ["bitcoin", "CLORE-Blockchain"]
    for bad in ({"enabled-bitcoin": "no"}, {"enabled-dogecoin": True}):
        assert h.post("/v1/set_server_settings", json={"name": "rig", **bad}).json()["code"] == 2


def test_autoprice_follows_the_usd_price(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig")
    h = market.client(host)
    settings = {
        "name": "rig",
        "usd_pricing": {"bitcoin": {"on_demand": 1.2, "spot": 0.6}},
        "autoprice": {"bitcoin": "usd"},
    }
    assert h.post("/v1/set_server_settings", json=settings).json()["code"] == 2  # no rate yet
    assert admin(market, "admin", "rates", "set", "bitcoin=60000")[0] == 0
    ok(h.post("/v1/set_server_settings", json=settings))
    config = ok(h.post("/v1/server_config", json={"server_name": "rig"}))["config"]
    assert config["pricing"]["bitcoin"] == 0.00002  # 1.2 USD / 60000
    assert config["spot_pricing"]["bitcoin"] == 0.00001
    assert config["usd_pricing"] == {"bitcoin": {"on_demand": 1.2, "spot": 0.6}}
    assert config["autoprice"] == {
        "bitcoin": "usd",
        "CLORE-Blockchain": False,
        "USD-Blockchain": False,
    }
    assert listed(market, sid)["price"]["original_usd"] == {
        "bitcoin": {"on_demand": 1.2, "spot": 0.6}
    }
    code, out = admin(market, "admin", "rates", "set", "bitcoin=40000")
    assert code == 0 and "repriced 1 server" in out
    assert listed(market, sid)["price"]["on_demand"]["bitcoin"] == 0.00003
    ok(h.post("/v1/set_server_settings", json={"name": "rig", "autoprice": {"bitcoin": False}}))
    assert admin(market, "admin", "rates", "set", "bitcoin=30000")[0] == 0
    assert listed(market, sid)["price"]["on_demand"]["bitcoin"] == 0.00003  # no longer follows
    for bad in ({"autoprice": {"bitcoin": "eur"}}, {"usd_pricing": {"bitcoin": {"on_demand": -1}}}):
        assert h.post("/v1/set_server_settings", json={"name": "rig", **bad}).json()["code"] == 2


# ----------------------------------------------------------------------------- reliability


def agent_server(market: Market, name: str = "rig") -> int:
    host = market.user()
    sid, init_token = host_server(market, host, name)
    with market.db.write() as conn:
        register_agent(conn, init_token)
    return sid


def hello(market: Market, sid: int) -> None:
    """The agent connects, reporting one GPU (the marketplace lists GPU servers only)."""
    gpu = {"specs": {"gpu": "1x NVIDIA L4", "gpuram": 24}, "gpu_array": ["NVIDIA L4"]}
    with market.db.write() as conn:
        assert agent_hello(conn, sid, gpu, [], market.now())


def beat(market: Market, sid: int, seconds: int, every: int) -> None:
    """Heartbeats every ``every`` seconds for ``seconds`` (the clock moves with them)."""
    for _ in range(seconds // every):
        market.clock.advance(every)
        with market.db.write() as conn:
            assert agent_heartbeat(conn, sid, market.now())


def stored_reliability(market: Market, sid: int) -> float:
    with market.db.write() as conn:
        recompute(conn, market.now())
    with market.db.read() as conn:
        return float(
            conn.execute(select(servers.c.reliability).where(servers.c.id == sid)).scalar_one()
        )


def test_reliability_formula() -> None:
    assert reliability(0, 0) == PRIOR
    day = 86_400
    assert reliability(30 * day, 30 * day) == round(
        (30 * day + PRIOR * PRIOR_SECONDS) / (33 * day), 4
    )
    assert reliability(0, 30 * day) == round(PRIOR * PRIOR_SECONDS / (33 * day), 4)
    assert reliability(40 * day, 40 * day) == reliability(30 * day, 30 * day)  # the window


def test_reliability_from_recorded_heartbeats(market: Market) -> None:
    market.reconfigure(agent_timeout=600)
    sid = agent_server(market)
    assert stored_reliability(market, sid) == PRIOR  # never online: the prior, not 1.0
    start = market.now()
    hello(market, sid)
    beat(market, sid, 6 * 3600, every=300)  # online 6 h
    market.advance(601)  # silent: the tick marks it offline, the stretch closes at the last beat
    with market.db.read() as conn:
        stretches = conn.execute(
            select(online_intervals.c.started_at, online_intervals.c.ended_at)
        ).all()
    assert [tuple(s) for s in stretches] == [(start, start + 6 * 3600)]
    market.clock.advance(6 * 3600 - 601)  # offline until 12 h
    hello(market, sid)
    beat(market, sid, 12 * 3600, every=300)  # online again until 24 h, still online
    assert market.now() == start + 24 * 3600
    expected = reliability(18 * 3600, 24 * 3600)
    assert stored_reliability(market, sid) == expected
    assert 0.85 < expected < PRIOR
    assert listed(market, sid)["reliability"] == expected

    # a month online: the early gap leaves the window, reliability climbs towards 1
    for _ in range(30):
        beat(market, sid, 86_400, every=2880)
    market.reconfigure(agent_timeout=3600)
    later = stored_reliability(market, sid)
    assert later == reliability(WINDOW_SECONDS, WINDOW_SECONDS) and later > 0.99
    with market.db.read() as conn:  # stretches older than the window are pruned
        assert conn.execute(select(online_intervals.c.id)).all() == []


def test_the_tick_recomputes_reliability(market: Market) -> None:
    market.reconfigure(agent_timeout=600)
    sid = agent_server(market)
    hello(market, sid)
    beat(market, sid, 3600, every=300)
    market.advance(601)  # offline; the tick stores the new value (first computation)

    def stored() -> float:
        with market.db.read() as conn:
            query = select(servers.c.reliability).where(servers.c.id == sid)
            return float(conn.execute(query).scalar_one())

    assert stored() == reliability(3600, 3600 + 601)
    market.advance(300)  # within reliability_interval (600 s): not recomputed yet
    assert stored() == reliability(3600, 3600 + 601)
    market.advance(300)
    assert stored() == reliability(3600, 3600 + 1201)


# ----------------------------------------------------------------------------- dockerhub_auth


def test_dockerhub_auth_goes_to_the_agent_for_the_pull_only(market: Market) -> None:
    renter = market.user(bitcoin="0.01")
    sid = agent_server(market)
    hello(market, sid)
    c = market.client(renter)
    for bad in ("nopassword", ":x", "a:b\n"):
        body = order_body(sid, dockerhub_auth=bad)
        assert c.post("/v1/create_order", json=body).json()["code"] == 2
    answer = ok(c.post("/v1/create_order", json=order_body(sid, dockerhub_auth="bob:s3cret")))
    order_id = answer["order_id"]
    assert "s3cret" not in str(answer)
    assert "s3cret" not in c.get("/v1/my_orders").text
    with market.db.read() as conn:
        desired = desired_for(conn, sid)
    assert desired is not None and desired[0].registry_auth == "bob:s3cret"
    assert "s3cret" not in repr(desired[0])
    # still pulling: kept for the pull; pulled (running): gone from the database
    for state, kept in (("pulling", "bob:s3cret"), (RUNNING, None)):
        with market.db.write() as conn:
            status = ContainerStatus(
                key=f"order-{order_id}", kind="order", state=state, order_id=order_id
            )
            apply_statuses(conn, sid, [status], ["host.example"])
        with market.db.read() as conn:
            stored = conn.execute(
                select(orders.c.dockerhub_auth).where(orders.c.id == order_id)
            ).scalar()
            assert stored == kept
            again = desired_for(conn, sid)
        assert again is not None and again[0].registry_auth == kept
        assert again[0].spec_hash() == desired[0].spec_hash()  # the container is kept


def test_dockerhub_auth_cleared_when_the_order_ends(market: Market) -> None:
    renter = market.user(bitcoin="0.01")
    sid = agent_server(market)
    hello(market, sid)
    c = market.client(renter)
    order_id = ok(c.post("/v1/create_order", json=order_body(sid, dockerhub_auth="bob:pw")))[
        "order_id"
    ]
    ok(c.post("/v1/cancel_order", json={"id": order_id}))
    with market.db.read() as conn:
        assert (
            conn.execute(select(orders.c.dockerhub_auth).where(orders.c.id == order_id)).scalar()
            is None
        )


# ----------------------------------------------------------------------------- GigaSPOT

LIMITS = {
    "allowed": True,
    "gpus": [
        {
            "model": "NVIDIA GeForce RTX 4090",
            "pl": [150, 450],
            "core_lock": [0, 3105],
            "mem_lock": [0, 10501],
            "core_offset": [-1000, 1000],
            "mem_offset": [-2000, 6000],
        },
        {
            "model": "NVIDIA GeForce RTX 4090",
            "pl": [150, 450],
            "core_lock": [0, 3105],
            "mem_lock": [0, 10501],
            "core_offset": [-1000, 1000],
            "mem_offset": [-2000, 6000],
        },
    ],
}


def gigaspot_server(market: Market, name: str, limits: Any) -> int:
    sid = agent_server(market, name)
    with market.db.write() as conn:
        hello_msg = {
            "specs": {
                "cpus": "16/32",
                "cpu": "Ryzen",
                "ram": 64,
                "net": {"cc": "CZ"},
                "cuda_version": "12.4",
            },
            "gpu_array": ["NVIDIA GeForce RTX 4090"] * 2,
            "gpu_limits": limits,
        }
        assert agent_hello(conn, sid, hello_msg, [], market.now())
    return sid


def test_gigaspot_snapshot_create_and_edit(market: Market) -> None:
    renter, other = market.user(bitcoin="0.01"), market.user(bitcoin="0.01")
    tunable = gigaspot_server(market, "tunable", LIMITS)
    locked = gigaspot_server(market, "locked", {"allowed": False, "gpus": []})
    cheap = gigaspot_server(market, "cheap", LIMITS)
    c = market.client(renter)
    oc = [{"pl": 300, "core_lock": 2500}, {"pl": 250, "mem_offset": 1000}]
    bids = [
        {
            "currency": "bitcoin",
            "image": "cloreai/ubuntu20.04-jupyter",
            "renting_server": tunable,
            "price": 0.000002,
            "oc": oc,
            "env": {"A": "1"},
        },
        {
            "currency": "bitcoin",
            "image": "cloreai/ubuntu20.04-jupyter",
            "renting_server": locked,
            "price": 0.000002,
            "oc": [{"pl": 300}],
        },
        {
            "currency": "bitcoin",
            "image": "cloreai/ubuntu20.04-jupyter",
            "renting_server": cheap,
            "price": 0.0000001,
            "oc": [],
        },
        {
            "currency": "bitcoin",
            "image": "cloreai/ubuntu20.04-jupyter",
            "renting_server": 9999,
            "price": 0.000002,
            "oc": [],
        },
    ]
    body = ok(c.post("/v1/create_gigaspot_orders", json=bids))  # a bare JSON array, as live
    assert body["failed_to_oc_servers"] == [locked]
    assert body["failed_to_rent_servers"] == [9999]
    assert body["too_low_bids_servers"] == [cheap]
    made = {o["server"]: o["order_id"] for o in body["orders"]}
    assert set(made) == {tunable, locked}
    mine = {o["id"]: o for o in ok(c.get("/v1/my_orders"))["orders"]}
    assert mine[made[tunable]]["oc"] == oc and mine[made[tunable]]["spot"] is True
    assert "oc" not in mine[made[locked]]  # the bid stands, without the settings
    with market.db.read() as conn:
        desired = desired_for(conn, tunable)
    assert desired is not None and desired[0].gpu_settings == oc

    # the snapshot: inline and at the URL live clients fetch without a token
    snap = ok(c.get("/v1/get_gigaspot"))
    assert snap["my_user_id"] == market.user_id(renter)
    assert snap["creation_fees"]["bitcoin"] == 0.0000001
    entry = snap["snapshot"][str(tunable)]
    assert entry["bids"][0]["id"] == made[tunable] and entry["bids"][0]["pl"] == 550
    assert entry["gpus"][0]["pl"] == [150, 450] and entry["gpus"][0]["model"].endswith("4090")
    assert (entry["cores"], entry["threads"], entry["cc"], entry["cuda"]) == (16, 32, "CZ", "12.4")
    assert entry["min_bid"] == 0.000001 and entry["online"] is True
    assert snap["snapshot"][str(locked)]["gpus"] == []
    url = snap["v1_snapshot_url"]
    assert re.match(r"^http://[^/]+/gigaspot/v1/snapshot$", url)
    assert market.client().get(url).json() == snap["snapshot"]

    # edit: raise with new settings; settings that do not fit; a lowering too far; not mine
    new_oc = [{"pl": 200}]
    edits = [
        {"order_id": made[tunable], "price": 0.000003, "oc": new_oc},
        {"order_id": made[locked], "price": 0.000003, "oc": [{"pl": 300}]},
    ]
    body = ok(c.post("/v1/edit_gigaspot_orders", json=edits))
    assert body["success_to_update_ids"] == [made[tunable], made[locked]]
    assert body["failed_to_oc_ids"] == [made[locked]]
    mine = {o["id"]: o for o in ok(c.get("/v1/my_orders"))["orders"]}
    assert mine[made[tunable]]["price"] == 0.000003 and mine[made[tunable]]["oc"] == new_oc
    with market.db.read() as conn:  # each edited bid is a price change in the audit log
        edited = [e.target for e in audit.entries(conn) if e.action == audit.PRICE_CHANGE]
    assert edited == [f"order:{made[tunable]}", f"order:{made[locked]}"]
    body = ok(
        c.post(
            "/v1/edit_gigaspot_orders",
            json=[
                {"order_id": made[tunable], "price": 0.0000001, "oc": []},
            ],
        )
    )
    assert body["too_low_bid_ids"] == [made[tunable]]
    body = ok(
        market.client(other).post(
            "/v1/edit_gigaspot_orders",
            json=[
                {"order_id": made[tunable], "price": 0.00001, "oc": []},
            ],
        )
    )
    assert body["failed_to_update_ids"] == [made[tunable]]
    for bad in ([], [{"order_id": 1}], [{"order_id": 1, "price": 1, "oc": [{"pl": -5}]}], 5):
        assert c.post("/v1/edit_gigaspot_orders", json=bad).json()["code"] == 2


def test_gigaspot_settings_outcome_reported_by_the_agent(market: Market) -> None:
    renter = market.user(bitcoin="0.01")
    sid = gigaspot_server(market, "tunable", LIMITS)
    c = market.client(renter)
    bid = {
        "currency": "bitcoin",
        "image": "img/app:1",
        "renting_server": sid,
        "price": 0.000002,
        "oc": [{"pl": 300}],
    }
    order_id = ok(c.post("/v1/create_gigaspot_orders", json={"orders": [bid]}))["orders"][0][
        "order_id"
    ]
    with market.db.write() as conn:
        status = ContainerStatus(
            key=f"order-{order_id}",
            kind="order",
            state=RUNNING,
            order_id=order_id,
            gpu_settings_applied=False,
            gpu_settings_error="refused by the driver: Insufficient Permissions",
        )
        apply_statuses(conn, sid, [status], ["host.example"])
    order = ok(c.get("/v1/my_orders"))["orders"][0]
    assert order["oc_failed"] is True
    assert "Insufficient Permissions" in order["error"]


def test_the_sdk_speaks_the_new_calls(market: Market) -> None:
    from openclore.client import Client

    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = gigaspot_server(market, "tunable", LIMITS)
    plain = market.server(host, "plain", specs={"gpu": "1x RTX", "cuda_version": "12.0"})
    assert admin(market, "admin", "rates", "set", "bitcoin=60000")[0] == 0
    h = Client(host, base_url=market.url, rate_limit=False)
    r = Client(renter, base_url=market.url, rate_limit=False)
    try:
        listed_plain = next(s for s in r.marketplace().servers if s.id == plain)
        assert listed_plain.price.usd is not None
        assert listed_plain.price.usd.on_demand_usd == Decimal("0.6")
        assert listed_plain.cuda_version == "12.0" and listed_plain.online is True
        spot = r.spot_marketplace(plain)
        assert spot.market is not None
        assert spot.market.currency_rates_in_usd == {"bitcoin": Decimal(60000)}
        assert r.renter_fees().fee_percent("spot", "bitcoin") == Decimal("2.5")
        assert r.poh_balance()["count"] == 0

        made = r.create_gigaspot_orders(
            [
                {
                    "renting_server": sid,
                    "price": "0.000002",
                    "image": "img/app:1",
                    "oc": [{"pl": 300}],
                }
            ]
        )
        assert made.failed_to_oc_servers == [] and len(made.orders) == 1
        order_id = made.orders[0]["order_id"]
        snap = r.get_gigaspot()
        assert snap.snapshot[str(sid)].bids[0].id == order_id
        assert snap.snapshot[str(sid)].gpus[0].pl == [150, 450]
        edited = r.edit_gigaspot_orders([{"order_id": order_id, "price": "0.000003", "oc": []}])
        assert edited.success_to_update_ids == [order_id]
        order = next(o for o in r.my_orders() if o.id == order_id)
        assert order.online is True and order.cuda_version == "12.4" and order.rating is not None
        assert order.gpu_array == ["NVIDIA GeForce RTX 4090"] * 2

        second = r.create_order(plain, "img/app:1", dockerhub_auth="bob:pw")
        result = r.cancel_orders([order_id, second.id, 424242])
        assert result.failed_to_cancel == ["424242"]
        assert [x.cancelled for x in result.results] == [True, True, False]
        r.cancel_order(second.id, rating=4)
        assert next(s for s in r.marketplace().servers if s.id == plain).rating.cnt == 1  # type: ignore[union-attr]

        h.set_server_settings(
            "plain", usd_pricing={"bitcoin": {"on_demand": "1.2"}}, autoprice={"bitcoin": "usd"}
        )
        config = h.server_config("plain")
        assert config.pricing["bitcoin"] == Decimal("0.00002")
        assert config.autoprice["bitcoin"] == "usd" and config.background_job is not None
        assert config.background_job.env == {}
        h.set_server_settings("plain", enabled={"bitcoin": False})
        assert plain not in [s.id for s in r.marketplace().servers]
    finally:
        h.close()
        r.close()


def test_agent_gpu_limits_are_checked_before_they_are_stored() -> None:
    from openclore.domain.gpu_settings import check_gpu_limits, settings_problem

    assert check_gpu_limits("x") is None
    assert check_gpu_limits({"allowed": True, "gpus": "x"}) is None
    assert check_gpu_limits({"allowed": True, "gpus": [{}] * 65}) is None
    hostile = {
        "allowed": "yes",
        "gpus": [
            {
                "model": "A\u202eB",
                "pl": [500, 100],
                "core_lock": [0, float("inf")],
                "mem_lock": [True, 5],
            }
        ],
    }
    assert check_gpu_limits(hostile) == {
        "allowed": False,
        "gpus": [
            {
                "model": "",
                "pl": None,
                "core_lock": None,
                "mem_lock": None,
                "core_offset": None,
                "mem_offset": None,
            }
        ],
    }
    assert settings_problem([{"pl": 300}], hostile) == "the host does not allow GPU settings"
    assert settings_problem([], None) is None
    assert settings_problem([{"pl": 300, "mem_lock": 5}], LIMITS) is None
    assert settings_problem([{"pl": 100}], LIMITS) == "GPU 0: pl 100 outside 150..450"
