"""The Vast.ai-compatible API (/api/v0, /api/v1; docs/vast-compat.md): the query translation and
answer shapes, then the endpoints over real HTTP against a market on both databases."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from openclore.domain.errors import InvalidInput
from openclore.domain.money import Coins, to_units
from openclore.domain.usd import rate_units
from openclore.engine.clock import ManualClock
from openclore.market import vast, vast_offers
from openclore.market.api_keys import create_key
from openclore.market.audit import SYSTEM
from openclore.market.rates import set_rates
from openclore.store.schema import audit_log, orders, server_prices, servers

from support import Market

parse = vast_offers.parse_offer_query

RATE = rate_units("60000")  # USD per bitcoin
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl renter@laptop"
)


# ------------------------------------------------------------------------------ translation


def listed(
    server_id: int = 7,
    *,
    gpus: int = 2,
    on_demand: str = "0.0001",
    spot: str = "0.00002",
    partial: bool = False,
    free: list[int] | None = None,
) -> dict[str, Any]:
    """One server as the marketplace listing has it."""
    return {
        "id": server_id,
        "owner": 3,
        "mrl": 72,
        "price": {
            "on_demand": {"bitcoin": Coins(to_units(on_demand))},
            "spot": {"bitcoin": Coins(to_units(spot))},
        },
        "rented": False,
        "specs": {
            "cpus": "8/16",
            "ram": 64,
            "gpuram": 24,
            "net": {"up": 500, "down": 900, "cc": "CZ"},
            "disk": "SSD 1TB",
        },
        "gpu_array": ["NVIDIA GeForce RTX 3090"] * gpus,
        "reliability": 0.99,
        "cuda_version": "12.2",
        "partial_gpu_rental": {
            "enabled": partial,
            "min_gpus": 1,
            "free_indices": list(range(gpus)) if free is None else free,
        },
        "storage": {"disk_gb": 100, "price_per_gb_day": {"bitcoin": Coins(to_units("0.000001"))}},
    }


def test_whole_server_offer_shape_and_prices() -> None:
    q = vast_offers.parse_offer_query({"num_gpus": {"gte": "1"}})
    (offer,) = vast_offers.search_offers([listed()], {"bitcoin": RATE}, q, 1000)
    assert offer["id"] == 7 * vast_offers.OFFER_STRIDE + 2 and offer["machine_id"] == 7
    assert offer["num_gpus"] == 2 and offer["gpu_name"] == "RTX 3090"
    assert offer["gpu_ram"] == 24_000 and offer["cpu_ram"] == 64_000  # MB
    assert offer["cpu_cores"] == 16 and offer["cpu_cores_effective"] == 16
    # 0.0001 BTC a day at 60000 USD: 6 USD a day, 0.25 an hour
    assert offer["dph_base"] == pytest.approx(0.25) and offer["dph_total"] == offer["dph_base"]
    assert offer["min_bid"] == pytest.approx(0.05)
    assert offer["storage_cost"] == pytest.approx(0.000001 * 60000 * 30)  # $/GB/month
    assert offer["geolocation"] == "CZ" and offer["cuda_max_good"] == 12.2
    assert offer["disk_space"] == 100 and offer["duration"] == 72 * 3600
    assert offer["rentable"] is True and offer["rented"] is False and offer["verified"] is True
    assert offer["currency"] == "bitcoin"


def test_partial_server_has_one_offer_per_gpu_count() -> None:
    q = vast_offers.parse_offer_query({"order": [["num_gpus", "asc"]]})
    offers = vast_offers.search_offers(
        [listed(gpus=4, partial=True, free=[2, 3])], {"bitcoin": RATE}, q, 0
    )
    assert [o["num_gpus"] for o in offers] == [1, 2, 3, 4]
    assert [o["id"] % vast_offers.OFFER_STRIDE for o in offers] == [1, 2, 3, 4]
    assert [o["rentable"] for o in offers] == [True, True, False, False]
    assert offers[0]["dph_base"] == pytest.approx(0.25 / 4)
    assert offers[0]["cpu_cores_effective"] == 4 and offers[0]["disk_space"] == 25
    bids = vast_offers.search_offers(
        [listed(gpus=4, partial=True, free=[])],
        {"bitcoin": RATE},
        vast_offers.parse_offer_query({"type": "bid"}),
        0,
    )
    assert all(o["rentable"] and o["is_bid"] for o in bids)
    assert {round(o["dph_base"], 6) for o in bids} == {0.0125, 0.025, 0.0375, 0.05}


def test_query_operators_and_text_values() -> None:
    market = [
        listed(1, gpus=1),
        listed(2, gpus=2, on_demand="0.0002"),
        listed(3, gpus=4, on_demand="0.001"),
    ]
    rates = {"bitcoin": RATE}

    def ids(query: dict[str, Any]) -> list[int]:
        return sorted(
            o["machine_id"] for o in vast_offers.search_offers(market, rates, parse(query), 0)
        )

    assert ids({"num_gpus": {"gte": "2"}}) == [2, 3]
    assert ids({"num_gpus": {"gt": 1, "lt": 4}}) == [2]
    assert ids({"num_gpus": {"eq": "1"}}) == [1]
    assert ids({"num_gpus": {"neq": 1}}) == [2, 3]
    assert ids({"num_gpus": {"in": ["1", "4"]}}) == [1, 3]
    assert ids({"num_gpus": {"notin": [1, 4]}}) == [2]
    assert ids({"gpu_name": {"eq": "rtx 3090"}}) == [1, 2, 3]
    assert ids({"gpu_name": {"in": ["RTX 4090"]}}) == []
    assert ids({"geolocation": {"notin": ["CN", "VN"]}}) == [1, 2, 3]
    assert ids({"dph_total": {"lte": 1}}) == [1, 2]
    assert ids(
        {"verified": {"eq": "true"}, "rentable": {"eq": True}, "external": {"eq": False}}
    ) == [1, 2, 3]
    assert ids({"verified": {"eq": False}}) == []
    assert ids({"compute_cap": {"gt": 600}}) == [1, 2, 3]  # a field openclore has not: ignored
    assert ids({"num_gpus": 2}) == [2]  # a bare value is eq
    ordered = vast_offers.search_offers(
        market, rates, parse({"order": [["dph_total", "desc"]], "limit": 2}), 0
    )
    assert [o["machine_id"] for o in ordered] == [3, 2]
    # no rate for the server's currency: not offered
    assert vast_offers.search_offers(market, {}, vast_offers.parse_offer_query({}), 0) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"num_gpus": {"approx": 1}}, "unknown operator"),
        ({"num_gpus": {"in": 1}}, "needs a list"),
        ({"type": "reserved-ish"}, "type"),
        ({"limit": "many"}, "limit"),
        ({"order": "score"}, "order"),
        ({"bad field!": {"eq": 1}}, "invalid field name"),
    ],
)
def test_bad_queries_say_what_is_wrong(query: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        vast_offers.parse_offer_query(query)


def test_create_body_translation() -> None:
    ask = vast.read_create(
        {
            "client_id": "me",
            "image": "busybox:latest",
            "env": {"-p 8080:8080": "1", "-p 9000:9000/tcp": "1", "FOO": "bar", "-h": "box"},
            "price": None,
            "disk": 10.5,
            "label": "trainer",
            "onstart": "touch /tmp/ok",
            "runtype": "ssh_direc ssh_proxy",
            "image_login": "-u alice -p s3cret docker.io",
        }
    )
    assert ask.ports == {"8080": "tcp", "9000": "tcp", "22": "tcp"}
    assert ask.env == {"FOO": "bar"} and ask.price is None and ask.label == "trainer"
    assert vast.registry_auth(ask.image_login) == "alice:s3cret"
    assert vast.onstart_command(ask) == "touch /tmp/ok"
    args = vast.read_create(
        {"image": "busybox", "runtype": "args", "args": ["sh", "-c", "echo hi"]}
    )
    assert vast.onstart_command(args) == "exec sh -c 'echo hi'" and "22" not in args.ports
    jupyter = vast.read_create(
        {"image": "busybox", "runtype": "jupyter_proxy ssh_proxy", "price": 0}
    )
    assert jupyter.ports == {"22": "tcp", "8080": "http"} and jupyter.price == 0
    for bad, message in [
        ({}, "image"),
        ({"image": "x", "price": -1}, "price"),
        ({"image": "x", "price": "cheap"}, "price"),
        ({"image": "x", "env": "-e A=1"}, "env"),
        ({"image": "x", "env": {"-p 53:53/udp": "1"}}, "TCP"),
        ({"image": "x", "args": 5}, "args"),
        ({"image": "x", "image_login": "alice"}, "image_login"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            ask = vast.read_create(bad)
            vast.registry_auth(ask.image_login)


def test_instance_statuses_and_ports() -> None:
    base = {
        "expired": False,
        "stopped": False,
        "running": True,
        "spot": False,
        "runtime_state": None,
    }
    assert vast.actual_status(base) == "loading"
    assert vast.actual_status({**base, "runtime_state": "pulling"}) == "loading"
    assert vast.actual_status({**base, "runtime_state": "running"}) == "running"
    assert vast.actual_status({**base, "runtime_state": "crash_loop"}) == "exited"
    assert vast.actual_status({**base, "stopped": True}) == "stopped"
    assert vast.actual_status({**base, "running": False, "spot": True}) == "stopped"
    assert vast.actual_status({**base, "running": False}) == "exited"  # server offline
    assert vast.docker_ports(["22:40001", "8888:40002"], "gw.example") == {
        "22/tcp": [{"HostIp": "gw.example", "HostPort": "40001"}],
        "8888/tcp": [{"HostIp": "gw.example", "HostPort": "40002"}],
    }


# ------------------------------------------------------------------------------ over HTTP


def vast_client(market: Market, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=market.url, headers=headers, timeout=30)
    market.clients.append(client)
    return client


def rig(market: Market, host: str, **kwargs: Any) -> int:
    """A demo server with a disk to keep (so instances can stop) and a storage price."""
    sid = market.server(host, **kwargs)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(disk_gb=50))
        conn.execute(
            update(server_prices)
            .where(server_prices.c.server_id == sid)
            .values(storage=to_units("0.0000001"))
        )
        set_rates(conn, {"bitcoin": RATE}, market.settings, market.now())
    return sid


def test_vast_api_over_http(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = rig(market, host)
    api = vast_client(market, renter)

    found = api.post("/api/v0/bundles/", json={"num_gpus": {"gte": "1"}, "rented": {"eq": False}})
    assert found.status_code == 200, found.text
    (offer,) = found.json()["offers"]
    assert offer["id"] == sid * 100 + 1 and offer["dph_total"] == pytest.approx(
        0.00001 * 60000 / 24
    )
    assert api.put("/api/v0/search/asks/", json={"q": {"num_gpus": {"gte": 1}}}).json()[
        "offers"
    ] == [offer]
    assert api.get("/api/v0/bundles/", params={"q": '{"num_gpus": {"gt": 5}}'}).json() == {
        "offers": []
    }

    created = api.put(
        f"/api/v0/asks/{offer['id']}/",
        json={
            "client_id": "me",
            "image": "busybox:latest",
            "env": {"-p 8080:8080": "1", "MODE": "test"},
            "price": None,
            "disk": 20,
            "label": "first",
            "onstart": "echo started",
            "runtype": "ssh",
        },
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["success"] is True
    order_id = body["new_contract"]
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == order_id)).one()
        actions = [a for (a,) in conn.execute(select(audit_log.c.action).order_by(audit_log.c.id))]
    assert row.image == "busybox:latest" and row.command == "echo started"
    assert row.autossh_entrypoint is True and row.ports == {"22": "tcp", "8080": "tcp"}
    assert row.env == {"MODE": "test"} and row.disk_gb == 20 and row.spot is False
    assert "order.create" in actions and "order.label" in actions

    listing = api.get(
        "/api/v1/instances/",
        params={"select_filters": "{}", "order_by": '[{"col": "id", "dir": "asc"}]', "limit": 25},
    )
    assert listing.status_code == 200, listing.text
    page = listing.json()
    assert page["total_instances"] == 1 and page["next_token"] is None
    (inst,) = page["instances"]
    assert (
        inst["id"] == order_id and inst["actual_status"] == "running" and inst["label"] == "first"
    )
    assert inst["cur_state"] == "running" and inst["intended_status"] == "running"
    ssh_port = int(inst["ports"]["22/tcp"][0]["HostPort"])
    assert inst["ssh_port"] == ssh_port and inst["ssh_host"] == inst["public_ipaddr"]
    assert inst["extra_env"] == [["MODE", "test"]] and inst["image_uuid"] == "busybox:latest"
    assert inst["dph_total"] == pytest.approx(0.025) and isinstance(inst["start_date"], float)
    assert (
        api.get(f"/api/v0/instances/{order_id}/", params={"owner": "me"}).json()["instances"]
        == inst
    )
    assert api.get("/api/v0/instances/").json()["instances"] == [inst]
    filtered = api.get(
        "/api/v1/instances/", params={"select_filters": '{"actual_status": {"in": ["stopped"]}}'}
    )
    assert filtered.json()["instances"] == []

    assert api.put(f"/api/v0/instances/{order_id}/", json={"label": "renamed"}).json() == {
        "success": True
    }
    assert api.put(f"/api/v0/instances/{order_id}/", json={"state": "stopped"}).json() == {
        "success": True
    }
    inst = api.get(f"/api/v0/instances/{order_id}/").json()["instances"]
    assert (inst["actual_status"], inst["cur_state"], inst["intended_status"]) == (
        "stopped",
        "stopped",
        "stopped",
    )
    assert inst["label"] == "renamed"
    again = api.put(f"/api/v0/instances/{order_id}/", json={"state": "stopped"})
    assert again.status_code == 409 and again.json()["error"] == "order_already_stopped"
    assert api.put(f"/api/v0/instances/{order_id}/", json={"state": "running"}).json() == {
        "success": True
    }
    assert (
        api.get(f"/api/v0/instances/{order_id}/").json()["instances"]["actual_status"] == "running"
    )
    assert api.request("DELETE", f"/api/v0/instances/{order_id}/", json={}).json() == {
        "success": True
    }
    assert api.get(f"/api/v0/instances/{order_id}/").json() == {"instances": None}
    assert api.get("/api/v1/instances/").json()["instances"] == []
    gone = api.delete(f"/api/v0/instances/{order_id}/")
    assert gone.status_code == 409 and gone.json()["success"] is False

    # an interruptible bid: 0 is the minimum bid, a number is USD per hour
    minimum = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "busybox", "price": 0})
    assert minimum.status_code == 200, minimum.text
    with market.db.read() as conn:
        bid = conn.execute(
            select(orders).where(orders.c.id == minimum.json()["new_contract"])
        ).one()
    assert bid.spot is True and bid.price == to_units("0.000001")
    assert api.delete(f"/api/v0/instances/{bid.id}/").status_code == 200
    low = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "busybox", "price": 0.0001})
    assert low.status_code == 400 and low.json()["error"] == "too_low_price"
    assert low.json()["min_bid"] == pytest.approx(0.0025)
    high = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "busybox", "price": 0.01})
    assert high.status_code == 200, high.text
    with market.db.read() as conn:
        bid = conn.execute(select(orders).where(orders.c.id == high.json()["new_contract"])).one()
    assert bid.spot is True and bid.price == to_units("0.000004")  # 0.24 USD a day
    raised = api.put(
        f"/api/v0/instances/bid_price/{bid.id}/", json={"client_id": "me", "price": 0.02}
    )
    assert raised.json() == {"success": True}
    with market.db.read() as conn:
        assert conn.execute(
            select(orders.c.price).where(orders.c.id == bid.id)
        ).scalar() == to_units("0.000008")
    not_bid = api.put(f"/api/v0/instances/bid_price/{order_id}/", json={"price": 1})
    assert not_bid.status_code in (400, 409) and not_bid.json()["success"] is False
    assert api.put(f"/api/v0/instances/reboot/{bid.id}/", json={}).json() == {"success": True}


def test_vast_account_and_errors(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = rig(market, host)
    api = vast_client(market, renter)

    added = api.post("/api/v0/ssh/", json={"ssh_key": KEY})
    assert added.status_code == 200, added.text
    key_id = added.json()["id"]
    (listed_key,) = api.get("/api/v0/ssh/").json()
    assert listed_key["id"] == key_id and listed_key["key"].startswith("ssh-ed25519 ")
    dup = api.post("/api/v0/ssh/", json={"ssh_key": KEY})
    assert dup.status_code == 409 and dup.json()["error"] == "ssh_key_exists"
    bad = api.post("/api/v0/ssh/", json={"ssh_key": "not a key"})
    assert bad.status_code == 400 and bad.json()["success"] is False
    me = api.get("/api/v0/users/current").json()
    assert me["ssh_key"].startswith("ssh-ed25519 ") and me["balance"] == pytest.approx(600)
    assert api.get("/api/v0/users/current/").json()["id"] == me["id"]
    assert api.delete(f"/api/v0/ssh/{key_id}/").json() == {"success": True}
    assert api.get("/api/v0/ssh/").json() == []
    assert api.delete(f"/api/v0/ssh/{key_id}/").status_code == 404

    # errors: Vast's shape, the proper status, never a traceback
    cases = [
        (vast_client(market, None).get("/api/v0/users/current"), 401, "invalid_api_key"),
        (vast_client(market, "nope").post("/api/v0/bundles/", json={}), 401, "invalid_api_key"),
        (api.post("/api/v0/bundles/", content=b"{not json"), 400, "invalid_args"),
        (api.post("/api/v0/bundles/", json={"num_gpus": {"approx": 1}}), 400, "invalid_args"),
        (api.put("/api/v0/asks/999901/", json={"image": "busybox"}), 404, "server-dont-exist"),
        (api.put(f"/api/v0/asks/{sid * 100 + 1}/", json={}), 400, "invalid_args"),
        (api.put("/api/v0/asks/abc/", json={"image": "busybox"}), 400, "invalid_args"),
        (api.get("/api/v0/instances/424242/"), 404, "order_dont_exist"),
        (api.put("/api/v0/instances/1/", json={"state": "paused"}), 400, "invalid_args"),
        (api.get("/api/v0/no-such-thing/"), 404, "not_found"),
        (api.patch("/api/v1/instances/1/"), 404, "not_found"),
    ]
    for response, status, name in cases:
        assert response.status_code == status, (response.request.url, response.text)
        body = response.json()
        assert body["success"] is False and body["error"] == name and body["msg"], body
    # a key's scopes (SPEC §8): a read-only key searches, but rents nothing and sees no keys
    with market.db.write() as conn:
        _, secret = create_key(
            conn,
            market.user_id(renter),
            name="reader",
            scopes=frozenset({"read"}),
            expires_at=None,
            spend_limit=None,
            now=market.now(),
            creator=None,
            actor=SYSTEM,
        )
    reader = vast_client(market, secret)
    assert reader.post("/api/v0/bundles/", json={}).status_code == 200
    refused = reader.put(f"/api/v0/asks/{sid * 100 + 1}/", json={"image": "busybox"})
    assert refused.status_code == 403
    assert refused.json()["error"] == "missing_scope" and refused.json()["scope"] == "rent"
    assert reader.get("/api/v0/ssh/").json()["scope"] == "account"
    with market.db.read() as conn:
        assert conn.execute(select(orders.c.id)).first() is None
    poor = market.user()
    broke = vast_client(market, poor).put(
        f"/api/v0/asks/{sid * 100 + 1}/", json={"image": "busybox"}
    )
    assert broke.status_code == 400 and broke.json()["error"] == "not_enough_balance"
    own = vast_client(market, host).put(f"/api/v0/asks/{sid * 100 + 1}/", json={"image": "busybox"})
    assert own.status_code == 403 and own.json()["error"] == "cant_rent_from_yourself"


def test_vast_rate_limit_and_hostile_input(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = rig(market, host)
    api = vast_client(market, renter)
    hostile: list[Any] = [
        [],
        "text",
        {"num_gpus": {"eq": {"deep": [1, {"x": None}]}}},
        {"num_gpus": {"in": [{"a": 1}, None, True, "x"]}},
        {"order": [[1, "asc"]]},
        {"order": [["num_gpus", "sideways"]]},
        {"limit": 10**30},
        {"limit": True},
        {"allocated_storage": "lots"},
        {"q": "not an object"},
        {"type": ["bid"]},
        {"image": ["busybox"]},
        {"image": "busybox", "env": {"-p 99999:99999": "1"}},
        {"image": "busybox", "env": {"A": {"nested": 1}}},
        {"image": "busybox", "disk": "big"},
        {"image": "busybox", "price": True},
        {"image": "busybox", "label": "x" * 1000},
        {"image": "busybox", "args": [1, 2]},
        {"image": "busybox", "image_login": "-u only"},
        {"state": 5},
        {"label": 7},
        {"ssh_key": 42},
        {"price": "NaN"},
    ]
    paths = [
        ("POST", "/api/v0/bundles/"),
        ("PUT", "/api/v0/search/asks/"),
        ("PUT", f"/api/v0/asks/{sid * 100 + 1}/"),
        ("PUT", "/api/v0/instances/1/"),
        ("PUT", "/api/v0/instances/bid_price/1/"),
        ("POST", "/api/v0/ssh/"),
        ("PUT", "/api/v0/ssh/1/"),
    ]
    for method, path in paths:
        for body in hostile:
            response = api.request(method, path, json=body)
            assert response.status_code < 500, (method, path, body, response.text)
            assert response.json().get("success", True) in (True, False)
            if response.status_code >= 400:
                assert response.json()["msg"], response.text
    for params in [
        {"select_filters": "{bad"},
        {"select_filters": '{"label": {"approx": 1}}'},
        {"order_by": '"id"'},
        {"limit": "x"},
        {"after_token": "-5"},
    ]:
        response = api.get("/api/v1/instances/", params=params)
        assert response.status_code in (200, 400), response.text
    assert api.get("/api/v0/instances").json() == {"instances": []}  # older clients: no slash
    with market.db.read() as conn:
        assert conn.execute(select(orders.c.id)).first() is None  # nothing hostile rented

    market.reconfigure(rate_limit_interval=1.0, rate_clock=ManualClock(5000.0))
    api = vast_client(market, renter)
    assert api.get("/api/v0/users/current").status_code == 200
    limited = api.get("/api/v0/users/current")
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_offers_are_searched_without_a_key_as_the_marketplace_is(market: Market) -> None:
    """`vastai search offers` with no key configured sends no Authorization header; the offers
    are public as the Clore marketplace is (SPEC §1), limited per address; nothing else is."""
    host, renter = market.user(), market.user(bitcoin="0.01")
    rig(market, host)
    anonymous, known = vast_client(market, None), vast_client(market, renter)
    query = {"num_gpus": {"gte": 1}}
    seen = anonymous.post("/api/v0/bundles/", json=query)
    assert seen.status_code == 200, seen.text
    assert seen.json() == known.post("/api/v0/bundles/", json=query).json()
    assert seen.json()["offers"]
    assert anonymous.put("/api/v0/search/asks/", json={"q": query}).json() == seen.json()
    older = anonymous.get("/api/v1/bundles/", params={"q": json.dumps(query)})
    assert older.json() == seen.json()
    # a header that is there but wrong is refused, never read as anonymous
    for header in ("Bearer nope", "Bearer", "Basic abc", ""):
        wrong = httpx.post(
            market.url + "/api/v0/bundles/", json=query, headers={"Authorization": header}
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_api_key", header
    for method, path in [("GET", "/api/v0/instances/"), ("GET", "/api/v0/ssh/")]:
        refused = anonymous.request(method, path)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_api_key"
    # limited per client address, as anonymous marketplace calls are
    market.reconfigure(rate_limit_interval=1.0, rate_clock=ManualClock(9000.0))
    anonymous = vast_client(market, None)
    assert anonymous.post("/api/v0/bundles/", json=query).status_code == 200
    limited = anonymous.post("/api/v0/bundles/", json=query)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"allocated_storage": True}, "allocated_storage: expected a number"),
        ({"allocated_storage": "lots"}, "allocated_storage: expected a number"),
        ({"allocated_storage": "inf"}, "allocated_storage: expected a finite number"),
        ({"limit": [5]}, "limit"),
        ({"order": [["dph_total", "sideways"]]}, "order"),
        ({"order": [[]]}, "order"),
        ({"order": [[3, "asc"]]}, "order"),
    ],
)
def test_more_bad_queries_say_what_is_wrong(query: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        vast_offers.parse_offer_query(query)


def test_filters_that_are_not_an_object_are_refused() -> None:
    assert vast_offers.parse_filters(None) == {}
    with pytest.raises(InvalidInput, match="q: expected an object"):
        vast_offers.parse_filters(["num_gpus", 1], "q")


def test_nulls_text_against_numbers_and_orders_written_as_text() -> None:
    market = [
        listed(1, gpus=1, on_demand="0.0003"),
        listed(2, gpus=2, on_demand="0.0002"),
        listed(3, gpus=4, on_demand="0.001"),
    ]
    market[1]["cuda_version"] = None
    rates = {"bitcoin": RATE}

    def ids(query: dict[str, Any]) -> list[int]:
        return [o["machine_id"] for o in vast_offers.search_offers(market, rates, parse(query), 0)]

    # null: equal only to null; no order against it
    assert sorted(ids({"cuda_max_good": {"eq": None}})) == [2]
    assert sorted(ids({"cuda_max_good": {"neq": None}})) == [1, 3]
    assert ids({"cuda_max_good": {"gte": None}}) == []
    # a number field asked with text that is no number: only "neq" holds
    assert ids({"num_gpus": {"eq": "four"}}) == []
    assert sorted(ids({"num_gpus": {"neq": "four"}})) == [1, 2, 3]
    # a field that is an object ordered against a number: not comparable, no match, no error
    assert ids({"search": {"gt": 1}}) == []
    # "field-" sorts descending, "field" or "field+" ascending, as the vastai CLI writes them
    assert ids({"order": ["dph_total-"]}) == [3, 1, 2]
    assert ids({"order": ["dph_total+"]}) == [2, 1, 3]
    assert ids({"order": ["dph_total"], "limit": 1}) == [2]


def test_disk_from_the_specs_and_servers_without_a_price() -> None:
    rates = {"bitcoin": RATE}
    terabyte = listed(1)
    terabyte["storage"] = {}
    unknown = listed(2)
    unknown["storage"] = {}
    unknown["specs"]["disk"] = "fast"
    disks = {
        o["machine_id"]: o["disk_space"]
        for o in vast_offers.search_offers([terabyte, unknown], rates, parse({}), 0)
    }
    assert disks == {1: 1000.0, 2: None}
    # a server without a spot price takes no bids; one without an on-demand price has no offer
    no_spot, no_on_demand = listed(3, spot="0"), listed(4, on_demand="0")
    assert [
        o["machine_id"]
        for o in vast_offers.search_offers(
            [no_spot, no_on_demand], rates, parse({"type": "bid"}), 0
        )
    ] == [4]
    assert [
        o["machine_id"]
        for o in vast_offers.search_offers([no_spot, no_on_demand], rates, parse({}), 0)
    ] == [3]
