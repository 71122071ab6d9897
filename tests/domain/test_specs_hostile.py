"""A host agent's specs are checked field by field (domain/specs.py): one invalid field of ``net``
drops only that field. The test reproduced a defect before its fix; moved from the former
tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.origin("hostile")


def test_an_invalid_field_of_net_drops_only_that_field() -> None:
    from openclore.domain.specs import check_specs

    clean, problems = check_specs({"net": {"up": 10.5, "down": 90, "cc": ""}, "ram": 64})
    assert clean == {"net": {"up": 10.5, "down": 90}, "ram": 64}
    assert problems == []
    assert check_specs({"net": "fast"}) == ({}, ["invalid net"])
