"""Tests written for the mutants the rest of the suite let through (scripts/mutation, see
docs/testing.md): each pins, with numbers written here, a rule that a surviving mutant changed."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update

from openclore.api.app import create_app
from openclore.api.ratelimit import Decision, RateLimiter
from openclore.config import Settings
from openclore.domain.money import (
    AmountError,
    affordable_seconds,
    coins_str,
    to_coins,
    to_units,
)
from openclore.domain.spot import choose_running, lowest_bid
from openclore.engine.billing import can_pay_next_second, end_order, lock_server, resolve_server
from openclore.engine.clock import ManualClock
from openclore.engine.notify import subscribe
from openclore.engine.settlement import SettlementResult, settle_running_orders
from openclore.ledger.addresses import deposit_address
from openclore.ledger.ledger import (
    InsufficientFunds,
    ensure_wallet,
    system_account_id,
    transfer,
    wallet_id,
)
from openclore.store.db import listing_version
from openclore.store.schema import accounts, orders, servers, transfers

from support import Market, booked_by_order, error, ok, order_body, spot_body

# --- money -------------------------------------------------------------------------------------


def test_to_units_says_why_it_refuses_an_amount() -> None:
    with pytest.raises(AmountError, match=r"^an amount must be a number$"):
        to_units(True)
    with pytest.raises(AmountError, match=r"^an amount must be finite$"):
        to_units(Decimal("-Infinity"))
    with pytest.raises(AmountError, match=r"^amount out of range$"):
        to_units(Decimal("-9000000000.000000001"))
    with pytest.raises(AmountError, match=r"^not a number$"):
        to_units("1.2.3")


def test_nine_billion_coins_is_the_largest_amount() -> None:
    assert to_units(Decimal("9000000000")) == 9 * 10**18
    assert to_units(Decimal("-9000000000")) == -9 * 10**18
    with pytest.raises(AmountError):
        to_units(Decimal("9000000000.000000001"))
    with pytest.raises(AmountError):
        to_units(Decimal("9000000001"))


def test_zero_coins_is_written_without_a_sign() -> None:
    assert coins_str(0) == "0"
    assert coins_str(1) == "0.000000001"
    assert coins_str(-1) == "-0.000000001"
    assert coins_str(10**9) == "1"
    assert coins_str(-(10**9)) == "-1"


def test_coins_compare_and_print_by_their_units() -> None:
    assert repr(to_coins(4200)) == "Coins(0.0000042)"
    assert str(to_coins(300 * 10**9)) == "300"
    assert to_coins(4200) == to_coins(4200)
    assert to_coins(4200) != to_coins(4201)
    assert to_coins(4200) != 4200
    assert hash(to_coins(4200)) == hash(4200)
    assert len({to_coins(7), to_coins(7), to_coins(8)}) == 2


def test_affordable_seconds_needs_a_price() -> None:
    for price in (0, -1):
        with pytest.raises(ValueError, match=r"^price must be positive$"):
            affordable_seconds(price, 0, 0, 100)
    assert affordable_seconds(1, 0, 0, 0) == 86399  # 1 unit a day: free until the day is over


# --- spot ------------------------------------------------------------------------------------


def test_choose_running_on_demand_first_then_the_highest_earliest_bid() -> None:
    bid = {"id": 1, "spot": True, "price": 900}
    same_later = {"id": 2, "spot": True, "price": 900}
    on_demand = {"id": 3, "spot": False, "price": 100}
    assert choose_running(True, [same_later, bid]) == 1
    assert choose_running(True, [bid, on_demand]) == 3
    assert choose_running(True, [{"id": 4, "spot": True, "price": 901}, bid]) == 4
    assert choose_running(True, [same_later]) == 2
    assert choose_running(False, [bid, on_demand]) is None  # an offline server runs nothing
    assert choose_running(True, []) is None


def test_a_lowering_step_is_at_least_one_unit() -> None:
    assert lowest_bid(5, 1) == 4
    assert lowest_bid(5, 0) == 4
    assert lowest_bid(4200, 1000) == 3200
    assert lowest_bid(1500, 1000) == 1000  # never under the minimum


# --- rate limits -------------------------------------------------------------------------------


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


# --- ledger ------------------------------------------------------------------------------------


def test_system_accounts_are_keyed_by_kind_and_currency(market: Market) -> None:
    with market.db.read() as conn:
        found = {
            r.key: (r.kind, r.currency)
            for r in conn.execute(select(accounts).where(accounts.c.user_id.is_(None)))
        }
    assert found == {
        "platform:bitcoin": ("platform", "bitcoin"),
        "external:bitcoin": ("external", "bitcoin"),
        "platform:CLORE-Blockchain": ("platform", "CLORE-Blockchain"),
        "external:CLORE-Blockchain": ("external", "CLORE-Blockchain"),
        "platform:USD-Blockchain": ("platform", "USD-Blockchain"),
        "external:USD-Blockchain": ("external", "USD-Blockchain"),
        # money on its way out: withdrawals asked for and not yet approved or rejected
        "pending_withdrawals:bitcoin": ("platform", "bitcoin"),
        "pending_withdrawals:CLORE-Blockchain": ("platform", "CLORE-Blockchain"),
        "pending_withdrawals:USD-Blockchain": ("platform", "USD-Blockchain"),
    }


def test_a_wallets_deposit_address_comes_from_the_secret(market: Market) -> None:
    uid = market.user_id(market.user())
    with market.db.write() as conn:
        wallet = ensure_wallet(conn, uid, "ETH", "a secret")
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address("a secret", uid, "ETH")


def test_a_transfer_moves_even_one_unit_and_never_nothing(market: Market) -> None:
    uid = market.user_id(market.user())
    with market.db.write() as conn:
        wallet = ensure_wallet(conn, uid, "bitcoin", "s")
        external = system_account_id(conn, "external", "bitcoin")
        assert transfer(conn, key="one", debit=external, credit=wallet, amount=1, kind="d", now=0)
        assert not transfer(conn, key="0", debit=external, credit=wallet, amount=0, kind="d", now=0)
        with pytest.raises(InsufficientFunds, match=rf"^account {wallet} cannot pay 2$"):
            transfer(conn, key="two", debit=wallet, credit=external, amount=2, kind="w", now=0)
        assert conn.execute(select(accounts.c.balance).where(accounts.c.id == wallet)).scalar() == 1


# --- billing: the exact path (settle, resolve_server, end_order) -------------------------------


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


# --- settlement: the fast path -----------------------------------------------------------------


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


# --- orders ------------------------------------------------------------------------------------


def test_demo_servers_publish_ports_from_the_order_id(market: Market) -> None:
    """A simulated server publishes each tcp port at 10000 + (8 × order id) mod 50000 plus its
    place among the order's ports (sorted); the http port is named, not published."""
    c = market.client(market.user(bitcoin="1"))
    ports = {"9000": "tcp", "8888": "http", "22": "tcp"}
    first = market.server(market.user(), "a")
    oid = ok(c.post("/v1/create_order", json=order_body(first, ports=ports)))["order_id"]
    assert oid == 1
    second = market.server(market.user(), "b")
    with market.db.write() as conn:  # the next order id is 6,250: 8 × 6,250 is 50,000
        if market.backend == "sqlite":
            conn.execute(update(orders).where(orders.c.id == oid).values(id=6249))
        else:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('orders', 'id'), 6249)"))
    wrapped = ok(c.post("/v1/create_order", json=order_body(second, ports={"22": "tcp"})))
    assert wrapped["order_id"] == 6250
    shown = {o["id"]: o for o in ok(c.get("/v1/my_orders"))["orders"]}
    first_id = 6249 if market.backend == "sqlite" else 1
    assert shown[first_id]["tcp_ports"] == ["22:10008", "9000:10010"]
    assert shown[first_id]["http_port"] == "8888"
    assert shown[first_id]["state"] == "running"
    assert shown[6250]["tcp_ports"] == ["22:10000"]
    assert "http_port" not in shown[6250]
    assert shown[6250]["state"] == "running"
    # the server's own public hostnames, else the market's, else localhost
    assert shown[first_id]["pub_cluster"] == ["localhost"]
    named = market.server(market.user(), "named")
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == named).values(pub_cluster=["gpu.test"]))
    ok(c.post("/v1/create_order", json=order_body(named)))
    market.reconfigure(public_hostnames=["market.test"])
    ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), "unnamed"))))
    clusters = [o["pub_cluster"] for o in ok(c.get("/v1/my_orders"))["orders"][:2]]
    assert clusters == [["market.test"], ["gpu.test"]]


