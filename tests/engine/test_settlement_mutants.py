"""Settlement's fast path (engine/settlement.py): rules that a mutant the rest of the suite let
through changed (scripts/mutation, docs/testing.md), each pinned with numbers written here; moved
from the former tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from openclore.engine.billing import end_order, lock_server
from openclore.engine.settlement import SettlementResult, settle_running_orders
from openclore.ledger.ledger import (
    system_account_id,
    transfer,
)
from openclore.store.schema import accounts, orders

from support import Market, booked_by_order, ok, order_body

pytestmark = pytest.mark.origin("mutant")


def order_row(market: Market, oid: int) -> dict[str, object]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == oid)).one()._mapping)


def test_a_tick_with_nothing_running_settles_nothing(market: Market) -> None:
    market.server(market.user(), on_demand="0.0001")
    with market.db.write() as conn:
        assert settle_running_orders(conn, market.now(), 15) == SettlementResult(0, [])


def test_the_fast_path_counts_the_orders_it_settled(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    for name in ("a", "b"):
        sid = market.server(market.user(), name, on_demand="0.0001")
        ok(c.post("/v1/create_order", json=order_body(sid)))
    with market.db.write() as conn:
        assert settle_running_orders(conn, market.now() + 100, 15) == SettlementResult(2, [])


def tick_waits_for_a_lock(market: Market) -> bool:
    with market.db.read() as conn:  # a transaction of its own: a fresh activity snapshot
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%UPDATE orders SET active_seconds%'"
            )
        ).scalar()
    return bool(waiting)


def test_a_tick_skips_an_order_settled_since_it_read_it(market: Market) -> None:
    """PostgreSQL: a cancel that settles an order while the tick runs wins: the tick read the
    order before the cancel committed, its UPDATE waits for the cancel's row lock, then re-checks
    the order on its new version and leaves it; the tick bills that order nothing. (On SQLite
    the tick holds the write lock, so nothing can come in between: the tick just bills it.)"""
    sid = market.server(market.user(), on_demand="0.0864")  # 1,000 units a second
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(100)
    now = market.now()
    if market.backend == "postgresql":
        results: list[SettlementResult] = []

        def run_tick() -> None:
            with market.db.write() as conn:
                results.append(settle_running_orders(conn, now, 15))

        with market.db.write() as cancel:
            assert lock_server(cancel, sid) is not None
            assert end_order(cancel, oid, now, "cancelled") == "cancelled"
            ticker = threading.Thread(target=run_tick)
            ticker.start()
            deadline = time.monotonic() + 20
            while not tick_waits_for_a_lock(market) and time.monotonic() < deadline:
                time.sleep(0.02)
        ticker.join(30)
        assert results == [SettlementResult(0, [])]
    else:
        with market.db.write() as conn:
            assert settle_running_orders(conn, now, 15) == SettlementResult(1, [])
    row = order_row(market, oid)
    assert row["spend"] == 100_000 and row["active_seconds"] == 100
    with market.db.read() as conn:
        booked = booked_by_order(conn)
    assert booked[(oid, "spend")] + booked[(oid, "fee")] == 100_000


def test_a_wallet_drained_during_the_tick_makes_it_read_again_not_fail(market: Market) -> None:
    """PostgreSQL: money leaves a wallet (here a withdrawal-like transfer out) after the tick
    read the balances and before it books: the booking breaks the no-negative-balance check, the
    tick's transaction rolls back whole and is run again, and that renter's order goes the exact
    path (billed until the money runs out, then ended). On SQLite the tick holds the write lock
    and nothing comes in between."""
    if market.backend != "postgresql":
        pytest.skip("SQLite: the tick holds the write lock; no drain can come in between")
    from openclore.engine.ticker import tick

    sid = market.server(market.user(), on_demand="0.0864")  # 1,000 units a second
    renter = market.user(bitcoin="0.01")
    c = market.client(renter)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(60)  # the tick will want 60,000 units
    now = market.now()
    uid = market.user_id(renter)
    with market.db.read() as conn:
        wallet = conn.execute(
            select(accounts.c.id, accounts.c.balance).where(
                accounts.c.key == f"wallet:bitcoin:{uid}"
            )
        ).one()
    drain = int(wallet.balance) - 30_000  # leaves 30,000: half of what the tick wants
    failures: list[BaseException] = []

    def run_tick() -> None:
        try:
            tick(market.db, now, market.settings.agent_timeout)
        except BaseException as exc:  # reported below
            failures.append(exc)

    with market.db.write() as conn:
        transfer(
            conn,
            key="test:drain",
            debit=int(wallet.id),
            credit=system_account_id(conn, "external", "bitcoin"),
            amount=drain,
            kind="adjustment",
            now=now,
        )
        ticker = threading.Thread(target=run_tick)
        ticker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with market.db.read() as probe:
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            if waiting:
                break
            time.sleep(0.02)
    ticker.join(60)
    assert not ticker.is_alive() and failures == []
    row = order_row(market, oid)
    assert row["end_reason"] == "balance" and row["active_seconds"] == 30
    with market.db.read() as conn:
        assert (
            conn.execute(select(accounts.c.balance).where(accounts.c.id == wallet.id)).scalar() == 0
        )
        total = conn.execute(select(func.sum(accounts.c.balance))).scalar()
        booked = booked_by_order(conn)
    assert total == 0
    assert booked[(oid, "spend")] + booked[(oid, "fee")] == row["spend"] == 30_000
