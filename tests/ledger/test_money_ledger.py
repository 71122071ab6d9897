"""SPEC §2: exact integer money, double-entry transfers, wallets."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from openclore.api.wire import dumps
from openclore.domain.money import (
    AmountError,
    affordable_seconds,
    bp_to_percent,
    coins_str,
    fee_for,
    percent_to_bp,
    spend_for,
    to_coins,
    to_units,
)
from openclore.ledger.addresses import deposit_address
from openclore.ledger.ledger import InsufficientFunds, ensure_wallet, system_account_id, transfer
from openclore.store.schema import accounts

from support import Market, ok, order_body


def test_units_are_nano_coins_and_int64_holds_a_billion_coins() -> None:
    assert to_units(Decimal("0.00001")) == 10_000
    assert to_units(Decimal("0.0000042")) == 4_200
    assert to_units(Decimal("1000000000")) == 10**18 < 2**63
    assert dumps({"a": to_coins(3_200)}) == b'{"a":0.0000032}'
    assert dumps([to_coins(300 * 10**9)]) == b"[300]"
    # exact however large: no float on the way out
    big = to_units(Decimal("123456789.123456789"))
    assert dumps([to_coins(big)]) == b"[123456789.123456789]"
    assert coins_str(1_531_760) == "0.00153176"
    assert coins_str(-5) == "-0.000000005"
    # more than nine decimals: rounded half to even, written down in domain.money
    assert to_units(Decimal("0.0000000015")) == 2
    assert to_units(Decimal("0.0000000025")) == 2
    for bad in (Decimal("NaN"), Decimal("Infinity"), Decimal("1e30"), True, "abc"):
        with pytest.raises(AmountError):
            to_units(bad)


def test_fee_percent_round_trip() -> None:
    assert percent_to_bp(Decimal("5")) == 500
    assert percent_to_bp(Decimal("2.5")) == 250
    assert bp_to_percent(500) == 5 and isinstance(bp_to_percent(500), int)
    assert bp_to_percent(250) == 2.5


@given(
    price=st.integers(1, 10**15),
    splits=st.lists(st.integers(0, 86400 * 3), min_size=1, max_size=30),
    fee_bp=st.sampled_from([0, 250, 500, 1234, 10000]),
)
@settings(max_examples=300, deadline=None)
def test_settling_in_any_split_bills_the_same_total(
    price: int, splits: list[int], fee_bp: int
) -> None:
    """spend is computed from total elapsed time: the split never changes it by a unit, and
    host + fee always equals spend."""
    spent = fee = active = 0
    for seconds in splits:
        active += seconds
        new_spend = spend_for(price, active)
        new_fee = fee_for(new_spend, fee_bp)
        assert new_spend >= spent and new_fee >= fee
        # the host's part never shrinks: each settlement pays the host a non-negative amount
        assert new_spend - new_fee >= spent - fee
        spent, fee = new_spend, new_fee
    assert spent == price * sum(splits) // 86400
    assert fee == spent * fee_bp // 10000


@given(
    price=st.integers(1, 10**12),
    active=st.integers(0, 10**7),
    balance=st.integers(0, 10**12),
)
@settings(max_examples=300, deadline=None)
def test_affordable_seconds_is_the_last_second_the_balance_covers(
    price: int, active: int, balance: int
) -> None:
    spent = spend_for(price, active)
    n = affordable_seconds(price, active, spent, balance)
    assert spend_for(price, active + n) - spent <= balance
    assert spend_for(price, active + n + 1) - spent > balance


def test_deposit_addresses_are_stable_unique_and_styled() -> None:
    a = deposit_address("s", 1, "bitcoin")
    assert a == deposit_address("s", 1, "bitcoin")
    assert a.startswith("bc1q") and len(a) == 42
    assert deposit_address("s", 2, "bitcoin") != a
    assert deposit_address("t", 1, "bitcoin") != a
    clore = deposit_address("s", 1, "CLORE-Blockchain")
    assert clore.startswith("A") and len(clore) == 34
    assert deposit_address("s", 1, "USD-Blockchain").startswith("0x")
    # a known BIP-173 vector: the program 751e76e8199196d454941c45d1b3a323f1433bd6
    from openclore.ledger.addresses import bech32_segwit_v0

    program = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")
    assert bech32_segwit_v0("bc", program) == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"


def test_wallets_shape(market: Market) -> None:
    token = market.user(bitcoin="0.00153176")
    body = ok(market.client(token).get("/v1/wallets"))
    assert [w["name"] for w in body["wallets"]] == market.settings.currencies
    btc = body["wallets"][0]
    assert btc["balance"] == 0.00153176
    assert btc["withdrawal_fee"] == 0.0001
    assert btc["deposit"].startswith("bc1q")
    other = ok(market.client(market.user()).get("/v1/wallets"))["wallets"][0]
    assert other["deposit"] != btc["deposit"]


def test_transfers_are_exactly_once_and_never_overdraw(market: Market) -> None:
    with market.db.write() as conn:
        from openclore.market.accounts import create_user

        uid = create_user(conn, "payer", 0, market.settings)
        wallet = ensure_wallet(conn, uid, "bitcoin", "s")
        external = system_account_id(conn, "external", "bitcoin")
        platform = system_account_id(conn, "platform", "bitcoin")
        assert transfer(
            conn, key="d1", debit=external, credit=wallet, amount=100, kind="deposit", now=0
        )
        assert not transfer(
            conn, key="d1", debit=external, credit=wallet, amount=100, kind="deposit", now=0
        )
        with pytest.raises(InsufficientFunds):
            transfer(conn, key="x", debit=wallet, credit=platform, amount=101, kind="fee", now=0)
        assert transfer(conn, key="y", debit=wallet, credit=platform, amount=100, kind="fee", now=0)
    with market.db.read() as conn:
        assert conn.execute(select(accounts.c.balance).where(accounts.c.id == wallet)).scalar() == 0
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0


def test_the_database_refuses_a_negative_wallet(market: Market) -> None:
    from sqlalchemy.exc import IntegrityError

    token = market.user(bitcoin="0.000001")
    uid = market.user_id(token)
    with pytest.raises(IntegrityError), market.db.write() as conn:
        conn.execute(
            accounts.update()
            .where(accounts.c.key == f"wallet:bitcoin:{uid}")
            .values(balance=accounts.c.balance - 10**9)
        )


def test_ledger_sums_to_zero_after_trading(market: Market) -> None:
    host = market.user()
    sid = market.server(host)
    renter = market.client(market.user(bitcoin="0.01"))
    oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(12345)
    ok(renter.post("/v1/cancel_order", json={"id": oid}))
    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        negatives = conn.execute(
            select(func.count()).where(accounts.c.kind != "external", accounts.c.balance < 0)
        ).scalar()
        assert negatives == 0


def test_balance_exhaustion_ends_the_order_at_the_last_affordable_second(market: Market) -> None:
    sid = market.server(market.user(), on_demand="0.0864")  # 1000 units per second
    token = market.user(bitcoin="0.0036003")  # creation fee 300 + 3600 s of runway
    c = market.client(token)
    oid = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(10_000)
    (order,) = ok(c.get("/v1/my_orders?return_completed=true"))["orders"]
    assert order["id"] == oid and order["expired"] is True
    assert order["spend"] == 0.0036
    wallets = ok(c.get("/v1/wallets"))["wallets"]
    assert wallets[0]["balance"] == 0


def test_a_currency_added_later_pays_hosts_who_predate_it(market: Market) -> None:
    host = market.user()
    renter = market.user()
    sid = market.server(host, "rig")
    market.reconfigure(currencies=["bitcoin", "CLORE-Blockchain", "USD-Blockchain", "ETH"])
    ok(
        market.client(host).post(
            "/v1/set_server_settings", json={"name": "rig", "ETH_on_demand": 0.0864}
        )
    )
    c = market.client(renter)
    ok(c.post("/sandbox/deposit", json={"currency": "ETH", "amount": 1}))
    ok(c.post("/v1/create_order", json=order_body(sid, currency="ETH")))
    market.advance(100)
    wallets = {w["name"]: w for w in ok(market.client(host).get("/v1/wallets"))["wallets"]}
    assert wallets["ETH"]["balance"] == pytest.approx(100_000 * 0.95 / 1e9, abs=1e-15)
    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
