"""Scoped API keys (SPEC §8), through the API on both databases: scopes refuse and change
nothing, keys never make stronger keys, revocation and expiry are immediate, and a spend limit
bounds what the key's orders are billed in a market day (they stop at the second it is reached)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from openclore.api.v1 import SANDBOX_ENDPOINTS, V1_ENDPOINTS
from openclore.market.api_keys import SCOPES
from openclore.store.schema import audit_log, orders

from support import Market, error, ok, order_body, spot_body

DAY = 86400


def make_key(client: httpx.Client, **body: Any) -> tuple[dict[str, Any], str]:
    made = ok(client.post("/v1/create_api_key", json=body))
    assert made["secret"] not in str(made["key"])
    return made["key"], made["secret"]


def count(market: Market, table: Any) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_every_endpoint_names_a_known_scope_and_only_reads_need_read() -> None:
    reads_that_post = {"order_logs"}  # asks the agent for logs: a read, though it writes a row
    for ep in [*V1_ENDPOINTS, *SANDBOX_ENDPOINTS]:
        if ep.name == "api_key":  # a key always sees itself
            assert ep.scope is None
            continue
        assert ep.scope in SCOPES, ep.name
        if not ep.readonly and ep.name not in reads_that_post:
            assert ep.scope != "read", f"{ep.name} changes something but needs only read"
    by_name = {ep.name: ep.scope for ep in V1_ENDPOINTS}
    assert by_name["create_order"] == by_name["cancel_order"] == by_name["stop_order"] == "rent"
    assert by_name["set_spot_price"] == by_name["start_order"] == "rent"
    assert by_name["set_server_settings"] == by_name["add_server"] == "host"
    assert by_name["withdraw"] == "money"
    assert by_name["add_ssh_key"] == by_name["create_api_key"] == "account"


def test_a_read_key_cannot_rent_and_nothing_changes(market: Market) -> None:
    sid = market.server(market.user())
    owner = market.client(market.user(bitcoin="1"))
    row, secret = make_key(owner, name="dashboard", scopes=["read"])
    assert row["scopes"] == ["read"] and row["name"] == "dashboard"
    assert row["prefix"] == secret[:8] and row["spend_limit"] is None
    reader = market.client(secret)
    assert ok(reader.get("/v1/wallets"))["wallets"]
    assert ok(reader.get("/v1/api_key"))["key"]["scopes"] == ["read"]
    before = (count(market, orders), count(market, audit_log), ok(reader.get("/v1/wallets")))
    refused = reader.post("/v1/create_order", json=order_body(sid)).json()
    assert refused == {"error": "missing_scope", "scope": "rent", "code": 3}
    for path, scope in (
        ("/v1/withdraw", "money"),
        ("/v1/set_server_settings", "host"),
        ("/v1/add_ssh_key", "account"),
        ("/v1/create_api_key", "account"),
    ):
        body = reader.post(path, json={}).json()
        assert (body["code"], body["error"], body["scope"]) == (3, "missing_scope", scope)
    assert (count(market, orders), count(market, audit_log), ok(reader.get("/v1/wallets"))) == (
        before
    )
    # the full token sees the key in the list, never its secret
    listed = ok(owner.get("/v1/api_keys"))["keys"]
    assert secret not in str(listed)
    assert [k["scopes"] for k in listed] == [list(SCOPES), ["read"]]


def test_missing_scope_is_403_in_rest_mode(market: Market) -> None:
    market.reconfigure(http_status="rest")
    owner = market.client(market.user())
    _, secret = make_key(owner, scopes="read")
    response = market.client(secret).post("/v1/cancel_order", json={"id": 1})
    assert response.status_code == 403 and response.json()["error"] == "missing_scope"


def test_a_key_never_makes_or_revokes_a_stronger_key(market: Market) -> None:
    owner = market.client(market.user(bitcoin="1"))
    _, admin_secret = make_key(
        owner, scopes=["read", "account", "rent"], spend_limit={"bitcoin": "0.001"}
    )
    keyed = market.client(admin_secret)
    body = keyed.post("/v1/create_api_key", json={"scopes": ["read", "money"]}).json()
    assert body["error"] == "scope_not_held" and body["scopes"] == ["money"]
    assert error(keyed.post("/v1/create_api_key", json={"scopes": ["read"]})) == (
        "spend_limit_not_held"
    )
    too_much = {"scopes": ["read"], "spend_limit": {"bitcoin": "0.002"}}
    assert error(keyed.post("/v1/create_api_key", json=too_much)) == "spend_limit_not_held"
    other_currency = {"scopes": ["read"], "spend_limit": {"CLORE-Blockchain": "1"}}
    assert error(keyed.post("/v1/create_api_key", json=other_currency)) == "spend_limit_not_held"
    child, _ = make_key(keyed, scopes=["read"], spend_limit={"bitcoin": "0.0005"})
    assert child["spend_limit"] == {"bitcoin": 0.0005}
    # it cannot revoke the account's full token, but it can revoke the key it made
    full_id = ok(owner.get("/v1/api_key"))["key"]["id"]
    assert error(keyed.post("/v1/revoke_api_key", json={"id": full_id})) == "scope_not_held"
    ok(keyed.post("/v1/revoke_api_key", json={"id": child["id"]}))
    assert error(keyed.post("/v1/revoke_api_key", json={"id": child["id"]})) == (
        "api_key_dont_exist"
    )


def test_bad_key_requests_get_clear_errors(market: Market) -> None:
    owner = market.client(market.user())
    cases: list[dict[str, Any]] = [
        {},
        {"scopes": []},
        {"scopes": ["read", "admin"]},
        {"scopes": [1]},
        {"scopes": ["read"], "spend_limit": {"dogecoin": 1}},
        {"scopes": ["read"], "spend_limit": {"bitcoin": "lots"}},
        {"scopes": ["read"], "spend_limit": {"bitcoin": -1}},
        {"scopes": ["read"], "spend_limit": {"bitcoin": True}},
        {"scopes": ["read"], "spend_limit": {}},
        {"scopes": ["read"], "expires_at": market.now() - 1},
        {"scopes": ["read"], "name": "x" * 65},
    ]
    for body in cases:
        answer = owner.post("/v1/create_api_key", json=body).json()
        assert answer["code"] == 2, (body, answer)
        assert isinstance(answer["error"], str) and answer["error"]
    assert len(ok(owner.get("/v1/api_keys"))["keys"]) == 1


def test_revoked_and_expired_keys_stop_working_at_once(market: Market) -> None:
    owner = market.client(market.user())
    row, secret = make_key(owner, scopes=["read"], expires_at=market.now() + 3600)
    keyed = market.client(secret)
    ok(keyed.get("/v1/wallets"))
    market.clock.advance(3600)
    expired = keyed.get("/v1/wallets").json()
    assert expired == {"error": "api key expired", "code": 3}
    assert ok(owner.get("/v1/api_keys"))["keys"][1]["expired"] is True
    row, secret = make_key(owner, scopes=["read"])
    keyed = market.client(secret)
    ok(keyed.get("/v1/wallets"))
    ok(owner.post("/v1/revoke_api_key", json={"id": row["id"]}))
    assert keyed.get("/v1/wallets").json()["code"] == 3


def test_a_spend_limit_stops_the_keys_orders_at_the_second_it_is_reached(market: Market) -> None:
    host = market.user()
    first = market.server(host, "a", on_demand="0.0001")
    second = market.server(host, "b", on_demand="0.0001")
    third = market.server(host, "c", on_demand="0.0002")
    owner = market.client(market.user(bitcoin="1"))
    row, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.0001"})
    bot = market.client(secret)
    # more per day than the key may spend in a day: refused, nothing made
    body = bot.post("/v1/create_order", json=order_body(third)).json()
    assert body["error"] == "spend_limit_exceeded" and body["limit"] == 0.0001
    # a currency the limit does not name cannot be spent with the key
    assert error(bot.post("/v1/create_order", json=order_body(first, currency="CLORE-Blockchain")))
    a = ok(bot.post("/v1/create_order", json=order_body(first)))["order_id"]
    b = ok(bot.post("/v1/create_order", json=order_body(second)))["order_id"]
    full = ok(owner.post("/v1/create_order", json=order_body(third)))["order_id"]
    market.advance(DAY)
    mine = {o["id"]: o for o in ok(owner.get("/v1/my_orders"))["orders"]}
    # together they spend 0.0002 a day: the limit is reached after half a day, to the second
    for oid in (a, b):
        assert mine[oid]["state"] == "stopped" and mine[oid]["stop_reason"] == "spend_limit"
        assert Decimal(str(mine[oid]["spend"])) == Decimal("0.00005")
        assert mine[oid]["api_key_id"] == row["id"]
    # the full token is a key too, without a limit: its order runs on
    assert mine[full]["state"] == "running"
    assert mine[full]["api_key_id"] == ok(owner.get("/v1/api_key"))["key"]["id"]
    assert Decimal(str(mine[full]["spend"])) == Decimal("0.0002")
    info = ok(bot.get("/v1/api_key"))["key"]
    assert info["spent_today"] == {"bitcoin": 0.0001} and info["spend_limit"] == {"bitcoin": 0.0001}
    # today's limit is spent: no new order, no start, no raise with the key
    refused = bot.post("/v1/create_order", json=spot_body(third, "0.00001")).json()
    assert refused["error"] == "spend_limit_reached" and refused["spent"] == 0.0001
    assert error(bot.post("/v1/start_order", json={"id": a})) == "spend_limit_reached"
    events = ok(owner.get("/v1/events", params={"after": 0, "limit": 100}))["events"]
    stops = [e["data"] for e in events if e["type"] == "order.stopped"]
    assert sorted(d["order_id"] for d in stops) == sorted([a, b])
    assert {d.get("reason") for d in stops} == {"spend_limit"}
    # the next market day the key may spend again
    market.advance(DAY)
    ok(bot.post("/v1/start_order", json={"id": a}))


@pytest.mark.parametrize("scope", ["read", "rent"])
def test_the_operator_token_has_every_scope_and_a_key_sees_itself(
    market: Market, scope: str
) -> None:
    owner = market.client(market.user())
    info = ok(owner.get("/v1/api_key"))["key"]
    assert info["scopes"] == list(SCOPES) and info["expires_at"] is None
    _, secret = make_key(owner, scopes=[scope], name="bot")
    mine = ok(market.client(secret).get("/v1/api_key"))["key"]
    assert mine["scopes"] == [scope] and mine["name"] == "bot"


def test_the_limit_counts_what_was_spent_earlier_that_day_and_only_running_orders(
    market: Market,
) -> None:
    host = market.user()
    first = market.server(host, "a", on_demand="0.0001")
    second = market.server(host, "b", on_demand="0.0001")
    owner = market.client(market.user(bitcoin="1"))
    _, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.0001"})
    bot = market.client(secret)
    a = ok(bot.post("/v1/create_order", json=order_body(first)))["order_id"]
    b = ok(bot.post("/v1/create_order", json=order_body(second)))["order_id"]
    ok(bot.post("/v1/stop_order", json={"id": b}))  # stopped: it spends nothing, holds no share
    # past midnight: the new day's first hours are billed before the limit is near
    until_midnight = 86400 - market.now() % 86400
    market.advance(until_midnight + 3600)
    early = ok(bot.get("/v1/api_key"))["key"]["spent_today"]["bitcoin"]
    assert 0 < early < 0.0001
    market.advance(DAY - 3600 - 1)  # the same market day, to its last second
    mine = {o["id"]: o for o in ok(owner.get("/v1/my_orders"))["orders"]}
    assert mine[a]["state"] == "stopped" and mine[a]["stop_reason"] == "spend_limit"
    # what was spent earlier that day counted: the day's total is the limit, to the unit
    info = ok(bot.get("/v1/api_key"))["key"]
    assert info["spent_today"] == {"bitcoin": 0.0001}, info
    assert mine[b]["stop_reason"] == "user"
