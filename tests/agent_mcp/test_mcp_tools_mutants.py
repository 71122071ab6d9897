"""The MCP tools' own layer, exactly: what each tool asks the market (every filter and field under
its API name, the defaults an agent gets by leaving an argument out) and every field of what it
answers (offers, orders, connection info, wallets, the key's budget, refusals). The tools are
called directly, as the MCP server calls them, over a client whose market answers from a table
and records each request; tests/agent_mcp/test_mcp_server.py drives the same tools end to end
against a real market over stdio, HTTP and in memory.

Written to kill the mutants `scripts/mutation mcp_tools` found alive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from openclore.client import (
    ApiKey,
    AsyncClient,
    CloreError,
    MarketServer,
    Order,
    Template,
    error_for,
)
from openclore.domain.errors import REGISTRY
from openclore.mcp.tools import (
    SCOPES,
    KeyInfo,
    MarketTools,
    connection,
    explain,
    money,
    offer_view,
    order_view,
    plain,
)

pytestmark = pytest.mark.origin("mutant")

Answer = dict[str, Any] | Callable[[httpx.Request], dict[str, Any]]
EVERY_SCOPE = KeyInfo(scopes=frozenset(SCOPES))


class Recorded:
    """A market answering each path from ``answers`` (a body, or a function of the request),
    recording every request it gets."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[request.url.path]
        body = answer(request) if callable(answer) else answer
        return httpx.Response(200, json={"code": 0, **body})

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]

    def params(self, path: str) -> dict[str, str]:
        (request,) = [r for r in self.requests if r.url.path == path]
        return dict(request.url.params)

    def body(self, path: str) -> dict[str, Any]:
        (request,) = [r for r in self.requests if r.url.path == path]
        found: dict[str, Any] = json.loads(request.content, parse_float=Decimal)
        return found


def run_tool(
    market: Recorded, tool: str, key: KeyInfo = EVERY_SCOPE, /, **arguments: Any
) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        transport = httpx.MockTransport(market)
        async with AsyncClient(
            "k", base_url="http://market", transport=transport, rate_limit=False
        ) as client:
            found: dict[str, Any] = await getattr(MarketTools(client, key), tool)(**arguments)
            return found

    return asyncio.run(call())


ORDER = {
    "id": 7,
    "si": 3,
    "type": "on-demand",
    "state": "running",
    "image": "img",
    "currency": "bitcoin",
    "price": "0.5",
    "spend": "0.00000001",
    "ct": 1700000000,
    "mrl": 3600,
    "gpu_count": 2,
    "gpu_array": ["RTX 4090", "RTX 4090"],
    "gpus": [0, 1],
    "disk_gb": 40,
    "storage_per_day": "0.004",
    "stop_reason": "user",
    "stop_at": 1700003600,
    "template_id": 9,
    "error": "image pull failed",
}


# ----------------------------------------------------------------------------- the views


def test_an_order_shows_every_field_under_its_name() -> None:
    assert order_view(Order.model_validate(ORDER)) == {
        "id": 7,
        "server_id": 3,
        "type": "on-demand",
        "state": "running",
        "image": "img",
        "currency": "bitcoin",
        "price_per_day": "0.5",
        "spent": "0.00000001",
        "created_at": 1700000000,
        "max_rental_seconds": 3600,
        "gpu_count": 2,
        "gpu_names": ["RTX 4090", "RTX 4090"],
        "gpu_indices": [0, 1],
        "disk_gb": 40,
        "storage_per_day": "0.004",
        "stop_reason": "user",
        "stop_at": 1700003600,
        "template_id": 9,
        "error": "image pull failed",
        "connection": {},
    }


