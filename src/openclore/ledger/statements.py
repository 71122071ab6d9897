"""An account's entries as a statement reads them: every transfer that touched it, signed from its
point of view, with the balance after each one.

Entries are ordered by transfer id, the order the ledger applied them in, and the balance after an
entry is the sum of the account's entries up to and including it, so the last entry's balance is
the account's balance. A period (``since`` ≤ created_at < ``until``) opens at the sum of the
entries created before it and closes at the sum of those created before its end: opening + the
period's entries = closing, to the unit, by construction and whatever ran concurrently.

Rental spend is read from the transfers that carry an ``order_id`` (:func:`rental_by_order`):
that one function is where a different booking of rental spend (one transfer per account and tick,
with the per-order split kept elsewhere) would be read instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from openclore.store.schema import transfers

# the host's side of a rental transfer is an earning, not a spend
_CREDIT_KIND = {"spend": "earning"}


@dataclass(frozen=True)
class Entry:
    id: int
    at: int
    account_id: int
    kind: str  # the transfer's kind as this account sees it
    amount: int  # signed: positive credits the account, negative debits it
    balance: int  # the account's balance after this entry
    order_id: int | None
    memo: str | None
    actor: str | None


def _period(query: Any, since: int | None, until: int | None) -> Any:
    if since is not None:
        query = query.where(transfers.c.created_at >= since)
    if until is not None:
        query = query.where(transfers.c.created_at < until)
    return query


def _side_sum(conn: Connection, column: Any, account_id: int, *conditions: Any) -> int:
    query = select(func.coalesce(func.sum(transfers.c.amount), 0)).where(
        column == account_id, *conditions
    )
    return int(conn.execute(query).scalar_one())


def balance_before_entry(conn: Connection, account_id: int, transfer_id: int) -> int:
    """The account's balance just before transfer ``transfer_id`` was applied."""
    before = transfers.c.id < transfer_id
    return _side_sum(conn, transfers.c.credit_account_id, account_id, before) - _side_sum(
        conn, transfers.c.debit_account_id, account_id, before
    )


def balance_at(conn: Connection, account_id: int, at: int) -> int:
    """The sum of the account's entries created before ``at`` (a period's opening balance)."""
    before = transfers.c.created_at < at
    return _side_sum(conn, transfers.c.credit_account_id, account_id, before) - _side_sum(
        conn, transfers.c.debit_account_id, account_id, before
    )


def entries(
    conn: Connection,
    account_ids: list[int],
    *,
    since: int | None = None,
    until: int | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[Entry]:
    """Up to ``limit`` entries of the accounts, after transfer ``after_id`` (a page's cursor),
    created in [since, until), oldest first, each with its account's balance after it."""
    rows: list[tuple[int, Any]] = []
    for account_id in account_ids:
        for column in (transfers.c.debit_account_id, transfers.c.credit_account_id):
            # one index range per side ((account, id) indexes), merged below
            query = _period(
                select(transfers).where(column == account_id, transfers.c.id > after_id),
                since,
                until,
            )
            rows.extend(
                (account_id, r) for r in conn.execute(query.order_by(transfers.c.id).limit(limit))
            )
    rows.sort(key=lambda item: item[1].id)
    rows = rows[:limit]
    running: dict[int, int] = {}
    out = []
    for account_id, r in rows:
        if account_id not in running:
            running[account_id] = balance_before_entry(conn, account_id, r.id)
        credited = r.credit_account_id == account_id
        amount = r.amount if credited else -r.amount
        running[account_id] += amount
        kind = _CREDIT_KIND.get(r.kind, r.kind) if credited else r.kind
        out.append(
            Entry(
                id=int(r.id),
                at=int(r.created_at),
                account_id=account_id,
                kind=kind,
                amount=amount,
                balance=running[account_id],
                order_id=r.order_id,
                memo=r.memo,
                actor=r.actor,
            )
        )
    return out


def all_entries(
    conn: Connection, account_id: int, since: int, until: int, page: int = 5000
) -> list[Entry]:
    """Every entry of one account in a period (a monthly statement), read page by page."""
    out: list[Entry] = []
    after = 0
    while True:
        batch = entries(conn, [account_id], since=since, until=until, after_id=after, limit=page)
        out.extend(batch)
        if len(batch) < page:
            return out
        after = batch[-1].id


def rental_by_order(period_entries: list[Entry]) -> dict[int, dict[str, int]]:
    """Per order, the signed totals by kind (creation_fee, spend, fee, earning) of a period."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in period_entries:
        if e.order_id is not None:
            out[e.order_id][e.kind] += e.amount
    return {oid: dict(kinds) for oid, kinds in sorted(out.items())}
