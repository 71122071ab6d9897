"""Scoped API keys (market/api_keys.py): the edges and the exact answers the first tests left
open. Written to kill the mutants `scripts/mutation api_keys` found alive: the input parsers'
messages and bounds, a key making or revoking a key of exactly its own scopes, limit or expiry,
the per-user key cap, the audit entry of a new key, and the fields of the spend refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from openclore.domain.errors import InvalidInput
from openclore.market.api_keys import MAX_KEYS, _within, parse_scopes, parse_spend_limit
from openclore.store.schema import audit_log
from test_api_keys import make_key

from support import Market, error, ok, order_body

pytestmark = pytest.mark.origin("mutant")

KNOWN = "read, rent, host, money, account"


def refusal(call: Any) -> str:
    with pytest.raises(InvalidInput) as refused:
        call()
    return str(refused.value)


def test_scopes_parse_from_a_list_or_a_comma_separated_string() -> None:
    assert parse_scopes("read, rent,,") == frozenset({"read", "rent"})
    assert parse_scopes(["money"]) == frozenset({"money"})
    assert refusal(lambda: parse_scopes([])) == f"scopes: a list of scopes from {KNOWN}"
    assert refusal(lambda: parse_scopes(["read", "root"])) == (
        f"scopes: unknown scope 'root' (known: {KNOWN})"
    )


def test_spend_limits_parse_with_their_bounds_and_messages() -> None:
    currencies = ["bitcoin", "CLORE-Blockchain"]
    assert parse_spend_limit({"bitcoin": 0}, currencies) == (("bitcoin", 0),)  # nothing at all
    assert parse_spend_limit({"bitcoin": "0.000000001"}, currencies) == (("bitcoin", 1),)
    assert parse_spend_limit(None, currencies) is None
    assert refusal(lambda: parse_spend_limit({}, currencies)) == (
        'spend_limit: an object of amounts per currency, e.g. {"USD": "5"}'
    )
    for amount in (True, [1], None):
        assert refusal(lambda a=amount: parse_spend_limit({"bitcoin": a}, currencies)) == (
            "spend_limit.bitcoin: an amount"
        )
    assert refusal(lambda: parse_spend_limit({"bitcoin": "-0.1"}, currencies)) == (
        "spend_limit.bitcoin: must not be negative"
    )


def test_a_limit_equal_to_its_ceiling_is_within_it() -> None:
    assert _within((("bitcoin", 5),), (("bitcoin", 5),))
    assert not _within((("bitcoin", 6),), (("bitcoin", 5),))
    assert _within(None, None) and not _within(None, (("bitcoin", 5),))


def test_a_key_makes_and_revokes_keys_of_exactly_its_own_scopes_limit_and_expiry(
    market: Market,
) -> None:
    owner = market.client(market.user(bitcoin="1"))
    ends = market.now() + 3600
    _, secret = make_key(
        owner,
        scopes=["read", "account"],
        spend_limit={"bitcoin": "0.001"},
        expires_at=ends,
    )
    keyed = market.client(secret)
    twin, _ = make_key(
        keyed, scopes=["read", "account"], spend_limit={"bitcoin": "0.001"}, expires_at=ends
    )
    assert twin["expires_at"] == ends and twin["scopes"] == ["read", "account"]
    # a key without an expiry, or a later one, is given its maker's
    for asked in ({}, {"expires_at": ends + 60}):
        child, _ = make_key(keyed, scopes=["read"], spend_limit={"bitcoin": "0.001"}, **asked)
        assert child["expires_at"] == ends, asked
    sooner, _ = make_key(
        keyed, scopes=["read"], spend_limit={"bitcoin": "0.001"}, expires_at=ends - 60
    )
    assert sooner["expires_at"] == ends - 60
    ok(keyed.post("/v1/revoke_api_key", json={"id": twin["id"]}))  # the same scopes: allowed
    body = keyed.post("/v1/create_api_key", json={"scopes": ["read", "rent"]}).json()
    assert body["error"] == "scope_not_held"
    assert body["scopes"] == ["rent"] and body["held"] == ["account", "read"]
    full_id = ok(owner.get("/v1/api_key"))["key"]["id"]
    body = keyed.post("/v1/revoke_api_key", json={"id": full_id}).json()
    assert body["error"] == "scope_not_held" and body["scopes"] == ["host", "money", "rent"]


def test_an_expiry_must_be_after_now_to_the_second(market: Market) -> None:
    owner = market.client(market.user())
    body = owner.post(
        "/v1/create_api_key", json={"scopes": ["read"], "expires_at": market.now()}
    ).json()
    assert body["code"] == 2 and body["error"] == "expires_at: must be in the future"
    later, _ = make_key(owner, scopes=["read"], expires_at=market.now() + 1)
    assert later["expires_at"] == market.now() + 1


def test_the_per_user_key_cap_counts_that_users_live_keys_only(market: Market) -> None:
    owner = market.client(market.user())  # its first token is one live key
    other = market.client(market.user())
    made = [make_key(owner, scopes=["read"])[0]["id"] for _ in range(MAX_KEYS - 1)]
    make_key(other, scopes=["read"])  # another user's keys do not count
    body = owner.post("/v1/create_api_key", json={"scopes": ["read"]}).json()
    assert body["error"] == "api_key_limit_reached" and body["limit"] == MAX_KEYS
    ok(owner.post("/v1/revoke_api_key", json={"id": made[0]}))  # a revoked key does not count
    make_key(owner, scopes=["read"])
    # nobody revokes another user's key
    theirs = ok(other.get("/v1/api_keys"))["keys"][0]["id"]
    assert error(owner.post("/v1/revoke_api_key", json={"id": theirs})) == "api_key_dont_exist"
    assert ok(other.get("/v1/api_key"))["key"]["id"] == theirs


def test_the_audit_entry_of_a_new_key_says_what_it_may_do(market: Market) -> None:
    owner = market.client(market.user())
    key, _ = make_key(
        owner,
        name="bot",
        scopes=["rent", "read"],
        spend_limit={"bitcoin": "0.5"},
        expires_at=market.now() + 60,
    )
    with market.db.read() as conn:
        row = conn.execute(
            select(audit_log.c.detail).where(audit_log.c.target == f"api_key:{key['id']}")
        ).one()
    detail = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
    assert detail.pop("via").startswith("key:")  # the key the owner made it with
    assert detail == {
        "name": "bot",
        "scopes": ["read", "rent"],
        "expires_at": market.now() + 60,
        "spend_limit": {"bitcoin": "0.5"},
    }


def test_spend_refusals_name_the_currency_the_limit_and_what_was_spent(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "a", on_demand="0.0002")
    owner = market.client(market.user(bitcoin="1"))
    _, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.0001"})
    bot = market.client(secret)
    body = bot.post("/v1/create_order", json=order_body(sid)).json()
    assert body["error"] == "spend_limit_exceeded"
    assert (body["currency"], body["limit"]) == ("bitcoin", 0.0001)
    _, spent_secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0"})
    body = market.client(spent_secret).post("/v1/create_order", json=order_body(sid)).json()
    assert body["error"] in ("spend_limit_exceeded", "spend_limit_reached")
    assert body["currency"] == "bitcoin" and body["limit"] == 0
