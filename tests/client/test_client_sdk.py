"""The Python SDK (openclore.client) against a real openclore server over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from openclore.api.wire import dumps as wire_dumps
from openclore.api.wire import strip_trailing_commas
from openclore.client import (
    AmountTooLow,
    AsyncClient,
    CanLowerEvery600Seconds,
    CantRentFromYourself,
    Client,
    CloreConnectionError,
    CloreError,
    CurrencyNotAllowed,
    ExceededMaxStep,
    InternalError,
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    IssueDescriptionTooLong,
    MarketError,
    MarketplaceResponse,
    MyOrdersResponse,
    MyServersResponse,
    NotEnoughBalance,
    Order,
    OrderDoesNotExist,
    OrderLookupFailed,
    OrderNotActive,
    Pacer,
    PriceChanged,
    RateLimited,
    ServerAlreadyRented,
    ServerConfigResponse,
    ServerDoesNotExist,
    ServerNameTaken,
    ServerOffline,
    SpotMarketplaceResponse,
    TooLowPrice,
    WalletsResponse,
    YouAlreadyHaveSpotOrder,
    YouDontOwnThisOrder,
    error_for,
    json_dumps,
    json_loads,
    pick_new_order,
)

from support import Market

IMAGE = "cloreai/ubuntu20.04-jupyter"


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def sdk(market: Market, token: str | None, made: list[Client], **kw: Any) -> Client:
    kw.setdefault("rate_limit", False)
    c = Client(token, base_url=market.url, **kw)
    made.append(c)
    return c


# ----------------------------------------------------------------------------- seed examples

# The JSON examples of seed/clore-api-v1.zh.md, verbatim (trailing commas included).
SEED = {
    "wallets": """{
  "wallets": [
    {
      "name": "bitcoin",
      "deposit": "tb1q6erw7v02t7hakgmlcl4wfnlykzqj05alndruwr",
      "balance": 0.00153176,
      "withdrawal_fee": 0.0001
    }
  ],
  "code": 0
}""",
    "my_servers": """{
  "servers": [
    {
      "name": "Michael",
      "connected": false,
      "visibility": "hidden",
      "pricing": { "bitcoin": 0, "usd": 0 },
      "online": false,
      "min_spot_pricing": { "bitcoin": 0, "usd": 0 },
      "init_token": "qnwVIMsZPjUWS7jw6gAbTOeoGQNgTH9XVxJaiCEbG0OlmfjF"
    },
    {
      "name": "Jan Vykydal",
      "connected": true,
      "visibility": "public",
      "pricing": { "bitcoin": 0.00010337, "usd": 0 },
      "online": false,
      "min_spot_pricing": { "bitcoin": 0.00005168, "usd": 0 },
      "specs": {
        "mb": "Z590 GAMING X",
        "cpu": "Intel Core i9-11900",
        "cpus": "8/16",
        "ram": 64,
        "disk": "NVMe 512GB",
        "disk_speed": 2000,
        "gpu": "1x GeForce GTX 1080 Ti",
        "gpuram": 11,
        "net": {
          "down":119.61,
          "up":25.24
        }
      }
    }
  ],
  "limit": 16,
  "code": 0
}""",
    "server_config": """{
  "config": {
    "name": "Jan Vykydal",
    "connected": true,
    "visibility": "public",
    "pricing": { "bitcoin": 0.00010337, "usd": 0 },
    "spot_pricing": { "bitcoin": 0.00005168, "usd": 0 },
    "mrl": 72,
    "online": false,
    "initialized": true,
    "id": 4,
    "rental_status": 0,
    "specs": {
      "mb": "Z590 GAMING X",
      "cpu": "Intel Core i9-11900",
      "cpus": "8/16",
      "ram": 64,
      "disk": "NVMe 512GB",
      "disk_speed": 2000,
      "gpu": "1x GeForce GTX 1080 Ti",
      "gpuram": 11,
      "net": {
        "down":119.61,
        "up":25.24
      }
    },
    "background_job": {
      "times_updated": 1,
      "image": "cloreai/ubuntu20.04-jupyter",
      "command": "",
      "env": []
    }
  },
  "creation_completed": true,
  "code": 0
}""",
    "marketplace": """{
  "servers": [
    {
      "id": 6,
      "owner": 4,
      "mrl": 73,
      "price": { "on_demand": { "bitcoin": 0.00001 },
      "spot": { "bitcoin": 0.000001 }},
      "rented": false,
      "specs": {
        "mb": "Z590 GAMING X",
        "cpu": "第11代 Intel(R) Core(TM) i9-11900 @ 2.50GHz",
        "cpus": "8/16",
        "ram": 62.67348861694336,
        "disk": "NVMe 磁盘 247.3623046875GB",
        "disk_speed": 0,
        "gpu": "1x NVIDIA GeForce GTX 1080 Ti",
        "gpuram": 11,
        "net": {
          "up": 26.38,
          "down": 118.42,
          "cc": "CZ"
        }
      }
    }
  ],
  "my_servers": [1, 2, 4],
  "code": 0
}""",
    "my_orders": """{
  "orders": [
    {
      "id": 38,
      "fee": 5,
      "creation_fee": 3e-7,
      "price": 0.00001,
      "mrl": 262800,
      "image": "cloreai/ubuntu20.04-jupyter",
      "currency": "bitcoin",
      "spend": 6.944444444444445e-9,
      "ct": 1667401396,
      "p": 1,
      "specs": {
        "mb": "Z590 GAMING X",
        "cpu": "第11代 Intel(R) Core(TM) i9-11900 @ 2.50GHz",
        "cpus": "8/16",
        "ram": 62.67348861694336,
        "disk": "NVMe 磁盘 247.3623046875GB",
        "disk_speed": 2000,
        "gpu": "1x NVIDIA GeForce GTX 1080 Ti",
        "gpuram": 11,
        "net": {
          "up": 26.38,
          "down": 118.42,
        }
      },
      "si": 6,
      "pub_cluster": [ "n1.c1.clorecloud.net", "n2.c1.clorecloud.net" ],
      "tcp_ports": [ "22:10000" ],
      "http_port": "8888"
    },{
      "id": 36,
      "fee": 2.5,
      "creation_fee": 1e-7,
      "price": 0.00001,
      "mrl": 262800,
      "image": "cloreai/ubuntu20.04-jupyter",
      "currency": "bitcoin",
      "spend": 1.3888888888888888e-7,
      "ct": 1667248597,
      "specs": {
        "mb": "Z590 GAMING X",
        "cpu": "第11代 Intel(R) Core(TM) i9-11900 @ 2.50GHz",
        "cpus": "8/16",
        "ram": 62.67348861694336,
        "disk": "NVMe 磁盘 247.3623046875GB",
        "disk_speed": 2000,
        "gpu": "1x NVIDIA GeForce GTX 1080 Ti",
        "gpuram": 11,
        "net": {
          "up": 26.38,
          "down": 118.42,
        }
      },
      "si": 6,
      "spot": true,
      "expired": true,
      "tcp_ports": []
    }
  ],
  "limit": 13,
  "code": 0
}""",
    "spot_marketplace": """{
  "market": {
    "offers": [
      {
        "offer_id": 39,
        "bid": 0.0000042,
        "active": true,
        "my": true
      }
    ],
    "server": {
      "min_pricing": {
        "bitcoin": 0.000001
      },
      "mrl": 262800,
      "visibility": "public",
      "online": true
    }
  },
  "exists": true,
  "code": 0
}""",
    "exceeded_max_step": """{
    "error":"exceeded_max_step",
    "max_step":0.0000032,
    "code":6
}""",
    "can_lower_every_600_seconds": """{
    "error":"can_lower_every_600_seconds",
    "time_to_lowering":513,
    "code":6
}""",
}


def seed(name: str) -> dict[str, Any]:
    # the seed's examples carry trailing commas (a typo in the docs, not in the API)
    body: dict[str, Any] = json_loads(strip_trailing_commas(SEED[name]))
    return body


def test_models_parse_the_seed_examples() -> None:
    wallets = WalletsResponse.model_validate(seed("wallets")).wallets
    assert wallets[0].name == "bitcoin"
    assert wallets[0].balance == Decimal("0.00153176")
    assert wallets[0].withdrawal_fee == Decimal("0.0001")

    mine = MyServersResponse.model_validate(seed("my_servers"))
    assert mine.limit == 16
    michael, jan = mine.servers
    assert michael.id is None and michael.init_token is not None and not michael.connected
    assert jan.pricing == {"bitcoin": Decimal("0.00010337"), "usd": 0}
    assert jan.min_spot_pricing["bitcoin"] == Decimal("0.00005168")
    assert jan.specs is not None and jan.specs.net is not None and jan.specs.net.down == 119.61

    config = ServerConfigResponse.model_validate(seed("server_config"))
    assert config.creation_completed is True
    assert config.config.mrl == 72  # hours
    assert config.config.id == 4 and config.config.rental_status == 0
    assert config.config.background_job is not None
    assert config.config.background_job.env == []

    market = MarketplaceResponse.model_validate(seed("marketplace"))
    assert market.my_servers == [1, 2, 4]
    (server,) = market.servers
    assert server.mrl == 73 and not server.rented
    assert server.on_demand_price() == Decimal("0.00001")
    assert server.spot_price("bitcoin") == Decimal("0.000001")
    assert server.gpu_count == 1 and server.gpu_name == "NVIDIA GeForce GTX 1080 Ti"
    assert server.country == "CZ"
    assert server.specs is not None and server.specs.cpu is not None
    assert server.specs.cpu.startswith("第11代")

    orders = MyOrdersResponse.model_validate(seed("my_orders"))
    assert orders.limit == 13
    running, ended = orders.orders
    assert running.pub_cluster == ["n1.c1.clorecloud.net", "n2.c1.clorecloud.net"]
    assert running.tcp_ports == ["22:10000"] and running.http_port == "8888"
    assert running.ports == {22: 10000}
    assert running.ssh_command() == "ssh -p 10000 root@n1.c1.clorecloud.net"
    assert running.mrl == 262800  # seconds
    assert running.spend == Decimal("6.944444444444445e-9")  # exact: never went through float
    assert running.creation_fee == Decimal("3e-7") and running.fee == 5
    assert running.type == "on-demand" and not running.expired
    assert ended.spot and ended.expired and ended.type == "spot"
    assert ended.pub_cluster == [] and ended.tcp_ports == [] and ended.http_port is None
    assert ended.p is None and ended.ssh_command() is None
    assert ended.spend == Decimal("1.3888888888888888e-7")

    book = SpotMarketplaceResponse.model_validate(seed("spot_marketplace"))
    assert book.exists
    (offer,) = book.offers
    assert (offer.offer_id, offer.bid, offer.active, offer.my) == (
        39,
        Decimal("0.0000042"),
        True,
        True,
    )
    assert book.market is not None and book.market.server.mrl == 262800

    step = error_for(seed("exceeded_max_step"))
    assert isinstance(step, ExceededMaxStep) and step.max_step == Decimal("0.0000032")
    wait = error_for(seed("can_lower_every_600_seconds"))
    assert isinstance(wait, CanLowerEvery600Seconds) and wait.time_to_lowering == 513


def test_unknown_fields_are_kept() -> None:
    order = Order.model_validate({"id": 1, "brand_new": {"x": 1}, "tcp_ports": []})
    assert order.model_extra == {"brand_new": {"x": 1}}
    assert order.model_dump()["brand_new"] == {"x": 1}


def test_error_mapping_from_bodies() -> None:
    assert type(error_for({"code": 1})) is InternalError
    assert isinstance(error_for({"code": 2, "error": "image: bad"}), InvalidInput)
    assert str(error_for({"code": 2, "error": "image: bad"})) == "image: bad"
    assert isinstance(error_for({"code": 3}), InvalidToken)
    assert isinstance(error_for({"code": 4}), InvalidEndpoint)
    limited = error_for({"code": 5}, 429, 3.0)
    assert isinstance(limited, RateLimited) and limited.retry_after == 3.0
    assert limited.status_code == 429
    unknown = error_for({"code": 6, "error": "brand_new_error", "detail": 1})
    assert type(unknown) is MarketError
    assert unknown.name == "brand_new_error" and unknown.extra == {"detail": 1}
    for name, cls in [
        ("server-dont-exist", ServerDoesNotExist),
        ("server_dont_exist", ServerDoesNotExist),
        ("server-offline", ServerOffline),
        ("server-already-rented", ServerAlreadyRented),
        ("not_enough_balance", NotEnoughBalance),
        ("cant_rent_from_yourself", CantRentFromYourself),
        ("too_low_price", TooLowPrice),
        ("you_already_have_spot_order", YouAlreadyHaveSpotOrder),
        ("currency-not-allowed", CurrencyNotAllowed),
        ("order_dont_exist", OrderDoesNotExist),
        ("you_dont_own_this_order", YouDontOwnThisOrder),
        ("order_not_active", OrderNotActive),
        ("issue_description_too_long", IssueDescriptionTooLong),
        ("amount_too_low", AmountTooLow),
        ("price_changed", PriceChanged),
    ]:
        exc = error_for({"code": 6, "error": name})
        assert type(exc) is cls, name
        assert isinstance(exc, MarketError) and isinstance(exc, CloreError)
        assert exc.code == 6 and exc.name == name


def test_decimal_json_round_trip() -> None:
    body = {"price": Decimal("0.00000113"), "big": Decimal("123456789.123456789"), "n": 3}
    text = json_dumps(body)
    assert text == '{"price":0.00000113,"big":123456789.123456789,"n":3}'
    assert json_loads(text) == body
    assert json_dumps({"x": Decimal("1E-7")}) == '{"x":0.0000001}'
    assert json_dumps({"x": Decimal("5.000")}) == '{"x":5}'


# ----------------------------------------------------------------------------- every endpoint


def test_every_endpoint(market: Market, clients: list[Client]) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid = market.server(host, on_demand="0.00001", spot="0.000001")
    h = sdk(market, host, clients)
    r = sdk(market, renter, clients)

    (btc,) = [w for w in r.wallets() if w.name == "bitcoin"]
    assert btc.balance == Decimal("0.01") and btc.deposit

    listing = r.marketplace()
    (srv,) = [s for s in listing.servers if s.id == sid]
    assert srv.on_demand_price() == Decimal("0.00001") and not srv.rented
    assert h.marketplace().my_servers == [sid]
    anonymous = sdk(market, None, clients).marketplace()
    assert sid in [s.id for s in anonymous.servers] and anonymous.my_servers == []

    order = r.create_order(sid, IMAGE, ports={22: "tcp", 8888: "http"}, env={"A": "1"})
    assert isinstance(order, Order) and order.si == sid and order.type == "on-demand"
    assert order.price == Decimal("0.00001") and order.currency == "bitcoin"
    # connection fields come later, through my_orders (the agent publishes them)
    (listed,) = r.my_orders()
    assert listed.id == order.id and listed.ssh_port is not None and listed.http_port == "8888"
    assert listed.pub_cluster and isinstance(listed.pub_cluster, list)
    assert listed.mrl == 72 * 3600

    book = r.spot_marketplace(sid)
    assert book.exists and book.market is not None
    assert book.market.server.min_pricing == {"bitcoin": Decimal("0.000001")}
    assert r.spot_marketplace(987654).exists is False

    r.cancel_order(order.id, issue="GPU #1 overheats")
    assert r.my_orders() == []
    (ended,) = r.my_orders(return_completed=True)
    assert ended.id == order.id and ended.expired

    (mine,) = h.my_servers()
    assert mine.id == sid and mine.online
    config = h.server_config(mine.name)
    assert config.id == sid and config.mrl == 72
    h.set_server_settings(mine.name, on_demand=Decimal("0.00000113"), spot="0.0000005", mrl=96)
    config = h.server_config(mine.name)
    assert config.pricing["bitcoin"] == Decimal("0.00000113")
    assert config.spot_pricing["bitcoin"] == Decimal("0.0000005")
    assert config.mrl == 96
    h.set_server_settings(mine.name, currency="CLORE-Blockchain", on_demand="12345.123456789")
    assert h.server_config(mine.name).pricing["CLORE-Blockchain"] == Decimal("12345.123456789")
    h.set_server_settings(mine.name, availability=False)
    assert h.server_config(mine.name).visibility == "hidden"

    added = h.add_server("second rig")
    assert added.id > sid and len(added.init_token) == 48
    assert {s.name for s in h.my_servers()} == {mine.name, "second rig"}

    r.sandbox.deposit("CLORE-Blockchain", "12.5")
    (clore,) = [w for w in r.wallets() if w.name == "CLORE-Blockchain"]
    assert clore.balance == Decimal("12.5")
    assert isinstance(r.sandbox.advance_time(60), int)

    raw = r.request("GET", "/v1/my_orders", params={"return_completed": "true"})
    assert raw["code"] == 0 and raw["limit"] == 13
    assert isinstance(raw["orders"][0]["price"], Decimal)


def test_spot_bids_and_their_errors(market: Market, clients: list[Client]) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid = market.server(host, on_demand="0.00001", spot="0.000001")
    r = sdk(market, renter, clients)
    offer = r.create_order(sid, IMAGE, type="spot", spot_price="0.0000042", ports={"22": "tcp"})
    assert offer.spot and offer.price == Decimal("0.0000042")
    book = r.spot_marketplace(sid)
    assert [(o.offer_id, o.bid, o.my) for o in book.offers] == [
        (offer.id, Decimal("0.0000042"), True)
    ]

    with pytest.raises(ExceededMaxStep) as step:
        r.set_spot_price(offer.id, "0.000002")
    assert step.value.max_step == Decimal("0.0000032")
    r.set_spot_price(offer.id, Decimal("0.0000032"))
    with pytest.raises(CanLowerEvery600Seconds) as wait:
        r.set_spot_price(offer.id, "0.0000022")
    assert wait.value.time_to_lowering == 600
    r.set_spot_price(offer.id, "0.00001")  # raising: any time
    market.advance(600)
    with pytest.raises(AmountTooLow) as low:
        r.set_spot_price(offer.id, "0.0000005")
    assert low.value.min_price == Decimal("0.000001")
    with pytest.raises(YouAlreadyHaveSpotOrder):
        r.create_order(sid, IMAGE, type="spot", spot_price="0.000002")
    with pytest.raises(TooLowPrice) as too_low:
        sdk(market, market.user(bitcoin="1"), clients).create_order(
            sid, IMAGE, type="spot", spot_price="0.0000001"
        )
    assert too_low.value.min_price == Decimal("0.000001")
    with pytest.raises(OrderDoesNotExist):
        r.set_spot_price(999999, "0.1")


def test_errors_from_a_real_server(market: Market, clients: list[Client]) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid = market.server(host)
    offline = market.server(host, "offline rig", online=False)
    h = sdk(market, host, clients)
    r = sdk(market, renter, clients)

    with pytest.raises(InvalidToken) as bad:
        sdk(market, "not-a-token", clients).wallets()
    assert bad.value.code == 3 and bad.value.status_code == 200
    with pytest.raises(InvalidToken):
        sdk(market, None, clients).my_orders()
    with pytest.raises(InvalidEndpoint):
        r.request("GET", "/v1/no_such_endpoint")
    with pytest.raises(InvalidInput) as invalid:
        r.create_order(sid, "not an image!")
    assert "image" in (invalid.value.error or "")
    with pytest.raises(ServerDoesNotExist):
        r.create_order(999999, IMAGE)
    with pytest.raises(ServerDoesNotExist):
        h.server_config("no such server")
    with pytest.raises(ServerOffline):
        r.create_order(offline, IMAGE)
    with pytest.raises(CantRentFromYourself):
        h.create_order(sid, IMAGE)
    with pytest.raises(NotEnoughBalance):
        sdk(market, market.user(), clients).create_order(sid, IMAGE)
    with pytest.raises(CurrencyNotAllowed):
        r.create_order(sid, IMAGE, currency="dogecoin")
    with pytest.raises(PriceChanged) as changed:
        r.create_order(sid, IMAGE, required_price="0.5")
    assert changed.value.price == Decimal("0.00001")
    order = r.create_order(sid, IMAGE)
    with pytest.raises(ServerAlreadyRented):
        sdk(market, market.user(bitcoin="1"), clients).create_order(sid, IMAGE)
    with pytest.raises(YouDontOwnThisOrder):
        h.cancel_order(order.id)
    with pytest.raises(IssueDescriptionTooLong):
        r.cancel_order(order.id, issue="x" * 2049)
    r.cancel_order(order.id)
    with pytest.raises(OrderNotActive):
        r.cancel_order(order.id)
    with pytest.raises(ServerNameTaken):
        h.add_server("rig")

    market.reconfigure(sandbox=False)
    with pytest.raises(InvalidEndpoint):
        r.sandbox.deposit("bitcoin", 1)

    market.reconfigure(http_status="rest")
    with pytest.raises(ServerDoesNotExist) as rest:
        r.create_order(999999, IMAGE)
    assert rest.value.status_code == 404
    with pytest.raises(InvalidToken) as rest_token:
        sdk(market, "not-a-token", clients).wallets()
    assert rest_token.value.status_code == 401


def test_async_client(market: Market) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    sid = market.server(host)

    async def main() -> None:
        async with AsyncClient(renter, base_url=market.url, rate_limit=False) as r:
            wallets, listing = await asyncio.gather(r.wallets(), r.marketplace())
            assert {w.name for w in wallets} >= {"bitcoin"}
            assert sid in [s.id for s in listing.servers]
            order = await r.create_order(sid, IMAGE, ports={22: "tcp"})
            (listed,) = await r.my_orders()
            assert listed.id == order.id and listed.ssh_command() is not None
            assert (await r.spot_marketplace(sid)).exists
            with pytest.raises(ServerAlreadyRented):
                await r.create_order(sid, IMAGE)
            await r.cancel_order(order.id)
            assert (await r.my_orders(return_completed=True))[0].expired
            await r.sandbox.deposit("bitcoin", Decimal("0.5"))
            assert isinstance(await r.sandbox.advance_time(1), int)
        async with AsyncClient(host, base_url=market.url, rate_limit=False) as h:
            (mine,) = await h.my_servers()
            await h.set_server_settings(mine.name, spot="0.000002")
            config = await h.server_config(mine.name)
            assert config.spot_pricing["bitcoin"] == Decimal("0.000002")
            assert (await h.add_server("async rig")).init_token
            with pytest.raises(OrderDoesNotExist):
                await h.set_spot_price(424242, 1)

    asyncio.run(main())


# ----------------------------------------------------------------------------- create_order


class ClorelikeCreateOrder:
    """Answers create_order the way Clore.ai does, ``{"code":0}`` without the order (the order is
    still created by the real server behind it); ``swallow`` drops the request instead."""

    def __init__(self, app: Any, swallow: bool = False) -> None:
        self.app = app
        self.swallow = swallow

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/create_order"):
            await self.app(scope, receive, send)
            return
        ok = wire_dumps({"code": 0})
        if not self.swallow:
            status: dict[str, Any] = {}

            async def capture(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status.update(message)

            await self.app(scope, receive, capture)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": ok})


def test_create_order_finds_the_order_when_the_server_sends_no_id(
    market: Market, clients: list[Client]
) -> None:
    host = market.user()
    renter = market.user(bitcoin="0.01")
    first, second = market.server(host, "a"), market.server(host, "b")
    r = sdk(market, renter, clients)
    older = r.create_order(first, IMAGE)  # an unrelated live order on another server
    market.switch.app = ClorelikeCreateOrder(market.switch.app)
    spot = r.create_order(second, IMAGE, type="spot", spot_price="0.000002")
    live = {o.id: o for o in r.my_orders()}
    assert spot.id in live and spot.id != older.id
    assert spot.si == second and spot.spot and live[spot.id].price == Decimal("0.000002")
    r.cancel_order(older.id)
    again = r.create_order(first, IMAGE, ports={22: "tcp"})
    assert again.id not in (older.id, spot.id) and again.si == first and not again.spot
    assert again.id == max(o.id for o in r.my_orders())


def test_create_order_lookup_failure_is_reported(market: Market, clients: list[Client]) -> None:
    host = market.user()
    sid = market.server(host)
    market.switch.app = ClorelikeCreateOrder(market.switch.app, swallow=True)
    r = sdk(market, market.user(bitcoin="0.01"), clients, lookup_attempts=2)
    with pytest.raises(OrderLookupFailed):
        r.create_order(sid, IMAGE)


def test_pick_new_order_prefers_the_recent_match() -> None:
    def order(i: int, si: int, ct: int, spot: bool = False, expired: bool = False) -> Order:
        return Order(id=i, si=si, ct=ct, spot=spot, expired=expired, image=IMAGE)

    now = 1_700_000_000
    orders = [order(1, 6, now - 9000), order(2, 6, now - 10, spot=True), order(3, 7, now)]
    assert pick_new_order(orders, server_id=6, spot=True, started=now) == orders[1]
    assert pick_new_order(orders, server_id=6, spot=False, started=now) == orders[0]
    assert pick_new_order(orders, server_id=8, spot=False, started=now) is None
    both = [order(4, 6, now - 9000), order(5, 6, now + 1)]
    assert pick_new_order(both, server_id=6, spot=False, started=now) == both[1]
    assert (
        pick_new_order([order(9, 6, now, expired=True)], server_id=6, spot=False, started=now)
        is None
    )


# ----------------------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_waits_only_for_what_is_left() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, 5.0, clock=clock)
    assert pacer.reserve() == 0  # the first call is immediate
    clock.now += 0.4
    assert pacer.reserve() == pytest.approx(0.6)  # the rest of the interval
    clock.now += 10
    assert pacer.reserve(create_order=True) == 0
    clock.now += 1.5
    assert pacer.reserve(create_order=True) == pytest.approx(3.5)  # create_order: 1 per 5 s
    clock.now += 20
    pacer.hold(3)  # Retry-After: 3
    assert pacer.reserve() == pytest.approx(3)


class Recorder:
    """httpx event hooks: the status of every response the client received."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.sent: list[float] = []

    def request(self, request: httpx.Request) -> None:
        self.sent.append(time.monotonic())

    def response(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)

    def http(self) -> httpx.Client:
        return httpx.Client(
            timeout=30, event_hooks={"request": [self.request], "response": [self.response]}
        )


