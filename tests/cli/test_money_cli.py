"""The money commands end to end on both databases: a user withdraws and reads transactions (CSV)
and a PDF statement over HTTP; the operator deposits, approves, rejects and refunds in the
database, each step recorded with who did it."""

from __future__ import annotations

import csv
import io
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from typer.testing import CliRunner

from openclore.cli.main import app
from openclore.store.schema import accounts, transfers

from support import Market

BTC = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
runner = CliRunner()


def run(market: Market, tmp_path: Path, token: str | None, *args: str, code: int = 0) -> Any:
    env = {
        "OPENCLORE_URL": market.url,
        "OPENCLORE_API_KEY": token,
        "OPENCLORE_CONFIG": str(tmp_path / "config.toml"),
        "OPENCLORE_PROFILE": None,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "COLUMNS": "200",
    }
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    return result


def test_withdraw_approve_reject_refund_and_statements(market: Market, tmp_path: Path) -> None:
    market.clock.set(time.time())  # admin commands book in real time
    token = market.user("alice")

    def cli(*args: str, code: int = 0) -> Any:
        return run(market, tmp_path, token, *args, code=code)

    cli("admin", "deposit", "alice", "bitcoin", "0.02", "--by", "carol", "--reference", "tx-9")
    # the same reference is credited once
    assert (
        "credited before"
        in cli("admin", "deposit", "alice", "bitcoin", "0.02", "--reference", "tx-9", code=1).stderr
    )
    first = json.loads(cli("withdraw", "bitcoin", "0.005", BTC, "--json").stdout)
    assert (first["state"], first["fee"]) == ("pending", 0.0001)
    second = json.loads(cli("withdraw", "bitcoin", "0.004", BTC, "--json").stdout)
    assert "invalid_address" in cli("withdraw", "bitcoin", "0.001", BTC[:-1] + "p", code=1).stderr

    listed = cli("admin", "withdrawals", "list", "--state", "pending").stdout
    assert BTC in listed and "alice" in listed
    # at 80 columns too, the address is printed whole, on one line
    narrow = runner.invoke(
        app,
        ["admin", "withdrawals", "list", "--database-url", market.db.url],
        env={"COLUMNS": "80"},
    )
    assert narrow.exit_code == 0 and BTC in narrow.stdout, narrow.stdout
    cli("admin", "withdrawals", "approve", str(first["id"]), "--txid", "f00d", "--by", "dan")
    assert (
        "withdrawal_not_pending"
        in cli(
            "admin", "withdrawals", "reject", str(first["id"]), "--reason", "late", code=1
        ).stderr
    )
    cli("admin", "withdrawals", "reject", str(second["id"]), "--reason", "wrong network")
    cli("admin", "refund", "alice", "bitcoin", "0.001", "--reason", "slow disk", "--by", "dan")
    cli("admin", "adjust", "--reason", "bank charge", "--", "alice", "bitcoin", "-0.0005")
    assert (
        "not_enough_balance"
        in cli("admin", "adjust", "--reason", "x", "--", "alice", "bitcoin", "-5", code=1).stderr
    )
    mine = json.loads(cli("withdrawals", "--json").stdout)
    assert [(w["state"], w["txid"], w["reason"]) for w in mine] == [
        ("approved", "f00d", None),
        ("rejected", None, "wrong network"),
    ]

    rows = list(csv.DictReader(io.StringIO(cli("transactions", "--csv").stdout)))
    assert [r["kind"] for r in rows] == [
        "deposit",
        "withdrawal",
        "withdrawal_fee",
        "withdrawal",
        "withdrawal_fee",
        "withdrawal_back",
        "refund",
        "adjustment",
    ]
    assert rows[0]["by"] == "admin:carol" and rows[6]["memo"] == "slow disk"
    assert rows[-1]["balance"] == "0.0154"  # 0.02 - 0.0051 + 0.001 - 0.0005
    assert "slow disk" in cli("transactions").stdout

    pdf = tmp_path / "statement.pdf"
    shown = cli("statement", "--pdf", str(pdf)).stdout
    assert "closing balance  0.0154" in shown and "wrong network" in shown
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 1000
    statement = json.loads(cli("statement", "--json").stdout)
    assert statement["opening_balance"] == 0 and statement["closing_balance"] == 0.0154

    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        actors = {r.actor for r in conn.execute(select(transfers.c.actor))}
    assert {"admin:carol", "admin:dan"} <= actors


def test_transactions_show_a_rentals_charges_per_day_unless_all(
    market: Market, tmp_path: Path
) -> None:
    from support import order_body

    renter = market.user("renter", bitcoin="1")
    sid = market.server(market.user("host"), "rig")
    ok = market.client(renter).post("/v1/create_order", json=order_body(sid)).json()
    assert ok["code"] == 0
    for _ in range(6):  # six ticks on the first day, then two on the next
        market.advance(600)
    market.advance(86400)
    market.advance(600)

    def cli(*args: str) -> Any:
        return run(market, tmp_path, renter, *args)

    every = list(csv.DictReader(io.StringIO(cli("transactions", "--csv").stdout)))
    spends = [r for r in every if r["kind"] == "spend"]
    assert len(spends) >= 8  # each tick's charge is its own entry
    grouped = cli("transactions").stdout
    spend_lines = [line for line in grouped.splitlines() if " spend " in f" {line} "]
    assert len(spend_lines) == len({r["time"][:10] for r in spends}) <= 3, grouped
    assert "charges" in grouped and "per order and day" in grouped
    total = sum(Decimal(r["amount"]) for r in spends)
    shown = sum(Decimal(line.split()[4]) for line in spend_lines)
    assert shown == total  # the day lines add up to every charge
    assert cli("transactions", "--all").stdout.count(" spend ") == len(spends)
