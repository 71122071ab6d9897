"""The stop at a key's daily spend limit (engine/spending.py), second by second: the rows a key's
orders start from are made over HTTP, then their prices, bills and timers are set in the database
so that each case of ``apply_spend_caps`` is met with numbers whose answer is written out.

Written to kill the mutants `scripts/mutation spending` found alive: a stop second that is not
whole, a limit already spent, an order of one unit a day, one key's orders before another's,
and a renter's own earlier timer."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.engine.spending import SPEND_LIMIT, apply_spend_caps, limit_of, spent_today
from openclore.store.schema import api_tokens, orders
from test_api_keys import make_key

from support import Market, ok, order_body

pytestmark = pytest.mark.origin("mutant")

DAY = 86400


def keyed_order(market: Market, host: int, name: str) -> tuple[int, int]:
    """A key (limited, so the tick looks at it) with one running order: (key id, order id)."""
    sid = market.server(host, name, on_demand="0.0001")
    owner = market.client(market.user(bitcoin="1"))
    key, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.001"})
    oid = ok(market.client(secret).post("/v1/create_order", json=order_body(sid)))["order_id"]
    return int(key["id"]), int(oid)


def set_order(market: Market, oid: int, **values: Any) -> None:
    with market.db.write() as conn:
        conn.execute(update(orders).where(orders.c.id == oid).values(**values))


def set_limit(market: Market, key_id: int, units: int) -> None:
    with market.db.write() as conn:
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == key_id)
            .values(spend_limit={"bitcoin": units})
        )


def spent(market: Market, key_id: int, now: int) -> int:
    with market.db.read() as conn:
        return spent_today(conn, key_id, now).get("bitcoin", 0)


def caps(market: Market, now: int) -> None:
    with market.db.write() as conn:
        apply_spend_caps(conn, now)


def timer(market: Market, oid: int) -> tuple[Any, Any]:
    with market.db.read() as conn:
        row = conn.execute(
            select(orders.c.stop_at, orders.c.timer_reason).where(orders.c.id == oid)
        ).one()
    return row.stop_at, row.timer_reason


def test_a_stored_limit_is_read_from_json_text_and_from_an_object() -> None:
    assert limit_of('{"bitcoin": 5, "CLORE-Blockchain": "7"}') == (
        ("CLORE-Blockchain", 7),
        ("bitcoin", 5),
    )
    assert limit_of({"bitcoin": "5"}) == (("bitcoin", 5),)
    assert limit_of(None) is None


def test_the_stop_second_is_whole_and_reached_exactly_at_now(market: Market) -> None:
    host = market.user()
    key, a = keyed_order(market, host, "a")
    b = _second_order_of(market, key, a, host)
    t = market.now()
    # two orders of the key, 70,000 and 50,000 units a day, billed to t; 1,001 units left:
    # the limit is reached 1,001 × 86,400 / 120,000 = 720.72 s after t, so at t + 720
    set_order(market, a, price=70_000, billed_at=t, stop_at=None, timer_reason=None)
    set_order(market, b, price=50_000, billed_at=t, stop_at=None, timer_reason=None)
    set_limit(market, key, spent(market, key, t) + 1_001)
    caps(market, t + 719)  # not yet
    assert timer(market, a) == (None, None) and timer(market, b) == (None, None)
    caps(market, t + 720)  # to the second: reached now
    for oid in (a, b):
        stop_at, reason = timer(market, oid)
        assert stop_at == t + 720 and isinstance(stop_at, int) and reason == SPEND_LIMIT


def _second_order_of(market: Market, key: int, first: int, host: int) -> int:
    """Another running order on another server, moved to ``key`` (as if the key created it)."""
    sid = market.server(host, f"more{first}", on_demand="0.0001")
    renter = market.client(market.user(bitcoin="1"))
    oid = int(ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"])
    with market.db.read() as conn:
        user = conn.execute(select(orders.c.user_id).where(orders.c.id == first)).scalar_one()
    set_order(market, oid, api_key_id=key, user_id=user)
    return oid


def test_a_spent_limit_stops_at_the_last_bill_not_a_unit_later(market: Market) -> None:
    host = market.user()
    key, oid = keyed_order(market, host, "a")
    t = market.now()
    # 900 units a day: a single unit more of limit would be 96 s more of rent
    set_order(market, oid, price=900, billed_at=t)
    set_limit(market, key, 0)
    caps(market, t + 10)
    assert timer(market, oid) == (t, SPEND_LIMIT)


def test_every_key_is_looked_at_whatever_the_keys_before_it_did(market: Market) -> None:
    host = market.user()
    far_key, far = keyed_order(market, host, "far")
    cheap_key, cheap = keyed_order(market, host, "cheap")
    t = market.now()
    set_order(market, far, price=100_000, billed_at=t)
    set_limit(market, far_key, spent(market, far_key, t) + 100_000)  # reached a day later
    set_order(market, cheap, price=1, billed_at=t)  # one unit a day, its limit spent
    set_limit(market, cheap_key, 0)
    caps(market, t + 5)
    assert timer(market, far) == (None, None)
    assert timer(market, cheap) == (t, SPEND_LIMIT)


def test_a_renters_own_earlier_or_equal_timer_stays_and_the_next_order_is_capped(
    market: Market,
) -> None:
    host = market.user()
    key, first = keyed_order(market, host, "a")
    second = _second_order_of(market, key, first, host)
    t = market.now()
    for oid in (first, second):
        set_order(market, oid, price=1_000, billed_at=t, stop_at=None, timer_reason=None)
    set_limit(market, key, 0)
    # the first order's own timer falls on the very second the limit is reached
    set_order(market, first, stop_at=t, timer_reason="user")
    caps(market, t + 5)
    assert timer(market, first) == (t, "user")
    assert timer(market, second) == (t, SPEND_LIMIT)


def test_an_order_that_is_not_running_neither_counts_nor_gets_a_timer(market: Market) -> None:
    host = market.user()
    key, running = keyed_order(market, host, "a")
    waiting = _second_order_of(market, key, running, host)
    t = market.now()
    set_order(market, running, price=86_400, billed_at=t)  # one unit a second
    # a bid waiting for its GPUs: neither stopped nor ended, and not running
    set_order(market, waiting, price=86_400_000, running=False, billed_at=None)
    set_limit(market, key, spent(market, key, t) + 100)
    caps(market, t + 100)  # the running order alone reaches the limit 100 s after t
    assert timer(market, running) == (t + 100, SPEND_LIMIT)
    assert timer(market, waiting) == (None, None)
