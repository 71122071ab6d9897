"""The deposit webhook's signature check and its use case (market/payments.py), at their edges:
the header's size cap and syntax, the replay window's boundary second in both directions, the
order of the checks, and what a deposit answers, credits and refuses.

Written to kill the mutants `scripts/mutation payments` found alive."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from sqlalchemy import select

from openclore.domain.errors import MarketError
from openclore.domain.money import Coins
from openclore.market.payments import MAX_HEADER, SignatureError, provider_deposit, sign, verify
from openclore.store.schema import accounts, transfers

from support import Market

pytestmark = pytest.mark.origin("mutant")

SECRET = "whsec-edge"
BODY = b'{"external_id":"x"}'
T = 1_700_000_000


def mac(timestamp: int, body: bytes = BODY, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def refused(header: str | None, now: float = T, tolerance: int = 300) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, header, BODY, now, tolerance)
    assert caught.value.name == str(caught.value)
    return caught.value.name


# ------------------------------------------------------------------------------- the header


def test_a_header_of_the_longest_size_is_read_and_one_more_is_not() -> None:
    header = f"t={T},v1={mac(T)}"
    longest = header + "," + "x" * (MAX_HEADER - len(header) - 1)
    assert len(longest) == MAX_HEADER == 512
    verify(SECRET, longest, BODY, T, 300)
    assert refused(longest + "x") == "missing_signature"


@pytest.mark.parametrize("header", [None, "", f"v1={mac(T)}", f"t={T}", f"t={T}x,v1={mac(T)}"])
def test_a_header_without_a_timestamp_or_a_signature_is_missing_one(header: str | None) -> None:
    assert refused(header) == "missing_signature"


def test_a_timestamp_has_at_most_twelve_digits() -> None:
    twelve = 999_999_999_999
    verify(SECRET, f"t={twelve},v1={mac(twelve)}", BODY, twelve, 300)
    thirteen = 1_000_000_000_000
    assert refused(f"t={thirteen},v1={mac(thirteen)}", now=thirteen) == "missing_signature"


def test_parts_may_carry_spaces_and_any_v1_may_match() -> None:
    verify(SECRET, f" t={T} , v1={'0' * 64} , v1={mac(T)} ", BODY, T, 300)
    assert refused(f"t={T},v1={'0' * 64}") == "bad_signature"
    assert refused(f"t={T},v1={mac(T, secret='other')}") == "bad_signature"
    assert refused(f"t={T},v1={mac(T, body=b'{}')}") == "bad_signature"


def test_the_window_holds_its_boundary_second_on_both_sides() -> None:
    header = f"t={T},v1={mac(T)}"
    verify(SECRET, header, BODY, T + 300, 300)
    verify(SECRET, header, BODY, T - 300, 300)
    assert refused(header, now=T + 301) == "timestamp_outside_window"
    assert refused(header, now=T - 301) == "timestamp_outside_window"


def test_a_bad_signature_is_refused_before_its_timestamp_is_looked_at() -> None:
    assert refused(f"t={T},v1={'0' * 64}", now=T + 10_000) == "bad_signature"


def test_the_sender_side_writes_the_documented_header() -> None:
    assert sign(SECRET, T, BODY) == f"t={T},v1={mac(T)}"


# --------------------------------------------------------------------------- the use case


def pay(market: Market, **given: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        external_id="inv-1",
        currency="bitcoin",
        amount=1500,
        user=None,
        address=None,
        settings=market.settings,
        now=market.now(),
    )
    args.update(given)
    with market.db.write() as conn:
        return provider_deposit(conn, **args)


def refusal(market: Market, **given: Any) -> str:
    with pytest.raises(MarketError) as caught:
        pay(market, **given)
    return caught.value.name


def address_of(market: Market, user_id: int, currency: str) -> str:
    with market.db.read() as conn:
        return str(
            conn.execute(
                select(accounts.c.deposit_address).where(
                    accounts.c.user_id == user_id,
                    accounts.c.currency == currency,
                    accounts.c.kind == "wallet",
                )
            ).scalar_one()
        )


def test_a_deposit_answers_what_it_credited_and_books_it_under_its_id(market: Market) -> None:
    uid = market.user_id(market.user("carol"))
    got = pay(market, user="carol")
    assert got == {
        "credited": True,
        "external_id": "inv-1",
        "user_id": uid,
        "currency": "bitcoin",
        "amount": Coins(1500),
    }
    with market.db.read() as conn:
        row = conn.execute(
            select(transfers.c.amount, transfers.c.kind, transfers.c.actor).where(
                transfers.c.key == "deposit:ext:inv-1"
            )
        ).one()
    assert tuple(row) == (1500, "deposit", "payments-webhook")
    assert pay(market, user=str(uid))["credited"] is False  # by id: the same deposit again


def test_a_deposit_by_address_needs_the_address_of_that_currency(market: Market) -> None:
    uid = market.user_id(market.user("dave"))
    btc = address_of(market, uid, "bitcoin")
    clore = address_of(market, uid, "CLORE-Blockchain")
    assert refusal(market, address=clore) == "unknown_account"
    assert refusal(market, address="no-such-address") == "unknown_account"
    assert pay(market, address=btc)["user_id"] == uid


def test_an_unknown_user_or_currency_is_refused(market: Market) -> None:
    market.user("erin")
    assert refusal(market, user="nobody") == "unknown_account"
    assert refusal(market, user="erin", currency="dogecoin") == "currency-not-allowed"


@pytest.mark.parametrize(
    "change",
    [{"amount": 1501}, {"user": "frank"}, {"currency": "CLORE-Blockchain"}],
    ids=["amount", "account", "currency"],
)
def test_the_same_external_id_with_anything_else_is_a_conflict(
    market: Market, change: dict[str, Any]
) -> None:
    market.user("erin")
    market.user("frank")
    assert pay(market, user="erin")["credited"] is True
    assert refusal(market, **{"user": "erin", **change}) == "deposit_conflict"
    assert pay(market, user="erin")["credited"] is False
