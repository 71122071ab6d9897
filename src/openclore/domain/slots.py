"""Per-GPU (partial) rentals: which GPU slots of a server each live order holds (SPEC §8).

A server's GPUs are slots ``0 .. n-1`` (their NVML index). An order asks for ``k`` of them
(a whole-server order: ``k = n``), either any ``k`` or explicit indices. Pure functions over plain
values; prices are exact integers per day (never floats). The rule in words, with a worked
example, is docs/partial-rentals.md.

The allocation, in rank order (:func:`ranked`: on-demand first, then spot bids by price per
slot, highest first, ties: the earlier order):

1. an on-demand order keeps its slots (the ones it holds, else its explicit indices, else it
   takes slots as a new on-demand order does: :func:`on_demand_admission`);
2. a spot order runs when all of its ``k`` slots fit in the slots left: its explicit indices,
   else the slots it holds now (running containers are not moved), else free slots; a bid that
   does not fit holds nothing;
3. a bid that does not fit and has waited longer than ``starvation_seconds`` reserves the slots
   left that it needs, so that lower-ranked bids cannot take them.

Where a placement may pick (no explicit indices, nothing held that is still free) it takes the
slots that no order ranked below it holds or names first (lowest index first), then the slots
of the lowest-ranked orders below it, walking up the ranking until it has enough (a slot counts
for the highest-ranked order that holds or names it), so as few running orders as possible lose
their slots, and on-demand orders' slots last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

Slots = tuple[int, ...]


@dataclass(frozen=True)
class Claim:
    """A live order as the allocation sees it.

    ``price`` is per day for all of its ``k`` slots (for an on-demand order, the
    :func:`slot_price` it was given; for a spot order, its bid). ``wanted``: explicit slot
    indices, or None for any ``k``. ``held``: the slots it holds now (empty when not running).
    ``waiting_since``: when a spot bid started waiting (None while it runs)."""

    id: int
    spot: bool
    price: int
    k: int
    wanted: Slots | None = None
    held: Slots = ()
    waiting_since: int | None = None


@dataclass(frozen=True)
class Allocation:
    """``holds``: each order's slots (empty: not running); ``reserved``: the slots a starving
    bid keeps from lower-ranked bids (it does not hold them and pays nothing for them)."""

    holds: dict[int, Slots]
    reserved: dict[int, Slots]


def slot_price(price_per_day: int, k: int, n: int) -> int:
    """k/n of a server's per-day price, rounded down to the unit."""
    _check_count(k, n)
    return price_per_day * k // n


