"""The market's version counters in ``meta`` (store/db.py) under many concurrent writers. Each test
reproduced a defect before its fix; moved from the former tests/test_hostile.py (marker
``origin("hostile")``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text

from openclore.market.servers import add_server
from openclore.store.db import bump_meta, get_meta

from support import Market

pytestmark = pytest.mark.origin("hostile")


def parallel(n: int, fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def test_concurrent_first_listing_changes_never_clash(market: Market) -> None:
    """A fresh database has no market version yet: the first writers all create it at once."""
    hosts = [market.user() for _ in range(8)]
    for i, host in enumerate(hosts):
        with market.db.write() as conn:
            add_server(conn, market.user_id(host), f"r{i}", market.now(), market.settings)
    with market.db.write() as conn:  # (adding a server moves the version too)
        conn.execute(text("DELETE FROM meta"))
    answers = parallel(
        8,
        lambda i: (
            market.client(hosts[i])
            .post("/v1/set_server_settings", json={"name": f"r{i}", "mrl": 100 + i})
            .json()["code"]
        ),
    )
    assert answers == [0] * 8
    with market.db.read() as conn:
        assert get_meta(conn, "market_version") == 8


def test_bump_meta_from_many_transactions_at_once(market: Market) -> None:
    def bump(_: int) -> None:
        with market.db.write() as conn:
            bump_meta(conn, "fresh_counter")

    parallel(10, bump)
    with market.db.read() as conn:
        assert get_meta(conn, "fresh_counter") == 10
