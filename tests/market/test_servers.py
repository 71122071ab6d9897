"""SPEC §3, §5: servers, settings, server_config, marketplace and spot_marketplace shapes."""

from __future__ import annotations

from support import Market, error, ok, order_body, spot_body


def test_add_server_over_http_and_my_servers_shape(market: Market) -> None:
    token = market.user()
    c = market.client(token)
    body = ok(c.post("/v1/add_server", json={"name": "Michael"}))
    assert len(body["init_token"]) == 48 and body["init_token"].isalnum()
    servers = ok(c.get("/v1/my_servers"))
    assert servers["limit"] == market.settings.max_servers_per_user
    (server,) = servers["servers"]
    assert server == {
        "id": body["id"],
        "name": "Michael",
        "connected": False,
        "visibility": "hidden",
        "pricing": {"bitcoin": 0.0, "CLORE-Blockchain": 0.0, "USD-Blockchain": 0.0},
        "online": False,
        "min_spot_pricing": {"bitcoin": 0.0, "CLORE-Blockchain": 0.0, "USD-Blockchain": 0.0},
        "partial_gpu_rental": False,
        "min_gpus": 1,
        "gpu_orders": {},
        "last_seen": None,
        "agent_protocol": None,
        "simulated": False,
        "init_token": body["init_token"],
    }
    assert error(c.post("/v1/add_server", json={"name": "Michael"})) == "server_name_taken"
    assert c.post("/v1/add_server", json={"name": ""}).json()["code"] == 2


def test_connected_servers_hide_init_token_and_show_specs(market: Market) -> None:
    token = market.user()
    market.server(token, "Jan Vykydal", specs={"gpu": "1x GeForce GTX 1080 Ti", "gpuram": 11})
    (server,) = ok(market.client(token).get("/v1/my_servers"))["servers"]
    assert "init_token" not in server
    assert server["connected"] is True
    assert server["specs"]["gpu"] == "1x GeForce GTX 1080 Ti"
    # the agent's last heartbeat (market time) and a simulated agent say so
    assert server["last_seen"] == market.now() and server["simulated"] is True


def test_server_limit(market: Market) -> None:
    market.reconfigure(max_servers_per_user=2)
    c = market.client(market.user())
    ok(c.post("/v1/add_server", json={"name": "a"}))
    ok(c.post("/v1/add_server", json={"name": "b"}))
    assert error(c.post("/v1/add_server", json={"name": "c"})) == "server_limit_reached"


def test_server_config_shape(market: Market) -> None:
    token = market.user()
    sid = market.server(token, "Jan Vykydal", mrl=72)
    c = market.client(token)
    body = ok(c.post("/v1/server_config", json={"server_name": "Jan Vykydal"}))
    assert body["creation_completed"] is True
    config = body["config"]
    assert config["id"] == sid
    assert config["mrl"] == 72
    assert config["rental_status"] == 0
    assert config["initialized"] is True and config["connected"] is True
    assert config["pricing"]["bitcoin"] == 0.00001
    assert config["spot_pricing"]["bitcoin"] == 0.000001
    assert config["background_job"] == {"times_updated": 0, "image": None, "command": "", "env": {}}
    assert error(c.post("/v1/server_config", json={"server_name": "nope"})) == "server_dont_exist"
    # another user's server does not exist for you
    assert (
        error(
            market.client(market.user()).post(
                "/v1/server_config", json={"server_name": "Jan Vykydal"}
            )
        )
        == "server_dont_exist"
    )
    assert c.post("/v1/server_config", json={}).json()["code"] == 2


