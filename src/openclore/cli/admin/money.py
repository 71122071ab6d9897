"""``openclore admin deposit``, ``refund``, ``adjust``, ``admin rates …`` and
``admin withdrawals …``: money the operator moves by hand, exchange rates, payouts."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from openclore.cli.admin.common import ByOpt, ReasonOpt, console, operator, parse_units, record
from openclore.cli.database import DatabaseOpt, with_db
from openclore.cli.output import fail

rates_app = typer.Typer(
    help="Exchange rates (USD per coin) for USD prices and autoprice.", no_args_is_help=True
)
withdrawals_app = typer.Typer(
    help="Withdrawal requests: list, approve (paid out), reject (money back).",
    no_args_is_help=True,
)


def admin_deposit(
    user: str,
    currency: str,
    amount: str,
    by: ByOpt = None,
    reference: Annotated[
        str | None,
        typer.Option(help="An external reference (e.g. a blockchain txid): credited once."),
    ] = None,
    memo: Annotated[str | None, typer.Option(help="A note shown in the statement.")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Credit AMOUNT whole coins of CURRENCY to USER's wallet (who did it is recorded)."""
    from openclore.domain.errors import MarketError
    from openclore.domain.money import coins_str
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.wallets import deposit

    settings, db = with_db(database_url)
    units = parse_units(amount)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            credited = deposit(
                conn,
                user_id,
                currency,
                units,
                settings,
                int(time.time()),
                key=None if reference is None else f"ref:{reference}",
                actor=f"admin:{operator(by)}",
                memo=memo,
            )
            if credited:
                detail = {"currency": currency, "units": units, "reference": reference}
                record(conn, "deposit", f"user:{user_id}", detail, user_id, by)
    except UnknownUser as exc:
        fail(str(exc))
    except MarketError as exc:
        fail(f"{exc.name} (currencies: {', '.join(settings.currencies)})")
    if not credited:
        fail(f"reference {reference!r} was credited before: nothing done")
    console.print(f"deposited {coins_str(units)} {currency}", highlight=False)


def _adjust(
    user: str,
    currency: str,
    amount: str,
    reason: str,
    by: str | None,
    database_url: str | None,
    *,
    refund: bool,
    order: int | None = None,
) -> None:
    from openclore.domain.errors import MarketError
    from openclore.domain.money import coins_str
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.wallets import adjust

    settings, db = with_db(database_url)
    units = parse_units(amount, signed=not refund)
    try:
        with db.write() as conn:
            user_id = find_user(conn, user)
            adjust(
                conn,
                user_id,
                currency,
                units,
                settings,
                int(time.time()),
                reason=reason,
                actor=f"admin:{operator(by)}",
                refund=refund,
                order_id=order,
            )
            detail = {"currency": currency, "units": units, "reason": reason, "order": order}
            action = "refund" if refund else "adjust"
            record(conn, action, f"user:{user_id}", detail, user_id, by)
    except UnknownUser as exc:
        fail(str(exc))
    except MarketError as exc:
        fail(exc.name)
    word = "refunded" if refund else "adjusted by"
    console.print(f"{word} {coins_str(units)} {currency}", highlight=False)


