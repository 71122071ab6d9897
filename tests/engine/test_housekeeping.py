"""Housekeeping on both databases: events and finished webhook deliveries older than the
retention go, in batches; pending deliveries, the ledger and the audit log stay."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, insert, select

from openclore.engine import housekeeping
from openclore.engine.housekeeping import DAY, purge
from openclore.store.schema import audit_log, events, transfers, webhook_deliveries
from test_webhooks import credit, hook

from support import Market, ok


def count(market: Market, table: object) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_old_events_and_finished_deliveries_go_pending_ones_and_money_stay(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "BATCH", 3)  # several batches of each
    token = market.user()
    webhook = hook(market, token, "http://127.0.0.1:9/hook")
    credit(market, token, 7)  # 7 old events
    old_events = count(market, events)
    assert old_events >= 7
    market.clock.advance(31 * DAY)
    credit(market, token, 2)  # 2 recent ones
    wall = time.time()
    with market.db.write() as conn:
        conn.execute(webhook_deliveries.delete())
        for state, age_days in [
            ("delivered", 40),
            ("failed", 35),
            ("pending", 45),  # still being retried: stays whatever its age
            ("delivered", 2),
        ] + [("delivered", 31)] * 5:
            conn.execute(
                insert(webhook_deliveries).values(
                    webhook_id=webhook["id"],
                    event_id=None,
                    body="{}",
                    state=state,
                    attempts=1,
                    next_attempt_at=wall,
                    created_at=wall - age_days * DAY,
                )
            )
    transfers_before, audit_before = count(market, transfers), count(market, audit_log)

    assert purge(market.db, market.now(), wall, 0) == housekeeping.Purged(0, 0)  # 0: forever
    purged = purge(market.db, market.now(), wall, 30)
    assert purged == housekeeping.Purged(old_events, 7)
    assert purge(market.db, market.now(), wall, 30) == housekeeping.Purged(0, 0)

    with market.db.read() as conn:
        left = conn.execute(select(webhook_deliveries.c.state, webhook_deliveries.c.created_at))
        assert sorted((r.state, round((wall - r.created_at) / DAY)) for r in left) == [
            ("delivered", 2),
            ("pending", 45),
        ]
        assert all(e.created_at >= market.now() - 30 * DAY for e in conn.execute(select(events)))
    assert count(market, events) == 2
    assert count(market, transfers) == transfers_before  # the ledger is never purged
    assert count(market, audit_log) == audit_before
    # polling from the start gives what is kept, in order
    kept = ok(market.client(token).get("/v1/events", params={"after": 0}))["events"]
    assert [e["type"] for e in kept] == ["deposit.credited", "deposit.credited"]


def test_a_serving_process_purges_by_itself(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from openclore.serve import server_app

    monkeypatch.setattr(housekeeping, "FIRST_DELAY", 0.0)
    token = market.user()
    credit(market, token, 3)
    market.clock.advance(31 * DAY)
    app = server_app(market.settings, db=market.db, clock=market.clock)

    def said_it() -> bool:
        return any("purged 3 events" in r.getMessage() for r in caplog.records)

    async def serve_a_while() -> None:  # the app's lifespan, as uvicorn runs it
        async with app.router.lifespan_context(app):
            # ends as soon as it said it purged: the rows go before the line is logged, so
            # leaving when the table is empty could cancel the housekeeper between the two
            deadline = time.monotonic() + 30
            while not said_it() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    with caplog.at_level("INFO", logger="openclore.engine"):
        asyncio.run(serve_a_while())
    assert said_it()
    assert count(market, events) == 0