def record_waits(c: Client) -> list[float]:
    """The waits the client's pacer decides on (what it sleeps before each send)."""
    waits: list[float] = []
    reserve = c.pacer.reserve

    def recorded(create_order: bool = False) -> float:
        waits.append(reserve(create_order))
        return waits[-1]

    c.pacer.reserve = recorded  # type: ignore[method-assign]
    return waits


# The client paces calls PACE seconds apart, the server's limit. The server tolerates 0.45 s of
# jitter here: on a loaded machine (the suite's other worker, or stress-ng) the server, a thread
# of the test process, may stamp one request a few hundred ms later than the next, and these
# tests are about the client's schedule, not the server's tolerance. A client that did not pace
# would still be refused within its first calls (the tolerance is under the interval).
PACE = 0.5
PACED: dict[str, Any] = {
    "rate_limit_interval": PACE,
    "create_order_interval": 1,
    "rate_limit_tolerance": 0.45,
}


@pytest.mark.timing
def test_no_sleep_when_the_server_is_not_limiting(market: Market, clients: list[Client]) -> None:
    market.reconfigure(**PACED)
    token = market.user()
    rec = Recorder()
    c = sdk(market, token, clients, rate_limit=True, interval=PACE, http_client=rec.http())
    waits = record_waits(c)
    c.wallets()
    assert waits == [0]  # the first call never waits
    time.sleep(PACE + 0.2)  # longer than the interval: the next call goes at once too
    c.wallets()
    assert waits == [0, 0]
    for _ in range(4):
        c.wallets()
    assert all(0 < w <= PACE for w in waits[2:])  # only what is left of the interval
    assert rec.statuses == [200] * 6  # paced: never refused
    # the sends are spaced by the sleeps (hook times lag their slots by a varying few ms, so
    # the bound is loose; unpaced sends would be milliseconds apart)
    gaps = [b - a for a, b in zip(rec.sent[1:], rec.sent[2:], strict=False)]
    assert min(gaps) >= PACE - 0.1


