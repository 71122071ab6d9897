"""The time-travel sandbox: billing and expiry happen exactly as if the time had passed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from openclore.api.app import create_app
from openclore.engine.clock import SandboxClock
from openclore.market.demo import RENTER_HOST_TOKEN, seed
from openclore.store.schema import accounts

from support import Market, ok, order_body, spot_body


def sandbox(market: Market) -> None:
    """Serve the test's market with the sandbox clock (database offset over the manual clock)."""
    market.switch.app = create_app(
        market.settings, db=market.db, clock=SandboxClock(market.db.engine, base=market.clock)
    )


def account(market: Market, key: str) -> int:
    with market.db.read() as conn:
        return int(
            conn.execute(select(accounts.c.balance).where(accounts.c.key == key)).scalar_one()
        )


@pytest.mark.parametrize(
    "split",
    [[86400], [3600] * 24, [1, 86398, 1], [7, 13, 86380], [43200, 43199, 1]],
    ids=["one-jump", "hourly", "edges", "odd", "halves"],
)
def test_one_day_rental_costs_exactly_the_price(market: Market, split: list[int]) -> None:
    sandbox(market)
    host = market.user()
    sid = market.server(host, on_demand="0.00001", mrl=72)
    renter = market.user(bitcoin="0.001")
    c = market.client(renter)
    ok(c.post("/v1/create_order", json=order_body(sid)))
    for seconds in split:
        ok(c.post("/sandbox/advance_time", json={"seconds": seconds}))
    (order,) = ok(c.get("/v1/my_orders"))["orders"]
    assert order["spend"] == 0.00001
    renter_id, host_id = market.user_id(renter), market.user_id(host)
    assert account(market, f"wallet:bitcoin:{renter_id}") == 1_000_000 - 300 - 10_000
    assert account(market, f"wallet:bitcoin:{host_id}") == 10_000 - 500
    assert account(market, "platform:bitcoin") == 500 + 300


def test_a_jump_replays_exhaustion_then_the_next_bid_in_order(market: Market) -> None:
    sandbox(market)
    sid = market.server(market.user(), spot="0.0000001", mrl=24)
    # A bids 0.0000864/day = 1 unit/s and can pay 1000 s past its runway; B bids less
    a = market.client(market.user(bitcoin=str(0.0000001 + 0.0000036 + 0.000001)))
    b = market.client(market.user(bitcoin="0.01"))
    oa = ok(a.post("/v1/create_order", json=spot_body(sid, "0.0000864")))["order_id"]
    ob = ok(b.post("/v1/create_order", json=spot_body(sid, "0.0000432")))["order_id"]
    ok(b.post("/sandbox/advance_time", json={"seconds": 86400 * 2}))
    (order_a,) = ok(a.get("/v1/my_orders?return_completed=true"))["orders"]
    (order_b,) = ok(b.get("/v1/my_orders?return_completed=true"))["orders"]
    assert order_a["id"] == oa and order_a["expired"]
    assert order_a["spend"] == 0.0000046  # 4600 s: every unit A had
    # B ran from A's last second (4600 s) to its end of life (24 h), at 0.5 unit per second
    assert order_b["id"] == ob and order_b["expired"]
    assert order_b["spend"] == pytest.approx((86400 - 4600) * 432 // 864 / 1e9, abs=1e-15)


def test_clock_offset_is_shared_by_every_process(market: Market) -> None:
    sandbox(market)
    c = market.client(market.user())
    now = ok(c.post("/sandbox/advance_time", json={"seconds": 3600}))["now"]
    assert now == market.now() + 3600
    assert SandboxClock(market.db.engine, base=market.clock).now() == now


def test_reset_restores_the_demo_world(market: Market) -> None:
    sandbox(market)
    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
    c = market.client(RENTER_HOST_TOKEN)
    ok(c.post("/v1/cancel_order", json={"id": 39}))
    ok(c.post("/sandbox/advance_time", json={"seconds": 5000}))
    ok(c.post("/sandbox/reset"))
    (offer,) = ok(c.get("/v1/spot_marketplace?market=6"))["market"]["offers"]
    assert offer["offer_id"] == 39 and offer["active"] is True
    wallets = ok(c.get("/v1/wallets"))["wallets"]
    assert wallets[0]["balance"] == 0.00153176


def test_sandbox_cli(market: Market) -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app

    sandbox(market)
    token = market.user()
    env = {
        "OPENCLORE_URL": market.url,
        "OPENCLORE_API_KEY": token,
        "OPENCLORE_CONFIG": "/nonexistent",
    }
    runner = CliRunner()
    done = runner.invoke(app, ["sandbox", "advance", "1d12h", "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert '"advanced": 129600' in done.output
    assert SandboxClock(market.db.engine, base=market.clock).now() == market.now() + 129600
    done = runner.invoke(app, ["sandbox", "deposit", "bitcoin", "0.25"], env=env)
    assert done.exit_code == 0, done.output
    wallets = ok(market.client(token).get("/v1/wallets"))["wallets"]
    assert wallets[0]["balance"] == 0.25
    bad = runner.invoke(app, ["sandbox", "advance", "soon"], env=env)
    assert bad.exit_code != 0 and "duration" in bad.output


def test_time_inside_a_transaction_is_read_in_it(market: Market) -> None:
    """Work inside a write transaction (the standing-order match at its end) takes the sandbox's
    time from that transaction: it sees the transaction's own move of the clock, and opens no
    second connection (behind a transaction pooler that could wait forever)."""
    from sqlalchemy import event

    from openclore.engine.clock import ManualClock, now_in

    clock = SandboxClock(market.db.engine, base=ManualClock(1_000_000))
    checkouts: list[object] = []

    def counted(*_: object) -> None:
        checkouts.append(_)

    event.listen(market.db.engine, "checkout", counted)
    try:
        with market.db.write() as conn:
            SandboxClock.advance(conn, 3600)
            before = len(checkouts)
            assert now_in(clock, conn) == 1_000_000 + 3600  # its own, uncommitted move
            assert len(checkouts) == before
    finally:
        event.remove(market.db.engine, "checkout", counted)
    assert clock.now() == 1_000_000 + 3600
    assert now_in(ManualClock(5), None) == 5  # type: ignore[arg-type]  # other clocks: no read
