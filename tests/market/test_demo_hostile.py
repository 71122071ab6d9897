"""The demo world never replaces a real market: ``/sandbox/reset`` and ``serve --demo`` refuse a
database that holds one (market/demo.py). Each test reproduced a defect before its fix; moved
from the former tests/test_hostile.py (marker ``origin("hostile")``)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from openclore.market.accounts import create_user
from openclore.store.schema import accounts

from support import Market, error

pytestmark = pytest.mark.origin("hostile")


def test_sandbox_reset_refuses_a_real_market(market: Market) -> None:
    token = market.user(bitcoin="1")
    answer = market.client(token).post("/sandbox/reset")
    assert error(answer) == "not_a_demo_world"
    assert market.client(token).get("/v1/wallets").json()["code"] == 0  # nothing was wiped


def test_serve_demo_refuses_a_database_holding_a_market(market: Market) -> None:
    from typer.testing import CliRunner

    from openclore.cli.main import app

    with market.db.write() as conn:
        create_user(conn, "alice", market.now(), market.settings)
    result = CliRunner().invoke(app, ["serve", "--demo", "--database-url", market.db.url])
    assert result.exit_code == 1
    assert "holds a market, not a demo world" in result.output
    with market.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(accounts)).scalar()
