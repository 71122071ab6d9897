"""SPEC §1 rate limits: 1 request/s per token, create_order 1 per 5 s, held in the database."""

from __future__ import annotations

from openclore.api.ratelimit import RateLimiter
from openclore.engine.clock import ManualClock

from support import Market, ok, order_body


def test_gcra_allows_no_burst_and_tolerates_jitter(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, tolerance=0.1)
    t = 1000.0
    assert limiter.hit("k", 1.0, t).allowed
    assert not limiter.hit("k", 1.0, t).allowed
    assert not limiter.hit("k", 1.0, t + 0.5).allowed
    refused = limiter.hit("k", 1.0, t + 0.85)
    assert not refused.allowed and abs(refused.retry_after - 0.05) < 1e-9
    assert limiter.hit("k", 1.0, t + 0.95).allowed  # a client 1 s apart, 50 ms early: fine
    assert limiter.hit("k", 1.0, t + 1.95).allowed
    assert not limiter.hit("k", 1.0, t + 2.0).allowed  # never two in one interval
    # refused requests do not push the window further
    assert limiter.hit("k", 1.0, t + 2.95).allowed
    assert limiter.hit("other", 1.0, t + 2.95).allowed  # keys are independent


def test_one_request_per_second_per_token(market: Market) -> None:
    wall = ManualClock(5000.0)
    market.reconfigure(rate_limit_interval=1.0, create_order_interval=5.0, rate_clock=wall)
    token = market.user()
    c = market.client(token)
    first = c.get("/v1/wallets")
    assert first.json()["code"] == 0
    assert first.headers["RateLimit-Limit"] == "1"
    assert "RateLimit-Remaining" in first.headers and "RateLimit-Reset" in first.headers
    second = c.get("/v1/my_orders")  # any endpoint counts
    assert second.status_code == 429
    assert second.json() == {"code": 5}
    assert second.headers["Retry-After"] == "1"
    # another token is not affected
    assert market.client(market.user()).get("/v1/wallets").json()["code"] == 0
    wall.advance(0.5)
    assert c.get("/v1/wallets").status_code == 429  # half a second later: still refused
    # (times in binary fractions, so that no float rounding decides)
    wall.advance(0.40625)
    assert c.get("/v1/wallets").json()["code"] == 0  # 0.906 s: within the 0.1 s of jitter
    wall.advance(0.84375)
    assert c.get("/v1/wallets").status_code == 429
    wall.advance(0.25)
    assert c.get("/v1/wallets").json()["code"] == 0


def test_create_order_once_per_five_seconds(market: Market) -> None:
    wall = ManualClock(5000.0)
    market.reconfigure(rate_limit_interval=1.0, create_order_interval=5.0, rate_clock=wall)
    sid = market.server(market.user())
    other = market.server(market.user(), "b")
    c = market.client(market.user(bitcoin="0.1"))
    assert ok(c.post("/v1/create_order", json=order_body(sid)))
    wall.advance(1.0)
    r = c.post("/v1/create_order", json=order_body(other))
    assert r.status_code == 429 and r.json()["code"] == 5
    assert r.headers["Retry-After"] == "4"
    # the refused create_order did not use up this second: other endpoints answer at once
    assert c.get("/v1/my_orders").json()["code"] == 0
    wall.advance(3.8125)
    assert c.post("/v1/create_order", json=order_body(other)).status_code == 429
    wall.advance(0.125)  # 4.9375 s after the first: within the jitter
    assert ok(c.post("/v1/create_order", json=order_body(other)))


def test_anonymous_calls_are_limited_per_address(market: Market) -> None:
    market.reconfigure(rate_limit_interval=1.0, rate_clock=ManualClock(5000.0))
    anon = market.client()
    assert anon.get("/v1/marketplace").json()["code"] == 0
    assert anon.get("/v1/marketplace").json()["code"] == 5


def test_limits_can_be_switched_off(market: Market) -> None:
    market.reconfigure(rate_limit_interval=0, create_order_interval=0)
    c = market.client(market.user())
    assert all(c.get("/v1/wallets").json()["code"] == 0 for _ in range(5))
