"""The marketplace query extension: ``GET /v1/marketplace?gpu=…&sort=…`` filters on the server;
without parameters the answer is the cached listing, byte for byte."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from openclore.config import Settings
from openclore.domain.errors import InvalidInput
from openclore.market.search import build_index, parse_query, search
from openclore.market.servers import marketplace_servers
from openclore.store.schema import servers

from support import Market, ok, order_body


def _world(market: Market) -> dict[str, int]:
    host = market.user("host")
    ids = {
        "a4090x2": market.server(
            host,
            "a",
            on_demand="0.00005",
            specs={"gpu": "2x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "CZ"}},
        ),
        "b3090": market.server(host, "b", on_demand="0.00002"),  # 1x 3090, CZ
        "c4090x4": market.server(
            host,
            "c",
            on_demand="0.0002",
            specs={"gpu": "4x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "DE"}},
        ),
        "d_clore": market.server(host, "d", on_demand="30", currency="CLORE-Blockchain"),
    }
    with market.db.write() as conn:  # GPU names as the agent reports them
        for key, gpus in (("a4090x2", 2), ("c4090x4", 4)):
            conn.execute(
                servers.update()
                .where(servers.c.id == ids[key])
                .values(gpu_array=["NVIDIA GeForce RTX 4090"] * gpus)
            )
    return ids


def _ids(body: dict[str, object]) -> list[int]:
    servers = body["servers"]
    assert isinstance(servers, list)
    return [int(s["id"]) for s in servers]


def test_without_parameters_the_answer_is_the_cached_listing(market: Market) -> None:
    _world(market)
    c = market.client()
    first = c.get("/v1/marketplace")
    again = c.get("/v1/marketplace")
    listing = market.switch.app.state.openclore.market.listing  # the process's cached listing
    with market.db.read() as conn:
        cached = listing(conn)
    assert first.content == again.content == cached.anonymous
    assert first.content == b'{"servers":' + cached.servers_json + b',"my_servers":[],"code":0}'
    # unknown parameters are ignored as before
    assert c.get("/v1/marketplace?foo=1").content == first.content
    # and the serialized listing is what serializing the whole list gives (nothing reordered)
    from openclore.api.wire import dumps

    with market.db.read() as conn:
        assert cached.servers_json == dumps(marketplace_servers(conn, market.settings))


def test_filters_sort_and_pages(market: Market) -> None:
    ids = _world(market)
    c = market.client()

    def q(query: str) -> list[int]:
        return _ids(ok(c.get("/v1/marketplace?" + query)))

    assert q("gpu=4090") == [ids["a4090x2"], ids["c4090x4"]]
    assert q("gpu=4090&min_gpus=3") == [ids["c4090x4"]]
    assert q("country=cz&currency=bitcoin") == [ids["a4090x2"], ids["b3090"]]
    assert q("currency=CLORE-Blockchain") == [ids["d_clore"]]
    assert q("max_price=0.00005") == [ids["a4090x2"], ids["b3090"]]  # bitcoin by default
    assert q("max_price=40&currency=CLORE-Blockchain") == [ids["d_clore"]]
    assert q("sort=price") == [ids["b3090"], ids["a4090x2"], ids["c4090x4"], ids["d_clore"]]
    assert q("sort=gpus")[0] == ids["c4090x4"]
    body = ok(c.get("/v1/marketplace?sort=price&limit=2&offset=1"))
    assert _ids(body) == [ids["a4090x2"], ids["c4090x4"]]
    assert body["total"] == 4
    # available: a rented server drops out
    renter = market.user(bitcoin="1")
    ok(market.client(renter).post("/v1/create_order", json=order_body(ids["b3090"])))
    assert q("available=true&currency=bitcoin") == [ids["a4090x2"], ids["c4090x4"]]
    assert ids["b3090"] in q("available=false")


def test_query_answer_carries_the_callers_servers(market: Market) -> None:
    ids = _world(market)
    body = ok(market.client(_token(market)).get("/v1/marketplace?gpu=h100"))
    assert body["servers"] == [] and body["total"] == 0
    assert body["my_servers"] == sorted(ids.values())


def _token(market: Market) -> str:
    from openclore.market.accounts import find_user, issue_token

    with market.db.write() as conn:
        return issue_token(conn, find_user(conn, "host"), market.now())


@pytest.mark.parametrize(
    "query",
    [
        "min_gpus=two",
        "min_gpus=-1",
        "max_price=-1",
        "max_price=nan",
        "currency=dogecoin",
        "sort=name",
        "limit=100000",
        "available=maybe",
        "min_reliability=2",
        "gpu=" + "x" * 200,
    ],
)
def test_bad_parameters_are_invalid_input(market: Market, query: str) -> None:
    response = market.client().get("/v1/marketplace?" + query)
    assert response.json()["code"] == 2


def test_ten_thousand_servers_are_searched_quickly() -> None:
    import time

    settings = Settings()
    listing: list[dict[str, Any]] = [
        {
            "id": i,
            "price": {"on_demand": {"bitcoin": Decimal(i % 97) / 10**6}, "spot": {}},
            "rented": i % 3 == 0,
            "specs": {"gpu": f"{1 + i % 8}x RTX {3090 + i % 2 * 1000}", "gpuram": 24},
            "allowed_coins": ["bitcoin"],
            "gpu_array": [],
            "reliability": (i % 100) / 100,
        }
        for i in range(10_000)
    ]
    index = build_index(listing)
    query = parse_query(
        {"gpu": "4090", "min_gpus": "2", "available": "true", "sort": "price", "limit": "50"},
        settings.currencies,
        settings.default_currency,
    )
    start = time.perf_counter()
    found = search(index, query)
    elapsed = time.perf_counter() - start
    assert len(found.positions) == 50 and found.total > 50
    prices = [listing[i]["price"]["on_demand"]["bitcoin"] for i in found.positions]
    assert prices == sorted(prices)
    assert all(listing[i]["rented"] is False for i in found.positions)
    assert elapsed < 1.0  # generous: a few milliseconds in practice


def test_parse_query_refuses_bad_values_directly() -> None:
    with pytest.raises(InvalidInput):
        parse_query({"offset": "x"}, ["bitcoin"], "bitcoin")


def test_every_sort_and_filter_over_plain_data() -> None:
    listing: list[dict[str, Any]] = [
        {"id": 1, "specs": {"gpu": "2x RTX 3090", "gpuram": 24}, "reliability": 0.5},
        {"id": 2, "specs": {"gpu": "A100", "gpuram": 80}, "reliability": 0.99, "rented": True},
        {"id": 3, "gpu_array": ["H100"] * 8, "specs": None, "reliability": 0.9},
    ]
    for server in listing:
        server.setdefault("price", {"on_demand": {}, "spot": {}})
        server.setdefault("allowed_coins", ["bitcoin"])
    index = build_index(listing)

    def ids(**params: str) -> list[int]:
        found = search(index, parse_query(params, ["bitcoin"], "bitcoin"))
        return [int(listing[i]["id"]) for i in found.positions]

    assert ids(sort="vram") == [2, 1, 3]
    assert ids(sort="reliability") == [2, 3, 1]
    assert ids(sort="gpus") == [3, 1, 2]
    assert ids(min_vram="30") == [2]
    assert ids(min_reliability="0.9") == [2, 3]
    assert ids(available="no", sort="price") == [1, 2, 3]  # no prices: listing order
    assert ids(gpu="a100") == [2]
    assert ids(limit="1", offset="2") == [3]
    from openclore.market.search import gpu_count, gpu_name

    assert gpu_name(listing[0]) == "RTX 3090" and gpu_count(listing[0]) == 2
    assert gpu_name(listing[1]) == "A100" and gpu_count(listing[1]) == 0
    assert gpu_name(listing[2]) == "H100" and gpu_count(listing[2]) == 8
    with pytest.raises(InvalidInput):
        parse_query({"min_vram": "lots"}, ["bitcoin"], "bitcoin")