def test_an_orders_state_where_the_market_sends_none() -> None:
    """A Clore market sends no ``state``: it is read from ``expired`` and ``running``; an order
    neither ended nor running has none (not yet known). Empty fields are left out."""

    def state(**fields: Any) -> Any:
        return order_view(Order.model_validate({"id": 1, **fields})).get("state")

    assert state(expired=True, running=True) == "ended"
    assert state(running=True) == "running"
    assert state(running=False) is None
    assert state() is None
    assert order_view(Order.model_validate({"id": 1})) == {
        "id": 1,
        "type": "on-demand",
        "connection": {},
    }
    assert "gpu_names" not in order_view(Order.model_validate({"id": 1, "gpu_array": []}))


def test_an_http_port_without_its_url_yet() -> None:
    waiting = Order.model_validate({"id": 1, "running": True, "http_port": "8888"})
    assert connection(waiting) == {"http": {"port": "8888", "url": None}}


SERVER = {
    "id": 11,
    "mrl": 720,
    "rented": False,
    "specs": {"gpu": "2x RTX 4090", "gpuram": 24, "cpu": "EPYC 7543", "ram": 128.5},
    "allowed_coins": ["bitcoin", "USD-Blockchain"],
    "gpu_array": ["RTX 4090", "RTX 4090"],
    "reliability": 0.97,
    "cuda_version": "12.4",
    "online": True,
    "price": {
        "on_demand": {"bitcoin": "0.001"},
        "spot": {"bitcoin": "0.0001"},
        "usd": {"on_demand_usd": "60.5"},
    },
    "partial_gpu_rental": {
        "enabled": True,
        "min_gpus": 1,
        "free_indices": [1],
        "price_per_gpu": {"on_demand": {"bitcoin": "0.0005"}},
    },
    "storage": {"disk_gb": 200, "price_per_gb_day": {"bitcoin": "0.00001"}},
}


def test_an_offer_shows_every_field_under_its_name() -> None:
    assert offer_view(MarketServer.model_validate(SERVER)) == {
        "id": 11,
        "gpu_count": 2,
        "gpu": "RTX 4090",
        "vram_gb_per_gpu": 24,
        "cpu": "EPYC 7543",
        "ram_gb": 128.5,
        "reliability": 0.97,
        "rented": False,
        "currencies": ["bitcoin", "USD-Blockchain"],
        "on_demand_per_day": {"bitcoin": "0.001"},
        "spot_min_per_day": {"bitcoin": "0.0001"},
        "usd_per_day": "60.5",
        "max_rental_hours": 720,
        "cuda": "12.4",
        "per_gpu": {"min_gpus": 1, "free_gpus": 1, "on_demand_per_gpu_day": {"bitcoin": "0.0005"}},
        "storage": {"disk_gb": 200, "price_per_gb_day": {"bitcoin": "0.00001"}},
    }


def test_an_offer_leaves_out_what_the_server_does_not_report() -> None:
    bare = offer_view(MarketServer.model_validate({"id": 12, "rented": True}))
    assert bare == {"id": 12, "gpu_count": 0, "gpu": "", "rented": True}
    # per-GPU renting switched off by the host: no per_gpu; no per-GPU price: None is left out
    whole = {**SERVER, "partial_gpu_rental": {**SERVER["partial_gpu_rental"], "enabled": False}}
    assert "per_gpu" not in offer_view(MarketServer.model_validate(whole))
    unpriced = {**SERVER, "partial_gpu_rental": {"enabled": True, "free_indices": [0, 1]}}
    assert offer_view(MarketServer.model_validate(unpriced))["per_gpu"] == {
        "min_gpus": 1,
        "free_gpus": 2,
    }
    no_usd = {**SERVER, "price": {"on_demand": {"bitcoin": "0.001"}}}
    view = offer_view(MarketServer.model_validate(no_usd))
    assert "usd_per_day" not in view and "spot_min_per_day" not in view


