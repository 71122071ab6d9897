"""Withdrawals (market/withdrawals.py) pinned where the flow tests (test_withdrawals.py) do not
look: the refusals by name, the smallest amount, the daily limit at its boundaries and per user
and currency, a currency without a fee, what a request shows, and the operator's list.

Written to kill mutants of `scripts/mutation withdrawals`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, select

from openclore.domain.errors import MarketError
from openclore.domain.money import to_coins
from openclore.ledger.addresses import deposit_address
from openclore.market.accounts import create_user
from openclore.market.audit import SYSTEM
from openclore.market.withdrawals import (
    all_withdrawals,
    approve_withdrawal,
    fee_for,
    my_withdrawals,
    reject_withdrawal,
    request_withdrawal,
    withdrawal_owner,
)
from openclore.store.schema import accounts, transfers

from support import Market, audit_entries

pytestmark = pytest.mark.origin("mutant")

BTC = deposit_address("elsewhere", 7, "bitcoin")
CLORE = deposit_address("elsewhere", 7, "CLORE-Blockchain")


def ask(market: Market, uid: int, amount: int, currency: str = "bitcoin", **kw: Any) -> int:
    settings = kw.pop("settings", market.settings)
    address = BTC if currency == "bitcoin" else CLORE
    with market.db.write() as conn:
        return request_withdrawal(conn, uid, currency, amount, address, settings, market.now())


def refusal(market: Market, uid: int, amount: int, **kw: Any) -> MarketError:
    with pytest.raises(MarketError) as caught:
        ask(market, uid, amount, **kw)
    return caught.value


def test_the_smallest_withdrawal_is_one_unit(market: Market) -> None:
    uid = market.user_id(market.user(bitcoin="1"))
    assert refusal(market, uid, 0).name == "amount_too_low"
    assert refusal(market, uid, -5).name == "amount_too_low"
    ask(market, uid, 1)


def test_a_user_without_the_wallet_has_not_enough_balance(market: Market) -> None:
    with market.db.write() as conn:
        uid = create_user(conn, "walletless", market.now(), market.settings)
        conn.execute(delete(accounts).where(accounts.c.user_id == uid))
    assert refusal(market, uid, 10).name == "not_enough_balance"


def test_the_daily_limit_at_its_boundary_per_user_and_currency(market: Market) -> None:
    limited = market.settings.model_copy(
        update={"withdrawal_daily_limit": {"bitcoin": Decimal("0.000001")}}  # 1000 units
    )
    alice = market.user_id(market.user(bitcoin="1", CLORE_Blockchain="100"))
    bob = market.user_id(market.user(bitcoin="1"))
    ask(market, bob, 900, settings=limited)  # another user's do not count
    ask(market, alice, 10**9, currency="CLORE-Blockchain", settings=limited)  # nor another currency
    ask(market, alice, 999, settings=limited)
    over = refusal(market, alice, 2, settings=limited)
    assert (over.name, over.extra) == ("withdrawal_limit_exceeded", {"limit_left": to_coins(1)})
    ask(market, alice, 1, settings=limited)  # exactly the limit
    full = refusal(market, alice, 1, settings=limited)
    assert full.extra == {"limit_left": to_coins(0)}
    # a limit of one unit is a limit
    one = market.settings.model_copy(
        update={"withdrawal_daily_limit": {"bitcoin": Decimal("0.000000001")}}
    )
    carol = market.user_id(market.user(bitcoin="1"))
    assert refusal(market, carol, 2, settings=one).name == "withdrawal_limit_exceeded"
    # a currency the limits do not name has none
    dave = market.user_id(market.user(bitcoin="3"))
    unlimited = limited.model_copy(update={"withdrawal_daily_limit": {}})
    ask(market, dave, 2 * 10**9, settings=unlimited)  # two whole coins


def test_a_currency_without_a_fee_costs_nothing_to_withdraw(market: Market) -> None:
    free = market.settings.model_copy(update={"withdrawal_fee": {}})
    assert fee_for(free, "bitcoin") == 0
    assert fee_for(market.settings, "bitcoin") == 100_000


def test_a_request_shows_as_it_was_made_and_the_operator_sees_all(market: Market) -> None:
    token = market.user("erin", bitcoin="1")
    uid = market.user_id(token)
    first = ask(market, uid, 5000)
    market.clock.advance(3)
    second = ask(market, uid, 7000)
    with market.db.write() as conn:
        approve_withdrawal(conn, first, "txid-1", "admin:ops", market.now())
        reject_withdrawal(conn, second, "no", "admin:ops", market.now())
    frank = market.user_id(market.user("frank", bitcoin="1"))
    third = ask(market, frank, 9)
    with market.db.read() as conn:
        mine = my_withdrawals(conn, uid)["withdrawals"]
        everything = all_withdrawals(conn)
        pending = all_withdrawals(conn, "pending")
        approved = all_withdrawals(conn, "approved")
    assert [w["id"] for w in mine] == [first, second]
    assert mine[0] == {
        "id": first,
        "currency": "bitcoin",
        "amount": to_coins(5000),
        "fee": to_coins(100_000),
        "address": BTC,
        "state": "approved",
        "created_at": market.now() - 3,
        "decided_at": market.now(),
        "txid": "txid-1",
        "reason": None,
    }
    assert [(w["id"], w["user"]) for w in everything] == [
        (first, "erin"),
        (second, "erin"),
        (third, "frank"),
    ]
    assert [w["id"] for w in pending] == [third] and [w["id"] for w in approved] == [first]
    assert (mine[1]["state"], mine[1]["decided_at"], mine[1]["reason"]) == (
        "rejected",
        market.now(),
        "no",
    )
    assert everything[1]["decided_by"] == "admin:ops"
    assert {k: everything[0][k] for k in ("user_id", "user", "decided_by")} == {
        "user_id": uid,
        "user": "erin",
        "decided_by": "admin:ops",
    }
    assert (everything[0]["amount_text"], everything[0]["fee_text"]) == ("0.000005", "0.0001")


def test_whose_withdrawal_it_is(market: Market) -> None:
    alice = market.user_id(market.user(bitcoin="1"))
    bob = market.user_id(market.user(bitcoin="1"))
    first, second = ask(market, alice, 10), ask(market, bob, 10)
    with market.db.read() as conn:
        assert withdrawal_owner(conn, first) == alice
        assert withdrawal_owner(conn, second) == bob
        assert withdrawal_owner(conn, second + 1) is None


def test_an_approval_needs_a_txid_of_at_most_128_characters(market: Market) -> None:
    uid = market.user_id(market.user(bitcoin="1"))
    wid = ask(market, uid, 10)
    for bad in ("", "   ", "x" * 129):
        with pytest.raises(MarketError) as refused, market.db.write() as conn:
            approve_withdrawal(conn, wid, bad, "admin:ops", market.now())
        assert refused.value.name == "txid_required", bad
    with market.db.write() as conn:
        approve_withdrawal(conn, wid, " " + "t" * 128 + " ", "admin:ops", market.now())
    with market.db.read() as conn:
        assert my_withdrawals(conn, uid)["withdrawals"][0]["txid"] == "t" * 128


def test_each_movement_says_what_it_was_for(market: Market) -> None:
    uid = market.user_id(market.user(bitcoin="1"))
    wid = ask(market, uid, 10)
    with market.db.write() as conn:
        approve_withdrawal(conn, wid, "tx9", "admin:ops", market.now())
    with market.db.read() as conn:
        rows = conn.execute(
            select(transfers.c.key, transfers.c.memo, transfers.c.kind, transfers.c.actor).where(
                transfers.c.key.like(f"withdrawal:{wid}:%")
            )
        ).all()
    memos = {r.key: r.memo for r in rows}
    assert {r.key: (r.kind, r.actor) for r in rows if "paid" in r.memo} == {
        f"withdrawal:{wid}:payout": ("payout", "admin:ops"),
        f"withdrawal:{wid}:fee_earned": ("withdrawal_fee", "admin:ops"),
    }
    asked = f"withdrawal #{wid} to {BTC}"
    paid = f"withdrawal #{wid} paid to {BTC}, txid tx9"
    assert memos == {
        f"withdrawal:{wid}:request": asked,
        f"withdrawal:{wid}:fee": asked,
        f"withdrawal:{wid}:payout": paid,
        f"withdrawal:{wid}:fee_earned": paid,
    }


def test_a_request_is_audited_when_someone_asked_for_it(market: Market) -> None:
    uid = market.user_id(market.user(bitcoin="1"))
    with market.db.write() as conn:
        wid = request_withdrawal(
            conn, uid, "bitcoin", 1500, BTC, market.settings, market.now(), actor=SYSTEM
        )
        request_withdrawal(conn, uid, "bitcoin", 7, BTC, market.settings, market.now())
    # the second had no actor: the caller audits it (admin CLI)
    (entry,) = audit_entries(market, "withdrawal.request")
    assert (entry["user_id"], entry["target"]) == (uid, f"withdrawal:{wid}")
    assert entry["detail"] == {"currency": "bitcoin", "amount": "0.0000015", "address": BTC}


def test_a_decision_needs_a_pending_withdrawal_and_a_reason_to_reject(market: Market) -> None:
    uid = market.user_id(market.user(bitcoin="1"))
    wid = ask(market, uid, 10)

    def decide(work: Any, *args: Any) -> MarketError:
        with pytest.raises(MarketError) as refused, market.db.write() as conn:
            work(conn, *args, "admin:ops", market.now())
        return refused.value

    assert decide(approve_withdrawal, wid + 1, "tx").name == "withdrawal_dont_exist"
    assert decide(reject_withdrawal, wid, "  ").name == "reason_required"
    with market.db.write() as conn:
        approve_withdrawal(conn, wid, "tx", "admin:ops", market.now())
    again = decide(reject_withdrawal, wid, "late")
    assert (again.name, again.extra) == ("withdrawal_not_pending", {"state": "approved"})
