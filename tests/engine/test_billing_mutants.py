"""Billing's exact path (engine/billing.py: settling, resolve_server, end_order): rules that a
mutant the rest of the suite let through changed (scripts/mutation, docs/testing.md), each pinned
with numbers written here; moved from the former tests/test_mutants.py (marker
``origin("mutant")``)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from openclore.engine.billing import can_pay_next_second, end_order, lock_server, resolve_server
from openclore.engine.notify import subscribe
from openclore.ledger.ledger import (
    system_account_id,
    transfer,
    wallet_id,
)
from openclore.store.db import listing_version
from openclore.store.schema import accounts, orders, servers

from support import Market, ok, order_body, spot_body

pytestmark = pytest.mark.origin("mutant")


def order_row(market: Market, oid: int) -> dict[str, object]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == oid)).one()._mapping)


def balance_of(market: Market, token: str) -> int:
    with market.db.read() as conn:
        wallet = wallet_id(conn, market.user_id(token), "bitcoin")
        assert wallet is not None
        query = select(accounts.c.balance).where(accounts.c.id == wallet)
        return int(conn.execute(query).scalar_one())


def silent_server(market: Market, last_seen: int) -> int:
    """An agent's server (not simulated) last heard from at ``last_seen``, 1,000 units a second."""
    sid = market.server(market.user(), on_demand="0.0864")
    with market.db.write() as conn:
        conn.execute(
            update(servers).where(servers.c.id == sid).values(simulated=False, last_seen=last_seen)
        )
    return sid


def wait_until_heard(heard: list[int]) -> bool:
    deadline = time.monotonic() + 5
    while not heard and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(heard)


def test_a_cancel_bills_a_silent_server_15_seconds_past_its_last_heartbeat(market: Market) -> None:
    sid = silent_server(market, market.now())
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(40)  # no tick: the cancel settles
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    row = order_row(market, oid)
    assert row["spend"] == 15_000 and row["active_seconds"] == 15


def test_time_before_an_order_started_is_never_billed(market: Market) -> None:
    """A server silent for 30 s (still online) gets an order: its paid time ends before the
    order started, so a cancel a second later bills nothing."""
    sid = silent_server(market, market.now() - 30)
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    assert order_row(market, oid)["running"] is True
    market.clock.advance(1)
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    row = order_row(market, oid)
    assert row["spend"] == 0 and row["active_seconds"] == 0 and row["fee_paid"] == 0
    assert row["end_reason"] == "cancelled"


