"""``openclore admin …`` and ``openclore db upgrade`` against both databases."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openclore.cli.main import app

from support import Market, ok, order_body

runner = CliRunner()


def admin(market: Market, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--database-url", market.db.url])
    return result.exit_code, result.output


def test_user_token_deposit_and_server_commands(market: Market) -> None:
    code, out = admin(market, "admin", "user", "add", "alice")
    assert code == 0, out
    token = re.search(r"token (\w{32})", out).group(1)  # type: ignore[union-attr]
    wallets = ok(market.client(token).get("/v1/wallets"))["wallets"]
    assert [w["balance"] for w in wallets] == [0, 0, 0]

    assert admin(market, "admin", "user", "add", "alice")[0] == 1  # the name is taken

    code, out = admin(market, "admin", "deposit", "alice", "bitcoin", "0.00153176")
    assert code == 0 and "deposited 0.00153176 bitcoin" in out
    assert ok(market.client(token).get("/v1/wallets"))["wallets"][0]["balance"] == 0.00153176
    for bad in (
        ["nobody", "bitcoin", "1"],
        ["alice", "dogecoin", "1"],
        ["alice", "bitcoin", "0"],
        ["alice", "bitcoin", "lots"],
    ):
        code, out = admin(market, "admin", "deposit", *bad)
        assert code == 1 and out.startswith("error:") and "Traceback" not in out, (bad, out)

    code, out = admin(market, "admin", "token", "issue", "alice")
    second = out.strip()
    assert code == 0 and len(second) == 32
    ok(market.client(second).get("/v1/wallets"))
    assert admin(market, "admin", "token", "revoke", second)[0] == 0
    assert market.client(second).get("/v1/wallets").json()["code"] == 3
    assert admin(market, "admin", "token", "revoke", second)[0] == 1  # already revoked

    code, out = admin(market, "admin", "server", "add", "alice", "rig-01")
    assert code == 0 and re.fullmatch(r"[A-Za-z0-9]{48}", out.strip())
    servers = ok(market.client(token).get("/v1/my_servers"))["servers"]
    assert servers[0]["name"] == "rig-01" and servers[0]["init_token"] == out.strip()


def test_server_remove_ends_its_orders(market: Market) -> None:
    market.clock.set(time.time())  # the admin command works in real time
    host = market.user(name="host")
    sid = market.server(host, "rig")
    renter = market.client(market.user(bitcoin="0.01"))
    oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
    code, out = admin(market, "admin", "server", "remove", "host", "rig")
    assert code == 0 and "1 order(s) ended" in out
    (order,) = ok(renter.get("/v1/my_orders?return_completed=true"))["orders"]
    assert order["id"] == oid and order["expired"] is True
    assert ok(market.client().get("/v1/marketplace"))["servers"] == []
    assert ok(market.client(host).get("/v1/my_servers"))["servers"] == []
    assert admin(market, "admin", "server", "remove", "host", "rig")[0] == 1


def test_db_upgrade(market: Market) -> None:
    code, out = admin(market, "db", "upgrade")
    assert code == 0 and "up to date" in out


def test_serve_help_documents_every_setting() -> None:
    from openclore.config import Settings

    result = runner.invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in Settings.model_fields:
        assert f"OPENCLORE_{name.upper()}" in text, name
    # real defaults, never a library's marker for "made by a factory"
    assert "PydanticUndefined" not in text
    assert 'OPENCLORE_CURRENCIES: Wallet currencies (default ["bitcoin", ' in text


def test_user_signout_ends_every_console_session(market: Market) -> None:
    from sqlalchemy import func, select

    from openclore.market.accounts import find_user
    from openclore.market.sessions import session_for, start_session
    from openclore.store.schema import web_sessions

    market.user("dora")
    other = market.user("eve")
    with market.db.write() as conn:
        dora, eve = find_user(conn, "dora"), find_user(conn, "eve")
        mine = [start_session(conn, dora, market.now()) for _ in range(3)]
        theirs = start_session(conn, eve, market.now())
    code, out = admin(market, "admin", "user", "signout", "dora")
    assert code == 0 and "3 session(s) ended" in out, out
    with market.db.read() as conn:
        assert all(session_for(conn, sid, market.now()) is None for sid in mine)
        assert session_for(conn, theirs, market.now()) is not None
        left = conn.execute(select(func.count()).select_from(web_sessions)).scalar_one()
    assert left == 1 and other
    code, out = admin(market, "admin", "user", "signout", "nobody")
    assert code == 1 and out.startswith("error:")
    code, out = admin(market, "admin", "audit", "--user", "dora")
    assert "admin.user.s" in out and "4 entries" in out, out  # three sign-ins, the signout


def test_audit_prints_markup_in_names_and_details_as_it_is(market: Market) -> None:
    """A server name is anyone's text: ``[/]`` in it ended ``admin audit`` with a MarkupError."""
    host = market.client(market.user("host"))
    for name in ("rig [/]", "[bold red]x[/]", "[link=http://evil]rig"):
        ok(host.post("/v1/add_server", json={"name": name}))
    code, out = admin(market, "admin", "server", "add", "host", "[/]b")
    assert code == 0, out
    result = runner.invoke(
        app, ["admin", "audit", "--database-url", market.db.url], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, (result.output, result.exception)
    for name in ("rig [/]", "[bold red]x[/]", "[link=http://evil]rig"):
        assert f'"name": "{name}"' in result.output


def test_admin_in_a_demo_folder_finds_the_demo_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENCLORE_DATABASE_URL", raising=False)
    # no database at all: it says a new one is made, and where
    fresh = runner.invoke(app, ["admin", "user", "add", "first"])
    assert fresh.exit_code == 0, fresh.output
    assert "a new, empty ./openclore.sqlite" in fresh.stderr
    (tmp_path / "openclore.sqlite").unlink()
    # a demo folder: the demo's database is the one used, and it says so
    seeded = runner.invoke(
        app, ["admin", "user", "add", "second", "--database-url", "sqlite:///openclore-demo.sqlite"]
    )
    assert seeded.exit_code == 0, seeded.output
    listed = runner.invoke(app, ["admin", "user", "add", "third"])
    assert listed.exit_code == 0, listed.output
    assert "using the demo's database ./openclore-demo.sqlite" in listed.stderr
    assert not (tmp_path / "openclore.sqlite").exists()
    again = runner.invoke(app, ["admin", "user", "add", "second"])  # the demo's second user
    assert again.exit_code == 1 and "exists already" in again.output
