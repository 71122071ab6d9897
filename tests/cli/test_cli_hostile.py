"""The commands given a database they cannot use never show its password or a traceback
(cli/main.py). The test reproduced a defect before its fix; moved from the former
tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.origin("hostile")


def test_database_errors_never_show_the_password_or_a_traceback() -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app

    url = "postgresql://market:s3cr3t-pw@127.0.0.1:1/market"
    for args in (["db", "upgrade"], ["admin", "user", "add", "bob"], ["serve"]):
        env = {"OPENCLORE_ADDRESS_SECRET": "test-address-secret"}  # (`serve` checks it first)
        result = CliRunner().invoke(app, [*args, "--database-url", url], env=env)
        assert result.exit_code == 1, result.output
        assert "s3cr3t-pw" not in result.output and "Traceback" not in result.output
        assert "cannot use database postgresql://market:***@127.0.0.1:1/market" in result.output