def test_money_never_reads_minus_zero_and_models_drop_empty_fields() -> None:
    assert money(Decimal("-0")) == "0"
    assert money(Decimal("-0.00")) == "0.00"
    assert money(Decimal("-0.5")) == "-0.5"
    assert money(None) is None
    template = Template(id=1, name="n", image="i")
    assert plain(template) == {
        "id": 1,
        "name": "n",
        "image": "i",
        "public": False,
        "mine": False,
        "created_at": 0,
    }


# ----------------------------------------------------------------------------- refusals


def test_a_known_refusal_reads_as_its_registered_sentence_with_every_field() -> None:
    refusal = error_for(
        {"code": 6, "error": "too_low_price", "min_price": Decimal("0.5"), "currency": "bitcoin"}
    )
    assert explain(refusal) == (
        f"{REGISTRY['too_low_price'].message} (too_low_price; min_price: 0.5, currency: bitcoin)"
    )
    assert explain(error_for({"code": 3})) == (
        "The market refused the API key (invalid, revoked or expired token)."
    )
    assert explain(CloreError("")) == "CloreError"


# ----------------------------------------------------------------------------- the key


def test_the_key_as_the_market_reports_it() -> None:
    key = ApiKey(
        id=5,
        name="agent",
        scopes=["read", "rent"],
        expires_at=1800000000,
        spend_limit={"bitcoin": Decimal("0.5")},
    )
    assert KeyInfo.from_api(key) == KeyInfo(
        scopes=frozenset({"read", "rent"}),
        name="agent",
        key_id=5,
        expires_at=1800000000,
        spend_limit={"bitcoin": Decimal("0.5")},
        reported=True,
    )
    assert KeyInfo.unreported().reported is False
    assert KeyInfo.unreported() == KeyInfo(scopes=frozenset(SCOPES), reported=False)
    # nothing spent today in a currency: all of its limit is left
    assert KeyInfo.from_api(key).budget(key) == {
        "scopes": ["read", "rent"],
        "name": "agent",
        "expires_at": 1800000000,
        "spend_limit_per_day": {"bitcoin": "0.5"},
        "spent_today": {},
        "left_today": {"bitcoin": "0.5"},
    }


# ----------------------------------------------------------------------------- search


def marketplace(servers: list[dict[str, Any]], mine: list[int] | None = None) -> Recorded:
    return Recorded(
        {"/v1/marketplace": {"servers": servers, "my_servers": mine or [], "total": len(servers)}}
    )


def test_search_asks_for_available_servers_by_price_twenty_at_most() -> None:
    market = marketplace([])
    assert run_tool(market, "search_offers") == {"total": 0, "offers": []}
    assert market.params("/v1/marketplace") == {"sort": "price", "limit": "20", "available": "true"}


def test_search_sends_each_filter_under_its_api_name() -> None:
    market = marketplace([])
    run_tool(
        market,
        "search_offers",
        gpu="4090",
        min_gpus=2,
        free_gpus=1,
        min_vram_gb=24,
        max_price="0.5",
        currency="bitcoin",
        country="CZ",
        min_reliability=0.9,
        available_only=False,
        sort="gpus",
        limit=3,
    )
    assert market.params("/v1/marketplace") == {
        "sort": "gpus",
        "limit": "3",
        "gpu": "4090",
        "min_gpus": "2",
        "free_gpus": "1",
        "min_vram": "24",
        "max_price": "0.5",
        "currency": "bitcoin",
        "country": "CZ",
        "min_reliability": "0.9",
    }


def test_search_leaves_out_the_agents_own_servers_and_keeps_to_the_limit() -> None:
    servers = [{"id": i} for i in (1, 2, 3, 4)]
    found = run_tool(marketplace(servers, mine=[2]), "search_offers", limit=2)
    assert [o["id"] for o in found["offers"]] == [1, 3] and found["total"] == 4


# ----------------------------------------------------------------------------- renting


def renting(orders: Answer | None = None) -> Recorded:
    return Recorded(
        {
            "/v1/create_order": {"order_id": 7, "order": ORDER},
            "/v1/my_orders": orders if orders is not None else {"orders": [ORDER]},
        }
    )


