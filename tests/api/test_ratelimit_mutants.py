"""Rate-limit rules (api/ratelimit.py and its default setting) that a mutant the rest of the suite
let through changed (scripts/mutation, docs/testing.md), each pinned with numbers written here;
moved from the former tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from openclore.api.app import create_app
from openclore.api.ratelimit import Decision, RateLimiter
from openclore.config import Settings
from openclore.engine.clock import ManualClock

from support import Market

pytestmark = pytest.mark.origin("mutant")


def test_default_limit_refuses_a_second_call_half_a_second_later(market: Market) -> None:
    """With the default settings a token gets one call per second: a second call 0.5 s after
    the first is refused, 1.125 s after it is answered."""
    wall = ManualClock(5000.0)
    market.settings = Settings(database_url=market.db.url, sandbox=True, tick_interval=0)
    market.switch.app = create_app(
        market.settings, db=market.db, clock=market.clock, rate_clock=wall
    )
    c = market.client(market.user())
    assert c.get("/v1/wallets").json()["code"] == 0
    wall.advance(0.5)
    assert c.get("/v1/wallets").json() == {"code": 5}
    wall.advance(0.625)
    assert c.get("/v1/wallets").json()["code"] == 0


def test_a_decision_tells_the_limit_and_when_to_come_back(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, 0.125)
    assert limiter.hit("k", 0.5, 1000.0) == Decision(True, 1, 0, 0.5, 0.0)
    assert limiter.hit("k", 0.5, 1000.25) == Decision(False, 1, 0, 0.25, 0.125)
    assert limiter.hit("k", 0.5, 1000.375) == Decision(True, 1, 0, 0.625, 0.0)


def test_forgetting_a_key_gives_it_a_fresh_start(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, 0.1)
    assert limiter.hit("k", 1.0, 1000.0).allowed
    limiter.forget("other")
    assert not limiter.hit("k", 1.0, 1000.0).allowed
    limiter.forget("k")
    assert limiter.hit("k", 1.0, 1000.0).allowed


def test_stale_limiter_rows_are_pruned_every_ten_seconds(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, 0.1)

    def keys() -> set[str]:
        with market.db.read() as conn:
            return {r[0] for r in conn.execute(text("SELECT key FROM rate_limits"))}

    limiter.hit("a", 1.0, 0.0)  # the first prune is due 10 s after the epoch
    assert keys() == {"a"}
    limiter.hit("b", 1.0, 10.5)  # prunes "a" (its time was 1.0)
    assert keys() == {"b"}
    limiter.hit("c", 1.0, 15.0)  # 4.5 s after the last prune: "b" (11.5) stays
    assert keys() == {"b", "c"}
    limiter.hit("d", 1.0, 20.5)  # exactly 10 s after the last prune: "b" and "c" go
    assert keys() == {"d"}
