"""Withdrawals over HTTP on both databases: address checks, fee, pending account, limits,
approval and rejection by the operator, and concurrent requests that together exceed the balance."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from openclore.domain.errors import MarketError
from openclore.ledger.addresses import deposit_address
from openclore.market import withdrawals as service
from openclore.store.db import run_write
from openclore.store.schema import accounts, transfers, withdrawals

from support import Market, error, ok

BTC_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
CLORE_ADDRESS = deposit_address("elsewhere", 7, "CLORE-Blockchain")
USD_ADDRESS = "0x" + "ab" * 20


def ledger_total(market: Market) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(func.sum(accounts.c.balance))).scalar_one())


def balance(market: Market, key: str) -> int:
    with market.db.read() as conn:
        return int(
            conn.execute(select(accounts.c.balance).where(accounts.c.key == key)).scalar_one()
        )


def wallet_balance(market: Market, token: str, currency: str = "bitcoin") -> int:
    return balance(market, f"wallet:{currency}:{market.user_id(token)}")


def test_a_withdrawal_moves_amount_and_fee_to_pending_at_once(market: Market) -> None:
    token = market.user(bitcoin="0.01")
    c = market.client(token)
    fee = next(w for w in ok(c.get("/v1/wallets"))["wallets"] if w["name"] == "bitcoin")
    assert fee["withdrawal_fee"] == 0.0001
    body = ok(
        c.post(
            "/v1/withdraw", json={"currency": "bitcoin", "amount": 0.004, "address": BTC_ADDRESS}
        )
    )
    w = body["withdrawal"]
    assert (w["amount"], w["fee"], w["state"], w["address"]) == (
        0.004,
        0.0001,
        "pending",
        BTC_ADDRESS,
    )
    assert wallet_balance(market, token) == 10_000_000 - 4_000_000 - 100_000
    assert balance(market, "pending_withdrawals:bitcoin") == 4_100_000
    assert ledger_total(market) == 0
    listed = ok(c.get("/v1/withdrawals"))["withdrawals"]
    assert [x["id"] for x in listed] == [w["id"]]
    # the money is gone from the wallet: it cannot be withdrawn twice
    assert (
        error(
            c.post(
                "/v1/withdraw",
                json={"currency": "bitcoin", "amount": 0.0059, "address": BTC_ADDRESS},
            )
        )
        == "not_enough_balance"
    )


@pytest.mark.parametrize(
    ("currency", "address", "good"),
    [
        ("bitcoin", BTC_ADDRESS, True),
        ("bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", True),
        ("bitcoin", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", True),
        ("bitcoin", BTC_ADDRESS[:-1] + "p", False),  # checksum
        ("bitcoin", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", False),  # testnet
        ("bitcoin", CLORE_ADDRESS, False),
        ("CLORE-Blockchain", CLORE_ADDRESS, True),
        (
            "CLORE-Blockchain",
            CLORE_ADDRESS[:-1] + ("a" if CLORE_ADDRESS[-1] != "a" else "b"),
            False,
        ),
        ("CLORE-Blockchain", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", False),
        ("USD-Blockchain", USD_ADDRESS, True),
        ("USD-Blockchain", USD_ADDRESS[:-1], False),
        ("USD-Blockchain", "0x" + "zz" * 20, False),
    ],
)
def test_addresses_are_checked_per_currency(
    market: Market, currency: str, address: str, good: bool
) -> None:
    token = market.user(bitcoin="1", CLORE_Blockchain="100", USD_Blockchain="100")
    r = market.client(token).post(
        "/v1/withdraw", json={"currency": currency, "amount": 0.5, "address": address}
    )
    if good:
        ok(r)
    else:
        assert error(r) == "invalid_address"
        with market.db.read() as conn:
            assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 0


def test_bad_withdraw_requests_are_code_2_or_named(market: Market) -> None:
    c = market.client(market.user(bitcoin="1"))
    for body in (
        {"currency": "bitcoin", "amount": "0.1", "address": BTC_ADDRESS},
        {"currency": "bitcoin", "amount": -1, "address": BTC_ADDRESS},
        {"currency": "bitcoin", "amount": 0.1},
        {"currency": "bitcoin", "amount": 0.1, "address": "x" * 129},
    ):
        assert c.post("/v1/withdraw", json=body).json()["code"] == 2, body
    r = c.post("/v1/withdraw", json={"currency": "dogecoin", "amount": 0.1, "address": "x"})
    assert error(r) == "currency-not-allowed"


def test_approval_pays_out_and_rejection_refunds_with_the_reason(market: Market) -> None:
    token = market.user(bitcoin="0.01")
    c = market.client(token)
    first = ok(
        c.post(
            "/v1/withdraw", json={"currency": "bitcoin", "amount": 0.002, "address": BTC_ADDRESS}
        )
    )["withdrawal"]["id"]
    second = ok(
        c.post(
            "/v1/withdraw", json={"currency": "bitcoin", "amount": 0.003, "address": BTC_ADDRESS}
        )
    )["withdrawal"]["id"]
    now = market.now()
    run_write(market.db, lambda conn: service.approve_withdrawal(conn, first, "tx-1", "ops", now))
    run_write(
        market.db,
        lambda conn: service.reject_withdrawal(
            conn, second, "address on a sanctions list", "ops", now
        ),
    )
    for wid, call in (
        (first, lambda conn: service.approve_withdrawal(conn, first, "tx-again", "ops", now)),
        (second, lambda conn: service.reject_withdrawal(conn, second, "twice", "ops", now)),
    ):
        with pytest.raises(MarketError) as exc:
            run_write(market.db, call)
        assert exc.value.name == "withdrawal_not_pending", wid
    assert balance(market, "pending_withdrawals:bitcoin") == 0
    assert balance(market, "platform:bitcoin") == 100_000  # the paid one's fee
    assert wallet_balance(market, token) == 10_000_000 - 2_000_000 - 100_000
    assert balance(market, "external:bitcoin") == -10_000_000 + 2_000_000
    assert ledger_total(market) == 0
    listed = {w["id"]: w for w in ok(c.get("/v1/withdrawals"))["withdrawals"]}
    assert (listed[first]["state"], listed[first]["txid"]) == ("approved", "tx-1")
    assert (listed[second]["state"], listed[second]["reason"]) == (
        "rejected",
        "address on a sanctions list",
    )
    txs = ok(c.get("/v1/transactions", params={"currency": "bitcoin"}))["transactions"]
    kinds = [(t["kind"], t["amount"]) for t in txs]
    assert kinds == [
        ("deposit", 0.01),
        ("withdrawal", -0.002),
        ("withdrawal_fee", -0.0001),
        ("withdrawal", -0.003),
        ("withdrawal_fee", -0.0001),
        ("withdrawal_back", 0.0031),
    ]
    assert "sanctions" in txs[-1]["memo"] and txs[-1]["by"] == "ops"
    assert txs[-1]["balance"] == 0.0079
    # each step is an event for the user, with the same exact amounts
    events = ok(c.get("/v1/events", params={"after": 0}))["events"]
    steps = [(e["type"], e["data"]) for e in events if e["type"].startswith("withdrawal.")]
    common = {"currency": "bitcoin", "fee": 0.0001}
    assert steps == [
        (
            "withdrawal.requested",
            {"withdrawal_id": first, **common, "amount": 0.002, "address": BTC_ADDRESS},
        ),
        (
            "withdrawal.requested",
            {"withdrawal_id": second, **common, "amount": 0.003, "address": BTC_ADDRESS},
        ),
        (
            "withdrawal.approved",
            {
                "withdrawal_id": first,
                **common,
                "amount": 0.002,
                "address": BTC_ADDRESS,
                "txid": "tx-1",
            },
        ),
        (
            "withdrawal.rejected",
            {
                "withdrawal_id": second,
                **common,
                "amount": 0.003,
                "reason": "address on a sanctions list",
            },
        ),
    ]
    # nothing is ever deleted: both rows and all seven transfers of the two requests remain
    with market.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 2
        assert (
            conn.execute(select(func.count()).where(transfers.c.key.like("withdrawal:%"))).scalar()
            == 7
        )


def test_the_daily_limit_counts_the_last_24_hours_but_not_rejections(market: Market) -> None:
    market.reconfigure(withdrawal_daily_limit={"bitcoin": "0.005"})
    token = market.user(bitcoin="1")
    c = market.client(token)

    def withdraw(amount: float) -> Any:
        return c.post(
            "/v1/withdraw", json={"currency": "bitcoin", "amount": amount, "address": BTC_ADDRESS}
        )

    wid = ok(withdraw(0.003))["withdrawal"]["id"]
    refused = withdraw(0.0021).json()
    assert (refused["error"], refused["limit_left"]) == ("withdrawal_limit_exceeded", 0.002)
    ok(withdraw(0.002))
    now = market.now()
    run_write(market.db, lambda conn: service.reject_withdrawal(conn, wid, "no", "ops", now))
    ok(withdraw(0.003))  # the rejected one no longer counts
    assert error(withdraw(0.000001)) == "withdrawal_limit_exceeded"
    market.clock.advance(86_400)
    ok(withdraw(0.005))
    assert ledger_total(market) == 0


def test_parallel_withdrawals_exceeding_the_balance_only_what_fits(market: Market) -> None:
    """20 real concurrent requests of 0.0049 + 0.0001 fee from a wallet of 0.0301: six fit."""
    token = market.user(bitcoin="0.0301")
    c = market.client(token)
    body = {"currency": "bitcoin", "amount": 0.0049, "address": BTC_ADDRESS}
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: c.post("/v1/withdraw", json=body).json(), range(20)))
    outcomes = Counter("ok" if r["code"] == 0 else r.get("error", r["code"]) for r in results)
    assert outcomes == {"ok": 6, "not_enough_balance": 14}, outcomes
    assert wallet_balance(market, token) == 100_000
    assert balance(market, "pending_withdrawals:bitcoin") == 6 * 5_000_000
    assert ledger_total(market) == 0
    with market.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 6
