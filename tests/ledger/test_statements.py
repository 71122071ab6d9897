"""Statements over HTTP on both databases: every ledger entry of the caller with the balance after
it, cursor pages, a month's statement that reconciles, operator refunds with their reason."""

from __future__ import annotations

import calendar
from typing import Any

import pytest
from sqlalchemy import select

from openclore.domain.errors import MarketError
from openclore.domain.money import to_units
from openclore.market.read_models import earnings_series
from openclore.market.wallets import adjust, deposit
from openclore.store.db import run_write
from openclore.store.schema import accounts, order_charges, transfers

from support import Market, error, ok, order_body

NOV_1 = calendar.timegm((2026, 11, 1, 0, 0, 0))
DEC_1 = calendar.timegm((2026, 12, 1, 0, 0, 0))


def units(value: Any) -> int:
    return to_units(str(value))


def test_transactions_page_by_cursor_with_the_balance_after_each(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    sid = market.server(host, on_demand="0.0864")  # 1000 units a second
    c = market.client(renter)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    for _ in range(5):
        market.advance(7)
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3, "currency": "bitcoin"}
        if cursor:
            params["cursor"] = cursor
        body = ok(c.get("/v1/transactions", params=params))
        pages.append(body["transactions"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    entries = [e for page in pages for e in page]
    assert len(pages) > 2 and all(len(p) <= 3 for p in pages)
    assert entries[0]["kind"] == "deposit" and entries[1]["kind"] == "creation_fee"
    assert {e["kind"] for e in entries[2:]} == {"spend", "fee"}
    assert all(e["order_id"] == oid for e in entries[1:])
    running = 0
    for e in entries:
        running += units(e["amount"])
        assert units(e["balance"]) == running
    with market.db.read() as conn:
        wallet = conn.execute(
            select(accounts.c.balance).where(
                accounts.c.key == f"wallet:bitcoin:{market.user_id(renter)}"
            )
        ).scalar_one()
    assert running == wallet
    # the host sees its side as earnings
    host_entries = ok(market.client(host).get("/v1/transactions"))["transactions"]
    assert {e["kind"] for e in host_entries} == {"earning"}
    assert sum(units(e["amount"]) for e in host_entries) == -sum(
        units(e["amount"]) for e in entries if e["kind"] == "spend"
    )
    # since/until select by time
    late = ok(c.get("/v1/transactions", params={"since": market.now() - 7, "limit": 1000}))
    assert 0 < len(late["transactions"]) < len(entries)


def test_bad_transaction_queries_are_code_2(market: Market) -> None:
    c = market.client(market.user())
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"cursor": "abc"},
        {"since": "yesterday"},
    ):
        assert c.get("/v1/transactions", params=params).json()["code"] == 2, params
    assert error(c.get("/v1/transactions", params={"currency": "doge"})) == "currency-not-allowed"
    assert c.get("/v1/statement", params={"month": "2026-13"}).json()["code"] == 2


def test_a_month_reconciles_and_shows_refunds_with_their_reason(market: Market) -> None:
    market.clock.set(NOV_1 - 3600)
    host, renter = market.user(), market.user(bitcoin="0.5")  # deposited in October
    sid = market.server(host, on_demand="0.0864")
    c = market.client(renter)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(1800)  # half an hour in October
    market.advance(3600)  # then into November
    uid = market.user_id(renter)
    now = market.now()
    run_write(
        market.db,
        lambda conn: adjust(
            conn,
            uid,
            "bitcoin",
            to_units("0.001"),
            market.settings,
            now,
            reason="GPU fell off the bus",
            actor="ops",
            refund=True,
            order_id=oid,
        ),
    )
    run_write(
        market.db,
        lambda conn: adjust(
            conn,
            uid,
            "bitcoin",
            -to_units("0.0002"),
            market.settings,
            now,
            reason="chargeback fee",
            actor="ops",
        ),
    )
    with pytest.raises(MarketError) as exc:
        run_write(
            market.db,
            lambda conn: adjust(
                conn, uid, "bitcoin", 5, market.settings, now, reason="  ", actor="ops"
            ),
        )
    assert exc.value.name == "reason_required"
    adjusted = [
        e["data"]
        for e in ok(c.get("/v1/events", params={"after": 0}))["events"]
        if e["type"] == "balance.adjusted"
    ]
    assert adjusted == [
        {
            "currency": "bitcoin",
            "amount": 0.001,
            "kind": "refund",
            "reason": "GPU fell off the bus",
            "order_id": oid,
        },
        {
            "currency": "bitcoin",
            "amount": -0.0002,
            "kind": "adjustment",
            "reason": "chargeback fee",
            "order_id": None,
        },
    ]  # the one refused for want of a reason wrote no event
    ok(c.post("/v1/cancel_order", json={"id": oid}))
    market.clock.set(DEC_1 + 10)
    run_write(
        market.db, lambda conn: deposit(conn, uid, "bitcoin", 7, market.settings, market.now())
    )

    oct_ = ok(c.get("/v1/statement", params={"month": "2026-10"}))["statement"]
    nov = ok(c.get("/v1/statement", params={"month": "2026-11", "currency": "bitcoin"}))[
        "statement"
    ]
    dec = ok(c.get("/v1/statement", params={"month": "2026-12"}))["statement"]
    assert units(oct_["opening_balance"]) == 0
    for s in (oct_, nov, dec):
        assert units(s["opening_balance"]) + sum(units(v) for v in s["totals"].values()) == units(
            s["closing_balance"]
        )
    assert oct_["closing_balance"] == nov["opening_balance"]
    assert nov["closing_balance"] == dec["opening_balance"]
    with market.db.read() as conn:
        wallet = conn.execute(
            select(accounts.c.balance).where(accounts.c.key == f"wallet:bitcoin:{uid}")
        ).scalar_one()
    assert units(dec["closing_balance"]) == wallet
    assert nov["totals"]["refund"] == 0.001 and nov["totals"]["adjustment"] == -0.0002
    memos = {e["kind"]: (e["memo"], e["by"]) for e in nov["entries"]}
    assert memos["refund"] == ("GPU fell off the bus", "ops")
    assert memos["adjustment"] == ("chargeback fee", "ops")
    [order] = nov["orders"]
    assert order["order_id"] == oid and order["refund"] == 0.001
    assert units(order["spend"]) + units(order["fee"]) == -3600 * 1000
    assert "creation_fee" in oct_["orders"][0]


