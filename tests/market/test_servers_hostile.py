"""The server limit holds under a host's concurrent adds (market/servers.py). The test reproduced a
defect before its fix; moved from the former tests/test_hostile.py (marker
``origin("hostile")``)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support import Market

pytestmark = pytest.mark.origin("hostile")


def parallel(n: int, fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def outcome(response: httpx.Response) -> str:
    assert response.status_code in (200, 429), response.text  # never a 500
    body = response.json()
    return "ok" if body["code"] == 0 else str(body.get("error", body["code"]))


def test_server_limit_holds_under_concurrent_adds(market: Market) -> None:
    first = market.user()
    uid = market.user_id(first)
    from openclore.market.accounts import issue_token

    with market.db.write() as conn:
        tokens = [first] + [issue_token(conn, uid, market.now()) for _ in range(19)]
    clients = [market.client(t) for t in tokens]
    results = parallel(
        20, lambda i: outcome(clients[i].post("/v1/add_server", json={"name": f"s{i}"}))
    )
    assert Counter(results) == {"ok": 16, "server_limit_reached": 4}
