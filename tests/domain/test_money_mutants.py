"""Money rules (domain/money.py) that a mutant the rest of the suite let through changed
(scripts/mutation, docs/testing.md), each pinned with numbers written here; moved from the former
tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from openclore.domain.money import (
    AmountError,
    affordable_seconds,
    coins_str,
    to_coins,
    to_units,
)

pytestmark = pytest.mark.origin("mutant")


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