def test_the_sdk_reads_transactions_statements_and_withdrawals(market: Market) -> None:
    from decimal import Decimal

    from openclore.client import Client, MarketError

    token = market.user(bitcoin="0.01")
    with Client(token, base_url=market.url, max_retries=0, rate_limit=False) as client:
        w = client.withdraw("bitcoin", "0.002", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")
        assert (w.amount, w.fee, w.state) == (Decimal("0.002"), Decimal("0.0001"), "pending")
        with pytest.raises(MarketError) as exc:
            client.withdraw("bitcoin", "0.002", "bc1qnotanaddress")
        assert exc.value.name == "invalid_address"
        assert [x.id for x in client.withdrawals()] == [w.id]
        page = client.transactions(limit=2)
        assert [t.kind for t in page.transactions] == ["deposit", "withdrawal"]
        assert page.next_cursor is not None
        everything = client.all_transactions(currency="bitcoin")
        assert [t.balance for t in everything] == [
            Decimal("0.01"),
            Decimal("0.008"),
            Decimal("0.0079"),
        ]
        statement = client.statement()
        assert statement.closing_balance == Decimal("0.0079")
        assert statement.totals["withdrawal_fee"] == Decimal("-0.0001")


def test_a_tick_books_rental_per_account_pair_and_statements_show_it_per_order(
    market: Market,
) -> None:
    """The tick books one spend and one fee transfer per renter and host, each order's share
    kept beside it: entries, pages, statements and the host's earnings still read per order."""
    market.clock.set(NOV_1 + 3600)
    host, renter = market.user(), market.user(bitcoin="0.5")
    c = market.client(renter)
    sids = [market.server(host, f"s{i}", on_demand=price) for i, price in enumerate(PRICES)]
    oids = [ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"] for sid in sids]
    for step in (7, 11, 5):
        market.advance(step)
    with market.db.read() as conn:
        wallet = conn.execute(
            select(accounts.c.id, accounts.c.balance).where(
                accounts.c.key == f"wallet:bitcoin:{market.user_id(renter)}"
            )
        ).one()
        rental = conn.execute(
            select(transfers.c.id, transfers.c.amount).where(
                transfers.c.debit_account_id == wallet.id,
                transfers.c.kind.in_(["spend", "fee"]),
                transfers.c.order_id.is_(None),
            )
        ).all()
        shares = conn.execute(select(order_charges)).all()
    assert 0 < len(rental) <= 6  # per tick one spend and one fee transfer, not one per order
    assert len(shares) > len(rental)
    for t in rental:  # the shares of a transfer add up to it, to the unit
        assert sum(s.amount for s in shares if s.transfer_id == t.id) == t.amount
    # one entry per order per transfer, paged one by one, through the shares of a transfer
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        body = ok(c.get("/v1/transactions", params=params))
        pages.append(body["transactions"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    entries = [e for page in pages for e in page]
    assert all(len(p) == 1 for p in pages)
    assert len(entries) == len({(e["id"], e["order_id"]) for e in entries})
    running = 0
    for e in entries:
        running += units(e["amount"])
        assert units(e["balance"]) == running
    assert running == wallet.balance
    orders_now = {o["id"]: o for o in ok(c.get("/v1/my_orders"))["orders"]}
    for oid in oids:
        spent = -sum(
            units(e["amount"])
            for e in entries
            if e["order_id"] == oid and e["kind"] in ("spend", "fee")
        )
        assert spent == units(orders_now[oid]["spend"]) > 0
    # the month's statement: rental per order
    statement = ok(c.get("/v1/statement", params={"month": "2026-11"}))["statement"]
    per_order = {o["order_id"]: o for o in statement["orders"]}
    for oid in oids:
        assert -units(per_order[oid]["spend"]) - units(per_order[oid]["fee"]) == units(
            orders_now[oid]["spend"]
        )
    assert statement["entry_count"] == len(entries)
    # the host's earnings per server
    with market.db.read() as conn:
        series = earnings_series(conn, market.user_id(host), "bitcoin", market.now(), days=1)
    host_entries = ok(market.client(host).get("/v1/transactions"))["transactions"]
    assert sum(v for points in series.values() for _, v in points) == sum(
        units(e["amount"]) for e in host_entries
    )
    for sid, oid in zip(sids, oids, strict=True):
        assert series[sid][0][1] == sum(
            units(e["amount"]) for e in host_entries if e["order_id"] == oid
        )


PRICES = ("0.0864", "0.1728", "0.05")
