"""Spot-book rules (domain/spot.py) that a mutant the rest of the suite let through changed
(scripts/mutation, docs/testing.md), each pinned with numbers written here; moved from the former
tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

import pytest

from openclore.domain.spot import choose_running, lowest_bid

pytestmark = pytest.mark.origin("mutant")


def test_choose_running_on_demand_first_then_the_highest_earliest_bid() -> None:
    bid = {"id": 1, "spot": True, "price": 900}
    same_later = {"id": 2, "spot": True, "price": 900}
    on_demand = {"id": 3, "spot": False, "price": 100}
    assert choose_running(True, [same_later, bid]) == 1
    assert choose_running(True, [bid, on_demand]) == 3
    assert choose_running(True, [{"id": 4, "spot": True, "price": 901}, bid]) == 4
    assert choose_running(True, [same_later]) == 2
    assert choose_running(False, [bid, on_demand]) is None  # an offline server runs nothing
    assert choose_running(True, []) is None


def test_a_lowering_step_is_at_least_one_unit() -> None:
    assert lowest_bid(5, 1) == 4
    assert lowest_bid(5, 0) == 4
    assert lowest_bid(4200, 1000) == 3200
    assert lowest_bid(1500, 1000) == 1000  # never under the minimum
