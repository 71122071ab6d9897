"""Statements: a user's ledger entries page by page, and a month's statement per currency."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import Coins, to_coins
from openclore.ledger.ledger import wallet_id
from openclore.ledger.statements import (
    LAST_PART,
    Entry,
    all_entries,
    balance_at,
    entries,
    rental_by_order,
)
from openclore.store.schema import accounts, users

MAX_PAGE = 1000
MONTH = re.compile(r"^(\d{4})-(\d{2})$")
CURSOR = re.compile(r"(\d{1,18})(?:\.(\d{1,10}))?")


def _wallets(conn: Connection, user_id: int, currency: str | None) -> dict[int, str]:
    query = select(accounts.c.id, accounts.c.currency).where(
        accounts.c.user_id == user_id, accounts.c.kind == "wallet"
    )
    if currency is not None:
        query = query.where(accounts.c.currency == currency)
    return {int(r.id): r.currency for r in conn.execute(query)}


def entry_wire(e: Entry, currency: str) -> dict[str, Any]:
    return {
        "id": e.id,
        "time": e.at,
        "currency": currency,
        "kind": e.kind,
        "amount": to_coins(e.amount),
        "balance": to_coins(e.balance),
        "order_id": e.order_id,
        "memo": e.memo,
        "by": e.actor,
    }


def transactions(
    conn: Connection,
    user_id: int,
    settings: Settings,
    *,
    currency: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of the caller's entries, oldest first; ``next_cursor`` continues after it."""
    if currency is not None and currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: between 1 and {MAX_PAGE}")
    after = (0, LAST_PART)
    if cursor:
        found = CURSOR.fullmatch(cursor)
        if found is None:
            raise InvalidInput("cursor: not a cursor this endpoint gave")
        after = (int(found.group(1)), int(found.group(2)) if found.group(2) else LAST_PART)
    wallets = _wallets(conn, user_id, currency)
    page = entries(conn, sorted(wallets), since=since, until=until, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {
        "transactions": [entry_wire(e, wallets[e.account_id]) for e in page],
        "next_cursor": _cursor(page[-1]) if more else None,
    }


def _cursor(e: Entry) -> str:
    """``<transfer id>``, or ``<transfer id>.<order id>`` within a tick's rental transfer."""
    return f"{e.id}.{e.part}" if e.part else str(e.id)


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` → [first second, first second of the next month) in UTC."""
    found = MONTH.match(month)
    if found is None or not 1 <= int(found.group(2)) <= 12 or int(found.group(1)) < 1970:
        raise InvalidInput("month: YYYY-MM")
    year, mon = int(found.group(1)), int(found.group(2))
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return start, end


def current_month(now: int) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def monthly_statement(
    conn: Connection, user_id: int, currency: str, month: str, settings: Settings
) -> dict[str, Any]:
    """A month's statement: opening and closing balance, totals by kind, rental per order, and
    every other entry (deposits, withdrawals, refunds and adjustments with their reason).
    opening + Σ totals = closing, to the unit."""
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    start, end = month_bounds(month)
    name = conn.execute(select(users.c.name).where(users.c.id == user_id)).scalar_one()
    account = wallet_id(conn, user_id, currency)
    period = [] if account is None else all_entries(conn, account, start, end)
    opening = 0 if account is None else balance_at(conn, account, start)
    totals: dict[str, int] = {}
    for e in period:
        totals[e.kind] = totals.get(e.kind, 0) + e.amount
    closing = opening + sum(totals.values())
    rental = rental_by_order(period)
    return {
        "statement": {
            "user": name,
            "currency": currency,
            "month": month,
            "from": start,
            "until": end,
            "opening_balance": to_coins(opening),
            "closing_balance": to_coins(closing),
            "totals": {kind: to_coins(v) for kind, v in sorted(totals.items())},
            "orders": [
                {
                    "order_id": oid,
                    **{kind: to_coins(v) for kind, v in sorted(kinds.items())},
                    "total": to_coins(sum(kinds.values())),
                }
                for oid, kinds in rental.items()
            ],
            # itemized: everything but the rental ticks (a refund of an order is itemized, reason
            # included, and counted in its order's total too)
            "entries": [entry_wire(e, currency) for e in period if e.order_id is None or e.memo],
            "entry_count": len(period),
        }
    }


# ----------------------------------------------------------------------------- the console's view

TICK_KINDS = ("spend", "earning", "fee")  # booked every few seconds while an order runs
VIEW_CAP = 20_000  # entries a view reads at most (a narrower period or filter shows the rest)


def transaction_view(
    conn: Connection,
    user_id: int,
    settings: Settings,
    *,
    currency: str | None = None,
    kind: str | None = None,
    order_id: int | None = None,
    since: int | None = None,
    until: int | None = None,
    grouped: bool = True,
) -> dict[str, Any]:
    """The caller's entries in a period (:func:`transactions`, page after page), filtered by
    kind and order, and by default with a rental's charges summed per order, day and kind
    (:func:`daily_charges`, as ``openclore transactions`` shows them); ``truncated`` when the
    period held more than :data:`VIEW_CAP` entries."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = transactions(
            conn,
            user_id,
            settings,
            currency=currency,
            since=since,
            until=until,
            limit=MAX_PAGE,
            cursor=cursor,
        )
        rows.extend(page["transactions"])
        cursor = page["next_cursor"]
        if cursor is None or len(rows) >= VIEW_CAP:
            break
    if kind:
        rows = [r for r in rows if r["kind"] == kind]
    if order_id is not None:
        rows = [r for r in rows if r["order_id"] == order_id]
    shown = daily_charges(rows) if grouped else [{**r, "count": 1, "running": True} for r in rows]
    return {"transactions": shown, "truncated": cursor is not None}


def daily_charges(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one order's rental charges on one UTC day, each kind summed into one entry (the
    time of its last, ``count`` charges); ``running`` says whether its balance is the running
    balance (the last entry of a run: inside a run spends and fees interleave)."""
    out: list[dict[str, Any]] = []
    run: dict[str, dict[str, Any]] = {}
    run_key: tuple[Any, ...] | None = None

    def close() -> None:
        held = list(run.values())
        out.extend({**t, "running": i == len(held) - 1} for i, t in enumerate(held))
        run.clear()

    for t in rows:
        if t["kind"] not in TICK_KINDS:
            close()
            run_key = None
            out.append({**t, "count": 1, "running": True})
            continue
        key = (t["order_id"], t["currency"], t["time"] // 86_400)
        if key != run_key:
            close()
            run_key = key
        held = run.pop(t["kind"], None)
        if held is None:
            held = {**t, "count": 1}
        else:
            summed = Coins(held["amount"].units + t["amount"].units)
            held = {**held, "amount": summed, "time": t["time"]}
            held["count"] += 1
        held["balance"] = t["balance"]
        run[t["kind"]] = held  # the kind seen last ends the run: its balance is the running one
    close()
    return out