def slot_minimum(server_min_per_day: int, k: int, n: int) -> int:
    """The least a bid for ``k`` of ``n`` slots may be per day: k/n of the server's minimum,
    rounded UP to the unit (so that it meets :func:`bid_meets_minimum`)."""
    _check_count(k, n)
    return -(-server_min_per_day * k // n)


def bid_meets_minimum(bid_per_day: int, k: int, server_min_per_day: int, n: int) -> bool:
    """Whether a bid for ``k`` slots is at least the server's minimum per slot (minimum ÷ n),
    compared exactly: bid / k ≥ minimum / n ⇔ bid · n ≥ minimum · k."""
    _check_count(k, n)
    return bid_per_day * n >= server_min_per_day * k


def rank_key(claim: Claim) -> tuple[bool, bool, Fraction, int]:
    """On-demand before spot, running on-demand orders before the one starting (they keep their
    slots: a stopped order started again comes after them, SPEC §8), then the higher price per
    slot (exact), then the earlier order."""
    starting = not claim.spot and not claim.held
    return (claim.spot, starting, -Fraction(claim.price, claim.k), claim.id)


def ranked(claims: Iterable[Claim]) -> list[Claim]:
    """Orders in the order they are given slots (see :func:`rank_key`)."""
    return sorted(claims, key=rank_key)


def ranked_bids(claims: Iterable[Claim]) -> list[Claim]:
    """The spot bids alone, highest price per slot first (ties: the earlier bid)."""
    return ranked(claim for claim in claims if claim.spot)


def starving(claim: Claim, now: int, starvation_seconds: int | None) -> bool:
    """A spot bid that has waited longer than ``starvation_seconds`` (None: never)."""
    if not claim.spot or claim.waiting_since is None or starvation_seconds is None:
        return False
    return now - claim.waiting_since > starvation_seconds


def plan(
    n: int,
    claims: Iterable[Claim],
    *,
    online: bool,
    now: int,
    starvation_seconds: int | None,
) -> Allocation:
    """The allocation of an ``n``-slot server among its live orders (the module's docstring)."""
    order = _checked(n, claims)
    holds: dict[int, Slots] = {claim.id: () for claim in order}
    reserved: dict[int, Slots] = {}
    if not online:
        return Allocation(holds, reserved)
    free = set(range(n))
    for at, claim in enumerate(order):
        slots = _place(claim, free, order[at + 1 :])
        if slots is not None:
            holds[claim.id] = slots
            free.difference_update(slots)
        elif starving(claim, now, starvation_seconds):
            wanted = free if claim.wanted is None else free.intersection(claim.wanted)
            if wanted:
                reserved[claim.id] = tuple(sorted(wanted))
                free.difference_update(wanted)
    return Allocation(holds, reserved)


def allocate(
    n: int,
    claims: Iterable[Claim],
    *,
    online: bool,
    now: int,
    starvation_seconds: int | None,
) -> dict[int, Slots]:
    """Which slots each live order holds (an empty tuple: it is not running)."""
    return plan(n, claims, online=online, now=now, starvation_seconds=starvation_seconds).holds


def on_demand_admission(
    n: int, orders: Iterable[Claim], k: int, wanted: Sequence[int] | None = None
) -> Slots | None:
    """The slots a new on-demand order for ``k`` slots (or the explicit ``wanted`` ones) takes:
    slots nobody holds first, then the slots of the lowest-ranked running spot orders, as few
    orders as needed; None when the on-demand orders already hold too many of the slots
    (refused: ``server-already-rented``). ``orders`` are the server's live orders with what
    they hold now."""
    _check_count(k, n)
    if wanted is not None:
        _check_indices(tuple(wanted), k, n)
    order = _checked(n, orders)
    free = set(range(n))
    bids = [claim for claim in order if claim.spot]
    for at, claim in enumerate(order[: len(order) - len(bids)]):
        slots = _place(claim, free, order[at + 1 :])
        if slots is not None:
            free.difference_update(slots)
    if wanted is not None:
        return tuple(sorted(wanted)) if free.issuperset(wanted) else None
    if len(free) < k:
        return None
    return _choose(k, free, bids)


def preempted(orders: Iterable[Claim], slots: Iterable[int]) -> tuple[int, ...]:
    """The ids (ascending) of the running spot orders that hold any of ``slots``: those an
    on-demand order taking them preempts (they become ``stopped``; the allocation gives them
    slots again when some fit)."""
    taken = set(slots)
    return tuple(sorted(o.id for o in orders if o.spot and taken.intersection(o.held)))


def free_slots(n: int, holds: dict[int, Slots]) -> Slots:
    """The slots that no order holds, ascending."""
    used = {slot for slots in holds.values() for slot in slots}
    return tuple(slot for slot in range(n) if slot not in used)


def _place(claim: Claim, free: set[int], lower: Sequence[Claim]) -> Slots | None:
    """The slots ``claim`` runs on, given the slots left and the orders ranked below it; None
    when it does not fit."""
    if claim.wanted is not None:
        return tuple(sorted(claim.wanted)) if free.issuperset(claim.wanted) else None
    if len(free) < claim.k:
        return None
    held = set(claim.held)
    if len(held) == claim.k and free.issuperset(held):
        return tuple(sorted(held))
    return _choose(claim.k, free, lower)


def _choose(k: int, free: set[int], lower: Sequence[Claim]) -> Slots:
    """``k`` of ``free`` (which has at least ``k``): first the ones that no order below holds or
    asks for by index, lowest first; then the others, those whose highest-ranked claimant
    ranks lowest first (so a slot an on-demand order below holds is taken last)."""
    owner: dict[int, int] = {}
    for rank, claim in enumerate(lower):
        for slot in (*claim.held, *(claim.wanted or ())):
            owner.setdefault(slot, rank)
    pool = sorted(free, key=lambda slot: (-owner.get(slot, len(lower)), slot))
    return tuple(sorted(pool[:k]))


def _check_count(k: int, n: int) -> None:
    if not 0 < k <= n:
        raise ValueError(f"a slot count must be 1 to {n}, not {k}")


def _check_indices(indices: Slots, k: int, n: int) -> None:
    if len(set(indices)) != k or not all(0 <= slot < n for slot in indices):
        raise ValueError(f"explicit slots must be {k} different indices below {n}")


def _checked(n: int, claims: Iterable[Claim]) -> list[Claim]:
    """The claims in rank order, once each is known to be well-formed for ``n`` slots."""
    listed = list(claims)
    if len({claim.id for claim in listed}) != len(listed):
        raise ValueError("two orders with one id")
    for claim in listed:
        _check_count(claim.k, n)
        if claim.wanted is not None:
            _check_indices(claim.wanted, claim.k, n)
    return ranked(listed)