def test_an_on_demand_rental_sends_its_fields_and_ssh_by_default() -> None:
    market = renting()
    answer = run_tool(
        market,
        "rent_server",
        server_id=3,
        image="img",
        price="0.5",
        env={"A": "1"},
        gpu_count=2,
        command="sleep 9",
        ssh_key="ssh-ed25519 AAAA agent",
    )
    assert answer == {"order": order_view(Order.model_validate(ORDER))}
    assert market.paths() == ["/v1/create_order"]  # answered at once: no wait by default
    assert market.body("/v1/create_order") == {
        "currency": "bitcoin",
        "renting_server": 3,
        "type": "on-demand",
        "image": "img",
        "ports": {"22": "tcp"},
        "env": {"A": "1"},
        "ssh_key": "ssh-ed25519 AAAA agent",
        "command": "sleep 9",
        "required_price": Decimal("0.5"),
        "gpu_count": 2,
    }


def test_a_spot_bid_sends_its_price_as_the_bid() -> None:
    market = renting()
    run_tool(
        market,
        "rent_server",
        server_id=3,
        image="img",
        type="spot",
        price="0.25",
        currency="CLORE-Blockchain",
        ports={"8888": "http"},
    )
    body = market.body("/v1/create_order")
    assert body["type"] == "spot" and body["spotprice"] == Decimal("0.25")
    assert "required_price" not in body and body["currency"] == "CLORE-Blockchain"
    assert body["ports"] == {"8888": "http"}


def test_a_rental_from_a_template_takes_the_templates_ports() -> None:
    market = renting()
    run_tool(market, "rent_server", server_id=3, template_id=9)
    assert market.body("/v1/create_order") == {
        "currency": "bitcoin",
        "renting_server": 3,
        "type": "on-demand",
        "template_id": 9,
    }
    market = renting()
    run_tool(market, "rent_server", server_id=3, template_id=9, ports={"80": "http"})
    assert market.body("/v1/create_order")["ports"] == {"80": "http"}


def test_waiting_answers_the_reachable_order() -> None:
    later = {**ORDER, "spend": "0.00000002"}
    market = renting({"orders": [later]})
    answer = run_tool(market, "rent_server", server_id=3, image="img", wait_seconds=5)
    assert answer == {"order": order_view(Order.model_validate(later))}
    assert market.params("/v1/my_orders") == {"return_completed": "true"}


def test_waiting_past_its_time_says_so_with_the_order() -> None:
    starting = {**ORDER, "state": None, "running": False}
    answer = run_tool(renting({"orders": [starting]}), "rent_server", server_id=3, image="img",
                      wait_seconds=1)  # fmt: skip
    assert answer == {
        "order": order_view(Order.model_validate(ORDER)),
        "note": "not reachable yet after 1 s: poll order_status",
    }


def test_an_order_gone_while_waiting_is_said_with_the_order() -> None:
    answer = run_tool(renting({"orders": []}), "rent_server", server_id=3, image="img",
                      wait_seconds=5)  # fmt: skip
    assert answer == {
        "order": order_view(Order.model_validate(ORDER)),
        "note": "while waiting: order 7 is not an active order of yours",
    }


def test_rent_server_refusals_before_asking_the_market() -> None:
    from openclore.mcp.tools import ToolFailure

    with pytest.raises(ToolFailure) as spot:
        run_tool(renting(), "rent_server", server_id=3, image="img", type="spot")
    assert str(spot.value) == "A spot order needs `price`: the bid per day."
    with pytest.raises(ToolFailure) as nothing:
        run_tool(renting(), "rent_server", server_id=3)
    assert str(nothing.value) == "Give an `image` or a `template_id`."


# ----------------------------------------------------------------------------- orders


