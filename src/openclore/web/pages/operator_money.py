"""The operator's money and records: the withdrawal queue (full payout addresses, approve with
the payout's transaction id, reject with a reason after a confirmation), every deposit, and the
audit log searched by actor, action, target, user and time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError
from openclore.market import accounts, audit, read_models
from openclore.market import withdrawals as withdrawal_service
from openclore.web.common import date_input
from openclore.web.context import Console
from openclore.web.messages import N_, error_text
from openclore.web.pages.operator import admin_action
from openclore.web.routing import POST, Route

QUEUE = "/admin/withdrawals"
AUDIT_LIMIT = 500
DAY = 86_400
AUDIT_FIELDS = ("actor", "action", "target", "user", "since", "until")


async def withdrawals_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request, admin=True)
    state = request.query_params.get("state", "pending")
    chosen = state if state in withdrawal_service.STATES else None
    rows = await c.db(lambda conn: withdrawal_service.all_withdrawals(conn, chosen))
    return c.render(
        request,
        "admin_withdrawals.html",
        session,
        withdrawals=list(reversed(rows)),
        state=chosen or "all",
        states=withdrawal_service.STATES,
    )


async def approve(c: Console, request: Request) -> Response:
    withdrawal_id = int(request.path_params["withdrawal_id"])
    session = await c.signed_in(request, admin=True)
    who = f"admin:{session.name}"

    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        return lambda conn: withdrawal_service.approve_withdrawal(
            conn, withdrawal_id, f.get("txid", ""), who, now
        )

    return await admin_action(
        c,
        request,
        fn,
        N_("Withdrawal approved."),
        "withdrawal.approve",
        back=QUEUE,
        target=f"withdrawal:{withdrawal_id}",
        about=lambda conn: withdrawal_service.withdrawal_owner(conn, withdrawal_id),
    )


async def reject_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request, admin=True)
    withdrawal_id = int(request.path_params["withdrawal_id"])
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Reject this withdrawal?"),
        text=N_("The amount and the fee go back to the user's wallet; the user sees the reason."),
        subject=f"#{withdrawal_id}",
        action=f"{QUEUE}/{withdrawal_id}/reject",
        button=N_("Reject"),
        back=QUEUE,
        fields=[{"name": "reason", "label": N_("Reason"), "required": True, "maxlength": 512}],
    )


async def reject(c: Console, request: Request) -> Response:
    withdrawal_id = int(request.path_params["withdrawal_id"])
    session = await c.signed_in(request, admin=True)
    who = f"admin:{session.name}"

    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        return lambda conn: withdrawal_service.reject_withdrawal(
            conn, withdrawal_id, f.get("reason", ""), who, now
        )

    return await admin_action(
        c,
        request,
        fn,
        N_("Withdrawal rejected; the money is back in the wallet."),
        "withdrawal.reject",
        back=QUEUE,
        target=f"withdrawal:{withdrawal_id}",
        about=lambda conn: withdrawal_service.withdrawal_owner(conn, withdrawal_id),
    )


async def deposits_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request, admin=True)
    q = request.query_params
    user = q.get("user", "").strip()
    currency = q.get("currency", "")
    chosen = currency if currency in c.settings.currencies else None
    error = None

    def run(conn: Connection) -> Any:
        user_id = accounts.find_user(conn, user) if user else None
        return read_models.deposits(conn, user_id=user_id, currency=chosen)

    try:
        rows = await c.db(run)
    except accounts.UnknownUser:
        rows, error = [], c.t(request, "No such user.")
    return c.render(
        request,
        "admin_deposits.html",
        session,
        deposits=rows,
        user=user,
        currency=chosen or "",
        error=error,
    )


async def audit_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request, admin=True)
    q = request.query_params
    form = {k: q.get(k, "").strip() for k in AUDIT_FIELDS}
    found: list[audit.Entry] = []
    error = None
    try:
        since = date_input(form["since"], "from")
        last_day = date_input(form["until"], "until")

        def run(conn: Connection) -> list[audit.Entry]:
            user_id = accounts.find_user(conn, form["user"]) if form["user"] else None
            return audit.entries(
                conn,
                user_id=user_id,
                since=since,
                until=None if last_day is None else last_day + DAY,
                actor=form["actor"] or None,
                action=form["action"] or None,
                target=form["target"] or None,
                limit=AUDIT_LIMIT,
            )

        found = await c.db(run)
    except CloreError as exc:
        error = error_text(c.t, request, exc)
    except accounts.UnknownUser:
        error = c.t(request, "No such user.")
    return c.render(
        request,
        "admin_audit.html",
        session,
        entries=list(reversed(found)),
        form=form,
        limit=AUDIT_LIMIT,
        error=error,
    )


ROUTES = [
    Route(QUEUE, withdrawals_page),
    Route(QUEUE + "/{withdrawal_id:int}/approve", approve, POST),
    Route(QUEUE + "/{withdrawal_id:int}/reject", reject_confirm),
    Route(QUEUE + "/{withdrawal_id:int}/reject", reject, POST),
    Route("/admin/deposits", deposits_page),
    Route("/admin/audit", audit_page),
]
