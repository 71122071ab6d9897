"""An account's entries as a statement reads them: every transfer that touched it, signed from its
point of view, with the balance after each one.

Entries are ordered by transfer id, the order the ledger applied them in, and the balance after an
entry is the sum of the account's entries up to and including it, so the last entry's balance is
the account's balance. A period (``since`` ≤ created_at < ``until``) opens at the sum of the
entries created before it and closes at the sum of those created before its end: opening + the
period's entries = closing, to the unit, by construction and whatever ran concurrently.

The engine tick books rental once per account pair (a ``spend`` or ``fee`` transfer without an
order), with each order's share in ``order_charges``. A statement shows such a transfer as its
shares, one entry per order (same transfer id, the order's id, its amount), in order id order, so
rental reads per order as it did when every order had transfers of its own; a page's cursor is
then ``<transfer id>.<order id>``. Rental booked for one order alone (the exact per-server path,
creation fees, refunds) carries its ``order_id`` on the transfer itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from openclore.store.schema import order_charges, transfers

# the host's side of a rental (or storage) transfer is an earning, not a spend
_CREDIT_KIND = {"spend": "earning", "storage": "storage_earning"}


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
    part: int = 0  # the order id of a share of a tick's transfer (0: the transfer whole)

    @property
    def cursor(self) -> tuple[int, int]:
        """Where a page that ends with this entry continues: after (transfer id, part)."""
        return (self.id, self.part if self.part else LAST_PART)


LAST_PART = 2**62  # after every share of a transfer


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


def _shares(conn: Connection, transfer_ids: list[int]) -> dict[int, list[tuple[int, int]]]:
    """The per-order shares of these transfers (only the tick's rental transfers have any)."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for chunk in range(0, len(transfer_ids), 500):
        query = (
            select(order_charges.c.transfer_id, order_charges.c.order_id, order_charges.c.amount)
            .where(order_charges.c.transfer_id.in_(transfer_ids[chunk : chunk + 500]))
            .order_by(order_charges.c.transfer_id, order_charges.c.order_id)
        )
        for r in conn.execute(query):
            out[int(r.transfer_id)].append((int(r.order_id), int(r.amount)))
    return out


def entries(
    conn: Connection,
    account_ids: list[int],
    *,
    since: int | None = None,
    until: int | None = None,
    after: tuple[int, int] = (0, LAST_PART),
    limit: int = 100,
) -> list[Entry]:
    """Up to ``limit`` entries of the accounts after ``after`` (a page's cursor: transfer id and
    part, see :attr:`Entry.cursor`), created in [since, until), oldest first, each with its
    account's balance after it. A tick's rental transfer is one entry per order."""
    after_id, after_part = after
    rows: list[tuple[int, Any]] = []
    for account_id in account_ids:
        for column in (transfers.c.debit_account_id, transfers.c.credit_account_id):
            # one index range per side ((account, id) indexes), merged below; every transfer
            # gives at least one entry, so ``limit`` transfers (and the one the cursor is in)
            # are enough
            query = _period(
                select(transfers).where(column == account_id, transfers.c.id >= after_id),
                since,
                until,
            )
            rows.extend(
                (account_id, r)
                for r in conn.execute(query.order_by(transfers.c.id).limit(limit + 1))
            )
    rows.sort(key=lambda item: item[1].id)
    rows = rows[: limit + 1]
    shares = _shares(conn, sorted({int(r.id) for _, r in rows if r.order_id is None}))
    running: dict[int, int] = {}
    out: list[Entry] = []
    for account_id, r in rows:
        if account_id not in running:
            running[account_id] = balance_before_entry(conn, account_id, r.id)
        credited = r.credit_account_id == account_id
        kind = _CREDIT_KIND.get(r.kind, r.kind) if credited else r.kind
        parts = shares.get(int(r.id)) or [(0, int(r.amount))]
        for part, amount in parts:
            signed = amount if credited else -amount
            running[account_id] += signed
            if (int(r.id), part if part else LAST_PART) <= (after_id, after_part):
                continue  # before the cursor (its balance still counts)
            out.append(
                Entry(
                    id=int(r.id),
                    at=int(r.created_at),
                    account_id=account_id,
                    kind=kind,
                    amount=signed,
                    balance=running[account_id],
                    order_id=part if part else r.order_id,
                    memo=r.memo,
                    actor=r.actor,
                    part=part,
                )
            )
            if len(out) == limit:
                return out
    return out


def all_entries(
    conn: Connection, account_id: int, since: int, until: int, page: int = 5000
) -> list[Entry]:
    """Every entry of one account in a period (a monthly statement), read page by page."""
    out: list[Entry] = []
    after = (0, LAST_PART)
    while True:
        batch = entries(conn, [account_id], since=since, until=until, after=after, limit=page)
        out.extend(batch)
        if len(batch) < page:
            return out
        after = batch[-1].cursor


def booked_by_order(conn: Connection) -> dict[tuple[int, str], int]:
    """``{(order_id, kind): total}`` of everything booked for orders: the transfers of one order
    and the orders' shares of the tick's transfers (kind: the transfer's)."""
    out: dict[tuple[int, str], int] = defaultdict(int)
    own = (
        select(transfers.c.order_id, transfers.c.kind, func.sum(transfers.c.amount).label("total"))
        .where(transfers.c.order_id.is_not(None))
        .group_by(transfers.c.order_id, transfers.c.kind)
    )
    shared = (
        select(
            order_charges.c.order_id,
            transfers.c.kind,
            func.sum(order_charges.c.amount).label("total"),
        )
        .join(transfers, transfers.c.id == order_charges.c.transfer_id)
        .group_by(order_charges.c.order_id, transfers.c.kind)
    )
    for query in (own, shared):
        for r in conn.execute(query):
            out[(int(r.order_id), r.kind)] += int(r.total)
    return dict(out)


def rental_by_order(period_entries: list[Entry]) -> dict[int, dict[str, int]]:
    """Per order, the signed totals by kind (creation_fee, spend, fee, earning) of a period."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in period_entries:
        if e.order_id is not None:
            out[e.order_id][e.kind] += e.amount
    return {oid: dict(kinds) for oid, kinds in sorted(out.items())}
