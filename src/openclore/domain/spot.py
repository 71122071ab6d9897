"""The spot book's rules: who holds a server, how far and how often a bid may be lowered, and the
funding a bid needs. Pure functions over plain values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openclore.domain.money import spend_for

Order = Mapping[str, Any]  # needs "id", "spot" and "price"


def ranked(live: Sequence[Order]) -> list[Order]:
    """Live orders in the order they may hold a server: on-demand first, then bids from the
    highest (ties: the earliest)."""
    return sorted(live, key=lambda o: (o["spot"], -o["price"], o["id"]))


def choose_running(server_online: bool, live: Sequence[Order]) -> int | None:
    """Which live order holds the server: on-demand first, else the highest bid (ties: earliest);
    nothing while the server is offline."""
    if not server_online or not live:
        return None
    return int(ranked(live)[0]["id"])


def runway(price_per_day: int, runway_seconds: int) -> int:
    """What a wallet must hold for an order at this price to start (or a bid to rise to it)."""
    return spend_for(price_per_day, runway_seconds)


def seconds_until_lowering(last_lowered_at: int | None, now: int, interval: int) -> int:
    """0 when a bid may be lowered now, else how long until it may (one lowering per window)."""
    if last_lowered_at is None:
        return 0
    return max(0, interval - (now - last_lowered_at))


def lowest_bid(current: int, min_spot: int) -> int:
    """The lowest a bid may go in one lowering: one minimum spot price below the current bid,
    never under the minimum."""
    return max(current - max(min_spot, 1), min_spot)


def runway_seconds(balance: int, burn_per_day: int) -> int | None:
    """How long a wallet lasts at its running orders' prices (whole seconds, rounded down);
    None when nothing is burning it."""
    if burn_per_day <= 0:
        return None
    return max(0, balance) * 86400 // burn_per_day
