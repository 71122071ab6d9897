"""The money pages: wallets (balance, deposit address and its QR code, spend chart), the
ledger's transactions with filters, monthly statements (and their PDF), deposits, and
withdrawals (the list and a request)."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError, MarketError
from openclore.domain.money import UNITS_PER_COIN, to_units
from openclore.market import inputs, read_models
from openclore.market import statements as statement_service
from openclore.market import wallets as wallet_service
from openclore.market import withdrawals as withdrawal_service
from openclore.market.statement_pdf import render_bytes
from openclore.web.common import actor, date_input, id_input, qr_svg
from openclore.web.context import Console
from openclore.web.messages import N_, error_text
from openclore.web.routing import POST, Route

DAY = 86_400
DEFAULT_DAYS = 30  # the transactions page opens on the last 30 days

# the ledger's kinds of entry, as a person reads them
KINDS = {
    "deposit": N_("deposit"),
    "spend": N_("rental spend"),
    "earning": N_("rental earning"),
    "fee": N_("platform fee"),
    "creation_fee": N_("creation fee"),
    "withdrawal": N_("withdrawal"),
    "withdrawal_fee": N_("withdrawal fee"),
    "withdrawal_back": N_("withdrawal returned"),
    "refund": N_("refund"),
    "adjustment": N_("adjustment"),
}


async def wallets_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    now = c.state.now()

    def run(conn: Connection) -> Any:
        listed = wallet_service.wallets(conn, session.user_id, c.settings)["wallets"]
        series = {
            w["name"]: read_models.spend_series(conn, session.user_id, w["name"], now)
            for w in listed
        }
        return listed, series

    listed, series = await c.db(run)
    chart = {
        name: {"t": [t for t, _ in s], "v": [v / UNITS_PER_COIN for _, v in s]}
        for name, s in series.items()
    }
    qr = {w["name"]: qr_svg(w["deposit"]) for w in listed if w["deposit"]}
    return c.render(request, "wallets.html", session, wallets=listed, chart=chart, qr=qr)


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _currency(c: Console, raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in c.settings.currencies:
        raise MarketError("currency-not-allowed")
    return raw


async def transactions_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    q = request.query_params
    now = c.state.now()
    form: dict[str, Any] = {
        "currency": q.get("currency", ""),
        "kind": q.get("kind", "") if q.get("kind", "") in KINDS else "",
        "order": q.get("order", ""),
        "since": q.get("since", _day(now - DEFAULT_DAYS * DAY)),
        "until": q.get("until", ""),
        "all": q.get("all") == "1",
    }
    view: dict[str, Any] = {"transactions": [], "truncated": False}
    error = None
    try:
        currency = _currency(c, form["currency"])
        since = date_input(form["since"], "from")
        last_day = date_input(form["until"], "until")
        order_id = id_input(form["order"], "order")
        view = await c.db(
            lambda conn: statement_service.transaction_view(
                conn,
                session.user_id,
                c.settings,
                currency=currency,
                kind=form["kind"] or None,
                order_id=order_id,
                since=since,
                until=None if last_day is None else last_day + DAY,
                grouped=not form["all"],
            )
        )
    except CloreError as exc:
        error = error_text(c.t, request, exc)
    return c.render(
        request,
        "transactions.html",
        session,
        rows=list(reversed(view["transactions"])),
        truncated=view["truncated"],
        form=form,
        kinds=KINDS,
        error=error,
    )


def _statement_args(c: Console, request: Request) -> tuple[str, str]:
    q = request.query_params
    currency = q.get("currency") or c.settings.default_currency
    month = q.get("month") or statement_service.current_month(c.state.now())
    return currency, month


async def statement_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    currency, month = _statement_args(c, request)
    statement = None
    error = None
    try:
        statement = (
            await c.db(
                lambda conn: statement_service.monthly_statement(
                    conn, session.user_id, currency, month, c.settings
                )
            )
        )["statement"]
    except CloreError as exc:
        error = error_text(c.t, request, exc)
    return c.render(
        request,
        "statement.html",
        session,
        statement=statement,
        month=month,
        currency=currency,
        kinds=KINDS,
        error=error,
    )


async def statement_pdf(c: Console, request: Request) -> Response:
    """The month's statement as the PDF ``openclore statement --pdf`` writes."""
    session = await c.signed_in(request)
    currency, month = _statement_args(c, request)
    try:
        found = await c.db(
            lambda conn: statement_service.monthly_statement(
                conn, session.user_id, currency, month, c.settings
            )
        )
    except CloreError as exc:
        return c.failed(request, "/money/statement", exc)
    body = render_bytes(found["statement"])
    name = f"statement-{month}-{currency}.pdf".replace('"', "")
    return Response(
        body,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def deposits_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)

    def run(conn: Connection) -> Any:
        found = read_models.deposits(conn, user_id=session.user_id)
        listed = wallet_service.wallets(conn, session.user_id, c.settings)["wallets"]
        return found, listed

    found, listed = await c.db(run)
    return c.render(request, "deposits.html", session, deposits=found, wallets=listed)


async def withdrawals_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)

    def run(conn: Connection) -> Any:
        mine = withdrawal_service.my_withdrawals(conn, session.user_id)["withdrawals"]
        listed = wallet_service.wallets(conn, session.user_id, c.settings)["wallets"]
        return mine, listed

    mine, listed = await c.db(run)
    return c.render(
        request,
        "withdrawals.html",
        session,
        withdrawals=list(reversed(mine)),
        wallets=listed,
    )


def _number(raw: str) -> Decimal | str:
    """A number typed into a form, for the API's validation (text that is not one stays text,
    which the validation refuses as the API does)."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return raw
    return value if value.is_finite() else raw


async def withdraw(c: Console, request: Request) -> Response:
    """A withdrawal request: the API's validation (``WithdrawRequest``) and use case."""
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    back = "/money/withdrawals"
    try:
        body = {
            "currency": fields.get("currency", ""),
            "amount": _number(fields.get("amount", "")),
            "address": fields.get("address", "").strip(),
        }
        req = inputs.validate_body(inputs.WithdrawRequest, body)
        amount = to_units(req.amount)
        wid = await c.db(
            lambda conn: withdrawal_service.request_withdrawal(
                conn,
                session.user_id,
                req.currency,
                amount,
                req.address,
                c.settings,
                now,
                actor=actor(request, session),
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, back, exc)
    return c.redirect(request, back, c.t(request, "Withdrawal #%(id)s requested.") % {"id": wid})


ROUTES = [
    Route("/wallets", wallets_page),
    Route("/money/transactions", transactions_page),
    Route("/money/statement", statement_page),
    Route("/money/statement.pdf", statement_pdf),
    Route("/money/deposits", deposits_page),
    Route("/money/withdrawals", withdrawals_page),
    Route("/money/withdrawals", withdraw, POST),
]
