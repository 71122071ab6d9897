"""The mutation script's named mutants (scripts/mutation, docs/testing.md) still apply to the code,
and the tests they name exist; moved from the former tests/test_mutants.py (marker
``origin("mutant")``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.origin("mutant")


def test_every_named_mutant_still_applies() -> None:
    """scripts/mutation's named mutants each change their code exactly once: a change to that
    code must carry its mutant along (else the mutant would silently stop being tried)."""
    import importlib.util
    import sys
    from importlib.machinery import SourceFileLoader
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    loader = SourceFileLoader("openclore_mutation", str(root / "scripts" / "mutation"))
    spec = importlib.util.spec_from_loader("openclore_mutation", loader)
    assert spec is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules["openclore_mutation"] = script
    try:
        loader.exec_module(script)
    finally:
        del sys.modules["openclore_mutation"]
    assert len(script.NAMED) >= 24
    for mutant in script.NAMED:
        assert mutant.module in script.MODULES, mutant.title
        assert (root / mutant.path).read_text().count(mutant.old) == 1, mutant.title
        for test in mutant.tests:
            path, _, name = test.partition("::")
            assert f"def {name}(" in (root / path).read_text(), test
