"""Exchange rates and USD prices, in exact integers.

A rate is the operator's price of one whole coin in USD, held as nano-USD per coin (an ``int``,
like every amount): ``bitcoin=60000`` is ``60_000 * 10**9``. A USD value is nano-USD too and is
shown like an amount (nine decimals at most). Rounding, the only places it happens:

* coin amount → USD: ``units × rate / 10⁹`` rounded to the nearest nano-USD, ties to even;
* USD price → coin price (``autoprice``): ``usd × 10⁹ / rate`` rounded the same way, and never
  below one unit (a listed price is never zero).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

NANO = 1_000_000_000
MAX_RATE_USD = Decimal(10) ** 9  # a billion dollars a coin is a typo, not a rate


class RateError(ValueError):
    """A rate that is not a positive, finite number of dollars."""


def rate_units(value: Any) -> int:
    """Dollars per coin (text or number) → nano-USD per coin; refuses zero, negatives, NaN."""
    if isinstance(value, bool):
        raise RateError("a rate must be a number")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise RateError(f"not a number: {str(value)[:32]!r}") from None
    if not dec.is_finite() or dec <= 0 or dec > MAX_RATE_USD:
        raise RateError("a rate must be a positive number of dollars (at most 10^9)")
    units = int((dec * NANO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if units <= 0:
        raise RateError("a rate must be at least 0.000000001 dollars")
    return units


def _div_round(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, ties to even (both ≥ 0)."""
    q, r = divmod(numerator, denominator)
    if 2 * r > denominator or (2 * r == denominator and q % 2 == 1):
        q += 1
    return q


def usd_of(units: int, rate: int) -> int:
    """The USD value (nano-USD) of ``units`` of a coin at ``rate`` nano-USD per coin."""
    return _div_round(units * rate, NANO)


def units_for_usd(usd: int, rate: int) -> int:
    """The coin price (units) worth ``usd`` nano-USD at ``rate``; at least one unit."""
    return max(1, _div_round(usd * NANO, rate))


def rate_text(rate: int) -> str:
    """nano-USD per coin → the dollars text an operator typed (``60000``, ``0.05``)."""
    whole, frac = divmod(rate, NANO)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def rate_dollars(rate: int) -> Decimal:
    """nano-USD per coin → dollars per coin, exactly."""
    return Decimal(rate) / NANO
