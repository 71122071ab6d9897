"""Rate limits against a hostile client (api/ratelimit.py): made-up tokens get no budget of their
own, and the limiter's rows expire (both databases). Each test reproduced a defect before its
fix; moved from the former tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import secrets
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from openclore.api.ratelimit import RateLimiter
from openclore.engine.clock import ManualClock
from openclore.store.schema import rate_limits

from support import Market

pytestmark = pytest.mark.origin("hostile")


def test_random_tokens_share_their_address_limit(market: Market) -> None:
    market.reconfigure(rate_limit_interval=1.0, rate_clock=ManualClock(5000.0))
    client = market.client()
    codes: Counter[int] = Counter()
    for _ in range(40):
        answer = client.get("/v1/wallets", headers={"auth": secrets.token_hex(16)})
        codes[answer.json()["code"]] += 1
    assert codes == {3: 1, 5: 39}, codes  # one call a second, like anonymous callers
    with market.db.read() as conn:
        rows = conn.execute(select(func.count()).select_from(rate_limits)).scalar_one()
    assert rows <= 3
    # a real token keeps its own budget
    token = market.user()
    assert market.client(token).get("/v1/wallets").json()["code"] == 0


def test_rate_limit_rows_expire(market: Market) -> None:
    limiter = RateLimiter(market.db.engine, 0.1)
    now = time.time()
    with market.db.write() as conn:
        for i in range(100):
            conn.execute(rate_limits.insert().values(key=f"old{i}", tat=now - 5))
    limiter.hit("fresh", 1.0, now)
    with market.db.read() as conn:
        keys = set(conn.execute(select(rate_limits.c.key)).scalars())
    assert keys == {"fresh"}