@pytest.mark.timing
def test_pacing_across_threads_and_tasks(market: Market, clients: list[Client]) -> None:
    market.reconfigure(**PACED)
    rec = Recorder()
    c = sdk(market, market.user(), clients, rate_limit=True, interval=PACE, http_client=rec.http())
    threads = [threading.Thread(target=c.wallets) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rec.statuses == [200] * 5

    statuses: list[int] = []

    async def main() -> None:
        async def hook(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        http = httpx.AsyncClient(timeout=30, event_hooks={"response": [hook]})
        async with AsyncClient(
            market.user(), base_url=market.url, interval=PACE, http_client=http
        ) as a:
            started = time.monotonic()
            await asyncio.gather(*(a.wallets() for _ in range(5)))
            assert time.monotonic() - started >= 4 * PACE - 0.05
        await http.aclose()

    asyncio.run(main())
    assert statuses == [200] * 5


@pytest.mark.timing
def test_create_order_pacing(market: Market, clients: list[Client]) -> None:
    market.reconfigure(**PACED)
    host = market.user()
    sids = [market.server(host, f"rig{i}") for i in range(3)]
    rec = Recorder()
    c = sdk(
        market,
        market.user(bitcoin="1"),
        clients,
        rate_limit=True,
        interval=PACE,
        create_order_interval=1,
        http_client=rec.http(),
    )
    for sid in sids:
        c.create_order(sid, IMAGE)
    assert rec.statuses == [200] * 3
    assert rec.sent[2] - rec.sent[0] >= 1.8  # two 1 s create_order slots (hooks lag slots a little)


@pytest.mark.timing
def test_retry_after_is_honoured(market: Market, clients: list[Client]) -> None:
    # a 1 s slot: the second call lands inside it even on a machine under stress-ng
    market.reconfigure(rate_limit_interval=1, create_order_interval=1)
    token = market.user()
    rec = Recorder()
    c = sdk(market, token, clients, rate_limit=False, http_client=rec.http())
    c.wallets()
    started = time.monotonic()
    c.wallets()  # refused (code 5, Retry-After: 1), then sent again after Retry-After
    waited = time.monotonic() - started
    assert rec.statuses == [200, 429, 200]
    assert 0.95 <= waited < 2.5
    strict = sdk(market, token, clients, rate_limit=False, retry_rate_limited=False)
    c.wallets()
    with pytest.raises(RateLimited) as refused:
        strict.wallets()
    assert refused.value.retry_after == 1 and refused.value.status_code == 429


def test_rate_limited_create_order_is_resent(market: Market, clients: list[Client]) -> None:
    # code 5 means the server refused before doing anything: create_order is safe to re-send.
    # The interval is long enough that the second order comes within it even when the first
    # took seconds on a loaded machine (with 1 s, a slow first answer let the second through)
    market.reconfigure(rate_limit_interval=0.3, create_order_interval=4)
    host = market.user()
    a, b = market.server(host, "a"), market.server(host, "b")
    rec = Recorder()
    c = sdk(market, market.user(bitcoin="1"), clients, rate_limit=False, http_client=rec.http())
    c.create_order(a, IMAGE)
    second = c.create_order(b, IMAGE)
    assert second.si == b
    assert rec.statuses[0] == 200 and rec.statuses[-1] == 200 and 429 in rec.statuses
    assert len(c.my_orders()) == 2


# ----------------------------------------------------------------------------- retries


class HangUp:
    """A TCP server that reads each request and closes the connection without an answer."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.requests = 0
        self.heads: list[str] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.requests += 1
                    self.heads.append(data.split(b"\r\n\r\n")[0].decode("latin-1"))

    def close(self) -> None:
        self.sock.close()


def test_reads_are_retried_but_create_order_is_never_resent_without_keyed_retries() -> None:
    server = HangUp()
    try:
        with Client(
            "t", base_url=server.url, rate_limit=False, retry_backoff=0.01, keyed_retries=False
        ) as c:
            with pytest.raises(CloreConnectionError) as read:
                c.wallets()
            assert read.value.sent and server.requests == 4  # 1 + max_retries
            before = server.requests
            with pytest.raises(CloreConnectionError) as create:
                c.create_order(6, IMAGE)
            assert create.value.sent
            assert server.requests - before == 1  # it may have arrived: never sent twice
            before = server.requests
            with pytest.raises(CloreConnectionError):
                c.cancel_order(1)
            assert server.requests - before == 1
    finally:
        server.close()


def test_create_order_is_resent_with_one_idempotency_key() -> None:
    """openclore rents once per Idempotency-Key, so a create_order that may have arrived is sent
    again with the same key; every order gets a new key; Clore.ai (ignoring keys) never."""
    server = HangUp()
    try:
        with Client("t", base_url=server.url, rate_limit=False, retry_backoff=0.01) as c:
            for _ in range(2):
                with pytest.raises(CloreConnectionError):
                    c.create_order(6, IMAGE)
            with pytest.raises(CloreConnectionError):
                c.cancel_order(1)
        keys = [
            line.split(":", 1)[1].strip()
            for head in server.heads
            for line in head.split("\r\n")
            if line.lower().startswith("idempotency-key:")
        ]
        assert server.requests == 4 + 4 + 1  # 1 + max_retries for each order; cancel once
        assert len(keys) == 8 and len(set(keys[:4])) == 1 and len(set(keys[4:])) == 1
        assert keys[0] != keys[4] and keys[0].startswith("oc-")
        assert Client("t", base_url="https://api.clore.ai/v1").retry.keyed_retries is False
    finally:
        server.close()


def test_connection_refused_is_safe_to_retry() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(
            "t",
            base_url=f"http://127.0.0.1:{port}",
            rate_limit=False,
            retry_backoff=0.01,
            max_retries=1,
        ) as c,
        pytest.raises(CloreConnectionError) as e,
    ):
        c.create_order(6, IMAGE)
    assert e.value.sent is False and "cannot reach" in str(e.value)


def test_settings_and_transport_seam(market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    token = market.user()
    monkeypatch.setenv("OPENCLORE_URL", market.url + "/v1/")  # the clore-ai SDK's convention
    monkeypatch.setenv("OPENCLORE_API_KEY", token)
    with Client(rate_limit=False, transport=httpx.HTTPTransport(retries=0)) as c:
        assert c.base_url == market.url
        assert c.wallets()
    monkeypatch.delenv("OPENCLORE_URL")
    assert Client("x").base_url == "https://api.clore.ai"
