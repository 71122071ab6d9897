"""Text and money a hostile client sent that the API must refuse as invalid input (code 2, never
an internal error), on both databases over real HTTP. Each test reproduced a defect before its
fix; moved from the former tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from support import Market, ok, order_body, spot_body

pytestmark = pytest.mark.origin("hostile")


NUL = "a\u0000b"


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("add_server", {"name": NUL}),
        ("server_config", {"server_name": NUL}),
        ("set_server_settings", {"name": NUL, "availability": True}),
        ("create_order", {**order_body(1), "command": NUL}),
        ("cancel_order", {"id": 1, "issue": NUL}),
        ("create_order", {**order_body(1), "env": {"A": "1"}, NUL: 1}),
    ],
)
def test_nul_characters_are_invalid_input(market: Market, endpoint: str, body: Any) -> None:
    answer = market.client(market.user()).post(f"/v1/{endpoint}", json=body)
    assert answer.status_code == 200 and answer.json()["code"] == 2, answer.text
    assert "NUL" in answer.json()["error"]


@pytest.mark.parametrize("name", ["\x1b[2Jrig", "rig\u202e", "tab\there"])
def test_control_characters_in_names_are_invalid(market: Market, name: str) -> None:
    answer = market.client(market.user()).post("/v1/add_server", json={"name": name})
    assert answer.json()["code"] == 2


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("set_spot_price", {"order_id": 1, "desired_price": " 2e-3 "}),
        ("set_spot_price", {"order_id": 1, "desired_price": "0.001"}),
        ("create_order", spot_body(1, "0.001") | {"spotprice": "0.001"}),
        ("create_order", order_body(1, required_price="0.00001")),
        ("set_server_settings", {"name": "rig", "on_demand": "1"}),
        ("deposit", {"currency": "bitcoin", "amount": "1"}),
    ],
)
def test_money_must_be_a_json_number(market: Market, endpoint: str, body: Any) -> None:
    prefix = "/sandbox" if endpoint == "deposit" else "/v1"
    answer = market.client(market.user()).post(f"{prefix}/{endpoint}", json=body)
    assert answer.json()["code"] == 2, answer.text


BAD_TEXT = {"nul": "al\u0000ice", "surrogate": "al\ud800ice"}


TEXT_KEYS = ["name", "server_name", "id", "order_id", "currency", "market", "cursor", "month"]


@pytest.mark.parametrize("bad", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
def test_nul_or_a_lone_surrogate_anywhere_is_invalid_input(market: Market, bad: str) -> None:
    """In any JSON body (keys included) and any query string of every endpoint: code 2, never
    an internal error, on both databases (PostgreSQL refuses NUL, every encoder a lone
    surrogate)."""
    from openclore.api.v1 import SANDBOX_ENDPOINTS, V1_ENDPOINTS

    client = market.client(market.user(bitcoin="0.01"))
    paths = [f"/v1/{ep.name}" for ep in V1_ENDPOINTS]
    paths += [f"/sandbox/{ep.name}" for ep in SANDBOX_ENDPOINTS]
    body = json.dumps({**{key: bad for key in TEXT_KEYS}, bad: 1}).encode()
    for path in paths:
        for answer in (
            client.post(path, content=body, headers={"Content-Type": "application/json"}),
            client.post(path, content=json.dumps([{"order_id": 1, "image": bad}]).encode()),
        ):
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json()["code"] == 2, (path, answer.text)
        if "\x00" in bad:  # a query string cannot carry a lone surrogate (it is UTF-8)
            for key in TEXT_KEYS:
                answer = client.get(f"{path}?{key}=al%00ice")
                assert answer.status_code == 200, (path, key, answer.text)
                assert answer.json()["code"] == 2, (path, key, answer.text)
    # the agents' registration and the signed deposit webhook
    url = f"{market.url}/agent/v1/register"
    for sent in ({"init_token": bad}, {"init_token": "x", bad: 1}):
        answer = httpx.post(url, content=json.dumps(sent).encode(), timeout=10)
        assert answer.status_code == 400 and answer.json()["error"], answer.text
    from openclore.market.payments import sign

    market.reconfigure(payments_webhook_secret="whsec-test-0123456789")
    raw = json.dumps(
        {"external_id": bad, "currency": "bitcoin", "amount": "0.001", "user": "x"}
    ).encode()
    answer = market.client().post(
        "/payments/deposit",
        content=raw,
        headers={"Openclore-Signature": sign("whsec-test-0123456789", int(time.time()), raw)},
    )
    assert answer.status_code == 400 and answer.json()["code"] == 2, answer.text
    ok(market.client().get("/v1/marketplace"))