def admin_refund(
    user: str,
    currency: str,
    amount: str,
    reason: ReasonOpt,
    order: Annotated[int | None, typer.Option(help="The order refunded, if any.")] = None,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Refund AMOUNT to USER's wallet, with a reason shown in their statement."""
    _adjust(user, currency, amount, reason, by, database_url, refund=True, order=order)


def admin_adjust(
    user: str,
    currency: str,
    amount: Annotated[
        str, typer.Argument(help="Signed: -0.5 takes 0.5 from the wallet (put -- before it).")
    ],
    reason: ReasonOpt,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Correct USER's wallet by a signed AMOUNT, with a reason shown in their statement."""
    _adjust(user, currency, amount, reason, by, database_url, refund=False)


@rates_app.command("set")
def rates_set(
    rates: Annotated[
        list[str], typer.Argument(help="CURRENCY=DOLLARS, e.g. bitcoin=60000 CLORE-Blockchain=0.05")
    ],
    database_url: DatabaseOpt = None,
) -> None:
    """Store exchange rates in the database: every replica uses them at once, and servers
    priced from USD (autoprice) follow."""
    from openclore.config import parse_rates
    from openclore.domain.usd import rate_units
    from openclore.market.rates import set_rates

    settings, db = with_db(database_url)
    try:
        parsed = parse_rates(",".join(rates))
    except ValueError as exc:
        fail(str(exc))
    try:
        with db.write() as conn:
            repriced = set_rates(
                conn,
                {c: rate_units(v) for c, v in parsed.items()},
                settings,
                int(time.time()),
            )
            detail = {c: str(v) for c, v in parsed.items()} | {"repriced": len(repriced)}
            record(conn, "rates.set", "rates", detail, None)
    except ValueError as exc:
        fail(str(exc))
    for currency, dollars in parsed.items():
        console.print(f"{currency} = {dollars} USD", highlight=False)
    if repriced:
        console.print(f"repriced {len(repriced)} server(s) priced from USD", highlight=False)


@rates_app.command("show")
def rates_show(database_url: DatabaseOpt = None) -> None:
    """The rates in use: stored ones, else the OPENCLORE_USD_RATES setting's."""
    from openclore.domain.usd import rate_text
    from openclore.market.rates import current_rates, stored_rates

    settings, db = with_db(database_url)
    with db.read() as conn:
        rates = current_rates(conn, settings)
        stored = stored_rates(conn)
    if not rates:
        console.print("no exchange rates: USD prices are not shown")
    for currency, rate in sorted(rates.items()):
        source = "stored" if currency in stored else "setting"
        console.print(f"{currency} = {rate_text(rate)} USD ({source})", highlight=False)


@rates_app.command("clear")
def rates_clear(currency: str, database_url: DatabaseOpt = None) -> None:
    """Forget a stored rate (the setting's rate, if any, applies again)."""
    from openclore.market.rates import clear_rate

    settings, db = with_db(database_url)
    with db.write() as conn:
        gone = clear_rate(conn, currency, settings, int(time.time()))
        if gone:
            record(conn, "rates.clear", f"rate:{currency}", {"currency": currency}, None)
    if not gone:
        fail(f"no stored rate for {currency}")
    console.print(f"cleared {currency}", highlight=False)


@withdrawals_app.command("list")
def withdrawals_list(
    state: Annotated[
        str | None, typer.Option(help="pending, approved or rejected (default: all).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Withdrawal requests, oldest first."""
    from openclore.market.withdrawals import STATES, all_withdrawals

    if state is not None and state not in STATES:
        fail(f"--state: one of {', '.join(STATES)}")
    _, db = with_db(database_url)
    with db.read() as conn:
        rows = all_withdrawals(conn, state)
    if json:
        from openclore.api.wire import dumps

        sys.stdout.write(dumps(rows).decode() + "\n")
        return
    table = Table(title="withdrawals")
    # the payout address is never cut nor folded, whatever the width: it is copied to pay
    longest = max((len(w["address"]) for w in rows), default=7)
    for name in ("id", "user", "currency", "amount", "fee", "address", "state", "txid / reason"):
        if name == "address":
            table.add_column(name, no_wrap=True, min_width=longest, overflow="ignore")
        else:
            table.add_column(name, overflow="fold")
    for w in rows:
        table.add_row(
            str(w["id"]),
            str(w["user"]),
            w["currency"],
            w["amount_text"],
            w["fee_text"],
            w["address"],
            w["state"],
            w["txid"] or w["reason"] or "",
        )
    console.print(table)


def _decide(
    action: Any,
    withdrawal: int,
    database_url: str | None,
    decision: str,
    detail: dict[str, Any],
    by: str | None,
) -> None:
    from openclore.domain.errors import MarketError
    from openclore.market.withdrawals import withdrawal_owner

    _, db = with_db(database_url)

    def run(conn: Any) -> None:
        action(conn, int(time.time()))
        owner = withdrawal_owner(conn, withdrawal)
        target = f"withdrawal:{withdrawal}"
        record(conn, f"withdrawal.{decision}", target, detail, owner, by)

    try:
        from openclore.store.db import run_write

        run_write(db, run)
    except MarketError as exc:
        extra = f" (it is {exc.extra['state']})" if "state" in exc.extra else ""
        fail(f"withdrawal {withdrawal}: {exc.name}{extra}")


@withdrawals_app.command("approve")
def withdrawals_approve(
    withdrawal: Annotated[int, typer.Argument(help="Withdrawal id.")],
    txid: Annotated[str, typer.Option("--txid", help="The payout's transaction id (required).")],
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Record that WITHDRAWAL was paid out with transaction TXID."""
    from openclore.market.withdrawals import approve_withdrawal

    who = f"admin:{operator(by)}"
    _decide(
        lambda conn, now: approve_withdrawal(conn, withdrawal, txid, who, now),
        withdrawal,
        database_url,
        "approve",
        {"txid": txid},
        by,
    )
    console.print(f"withdrawal {withdrawal} approved", highlight=False)


@withdrawals_app.command("reject")
def withdrawals_reject(
    withdrawal: Annotated[int, typer.Argument(help="Withdrawal id.")],
    reason: ReasonOpt,
    by: ByOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Refuse WITHDRAWAL: amount and fee go back to the user's wallet."""
    from openclore.market.withdrawals import reject_withdrawal

    who = f"admin:{operator(by)}"
    _decide(
        lambda conn, now: reject_withdrawal(conn, withdrawal, reason, who, now),
        withdrawal,
        database_url,
        "reject",
        {"reason": reason},
        by,
    )
    console.print(f"withdrawal {withdrawal} rejected; the money is back in the wallet")