def test_rental_status_follows_the_running_order(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig")
    h = market.client(host)

    def status() -> int:
        return int(
            ok(h.post("/v1/server_config", json={"server_name": "rig"}))["config"]["rental_status"]
        )

    renter = market.client(market.user(bitcoin="0.01"))
    spot = ok(renter.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    assert status() == 1
    od = ok(
        market.client(market.user(bitcoin="0.01")).post("/v1/create_order", json=order_body(sid))
    )
    assert status() == 2
    assert od["order_id"] > spot


def test_set_server_settings_as_in_the_seed(market: Market) -> None:
    token = market.user()
    sid = market.server(token, "Jan Vykydal")
    c = market.client(token)
    r = c.post(
        "/v1/set_server_settings",
        json={
            "name": "Jan Vykydal",
            "availability": True,
            "mrl": 96,
            "on_demand": 0.0001,
            "spot": 0.00000113,
        },
    )
    assert r.content == b'{"code":0}'
    config = ok(c.post("/v1/server_config", json={"server_name": "Jan Vykydal"}))["config"]
    assert (config["mrl"], config["visibility"]) == (96, "public")
    assert config["pricing"]["bitcoin"] == 0.0001
    assert config["spot_pricing"]["bitcoin"] == 0.00000113
    listed = ok(market.client().get("/v1/marketplace"))["servers"]
    assert listed[0]["id"] == sid and listed[0]["mrl"] == 96
    assert listed[0]["price"] == {"on_demand": {"bitcoin": 0.0001}, "spot": {"bitcoin": 0.00000113}}


def test_set_server_settings_per_currency_keys_and_hiding(market: Market) -> None:
    token = market.user()
    sid = market.server(token, "rig")
    c = market.client(token)
    ok(
        c.post(
            "/v1/set_server_settings",
            json={
                "name": "rig",
                "CLORE-Blockchain_on_demand": 12.5,
                "CLORE-Blockchain_spot": 5,
                "USD-Blockchain_on_demand": 0.75,
            },
        )
    )
    listed = ok(market.client().get("/v1/marketplace"))["servers"][0]
    assert listed["price"]["on_demand"] == {
        "bitcoin": 0.00001,
        "CLORE-Blockchain": 12.5,
        "USD-Blockchain": 0.75,
    }
    assert listed["allowed_coins"] == ["bitcoin", "CLORE-Blockchain", "USD-Blockchain"]
    ok(c.post("/v1/set_server_settings", json={"name": "rig", "availability": False}))
    assert ok(market.client().get("/v1/marketplace"))["servers"] == []
    assert ok(market.client().get(f"/v1/spot_marketplace?market={sid}")) == {
        "exists": False,
        "code": 0,
    }


def test_set_server_settings_bad_input(market: Market) -> None:
    token = market.user()
    market.server(token, "rig")
    c = market.client(token)
    for body in (
        {},
        {"name": "rig"},
        {"name": "rig", "mrl": 0},
        {"name": "rig", "mrl": "96"},
        {"name": "rig", "mrl": 10**6},
        {"name": "rig", "on_demand": -1},
        {"name": "rig", "on_demand": "lots"},
        {"name": "rig", "availability": "yes"},
        {"name": "rig", "bitcoin_spot": True},
        {"name": "rig", "bitcoin_spot": 1e300},
        {"name": 5, "mrl": 3},
    ):
        assert c.post("/v1/set_server_settings", json=body).json()["code"] == 2, body
    assert error(c.post("/v1/set_server_settings", json={"name": "x", "mrl": 5})) == (
        "server_dont_exist"
    )


def test_marketplace_shape_and_my_servers(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig", mrl=73, specs={"gpu": "2x NVIDIA RTX A6000", "gpuram": 48})
    market.server(host, "hidden", visibility="hidden")
    market.server(host, "offline", online=False)
    other_host = market.user()
    other = market.server(other_host, "theirs")
    body = ok(market.client(host).get("/v1/marketplace"))
    assert [s["id"] for s in body["servers"]] == [sid, other]
    assert body["my_servers"] == [sid, sid + 1, sid + 2]
    server = body["servers"][0]
    assert server["owner"] == market.user_id(host)
    assert server["mrl"] == 73
    assert server["rented"] is False
    assert server["specs"]["gpu"] == "2x NVIDIA RTX A6000"
    assert server["gpu_array"] == ["NVIDIA GeForce RTX 3090"]
    assert 0 <= server["reliability"] <= 1
    assert server["rating"] == {"avg": 0.0, "cnt": 0}
    assert set(server) >= {"id", "owner", "mrl", "price", "rented", "specs", "allowed_coins"}


def test_marketplace_cache_follows_every_change(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig")
    anon = market.client()
    assert ok(anon.get("/v1/marketplace"))["servers"][0]["rented"] is False
    renter = market.client(market.user(bitcoin="0.01"))
    oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert ok(anon.get("/v1/marketplace"))["servers"][0]["rented"] is True
    ok(renter.post("/v1/cancel_order", json={"id": oid}))
    assert ok(anon.get("/v1/marketplace"))["servers"][0]["rented"] is False
    ok(market.client(host).post("/v1/set_server_settings", json={"name": "rig", "mrl": 5}))
    assert ok(anon.get("/v1/marketplace"))["servers"][0]["mrl"] == 5


def test_spot_marketplace_shape(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig", mrl=73, spot="0.000001")
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0000042")))["order_id"]
    body = ok(c.get(f"/v1/spot_marketplace?market={sid}"))
    assert body["exists"] is True
    assert body["market"]["offers"] == [
        {"offer_id": oid, "bid": 0.0000042, "active": True, "my": True, "currency": "bitcoin"}
    ]
    assert body["market"]["server"] == {
        "min_pricing": {"bitcoin": 0.000001},
        "mrl": 73 * 3600,
        "visibility": "public",
        "online": True,
    }
    assert ok(c.get("/v1/spot_marketplace?market=99999")) == {"exists": False, "code": 0}
    assert c.get("/v1/spot_marketplace?market=abc").json()["code"] == 2
    assert c.get("/v1/spot_marketplace").json()["code"] == 2
    assert ok(c.get("/v1/spot_marketplace?market=99999999999999")) == {"exists": False, "code": 0}


def test_server_going_offline_stops_the_running_order(market: Market) -> None:
    from openclore.engine.billing import lock_server, resolve_server
    from openclore.store.schema import servers

    sid = market.server(market.user(), "rig")
    token = market.user(bitcoin="0.01")
    c = market.client(token)
    ok(c.post("/v1/create_order", json=spot_body(sid, "0.0000864")))
    market.advance(100)
    with market.db.write() as conn:
        conn.execute(servers.update().where(servers.c.id == sid).values(online=False))
        lock_server(conn, sid)
        resolve_server(conn, sid, market.now())
    market.advance(1000)
    (offer,) = ok(c.get(f"/v1/spot_marketplace?market={sid}"))["market"]["offers"]
    assert offer["active"] is False
    assert ok(c.get("/v1/my_orders"))["orders"][0]["spend"] == 100e-9
