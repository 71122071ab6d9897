"""Money: exact integers in nano-coins.

Every amount inside openclore is an ``int`` of :data:`UNITS_PER_COIN` minor units (10⁻⁹ coin), so a
64-bit column holds more than 9·10⁹ coins. On the wire amounts are JSON numbers in whole coins.

Rounding rules (the only places where rounding happens):

* units → wire: the exact decimal text of the amount (no float on the way out either);
* wire → units: a number with more than nine decimals is rounded to the nearest unit, ties to even
  (it is a price or an amount that a client typed; nothing is moved by this rounding);
* spend: ``floor(price × active_seconds / 86400)``, always from the total active time, so settling
  more or less often never changes the total; when a spot bid changes its price, the seconds run
  so far keep the spend they had (``base_spend`` at ``base_seconds``) and the new price applies to
  the seconds after it: :func:`segment_spend`;
* fee: ``floor(spend × fee_bp / 10000)`` from the total spend; the host receives ``spend − fee``.
  Renter, host and platform amounts therefore always add up exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

UNITS_PER_COIN = 1_000_000_000
SECONDS_PER_DAY = 86_400
MAX_UNITS = 9_000_000_000_000_000_000  # below 2**63, so every amount fits a BIGINT
BASIS_POINTS = 10_000


class AmountError(ValueError):
    """A value that is not a valid amount of coins."""


def to_units(value: Decimal | int | float | str) -> int:
    """Whole coins (as parsed from JSON) → integer units; rejects NaN, infinities and overflow."""
    if isinstance(value, bool):
        raise AmountError("an amount must be a number")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
        if not dec.is_finite():
            raise AmountError("an amount must be finite")
        if abs(dec) > Decimal(MAX_UNITS) / UNITS_PER_COIN:
            raise AmountError("amount out of range")
        units = (dec * UNITS_PER_COIN).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:
        raise AmountError("not a number") from exc
    return int(units)


class Coins:
    """An amount shown in whole coins. The API layer writes it as the exact JSON number
    (``0.0000042``, ``300``), never through a float, so no amount loses a unit however large."""

    __slots__ = ("units",)

    def __init__(self, units: int) -> None:
        self.units = units

    def __str__(self) -> str:
        return coins_str(self.units)

    def __repr__(self) -> str:
        return f"Coins({coins_str(self.units)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Coins) and other.units == self.units

    def __hash__(self) -> int:
        return hash(self.units)


def to_coins(units: int) -> Coins:
    """Integer units → an amount to show in whole coins."""
    return Coins(units)


def coins_str(units: int) -> str:
    """Exact decimal text of an amount, for humans (CLI, logs)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_COIN)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return sign + text


def percent_to_bp(percent: Decimal) -> int:
    """A fee in percent (5, 2.5) → basis points (500, 250)."""
    return int((percent * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def bp_to_percent(bp: int) -> float | int:
    """Basis points → the percent number shown in my_orders (5, 2.5)."""
    return bp // 100 if bp % 100 == 0 else bp / 100


def spend_for(price_per_day: int, active_seconds: int) -> int:
    """What an order at ``price_per_day`` costs after ``active_seconds`` of running."""
    return price_per_day * active_seconds // SECONDS_PER_DAY


def segment_spend(price_per_day: int, base_spend: int, base_seconds: int, active: int) -> int:
    """An order's total spend after ``active`` seconds when its current price has applied since
    ``base_seconds`` (what it spent before then, ``base_spend``, is kept)."""
    return base_spend + spend_for(price_per_day, active - base_seconds)


def fee_for(spend: int, fee_bp: int) -> int:
    """The platform's part of a total spend."""
    return spend * fee_bp // BASIS_POINTS


def affordable_seconds(price_per_day: int, active_seconds: int, spent: int, balance: int) -> int:
    """Largest n ≥ 0 such that ``spend_for(price, active_seconds + n) - spent <= balance``."""
    if price_per_day <= 0:
        raise ValueError("price must be positive")
    # spend_for(p, s + n) <= spent + balance  <=>  p*(s+n) < (spent+balance+1)*86400
    limit = (spent + balance + 1) * SECONDS_PER_DAY - 1
    return max(0, limit // price_per_day - active_seconds)