def test_an_issue_of_2048_characters_is_kept(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="0.01"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": oid, "issue": "y" * 2048}))
    assert order_row(market, oid)["issue"] == "y" * 2048


def test_an_ended_bid_cannot_be_repriced(market: Market) -> None:
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.00001")))["order_id"]
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    for price in (0.00002, 0.000009):
        answer = c.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": price})
        assert error(answer) == "order_dont_exist"


def test_asking_for_the_same_bid_changes_nothing(market: Market) -> None:
    """The same price again is neither a raise (it needs no runway) nor a lowering (it neither
    waits for the window nor opens one)."""
    sid = market.server(market.user(), spot="0.000001")
    c = market.client(market.user(bitcoin="0.0001001"))  # creation fee 100 + an hour at 0.0024
    oid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.0024")))["order_id"]
    market.advance(60)  # less than an hour of 0.0024 is left now
    same = {"order_id": oid, "desired_price": 0.0024}
    assert c.post("/v1/set_spot_price", json=same).json() == {"code": 0}
    lower = {"order_id": oid, "desired_price": 0.0023999}
    assert c.post("/v1/set_spot_price", json=lower).json() == {"code": 0}
    market.clock.advance(10)
    again = {"order_id": oid, "desired_price": 0.0023999}
    assert c.post("/v1/set_spot_price", json=again).json() == {"code": 0}
    market.clock.advance(590)
    lower = {"order_id": oid, "desired_price": 0.0023998}
    assert c.post("/v1/set_spot_price", json=lower).json() == {"code": 0}
    assert order_row(market, oid)["last_lowered_at"] == market.now()


def test_my_orders_lists_the_newest_first(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    ids = [
        ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), n))))["order_id"]
        for n in ("a", "b", "c")
    ]
    assert [o["id"] for o in ok(c.get("/v1/my_orders"))["orders"]] == ids[::-1]