def test_order_status_asks_for_ended_orders_only_when_needed() -> None:
    ended = {**ORDER, "id": 8, "state": "ended", "expired": True}

    def orders(request: httpx.Request) -> dict[str, Any]:
        with_ended = request.url.params["return_completed"] == "true"
        return {"orders": [ORDER, ended] if with_ended else [ORDER]}

    market = Recorded({"/v1/my_orders": orders})
    assert [o["id"] for o in run_tool(market, "order_status")["orders"]] == [7]
    assert market.params("/v1/my_orders") == {"return_completed": "false"}
    market = Recorded({"/v1/my_orders": orders})
    assert run_tool(market, "order_status", order_id=8)["order"]["state"] == "ended"
    assert market.params("/v1/my_orders") == {"return_completed": "true"}
    market = Recorded({"/v1/my_orders": orders})
    assert [o["id"] for o in run_tool(market, "order_status", include_ended=True)["orders"]] == [
        7,
        8,
    ]


def test_logs_ask_for_two_hundred_lines_and_a_cancel_passes_its_issue() -> None:
    market = Recorded({"/v1/order_logs": {"logs": ["a", "b"]}, "/v1/cancel_order": {}})
    assert run_tool(market, "order_logs", order_id=7) == {"order_id": 7, "lines": ["a", "b"]}
    assert market.params("/v1/order_logs") == {"id": "7", "tail": "200"}
    last = Recorded({"/v1/order_logs": {"logs": ["b"]}})
    run_tool(last, "order_logs", order_id=7, tail=1)
    assert last.params("/v1/order_logs") == {"id": "7", "tail": "1"}
    run_tool(market, "cancel_order", order_id=7, issue="no GPU visible")
    assert market.body("/v1/cancel_order") == {"id": 7, "issue": "no GPU visible"}


# ----------------------------------------------------------------------------- templates


TEMPLATE = {"id": 4, "name": "nb", "image": "img", "public": False, "mine": True}


def test_templates_are_searched_by_name_and_created_with_every_field() -> None:
    market = Recorded({"/v1/templates": {"templates": [TEMPLATE]}})
    assert run_tool(market, "list_templates", q="nb") == {
        "templates": [{**TEMPLATE, "created_at": 0}]
    }
    assert market.params("/v1/templates") == {"q": "nb"}
    market = Recorded({"/v1/create_template": {"template": TEMPLATE}})
    run_tool(
        market,
        "create_template",
        name="nb",
        image="img",
        command="jupyter lab",
        env={"A": "1"},
        ports={"8888": "http"},
        disk_gb=30,
        readme="a notebook",
    )
    assert market.body("/v1/create_template") == {
        "name": "nb",
        "image": "img",
        "public": False,
        "command": "jupyter lab",
        "env": {"A": "1"},
        "ports": {"8888": "http"},
        "disk_gb": 30,
        "readme": "a notebook",
    }
    market = Recorded({"/v1/create_template": {"template": TEMPLATE}})
    run_tool(market, "create_template", name="nb", image="img", public=True)
    assert market.body("/v1/create_template") == {"name": "nb", "image": "img", "public": True}


# ----------------------------------------------------------------------------- the wallet


WALLETS = {
    "wallets": [
        {
            "name": "bitcoin",
            "deposit": "bc1qexample",
            "balance": "1",
            "burn_per_day": "0.5",
            "runway_seconds": 172800,
        }
    ]
}


def test_a_wallet_shows_its_deposit_address_and_runway() -> None:
    market = Recorded({"/v1/wallets": WALLETS})
    answer = run_tool(market, "wallet", KeyInfo.unreported())
    assert answer["wallets"] == [
        {
            "currency": "bitcoin",
            "balance": "1",
            "burn_per_day": "0.5",
            "runway_seconds": 172800,
            "deposit_address": "bc1qexample",
            "runway_days": "2.00",
        }
    ]
    # a market that does not report keys is not asked again
    assert market.paths() == ["/v1/wallets"]
    assert answer["key"]["note"] == "the market does not report key scopes; every tool is offered"
