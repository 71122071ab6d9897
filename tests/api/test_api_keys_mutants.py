"""Scoped API keys (market/api_keys.py): the edges and the exact answers the first tests left
open. Written to kill the mutants `scripts/mutation api_keys` found alive: the input parsers'
messages and bounds, a key making or revoking a key of exactly its own scopes, limit or expiry,
the per-user key cap, the audit entry of a new key, and the fields of the spend refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import Coins
from openclore.engine.spending import spent_today
from openclore.market.api_keys import (
    ALL_SCOPES,
    MAX_KEYS,
    SCOPES,
    Key,
    _within,
    check_spend,
    is_full,
    key_for_token,
    list_keys,
    parse_scopes,
    parse_spend_limit,
    revoke_key,
)
from openclore.market.audit import Actor
from openclore.market.sessions import session_for, start_session
from openclore.store.schema import api_tokens, audit_log, web_sessions
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


# ------------------------------------------------------------------ the use cases, directly


def keyed(market: Market, **body: Any) -> tuple[int, int, str]:
    """(user id, key id, secret) of a new key of a new user with 1 BTC."""
    token = market.user(bitcoin="1")
    key, secret = make_key(market.client(token), **body)
    return market.user_id(token), int(key["id"]), secret


def test_a_full_key_has_every_scope_no_limit_and_no_expiry() -> None:
    full = Key(1, 2, "abcdefgh", ALL_SCOPES, None, None)
    assert is_full(full)
    assert not is_full(replace(full, scopes=ALL_SCOPES - {"money"}))
    assert not is_full(replace(full, expires_at=10))
    assert not is_full(replace(full, spend_limit=(("bitcoin", 5),)))


def test_a_key_acts_as_its_user_through_itself() -> None:
    key = Key(7, 2, "abcdefgh", frozenset({"read"}), None, (("bitcoin", 5),))
    assert key.actor("203.0.113.9") == Actor(
        "user:2", 2, "203.0.113.9", "key:7:abcdefgh", 7, (("bitcoin", 5),)
    )


def test_a_token_is_found_with_what_its_key_may_do(market: Market) -> None:
    uid, kid, secret = keyed(
        market, scopes=["rent", "read"], spend_limit={"bitcoin": "0.000000005"}
    )
    with market.db.read() as conn:
        key = key_for_token(conn, secret)
        assert key_for_token(conn, "") is None
        assert key_for_token(conn, secret + "x" * (257 - len(secret))) is None
        assert key_for_token(conn, secret[:-1]) is None
    assert key == Key(kid, uid, secret[:8], frozenset({"read", "rent"}), None, (("bitcoin", 5),))
    with market.db.write() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.id == kid).values(revoked_at=1))
    with market.db.read() as conn:
        assert key_for_token(conn, secret) is None


def test_an_operators_token_is_a_key_with_every_scope(market: Market) -> None:
    token = market.user()
    with market.db.read() as conn:
        key = key_for_token(conn, token)
    assert key is not None
    assert (key.user_id, key.scopes, key.expires_at, key.spend_limit) == (
        market.user_id(token),
        ALL_SCOPES,
        None,
        None,
    )
    assert is_full(key)


def test_the_listed_keys_are_the_users_live_ones_in_order_with_their_fields(
    market: Market,
) -> None:
    token = market.user(bitcoin="1")
    owner = market.client(token)
    now = market.now()
    first, _ = make_key(owner, name="bot", scopes=["money", "read"], expires_at=now + 60)
    second, _ = make_key(owner, scopes=["read"], spend_limit={"bitcoin": "0.5"})
    gone, _ = make_key(owner, scopes=["read"])
    make_key(market.client(market.user()), scopes=["read"])  # another user's
    ok(owner.post("/v1/revoke_api_key", json={"id": gone["id"]}))
    uid = market.user_id(token)
    # the first key moved to another user and back: PostgreSQL now keeps it after the others
    # in its heap and in the user index, so only ORDER BY lists it first
    with market.db.write() as conn:
        conn.execute(
            update(api_tokens).where(api_tokens.c.id == first["id"]).values(user_id=uid + 1)
        )
    with market.db.write() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.id == first["id"]).values(user_id=uid))
    with market.db.read() as conn:
        listed = list_keys(conn, uid, now + 59)
        at_expiry = list_keys(conn, uid, now + 60)
    (operator_token,) = [k for k in listed if k["id"] not in (first["id"], second["id"])]
    assert [k["id"] for k in listed] == sorted(k["id"] for k in listed)
    by_id = {k["id"]: k for k in listed}
    assert by_id[first["id"]] == {
        "id": first["id"],
        "name": "bot",
        "prefix": first["prefix"],
        "scopes": ["read", "money"],  # in the order of SCOPES
        "created_at": now,
        "expires_at": now + 60,
        "expired": False,
        "spend_limit": None,
    }
    assert by_id[second["id"]]["spend_limit"] == {"bitcoin": Coins(500_000_000)}
    assert by_id[second["id"]]["spent_today"] == {"bitcoin": Coins(0)}
    assert "spent_today" not in by_id[first["id"]]
    assert operator_token["scopes"] == list(SCOPES)
    assert {k["id"]: k["expired"] for k in at_expiry}[first["id"]] is True


def test_revoking_needs_the_users_live_key_and_every_scope_it_has(market: Market) -> None:
    uid, kid, secret = keyed(market, scopes=["read", "rent", "money"])
    other_uid, other_kid, _ = keyed(market, scopes=["read"])
    weaker = Key(0, uid, "x", frozenset({"read", "rent"}), None, None)
    actor = Actor.user(uid, via="test")

    def revoke(user_id: int, key_id: int, revoker: Key | None) -> MarketError | None:
        try:
            with market.db.write() as conn:
                revoke_key(conn, user_id, key_id, market.now(), revoker, actor)
        except MarketError as exc:
            return exc
        return None

    refused = revoke(uid, kid, weaker)
    assert refused is not None and refused.name == "scope_not_held"
    assert refused.extra == {"scopes": ["money"]}
    assert revoke(uid, other_kid, None).name == "api_key_dont_exist"  # type: ignore[union-attr]
    with market.db.write() as conn:
        cookie = start_session(conn, uid, market.now(), kid)
    assert revoke(uid, kid, None) is None
    with market.db.read() as conn:
        assert session_for(conn, cookie, market.now()) is None
        assert not conn.execute(
            select(web_sessions.c.id_hash).where(web_sessions.c.token_id == kid)
        ).all()  # the session's row is gone, not only refused
        assert key_for_token(conn, secret) is None
        entry = conn.execute(
            select(audit_log.c.action, audit_log.c.target).where(
                audit_log.c.action == "api_key.revoke"
            )
        ).one()
    assert tuple(entry) == ("api_key.revoke", f"api_key:{kid}")
    assert revoke(uid, kid, None).name == "api_key_dont_exist"  # type: ignore[union-attr]
    assert other_uid != uid


def test_spending_with_a_limited_key_stops_at_its_limit_to_the_unit(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "billed", on_demand="0.0001")
    uid, kid, secret = keyed(market, scopes=["read", "rent"], spend_limit={"bitcoin": "0.001"})
    ok(market.client(secret).post("/v1/create_order", json=order_body(sid)))
    market.advance(600)
    now = market.now()
    with market.db.read() as conn:
        spent = spent_today(conn, kid, now)["bitcoin"]
    assert spent > 0

    def check(limit: int, per_day: int = 1, upfront: int = 0, currency: str = "bitcoin") -> Any:
        actor = Actor.user(uid, key_id=kid, spend_limit=(("bitcoin", limit),))
        try:
            with market.db.read() as conn:
                check_spend(conn, actor, currency, per_day, now, upfront)
        except MarketError as exc:
            return exc.name, exc.extra
        return None

    assert check(spent + 1) is None
    assert check(spent + 1, upfront=1) is None  # reaches the limit exactly
    assert check(spent + 1, upfront=2) == (
        "spend_limit_reached",
        {"currency": "bitcoin", "limit": Coins(spent + 1), "spent": Coins(spent)},
    )
    assert check(spent) == (
        "spend_limit_reached",
        {"currency": "bitcoin", "limit": Coins(spent), "spent": Coins(spent)},
    )
    assert check(spent + 10, per_day=spent + 10) is None  # a price of exactly the limit
    assert check(spent + 10, per_day=spent + 11) == (
        "spend_limit_exceeded",
        {"currency": "bitcoin", "limit": Coins(spent + 10)},
    )
    # a currency the limit does not name cannot be spent at all
    assert check(spent + 10, per_day=0, currency="CLORE-Blockchain") == (
        "spend_limit_reached",
        {"currency": "CLORE-Blockchain", "limit": Coins(0), "spent": Coins(0)},
    )
    # no key, or a key without a limit: nothing is checked
    with market.db.read() as conn:
        check_spend(conn, Actor.user(uid), "bitcoin", 10**12, now, 10**12)
        check_spend(conn, Actor.user(uid, key_id=kid), "bitcoin", 10**12, now, 10**12)
