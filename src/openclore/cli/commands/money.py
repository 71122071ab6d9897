"""Money: ``openclore wallets``, ``transactions``, ``statement``, ``withdraw``, ``withdrawals``."""

from __future__ import annotations

import csv as csv_module
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from openclore.cli.commands.common import Ctx, client_command, handled, parse_decimal
from openclore.cli.output import (
    Column,
    call,
    emit_json,
    fail,
    fmt,
    iso,
    out,
    print_table,
    to_plain,
)
from openclore.client import Transaction
from openclore.client._exactjson import number_text


@client_command
def wallets(c: Ctx) -> None:
    """Your balances and deposit addresses."""
    with c.session() as client:
        rows = call("loading wallets…", client.wallets)
    if c.json:
        emit_json(rows)
        return
    print_table(
        "wallets",
        [
            Column("currency", 0),
            Column("balance", 0, "right"),
            Column("deposit address", 1, fold=True),
            Column("withdrawal fee", 2, "right"),
        ],
        [[w.name, fmt(w.balance), w.deposit or "-", fmt(w.withdrawal_fee)] for w in rows],
    )


def time_arg(text: str | None, what: str) -> int | None:
    """A time as unix seconds or an ISO date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{what}: unix seconds or an ISO date such as 2026-11-01 or 2026-11-01T12:00")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def write_csv(rows: list[Transaction]) -> None:
    writer = csv_module.writer(sys.stdout, lineterminator="\n")
    writer.writerow(
        ["id", "time", "currency", "kind", "amount", "balance", "order_id", "memo", "by"]
    )
    for t in rows:
        writer.writerow(
            [
                t.id,
                iso(t.time),
                t.currency,
                t.kind,
                number_text(t.amount),
                number_text(t.balance),
                "" if t.order_id is None else t.order_id,
                t.memo or "",
                t.by or "",
            ]
        )


@client_command
def transactions(
    c: Ctx,
    currency: Annotated[str | None, typer.Option(help="Only this currency.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time (unix seconds or ISO date, UTC).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV (every entry) instead.")] = False,
    every: Annotated[
        bool,
        typer.Option(
            "--all", help="Every entry: each tick's rental charge too, not one line per day."
        ),
    ] = False,
) -> None:
    """Your ledger entries (deposits, rental spend, earnings, fees, withdrawals, refunds) with
    the balance after each; a rental's charges, billed every few seconds, as one line per order
    and day (--all: each one)."""
    start, end = time_arg(since, "--since"), time_arg(until, "--until")
    with c.session() as client:
        rows = call(
            "loading transactions…",
            lambda: client.all_transactions(currency=currency, since=start, until=end),
        )
    if c.json:
        emit_json(rows)
        return
    if csv:
        write_csv(rows)
        return
    shown = [(t, True) for t in rows] if every else daily_charges(rows)
    lines = [
        [
            iso(t.time),
            t.currency,
            t.kind,
            number_text(t.amount),
            number_text(t.balance) if running else "",
            "" if t.order_id is None else str(t.order_id),
            t.memo or "",
        ]
        for t, running in shown
    ]
    print_table(
        "transactions" if every else "transactions (rental charges per order and day)",
        [
            Column("time", 0),
            Column("currency", 2),
            Column("kind", 0),
            Column("amount", 0, "right"),
            Column("balance", 0, "right"),
            Column("order", 1, "right"),
            Column("memo", 3, fold=True),
        ],
        lines,
    )


TICK_KINDS = ("spend", "earning", "fee")  # booked every few seconds while an order runs


def daily_charges(rows: list[Transaction]) -> list[tuple[Transaction, bool]]:
    """Runs of one order's rental charges on one UTC day, each kind summed into one entry (the
    time of its last, and "N charges"); with whether its balance is the running balance (the
    last entry of a run: inside a run spends and fees interleave)."""
    out: list[tuple[Transaction, bool]] = []
    run: dict[str, tuple[Transaction, int]] = {}
    run_key: tuple[Any, ...] | None = None

    def close() -> None:
        entries = list(run.values())
        for i, (t, n) in enumerate(entries):
            summed = t.model_copy(update={"memo": f"{n} charges"}) if n > 1 else t
            out.append((summed, i == len(entries) - 1))
        run.clear()

    for t in rows:
        key = (t.order_id, t.currency, iso(t.time)[:10])
        if t.kind not in TICK_KINDS:
            close()
            run_key = None
            out.append((t, True))
            continue
        if key != run_key:
            close()
            run_key = key
        held = run.get(t.kind)
        if held is None:
            run[t.kind] = (t, 1)
        else:
            first, n = held
            total = first.amount + t.amount
            run[t.kind] = (first.model_copy(update={"amount": total, "time": t.time}), n + 1)
        last_kind = t.kind
        # the run's balance is the one after its last entry: keep it on that kind's entry
        kept, n = run.pop(last_kind)
        run[last_kind] = (kept.model_copy(update={"balance": t.balance}), n)
    close()
    return out


@client_command
def statement(
    c: Ctx,
    month: Annotated[
        str | None, typer.Argument(metavar="[YYYY-MM]", help="Month (default: this month).")
    ] = None,
    currency: Annotated[str | None, typer.Option(help="Currency (default: the market's).")] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Also write it as a PDF here.")] = None,
) -> None:
    """A month's statement: opening and closing balance, totals by kind, each order's rental,
    and every deposit, withdrawal, refund and adjustment with its reason."""
    with c.session() as client:
        found = call("loading statement…", lambda: client.statement(month, currency))
    data = to_plain(found.model_dump(by_alias=True))
    if pdf is not None:
        from openclore.market.statement_pdf import render

        with handled(c.target):
            render(data, pdf)
    if c.json:
        emit_json(data)
        return
    out.print(
        f"statement {found.month} · {found.user} · {found.currency}\n"
        f"opening balance  {number_text(found.opening_balance)}"
    )
    for kind, value in found.totals.items():
        out.print(f"  {kind:<15} {number_text(value)}")
    out.print(f"closing balance  {number_text(found.closing_balance)}")
    if found.orders:
        print_table(
            "orders",
            [Column("order", 0, "right"), Column("total", 0, "right")],
            [[str(o["order_id"]), number_text(o["total"])] for o in found.orders],
        )
    if found.entries:
        print_table(
            "deposits, withdrawals, refunds, adjustments",
            [
                Column("time", 0),
                Column("kind", 0),
                Column("amount", 0, "right"),
                Column("memo", 1, fold=True),
                Column("by", 2),
            ],
            [
                [iso(e.time), e.kind, number_text(e.amount), e.memo or "", e.by or ""]
                for e in found.entries
            ],
        )
    if pdf is not None:
        out.print(f"PDF written to {pdf}")


@client_command
def withdraw(
    c: Ctx,
    currency: Annotated[str, typer.Argument(help="Currency (bitcoin, CLORE-Blockchain, …).")],
    amount: Annotated[str, typer.Argument(help="Whole coins the address receives.")],
    address: Annotated[str, typer.Argument(help="Where to send them.")],
) -> None:
    """Ask to withdraw: AMOUNT plus the withdrawal fee leave the wallet now; the operator pays
    out (or rejects, and the money comes back)."""
    value = parse_decimal(amount, "amount")
    with c.session() as client:
        w = call("requesting…", lambda: client.withdraw(currency, value, address))
    if c.json:
        emit_json(w)
        return
    out.print(
        f"withdrawal {w.id}: {number_text(w.amount)} {w.currency} to {w.address} "
        f"(fee {number_text(w.fee)}), {w.state}"
    )


@client_command
def withdrawals(c: Ctx) -> None:
    """Your withdrawal requests and their state."""
    with c.session() as client:
        rows = call("loading withdrawals…", client.withdrawals)
    if c.json:
        emit_json(rows)
        return
    print_table(
        "withdrawals",
        [
            Column("id", 0, "right"),
            Column("requested", 1),
            Column("currency", 0),
            Column("amount", 0, "right"),
            Column("fee", 2, "right"),
            Column("address", 1, fold=True),
            Column("state", 0),
            Column("txid / reason", 3, fold=True),
        ],
        [
            [
                str(w.id),
                iso(w.created_at),
                w.currency,
                number_text(w.amount),
                number_text(w.fee),
                w.address,
                w.state,
                w.txid or w.reason or "",
            ]
            for w in rows
        ],
    )
