"""Per-GPU (partial) rentals: the slot allocation of domain/slots.py (SPEC §8).

Pure tests (no database, no server): the worked examples of docs/partial-rentals.md, the
boundaries a mutant would move, and properties over generated servers and order books."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openclore.domain.slots import (
    Allocation,
    Claim,
    allocate,
    bid_meets_minimum,
    free_slots,
    on_demand_admission,
    plan,
    preempted,
    rank_key,
    ranked,
    ranked_bids,
    slot_minimum,
    slot_price,
    starving,
)
from openclore.domain.spot import choose_running

NOW = 1_000_000
DAY = 86_400
STARVE = 3600


def bid(
    id_: int,
    price: int,
    k: int = 1,
    *,
    wanted: tuple[int, ...] | None = None,
    held: tuple[int, ...] = (),
    waiting_since: int | None = None,
) -> Claim:
    return Claim(id_, True, price, k, wanted, held, waiting_since)


def od(
    id_: int,
    price: int,
    k: int = 1,
    *,
    wanted: tuple[int, ...] | None = None,
    held: tuple[int, ...] = (),
    waiting_since: int | None = None,
) -> Claim:
    return Claim(id_, False, price, k, wanted, held, waiting_since)


def alloc(
    n: int, claims: list[Claim], *, starve: int | None = STARVE
) -> dict[int, tuple[int, ...]]:
    return allocate(n, claims, online=True, now=NOW, starvation_seconds=starve)


def settle(n: int, claims: list[Claim]) -> list[Claim]:
    """The claims with ``held`` set to what the allocation gives them (a consistent book)."""
    holds = alloc(n, claims)
    return [dataclasses.replace(c, held=holds[c.id]) for c in claims]


# --- prices ------------------------------------------------------------------------------------


def test_k_of_n_prices_round_down_to_the_unit() -> None:
    assert slot_price(10, 1, 3) == 3
    assert slot_price(10, 2, 3) == 6
    assert slot_price(10, 3, 3) == 10
    assert slot_price(11, 2, 3) == 7  # 22/3 = 7.33…
    assert slot_price(2, 1, 3) == 0
    assert slot_price(4_000_000_001, 1, 4) == 1_000_000_000
    # exact for amounts far beyond a float's 53 bits
    assert slot_price(9 * 10**18 - 1, 7, 8) == (9 * 10**18 - 1) * 7 // 8
    assert slot_price(9 * 10**18 - 1, 7, 8) == 7_874_999_999_999_999_999


def test_the_minimum_for_some_slots_rounds_up_and_is_met_exactly() -> None:
    assert slot_minimum(10, 1, 3) == 4  # 3.33… rounded up
    assert slot_minimum(10, 2, 3) == 7
    assert slot_minimum(12, 1, 3) == 4  # exact: no rounding
    assert slot_minimum(10, 3, 3) == 10
    assert slot_minimum(0, 1, 4) == 0
    for least, k, n in ((10, 1, 3), (11, 2, 7), (9 * 10**18 - 1, 5, 8)):
        bid = slot_minimum(least, k, n)
        assert bid_meets_minimum(bid, k, least, n) and not bid_meets_minimum(bid - 1, k, least, n)
    with pytest.raises(ValueError):
        slot_minimum(10, 4, 3)


def test_a_four_gpu_server_rents_four_quarters_at_once() -> None:
    price = 1_000_000_003  # per day for the whole server
    quarter = slot_price(price, 1, 4)
    assert quarter == 250_000_000
    orders = [od(i, quarter) for i in (1, 2, 3, 4)]
    assert alloc(4, orders) == {1: (0,), 2: (1,), 3: (2,), 4: (3,)}
    bids = [bid(i, 1000 - i) for i in (11, 12, 13, 14)]
    assert alloc(4, bids) == {11: (0,), 12: (1,), 13: (2,), 14: (3,)}
    assert free_slots(4, alloc(4, bids)) == ()


def test_slot_counts_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 0$"):
        slot_price(10, 0, 4)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 5$"):
        slot_price(10, 5, 4)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 0, not 1$"):
        slot_price(10, 1, 0)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 2, not -1$"):
        bid_meets_minimum(10, -1, 1, 2)
    assert slot_price(10, 1, 1) == 10


def test_a_bid_competes_per_slot_against_the_minimum_over_n() -> None:
    # minimum 10 per day for 3 GPUs: 10/3 per slot; a 1-slot bid of 3 is under it, 4 is over
    assert not bid_meets_minimum(3, 1, 10, 3)
    assert bid_meets_minimum(4, 1, 10, 3)
    # exactly the minimum per slot: 2 slots at 20/3 each of a 30-per-day minimum on 9 GPUs
    assert bid_meets_minimum(20, 6, 30, 9)
    assert not bid_meets_minimum(19, 6, 30, 9)
    # whole server: the plain comparison of today
    assert bid_meets_minimum(30, 9, 30, 9)
    assert not bid_meets_minimum(29, 9, 30, 9)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 3, not 4$"):
        bid_meets_minimum(100, 4, 1, 3)


@given(
    bid_=st.integers(0, 10**19),
    min_=st.integers(0, 10**19),
    n=st.integers(1, 16),
    data=st.data(),
)
def test_bid_minimum_is_the_exact_fraction(
    bid_: int, min_: int, n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, n))
    assert bid_meets_minimum(bid_, k, min_, n) == (Fraction(bid_, k) >= Fraction(min_, n))


@given(price=st.integers(0, 10**19), n=st.integers(1, 16), data=st.data())
def test_slot_price_is_the_floor_and_never_more_than_the_whole(
    price: int, n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, n))
    assert slot_price(price, k, n) == Fraction(price * k, n).__floor__()
    assert sum(slot_price(price, 1, n) for _ in range(n)) <= price


# --- ranking -----------------------------------------------------------------------------------


def test_bids_rank_by_price_per_slot_then_the_earlier_bid() -> None:
    a = bid(5, 20, k=2)  # 10 per slot
    b = bid(3, 10, k=1)  # 10 per slot, earlier
    c = bid(4, 21, k=2)  # 10.5 per slot
    d = od(9, 1, k=1)
    assert [x.id for x in ranked([a, b, c, d])] == [9, 4, 3, 5]
    assert [x.id for x in ranked_bids([a, b, c, d])] == [4, 3, 5]
    assert rank_key(a) == (True, False, Fraction(-10), 5)
    assert rank_key(d) == (False, True, Fraction(-1), 9)


def test_running_on_demand_orders_keep_their_slots_before_one_that_starts_again() -> None:
    # a stopped on-demand order (id 1, not holding) started again ranks after the running
    # on-demand order (id 2, holding slots 0-2), whatever their ids and prices (SPEC §8)
    again = od(1, 10, k=2)
    running = dataclasses.replace(od(2, 1, k=3), held=(0, 1, 2))
    assert [x.id for x in ranked([again, running])] == [2, 1]
    assert allocate(4, [again, running], online=True, now=0, starvation_seconds=None) == {
        2: (0, 1, 2),
        1: (),
    }
    assert rank_key(running) == (False, False, Fraction(-1, 3), 2)


def test_ranking_is_exact_where_a_float_would_tie() -> None:
    # 10**18 + 1/3 per slot against 10**18 per slot: equal as floats, not as prices
    big = bid(2, 3 * 10**18 + 1, k=3)
    small = bid(1, 10**18, k=1)
    assert float(Fraction(big.price, big.k)) == float(small.price)
    assert [x.id for x in ranked([small, big])] == [2, 1]
    assert alloc(3, [small, big]) == {2: (0, 1, 2), 1: ()}


def test_equal_bids_run_in_the_order_they_were_placed() -> None:
    bids = [bid(7, 5, k=2), bid(3, 5, k=2), bid(5, 5, k=2)]
    assert alloc(4, bids) == {3: (0, 1), 5: (2, 3), 7: ()}


def test_on_demand_orders_rank_among_themselves_by_price_per_slot() -> None:
    assert [x.id for x in ranked([od(1, 5), od(2, 6), od(3, 12, k=2), od(0, 5)])] == [2, 3, 0, 1]


# --- the allocation ----------------------------------------------------------------------------


def test_nothing_runs_while_the_server_is_offline() -> None:
    claims = [od(1, 10, held=(0,)), bid(2, 10, held=(1,))]
    got = plan(2, claims, online=False, now=NOW, starvation_seconds=0)
    assert got == Allocation({1: (), 2: ()}, {})
    assert allocate(2, claims, online=False, now=NOW, starvation_seconds=0) == {1: (), 2: ()}
    assert allocate(2, [], online=True, now=NOW, starvation_seconds=0) == {}


def test_a_bid_that_does_not_fit_waits_and_smaller_lower_ones_run() -> None:
    claims = [od(1, 10, held=(2,)), bid(2, 400, k=4), bid(3, 50), bid(4, 40)]
    assert alloc(4, claims, starve=None) == {1: (2,), 2: (), 3: (0,), 4: (1,)}


def test_a_whole_server_order_cannot_run_while_any_gpu_is_on_demand() -> None:
    claims = [od(1, 10, k=1, held=(3,)), bid(2, 10**12, k=4)]
    assert alloc(4, claims) == {1: (3,), 2: ()}
    assert on_demand_admission(4, claims, 4) is None
    assert on_demand_admission(4, claims, 3) == (0, 1, 2)
    # …and it runs as soon as the on-demand order has ended
    assert alloc(4, claims[1:]) == {2: (0, 1, 2, 3)}


def test_a_bid_prefers_the_slots_it_holds() -> None:
    claims = [bid(1, 90, k=2, held=(1, 3)), bid(2, 80, k=1, held=(0,))]
    assert alloc(4, claims) == {1: (1, 3), 2: (0,)}
    # held slots that no longer fit as a whole are dropped for free ones
    taken = [od(9, 1, held=(3,)), *claims]
    assert alloc(4, taken) == {9: (3,), 1: (1, 2), 2: (0,)}
    # a partial or oversized held set is not kept either
    assert alloc(4, [bid(1, 9, k=2, held=(3,))]) == {1: (0, 1)}
    assert alloc(4, [bid(1, 9, k=1, held=(2, 3))]) == {1: (0,)}
    assert alloc(4, [bid(1, 9, k=2, held=(3, 3))]) == {1: (0, 1)}


def test_held_slots_stay_put_when_others_leave() -> None:
    claims = settle(4, [bid(i, 100 - i) for i in (1, 2, 3, 4)])
    assert [c.held for c in claims] == [(0,), (1,), (2,), (3,)]
    left = [c for c in claims if c.id != 2]
    assert alloc(4, left) == {1: (0,), 3: (2,), 4: (3,)}
    # a new, higher bid takes the slot nobody holds rather than moving anyone
    assert alloc(4, [bid(0, 1000), *left]) == {0: (1,), 1: (0,), 3: (2,), 4: (3,)}


def test_a_new_bid_takes_free_slots_before_those_of_lower_orders() -> None:
    # 3 slots; the new top bid holds nothing; the two below hold 0 and 1; slot 2 is free
    claims = [bid(1, 90), bid(2, 80, held=(0,)), bid(3, 70, held=(1,))]
    assert alloc(3, claims) == {1: (2,), 2: (0,), 3: (1,)}
    # none free: it takes the lowest-ranked order's slot, the others stay
    full = [bid(1, 90), bid(2, 80, held=(0,)), bid(3, 70, held=(1,)), bid(4, 60, held=(2,))]
    assert alloc(3, full) == {1: (2,), 2: (0,), 3: (1,), 4: ()}
    # more than one slot: from the lowest-ranked up, slots given back in index order
    two = [bid(1, 900, k=2), bid(2, 80, held=(2,)), bid(3, 70, held=(0,)), bid(4, 60, held=(1,))]
    assert alloc(3, two) == {1: (0, 1), 2: (2,), 3: (), 4: ()}


def test_orders_holding_the_same_slot_still_give_distinct_slots() -> None:
    # an inconsistent book (two orders say they hold slot 0): the choice stays a set of slots
    claims = [bid(1, 900, k=3), bid(2, 80, held=(1,)), bid(3, 70, held=(0,)), bid(4, 60, held=(0,))]
    assert alloc(3, claims) == {1: (0, 1, 2), 2: (), 3: (), 4: ()}


def test_explicit_indices_are_those_slots_or_nothing() -> None:
    claims = [bid(1, 900, k=2, wanted=(3, 1)), bid(2, 80, k=1, wanted=(3,)), bid(3, 10, k=2)]
    assert alloc(4, claims) == {1: (1, 3), 2: (), 3: (0, 2)}
    # held slots do not override the explicit ones
    moved = [bid(1, 90, k=2, wanted=(0, 2), held=(1, 3))]
    assert alloc(4, moved) == {1: (0, 2)}
    # an on-demand order with explicit slots that are taken holds nothing
    assert alloc(2, [od(1, 9, held=(0,)), od(2, 1, wanted=(0,))]) == {1: (0,), 2: ()}
    assert alloc(2, [od(1, 9), od(2, 1, wanted=(0,))]) == {1: (1,), 2: (0,)}


def test_the_placement_looks_at_every_order_below_and_only_those() -> None:
    # the top order holds nothing; the ones below hold 0 and 1: it takes 2
    claims = [bid(1, 90), bid(2, 80, held=(0,)), bid(3, 70, held=(1,))]
    assert alloc(3, claims) == {1: (2,), 2: (0,), 3: (1,)}
    # an order above does not shield its held slots from the one below it (it is placed)
    claims = [bid(1, 90, held=(2,)), bid(2, 80), bid(3, 70, held=(0,))]
    assert alloc(3, claims) == {1: (2,), 2: (1,), 3: (0,)}


def test_the_allocation_is_a_fixed_point_of_itself() -> None:
    claims = [od(1, 5, k=2), bid(2, 30, k=2), bid(3, 20), bid(4, 5, k=3)]
    first = alloc(5, claims)
    assert first == {1: (0, 1), 3: (2,), 2: (3, 4), 4: ()}  # 20 per slot before 30 for two
    again = [dataclasses.replace(c, held=first[c.id]) for c in claims]
    assert alloc(5, again) == first


# --- starvation --------------------------------------------------------------------------------


def starving_book(waited: int) -> list[Claim]:
    """4 GPUs: one on demand, a 4-GPU bid at the top that cannot fit, a 1-GPU bid above it and
    two below it."""
    return [
        od(1, 10, held=(0,)),
        bid(2, 1000),  # 1000 per slot: above the big bid
        bid(3, 4 * 500, k=4, waiting_since=NOW - waited),
        bid(4, 50, held=(2,)),
        bid(5, 40, held=(3,)),
    ]


def test_a_bid_that_has_waited_up_to_the_threshold_reserves_nothing() -> None:
    got = plan(4, starving_book(STARVE), online=True, now=NOW, starvation_seconds=STARVE)
    assert got == Allocation({1: (0,), 2: (1,), 3: (), 4: (2,), 5: (3,)}, {})


def test_a_starving_bid_keeps_lower_bids_off_the_slots_left() -> None:
    got = plan(4, starving_book(STARVE + 1), online=True, now=NOW, starvation_seconds=STARVE)
    assert got == Allocation({1: (0,), 2: (1,), 3: (), 4: (), 5: ()}, {3: (2, 3)})
    assert (
        allocate(4, starving_book(STARVE + 1), online=True, now=NOW, starvation_seconds=STARVE)[4]
        == ()
    )
    # the on-demand order ends: the bid above it still runs, and it reserves the rest
    book = starving_book(STARVE + 1)[1:]
    got = plan(4, book, online=True, now=NOW, starvation_seconds=STARVE)
    assert got == Allocation({2: (0,), 3: (), 4: (), 5: ()}, {3: (1, 2, 3)})
    # the bid above it ends too: it runs on all four
    assert alloc(4, book[1:]) == {3: (0, 1, 2, 3), 4: (), 5: ()}


def test_starvation_off_or_with_nothing_left_reserves_nothing() -> None:
    got = plan(4, starving_book(10**9), online=True, now=NOW, starvation_seconds=None)
    assert got.reserved == {}
    assert got.holds[4] == (2,)
    # nothing left to reserve: no entry
    book = [od(1, 10, k=4, held=(0, 1, 2, 3)), bid(2, 9, k=2, waiting_since=0)]
    assert plan(4, book, online=True, now=NOW, starvation_seconds=0).reserved == {}


def test_a_starving_explicit_bid_reserves_only_its_own_slots() -> None:
    book = [
        od(1, 10, held=(0,)),
        bid(2, 90, k=2, wanted=(0, 1), waiting_since=0),
        bid(3, 10, held=(1,)),
        bid(4, 5, held=(3,)),
    ]
    got = plan(4, book, online=True, now=NOW, starvation_seconds=STARVE)
    assert got == Allocation({1: (0,), 2: (), 3: (2,), 4: (3,)}, {2: (1,)})


def test_only_a_waiting_spot_bid_starves() -> None:
    assert starving(bid(1, 1, waiting_since=0), STARVE + 1, STARVE)
    assert not starving(bid(1, 1, waiting_since=0), STARVE, STARVE)
    assert not starving(bid(1, 1, waiting_since=None), 10**9, STARVE)
    assert not starving(od(1, 1, waiting_since=0), 10**9, STARVE)
    assert not starving(bid(1, 1, waiting_since=0), 10**9, None)
    assert starving(bid(1, 1, waiting_since=5), 6, 0)


# --- on-demand admission -----------------------------------------------------------------------


def four_bids() -> list[Claim]:
    return settle(4, [bid(1, 40), bid(2, 30), bid(3, 20), bid(4, 10)])


def test_an_on_demand_order_preempts_exactly_the_two_lowest_bids() -> None:
    book = four_bids()
    assert [c.held for c in book] == [(0,), (1,), (2,), (3,)]
    slots = on_demand_admission(4, book, 2)
    assert slots == (2, 3)
    assert preempted(book, slots) == (3, 4)
    new = od(5, slot_price(100, 2, 4), k=2, held=slots)
    assert alloc(4, [*book, new]) == {1: (0,), 2: (1,), 3: (), 4: (), 5: (2, 3)}
    # an order the allocation has not placed yet lands on the same slots
    assert alloc(4, [*book, dataclasses.replace(new, held=())])[5] == (2, 3)


def test_admission_takes_free_slots_first() -> None:
    book = settle(4, [bid(1, 40), bid(2, 30)])
    assert on_demand_admission(4, book, 2) == (2, 3)
    assert on_demand_admission(4, book, 3) == (1, 2, 3)  # then the lower bid's slot
    assert preempted(book, (1, 2, 3)) == (2,)


def test_admission_preempts_the_lowest_ranked_orders_first() -> None:
    # the higher bid holds 2 and 3, the lower one 0 and 1
    book = [bid(1, 50, k=2, held=(2, 3)), bid(2, 20, k=2, held=(0, 1))]
    assert on_demand_admission(4, book, 1) == (0,)
    assert on_demand_admission(4, book, 2) == (0, 1)
    assert on_demand_admission(4, book, 3) == (0, 1, 2)
    assert preempted(book, (0, 1, 2)) == (1, 2)


def test_admission_is_refused_when_on_demand_holds_too_many() -> None:
    book = [od(1, 10, k=3, held=(0, 1, 2)), bid(2, 99, held=(3,))]
    assert on_demand_admission(4, book, 1) == (3,)
    assert on_demand_admission(4, book, 2) is None
    # on-demand orders that hold nothing yet still count
    assert on_demand_admission(4, [od(1, 10, k=3)], 2) is None
    assert on_demand_admission(4, [od(1, 10, k=3)], 1) == (3,)
    assert on_demand_admission(4, [], 4) == (0, 1, 2, 3)


def test_admission_with_explicit_slots() -> None:
    book = [od(1, 10, held=(1,)), bid(2, 99, held=(2,)), bid(3, 5, held=(3,))]
    assert on_demand_admission(4, book, 2, wanted=[3, 2]) == (2, 3)
    assert preempted(book, (2, 3)) == (2, 3)
    assert on_demand_admission(4, book, 2, wanted=(0, 1)) is None
    assert on_demand_admission(4, book, 1, wanted=(0,)) == (0,)
    assert preempted(book, (0,)) == ()


def test_admission_places_on_demand_orders_before_the_spot_book() -> None:
    # an on-demand order with explicit slots that a spot order holds still counts as holding them
    book = [od(1, 10, wanted=(0,)), bid(2, 99, held=(0,)), bid(3, 98, held=(1,))]
    assert on_demand_admission(2, book, 1) == (1,)
    assert on_demand_admission(2, book, 1, wanted=(0,)) is None
    # a spot order never takes an on-demand order's place in the admission
    spot_only = [bid(2, 99, held=(0,)), bid(3, 98, held=(1,))]
    assert on_demand_admission(2, spot_only, 2) == (0, 1)


def test_admission_places_each_on_demand_order_around_the_ones_below_it() -> None:
    # order 1 holds nothing yet: it avoids slot 1 (order 2 names it) and slot 0 (a bid holds it)
    book = [od(1, 50), od(2, 10, wanted=(1,)), bid(3, 99, held=(0,))]
    assert alloc(3, book) == {1: (2,), 2: (1,), 3: (0,)}
    assert on_demand_admission(3, book, 1) == (0,)
    assert on_demand_admission(3, book, 2) is None


def test_preempted_names_only_spot_orders_that_hold_the_slots() -> None:
    book = [od(1, 10, held=(0,)), bid(2, 9, held=(1,)), bid(3, 9, held=(2,)), bid(4, 9)]
    assert preempted(book, (0, 1, 3)) == (2,)
    assert preempted(book, iter([2, 1])) == (2, 3)
    assert preempted(book, ()) == ()


def test_bad_orders_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^two orders with one id$"):
        alloc(4, [bid(1, 1), od(1, 1)])
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 5$"):
        alloc(4, [bid(1, 1, k=5)])
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 0$"):
        alloc(4, [bid(1, 1, k=0)])
    message = r"^explicit slots must be 2 different indices below 4$"
    for wanted in ((0, 0), (0,), (0, 4), (-1, 0), (0, 1, 2)):
        with pytest.raises(ValueError, match=message):
            alloc(4, [bid(1, 1, k=2, wanted=wanted)])
        with pytest.raises(ValueError, match=message):
            on_demand_admission(4, [], 2, wanted=wanted)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 0$"):
        on_demand_admission(4, [], 0)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 4, not 5$"):
        on_demand_admission(4, [], 5)
    with pytest.raises(ValueError, match=r"^two orders with one id$"):
        on_demand_admission(4, [bid(1, 1), bid(1, 2)], 1)
    with pytest.raises(ValueError, match=r"^a slot count must be 1 to 2, not 3$"):
        on_demand_admission(2, [bid(1, 1, k=3)], 1)
    assert alloc(4, [bid(1, 1, k=2, wanted=(3, 0))]) == {1: (0, 3)}


def test_free_slots_are_the_ones_nobody_holds() -> None:
    assert free_slots(5, {1: (3,), 2: (), 3: (0, 4)}) == (1, 2)
    assert free_slots(2, {}) == (0, 1)


# --- properties --------------------------------------------------------------------------------


@st.composite
def books(
    draw: st.DrawFn, *, whole: bool = False, explicit: bool = True
) -> tuple[int, list[Claim]]:
    n = draw(st.integers(1, 6))
    ids = draw(st.lists(st.integers(1, 40), unique=True, max_size=8))
    claims = []
    for id_ in ids:
        k = n if whole else draw(st.integers(1, n))
        some: tuple[int, ...] = tuple(draw(st.permutations(range(n)))[:k])
        wanted = some if explicit and draw(st.booleans()) else None
        anything = tuple(draw(st.lists(st.integers(0, n - 1), max_size=n)))
        other: tuple[int, ...] = tuple(draw(st.permutations(range(n)))[:k])
        held = draw(st.sampled_from([(), some, other, anything]))
        claims.append(
            Claim(
                id=id_,
                spot=draw(st.booleans()),
                price=draw(st.integers(0, 12)),
                k=k,
                wanted=wanted,
                held=held,
                waiting_since=draw(st.none() | st.integers(NOW - 3 * STARVE, NOW)),
            )
        )
    return n, claims


def check_invariants(n: int, claims: list[Claim], got: Allocation) -> None:
    assert set(got.holds) == {c.id for c in claims}
    seen: list[int] = [s for slots in got.holds.values() for s in slots]
    seen += [s for slots in got.reserved.values() for s in slots]
    assert len(seen) == len(set(seen)), "a slot held or reserved twice"
    assert all(0 <= s < n for s in seen)
    for c in claims:
        slots = got.holds[c.id]
        assert slots == tuple(sorted(slots))
        assert len(slots) in (0, c.k)
        if slots and c.wanted is not None:
            assert set(slots) == set(c.wanted)
        if c.id in got.reserved:
            assert not slots and starving(c, NOW, STARVE)
            assert len(got.reserved[c.id]) < c.k or c.wanted is not None


@settings(max_examples=300, deadline=None)
@given(book=books())
def test_allocation_invariants(book: tuple[int, list[Claim]]) -> None:
    n, claims = book
    got = plan(n, claims, online=True, now=NOW, starvation_seconds=STARVE)
    check_invariants(n, claims, got)
    # on-demand orders are placed as if no spot order existed: never preempted by one
    on_demand = [c for c in claims if not c.spot]
    alone = allocate(n, on_demand, online=True, now=NOW, starvation_seconds=STARVE)
    for c in on_demand:
        assert bool(got.holds[c.id]) == bool(alone[c.id])
    # the allocation reproduces itself once the orders hold what it gave them
    again = [dataclasses.replace(c, held=got.holds[c.id]) for c in claims]
    assert plan(n, again, online=True, now=NOW, starvation_seconds=STARVE) == got
    assert allocate(n, claims, online=False, now=NOW, starvation_seconds=STARVE) == {
        c.id: () for c in claims
    }


@settings(max_examples=300, deadline=None)
@given(book=books(explicit=False))
def test_lower_bids_never_keep_a_higher_one_waiting(book: tuple[int, list[Claim]]) -> None:
    """Without explicit slots, whether an order runs depends only on the orders ranked above
    it: removing every lower-ranked order never lets a waiting one run."""
    n, claims = book
    got = alloc(n, claims)
    order = ranked(claims)
    for at, c in enumerate(order):
        above = alloc(n, order[: at + 1])
        assert bool(above[c.id]) == bool(got[c.id]), c


@settings(max_examples=300, deadline=None)
@given(book=books(), k=st.integers(1, 6), price=st.integers(0, 12))
def test_admission_matches_the_allocation_that_follows(
    book: tuple[int, list[Claim]], k: int, price: int
) -> None:
    n, claims = book
    k = min(k, n)
    # a consistent book: what each order holds is what the allocation gave it, and every live
    # on-demand order runs (admission refuses one that would not)
    claims = [c for c in settle(n, claims) if c.spot or c.held]
    claims = settle(n, claims)
    assert all(c.held for c in claims if not c.spot)
    slots = on_demand_admission(n, claims, k)
    on_demand_slots = {s for c in claims if not c.spot for s in c.held}
    if slots is None:
        assert n - len(on_demand_slots) < k
        return
    assert len(slots) == k and not on_demand_slots & set(slots)
    new = od(100, price, k=k)
    after = alloc(n, [*claims, new])
    assert after[100] == slots
    hit = preempted(claims, slots)
    for c in claims:
        if not c.spot:
            assert after[c.id] == c.held  # on-demand orders keep their slots
        elif (
            c.held
            and c.id not in hit
            and all(rank_key(c) < rank_key(h) for h in claims if h.id in hit)
        ):
            assert after[c.id] == c.held  # bids ranked above every preempted one stay put
    assert set(hit) == {c.id for c in claims if c.spot and set(c.held) & set(slots)}


def whole_server_live(book: tuple[int, list[Claim]]) -> list[dict[str, object]]:
    return [{"id": c.id, "spot": c.spot, "price": c.price} for c in book[1]]


@settings(max_examples=400, deadline=None)
@given(book=books(whole=True), online=st.booleans(), starve=st.none() | st.integers(0, 10**4))
def test_whole_server_orders_run_exactly_as_today(
    book: tuple[int, list[Claim]], online: bool, starve: int | None
) -> None:
    n, claims = book
    # the database keeps one live (not stopped) whole-server on-demand order per server
    first = next((c for c in claims if not c.spot), None)
    claims = [c for c in claims if c.spot or c is first]
    got = allocate(n, claims, online=online, now=NOW, starvation_seconds=starve)
    running = [id_ for id_, slots in got.items() if slots]
    today = choose_running(online, whole_server_live((n, claims)))
    assert running == ([] if today is None else [today])
    assert all(got[id_] == tuple(range(n)) for id_ in running)


def test_the_worked_example_of_docs_partial_rentals() -> None:
    coin = 10**9
    assert bid_meets_minimum(12 * coin // 10, 1, 4 * coin, 4)
    assert not bid_meets_minimum(9 * coin // 10, 1, 4 * coin, 4)
    book = settle(4, [bid(1, 25 * coin // 10), bid(2, 2 * coin), bid(3, 15 * coin // 10)])
    book = settle(4, [*book, bid(4, 12 * coin // 10)])
    assert [c.held for c in book] == [(0,), (1,), (2,), (3,)]
    price = slot_price(10 * coin, 2, 4)
    assert price == 5 * coin
    slots = on_demand_admission(4, book, 2)
    assert slots == (2, 3) and preempted(book, slots) == (3, 4)
    book = settle(4, [*book, od(5, price, k=2, held=slots)])
    assert [c.held for c in book] == [(0,), (1,), (), (), (2, 3)]
    assert on_demand_admission(4, book, 3) is None
    assert on_demand_admission(4, book, 2) == (0, 1)
    book.append(bid(6, 12 * coin, k=4, waiting_since=1000))
    for now, holds, reserved in (
        (1000, {1: (0,), 2: (1,)}, {}),
        (4600, {1: (0,), 2: (1,)}, {}),
        (4601, {1: (), 2: ()}, {6: (0, 1)}),
    ):
        got = plan(4, book, online=True, now=now, starvation_seconds=3600)
        assert {i: got.holds[i] for i in (1, 2)} == holds and got.reserved == reserved
        assert got.holds[5] == (2, 3) and got.holds[6] == ()
    ended = [c for c in book if c.id != 5]
    assert allocate(4, ended, online=True, now=4601, starvation_seconds=3600)[6] == (0, 1, 2, 3)
    assert allocate(4, ended, online=True, now=4601, starvation_seconds=None)[6] == (0, 1, 2, 3)