def test_an_order_keeps_and_shows_what_it_was_created_with(market: Market) -> None:
    decoy = {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 48, "net": {"cc": "DE"}}
    market.server(market.user(), "decoy", specs=decoy)  # the specs shown are the order's server's
    specs = {"gpu": "1x NVIDIA GeForce RTX 3090", "gpuram": 24, "net": {"cc": "CZ"}}
    sid = market.server(market.user(), spot="0.000001", specs=specs)
    c = market.client(market.user(bitcoin="1"))
    body = spot_body(
        sid,
        "0.00001",
        ports={"22": "tcp"},
        env={"A": "1"},
        command="sleep 1",
        jupyter_token="tok",
        ssh_key="ssh-ed25519 AAAA",
        ssh_password="pw",
    )
    created = ok(c.post("/v1/create_order", json=body))
    oid = created["order_id"]
    assert created["order"]["image"] == "cloreai/ubuntu20.04-jupyter"
    assert created["order"]["specs"]["gpu"] == "1x NVIDIA GeForce RTX 3090"
    assert created["order"]["spot"] is True and created["order"]["running"] is True
    assert created["order"]["p"] == 1 and created["order"]["state"] == "running"
    row = order_row(market, oid)
    assert (row["env"], row["ports"], row["command"]) == ({"A": "1"}, {"22": "tcp"}, "sleep 1")
    assert (row["jupyter_token"], row["ssh_key"], row["ssh_password"]) == (
        "tok",
        "ssh-ed25519 AAAA",
        "pw",
    )
    with market.db.write() as conn:
        conn.execute(update(orders).where(orders.c.id == oid).values(runtime_error="no GPU"))
    (shown,) = ok(c.get("/v1/my_orders"))["orders"]
    assert shown["image"] == "cloreai/ubuntu20.04-jupyter" and shown["p"] == 1
    assert shown["spot"] is True and shown["running"] is True
    assert shown["state"] == "running" and shown["error"] == "no GPU"
    assert shown["tcp_ports"] and shown["specs"]["gpuram"] == 24
    plain = ok(c.post("/v1/create_order", json=order_body(market.server(market.user(), "p"))))
    assert order_row(market, plain["order_id"])["command"] == ""
    assert order_row(market, plain["order_id"])["jupyter_token"] is None