def test_a_cancel_that_spends_the_last_unit_is_a_cancel(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0864")  # 1,000 units a second
    token = market.user(bitcoin="0.0036003")  # creation fee 300 + 3,600,000
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(1000)  # the tick bills 1,000,000
    assert order_row(market, oid)["spend"] == 1_000_000
    market.clock.advance(2600)  # 2,600,000 more: exactly what is left
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    row = order_row(market, oid)
    assert row["spend"] == 3_600_000 and row["end_reason"] == "cancelled"
    assert row["ended_at"] == market.now()
    assert balance_of(market, token) == 0


def test_a_cancel_after_the_wallet_ran_dry_ends_it_for_the_balance(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0864")
    token = market.user(bitcoin="0.0036003")
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    start = market.now()
    market.clock.advance(5000)  # no tick: the wallet ran dry 3,600 s in
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    row = order_row(market, oid)
    assert row["end_reason"] == "balance" and row["ended_at"] == start + 3600
    assert row["spend"] == 3_600_000 and row["active_seconds"] == 3600
    assert row["billed_at"] == start + 3600


def test_a_raised_bid_runs_as_long_as_the_wallet_pays_the_new_price(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    token = market.user(bitcoin="0.0082001")  # spot creation fee 100 + 8,200,000
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0864")))["order_id"]
    start = market.now()
    market.advance(1000)  # 1,000 units a second: 1,000,000
    # 2,000 units a second needs an hour of it, 7,200,000: exactly what is left
    ok(c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 0.1728}))
    market.advance(10000)
    row = order_row(market, oid)
    assert row["expired"] is True and row["end_reason"] == "balance"
    assert row["ended_at"] == start + 1000 + 3600
    assert row["spend"] == 1_000_000 + 7_200_000 and row["active_seconds"] == 4600
    assert balance_of(market, token) == 0


def test_an_order_runs_while_its_wallet_covers_one_more_second(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0864")
    token = market.user(bitcoin="0.0036013")  # creation fee 300 + 3,601,000
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    start = market.now()
    market.advance(3600)
    assert balance_of(market, token) == 1000  # one second left
    with market.db.write() as conn:
        lock_server(conn, sid)
        resolve_server(conn, sid, market.now())
    row = order_row(market, oid)
    assert row["running"] is True and row["expired"] is False
    market.advance(1)  # the tick bills the last second: nothing is left
    assert order_row(market, oid)["running"] is True
    before, after = resolve_and_compare_versions(market, sid, market.now())
    # the next event on the server ends it, freeing the server
    row = order_row(market, oid)
    assert row["expired"] is True and row["end_reason"] == "balance"
    assert row["running"] is False
    assert row["ended_at"] == start + 3601 and row["spend"] == 3_601_000
    assert after > before


def test_an_unpaid_order_on_a_silent_server_ends_at_its_last_paid_second(market: Market) -> None:
    start = market.now()
    sid = silent_server(market, start)
    token = market.user(bitcoin="1")
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:  # 15,000 units are left: the 15 s of grace, no more
        wallet = wallet_id(conn, market.user_id(token), "bitcoin")
        assert wallet is not None
        external = system_account_id(conn, "external", "bitcoin")
        left = balance_of(market, token) - 15_000
        transfer(conn, key="drain", debit=wallet, credit=external, amount=left, kind="x", now=0)
    market.clock.advance(40)
    with market.db.write() as conn:
        lock_server(conn, sid)
        resolve_server(conn, sid, market.now())
    row = order_row(market, oid)
    assert row["expired"] is True and row["running"] is False
    assert row["end_reason"] == "balance" and row["ended_at"] == start + 15
    assert row["spend"] == 15_000


def test_billing_an_order_whose_renter_has_no_wallet_is_an_error(market: Market) -> None:
    order = {"user_id": 424242, "currency": "ETH"}
    with market.db.read() as conn, pytest.raises(LookupError, match=r"^user 424242 has no ETH"):
        can_pay_next_second(conn, order)


def test_end_order_says_why_the_order_ended(market: Market) -> None:
    sid = market.server(market.user(), on_demand="10")
    c = market.client(market.user(bitcoin="0.5"))
    dry = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(86400)  # the wallet ran dry; no tick noticed
    with market.db.write() as conn:
        lock_server(conn, sid)
        assert end_order(conn, dry, market.now(), "cancelled") == "balance"
        assert end_order(conn, dry, market.now(), "cancelled") is None
    sid2 = market.server(market.user(), on_demand="0.0001")
    live = ok(c.post("/v1/create_order", json=order_body(sid2)))["order_id"]
    with market.db.write() as conn:
        lock_server(conn, sid2)
        assert end_order(conn, live, market.now(), "server_removed") == "server_removed"
    assert order_row(market, live)["end_reason"] == "server_removed"


@pytest.mark.parametrize("wallet, wait", [("1", 10), ("0.5", 86400)])
def test_a_cancel_tells_the_servers_agent(market: Market, wallet: str, wait: int) -> None:
    """The agent hears of a cancel (its container must stop), whether the cancel or the settling
    before it (the wallet ran dry a day in) ended the order."""
    sid = market.server(market.user(), on_demand="10")
    c = market.client(market.user(bitcoin=wallet))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.clock.advance(wait)
    heard: list[int] = []
    sub = subscribe(market.db.engine, sid, lambda: heard.append(1))
    try:
        assert sub.wait_ready(5)
        ok(c.post("/v1/cancel_order", json={"id": oid}))
        assert wait_until_heard(heard)
    finally:
        sub.close()


def test_a_new_order_tells_the_servers_agent(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0001")
    heard: list[int] = []
    sub = subscribe(market.db.engine, sid, lambda: heard.append(1))
    try:
        assert sub.wait_ready(5)
        ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(sid)))
        assert wait_until_heard(heard)
    finally:
        sub.close()


def resolve_and_compare_versions(market: Market, sid: int, now: int) -> tuple[int, int]:
    """The listing's version before and after resolving the server at ``now``."""
    with market.db.read() as conn:
        before = listing_version(conn)
    with market.db.write() as conn:
        lock_server(conn, sid)
        resolve_server(conn, sid, now)
    with market.db.read() as conn:
        return before, listing_version(conn)


def test_resolving_an_unchanged_server_leaves_the_listing_alone(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    before, after = resolve_and_compare_versions(market, sid, market.now() + 10)
    assert after == before


def test_an_outbid_order_at_its_end_of_life_changes_the_listing(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001", mrl=1)
    low_bidder = market.client(market.user(bitcoin="1"))
    low = ok(low_bidder.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    market.clock.advance(100)
    high_bidder = market.client(market.user(bitcoin="1"))
    high = ok(high_bidder.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    market.clock.advance(3500)  # the outbid order's hour is over, the winner's is not
    before, after = resolve_and_compare_versions(market, sid, market.now())
    assert order_row(market, low)["expired"] is True
    assert order_row(market, high)["running"] is True
    assert after > before


def test_ending_a_bid_that_cannot_pay_changes_the_listing(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    first = market.client(market.user(bitcoin="1"))
    winner = ok(first.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    token = market.user(bitcoin="0.0002")
    second = market.client(token)
    bid = ok(second.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    with market.db.write() as conn:  # its wallet emptied, the bid raised past the winner's
        wallet = wallet_id(conn, market.user_id(token), "bitcoin")
        conn.execute(update(accounts).where(accounts.c.id == wallet).values(balance=0))
        conn.execute(update(orders).where(orders.c.id == bid).values(price=10**9))
    before, after = resolve_and_compare_versions(market, sid, market.now())
    assert order_row(market, bid)["end_reason"] == "balance"
    assert order_row(market, winner)["running"] is True
    assert after > before


def test_stopping_the_order_of_a_server_gone_offline_changes_the_listing(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=False))
    before, after = resolve_and_compare_versions(market, sid, market.now() + 10)
    row = order_row(market, oid)
    assert row["running"] is False and row["billed_at"] is None and row["spend"] == 11
    assert after > before