def test_refusals_say_the_price_and_the_limit(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.00001", spot="0.000002")
    c = market.client(market.user(bitcoin="1"))
    low = c.post("/v1/create_order", json=spot_body(sid, "0.0000019")).json()
    assert low == {"code": 6, "error": "too_low_price", "min_price": 0.000002}
    changed = c.post("/v1/create_order", json=order_body(sid, required_price=0.00002)).json()
    assert changed == {"code": 6, "error": "price_changed", "price": 0.00001}
    market.reconfigure(max_active_orders=1)
    ok(c.post("/v1/create_order", json=spot_body(sid, "0.000002")))  # exactly the minimum
    full = c.post("/v1/create_order", json=order_body(market.server(market.user(), "b"))).json()
    assert full == {"code": 6, "error": "order_limit_reached", "limit": 1}


def test_the_order_limit_counts_only_ones_own_live_orders(market: Market) -> None:
    market.reconfigure(max_active_orders=1)
    a = market.client(market.user(bitcoin="1"))
    b = market.client(market.user(bitcoin="1"))
    first = ok(a.post("/v1/create_order", json=order_body(market.server(market.user(), "x"))))
    ok(b.post("/v1/create_order", json=order_body(market.server(market.user(), "y"))))
    ok(a.post("/v1/cancel_order", json={"id": first["order_id"]}))
    ok(a.post("/v1/create_order", json=order_body(market.server(market.user(), "z"))))


def test_only_live_orders_on_the_same_server_block_a_new_one(market: Market) -> None:
    one = market.server(market.user(), "one", spot="0.000001")
    two = market.server(market.user(), "two", spot="0.000001")
    c = market.client(market.user(bitcoin="1"))
    bid = ok(c.post("/v1/create_order", json=spot_body(one, "0.00001")))["order_id"]
    ok(c.post("/v1/create_order", json=spot_body(two, "0.00001")))  # another server: fine
    ok(c.post("/v1/cancel_order", json={"id": bid}))
    ok(c.post("/v1/create_order", json=spot_body(one, "0.00001")))  # the old bid has ended
    d = market.client(market.user(bitcoin="1"))
    od = ok(d.post("/v1/create_order", json=order_body(one)))["order_id"]
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(two)))
    ok(d.post("/v1/cancel_order", json={"id": od}))
    ok(d.post("/v1/create_order", json=order_body(one)))  # the old on-demand order has ended


def test_one_unit_a_day_is_a_price_and_zero_is_not(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    cheap = market.server(market.user(), "cheap", on_demand="0.000000001", spot="0.000000001")
    ok(c.post("/v1/create_order", json=spot_body(cheap, "0.000000001")))
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(cheap)))
    free = market.server(market.user(), "free", on_demand="0", spot="0")
    for body in (spot_body(free, "0.00001"), order_body(free)):
        assert error(c.post("/v1/create_order", json=body)) == "currency-not-allowed"


def test_a_currency_without_fees_or_prices_configured(market: Market) -> None:
    """ETH, added to the currencies only: no creation fee, and a server that has no ETH price
    takes no ETH order; one that has gets it, and the host's new ETH wallet has its address."""
    host = market.user()
    newcomer = market.user()
    newcomer_id = market.user_id(newcomer)
    sid = market.server(host, "rig")
    plain = market.server(market.user(), "plain")
    market.reconfigure(currencies=["bitcoin", "CLORE-Blockchain", "USD-Blockchain", "ETH"])
    ok(
        market.client(host).post(
            "/v1/set_server_settings",
            json={"name": "rig", "ETH_on_demand": 0.0864, "ETH_spot": 0.001},
        )
    )
    c = market.client(market.user())
    ok(c.post("/sandbox/deposit", json={"currency": "ETH", "amount": 1}))
    for body in (order_body(plain, currency="ETH"), spot_body(plain, "0.01", currency="ETH")):
        assert error(c.post("/v1/create_order", json=body)) == "currency-not-allowed"
    od = ok(c.post("/v1/create_order", json=order_body(sid, currency="ETH")))
    assert od["order"]["creation_fee"] == 0
    ok(c.post("/v1/cancel_order", json={"id": od["order_id"]}))
    bid = ok(c.post("/v1/create_order", json=spot_body(sid, "0.01", currency="ETH")))
    assert bid["order"]["creation_fee"] == 0
    market.advance(100)
    host_id = market.user_id(host)
    with market.db.read() as conn:
        wallet = wallet_id(conn, host_id, "ETH")
        assert wallet is not None
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address(market.settings.address_secret, host_id, "ETH")
    market.reconfigure(
        currencies=["bitcoin", "CLORE-Blockchain", "USD-Blockchain", "ETH"], runway_seconds=0
    )
    # a renter from before ETH, with no ETH wallet (and no runway needed): create_order makes it
    late = market.client(newcomer)
    ok(late.post("/v1/create_order", json=spot_body(sid, "0.02", currency="ETH")))
    with market.db.read() as conn:
        wallet = wallet_id(conn, newcomer_id, "ETH")
        assert wallet is not None
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address(market.settings.address_secret, newcomer_id, "ETH")


def test_a_taken_server_is_refused_before_the_balance_is_looked_at(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.00001", spot="0.000001")
    ok(market.client(market.user(bitcoin="1")).post("/v1/create_order", json=order_body(sid)))
    broke = market.client(market.user())
    assert error(broke.post("/v1/create_order", json=order_body(sid))) == "server-already-rented"
    bidder = market.client(market.user(bitcoin="0.000001"))  # enough for one low bid only
    ok(bidder.post("/v1/create_order", json=spot_body(sid, "0.000001")))
    again = bidder.post("/v1/create_order", json=spot_body(sid, "1"))
    assert error(again) == "you_already_have_spot_order"


def test_the_creation_fee_is_booked_for_the_order(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="1"))
    oid = ok(c.post("/v1/create_order", json=order_body(sid, autossh_entrypoint=True)))["order_id"]
    assert order_row(market, oid)["autossh_entrypoint"] is True
    with market.db.read() as conn:
        fees = conn.execute(
            select(transfers.c.order_id, transfers.c.amount).where(
                transfers.c.kind == "creation_fee"
            )
        ).all()
    assert [tuple(f) for f in fees] == [(oid, 300)]


def test_every_named_mutant_still_applies() -> None:
    """scripts/mutation's named mutants each change their code exactly once: a change to that
    code must carry its mutant along (else the mutant would silently stop being tried)."""
    import importlib.util
    import sys
    from importlib.machinery import SourceFileLoader
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    loader = SourceFileLoader("openclore_mutation", str(root / "scripts" / "mutation"))
    spec = importlib.util.spec_from_loader("openclore_mutation", loader)
    assert spec is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules["openclore_mutation"] = script
    try:
        loader.exec_module(script)
    finally:
        del sys.modules["openclore_mutation"]
    assert len(script.NAMED) >= 24
    for mutant in script.NAMED:
        assert mutant.module in script.MODULES, mutant.title
        assert (root / mutant.path).read_text().count(mutant.old) == 1, mutant.title
        for test in mutant.tests:
            path, _, name = test.partition("::")
            assert f"def {name}(" in (root / path).read_text(), test
