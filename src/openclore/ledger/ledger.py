"""Accounts and transfers: the one place money moves.

Why one place: the rules every movement must keep (exactly once, never below zero, always
balanced, every amount an exact integer) are then enforced once, here, instead of by each use case
that pays, bills, refunds or withdraws; the use cases say who pays whom how much, and why.

Every movement of money is one row in ``transfers`` plus the two balance updates, in the caller's
transaction. A transfer's ``key`` is unique, so replaying it (a retried request, a re-run tick) is a
no-op. Debits use ``balance >= amount`` in the UPDATE itself and a CHECK constraint, so a balance
can never go negative, whatever runs concurrently.

Credits are added to their accounts as the transaction's very last statements (their rows locked
in id order), not where the transfer is booked. The accounts most bookings credit (the
platform's, a host's with many servers) are then locked from that UPDATE to the COMMIT only,
instead of for the rest of every booking transaction: with the credit booked early, 60 bookings
queued behind one platform row under load, each holding a pooled connection (seconds of p50).
Within the transaction nothing sees the difference: an account's pending credits are added
before its balance is read or debited (:func:`balance`, :func:`transfer`, :func:`add_pending`).
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Connection, insert, select, text, update

from openclore.ledger.addresses import deposit_address
from openclore.store.db import before_commit, inserted_id, pending
from openclore.store.schema import accounts, transfers


class InsufficientFunds(Exception):
    """The debited account holds less than the amount."""


def account_key(kind: str, currency: str, user_id: int | None = None) -> str:
    return f"{kind}:{currency}" if user_id is None else f"{kind}:{currency}:{user_id}"


def _ensure(conn: Connection, key: str, **values: object) -> int:
    found = conn.execute(select(accounts.c.id).where(accounts.c.key == key)).scalar()
    if found is not None:
        return int(found)
    return inserted_id(conn.execute(insert(accounts).values(key=key, balance=0, **values)))


# the operator's account holding withdrawals between the request and the payout (or refusal)
PENDING_WITHDRAWALS = "pending_withdrawals"


def ensure_system_accounts(conn: Connection, currencies: list[str]) -> None:
    for currency in currencies:
        _ensure(conn, account_key("platform", currency), kind="platform", currency=currency)
        _ensure(conn, account_key("external", currency), kind="external", currency=currency)
        pending_withdrawals_account(conn, currency)


def pending_withdrawals_account(conn: Connection, currency: str) -> int:
    return _ensure(
        conn, account_key(PENDING_WITHDRAWALS, currency), kind="platform", currency=currency
    )


def ensure_wallet(conn: Connection, user_id: int, currency: str, secret: str) -> int:
    return _ensure(
        conn,
        account_key("wallet", currency, user_id),
        kind="wallet",
        user_id=user_id,
        currency=currency,
        deposit_address=deposit_address(secret, user_id, currency),
    )


def wallet_id(conn: Connection, user_id: int, currency: str) -> int | None:
    found = conn.execute(
        select(accounts.c.id).where(accounts.c.key == account_key("wallet", currency, user_id))
    ).scalar()
    return None if found is None else int(found)


def system_account_id(conn: Connection, kind: str, currency: str) -> int:
    return _ensure(conn, account_key(kind, currency), kind=kind, currency=currency)


def balance(conn: Connection, account_id: int, *, lock: bool = False) -> int:
    """An account's balance (its credits pending in this transaction included); with ``lock``,
    the row stays locked until the transaction ends, so no concurrent debit can change it
    between this read and the caller's transfers."""
    add_pending(conn, [account_id])
    query = select(accounts.c.balance).where(accounts.c.id == account_id)
    if lock:  # NO KEY: a transfer's row referencing the account still goes in meanwhile
        query = query.with_for_update(key_share=True)
    return int(conn.execute(query).scalar_one())


_CREDITS = "openclore_ledger_credits"


def _credits(conn: Connection) -> list[tuple[int, int]]:
    """This transaction's credits not yet added to their accounts: ``(account, amount)``; an
    account's credits added early are cancelled by a negative item, so a savepoint rolled back
    drops both together (see :func:`openclore.store.db.savepoint`)."""
    return before_commit(conn, _CREDITS, _add_credits, rank=1)


def _pending(items: list[tuple[int, int]]) -> Counter[int]:
    totals: Counter[int] = Counter()
    for account, amount in items:
        totals[account] += amount
    return totals


def _add_credits(conn: Connection, items: list[tuple[int, int]]) -> None:
    _apply(conn, {a: n for a, n in _pending(items).items() if n})


def _apply(conn: Connection, totals: dict[int, int]) -> None:
    """Add the amounts to their accounts, the rows locked in id order (two transactions never
    wait on each other's rows in opposite orders)."""
    ids = sorted(totals)
    if len(ids) > 1 and conn.dialect.name == "postgresql":
        # a tick credits thousands of hosts: two statements whatever their number
        conn.execute(
            text("SELECT id FROM accounts WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"),
            {"ids": ids},
        ).all()
        conn.execute(
            text(
                "UPDATE accounts SET balance = accounts.balance + v.amount"
                " FROM (SELECT unnest(CAST(:ids AS BIGINT[])) AS id,"
                " unnest(CAST(:amounts AS BIGINT[])) AS amount) AS v"
                " WHERE accounts.id = v.id"
            ),
            {"ids": ids, "amounts": [totals[a] for a in ids]},
        )
        return
    for account in ids:
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account)
            .values(balance=accounts.c.balance + totals[account])
        )


def credit_at_end(conn: Connection, totals: list[tuple[int, int]]) -> None:
    """Credit ``(account, amount)`` pairs at the end of the transaction, as :func:`transfer`
    does (a caller that books its transfer rows itself: the tick's set-based settlement)."""
    _credits(conn).extend((int(a), int(n)) for a, n in totals if n)


def add_pending(conn: Connection, ids: list[int] | None = None) -> None:
    """Add this transaction's pending credits of these accounts (all of them with ``None``) to
    their balances now: before a statement of the caller's reads the balances itself."""
    items = pending(conn, _CREDITS)
    if not items:
        return
    due = {a: n for a, n in _pending(items).items() if n and (ids is None or a in ids)}
    _apply(conn, due)
    items.extend((a, -n) for a, n in due.items())


def transfer(
    conn: Connection,
    *,
    key: str,
    debit: int,
    credit: int,
    amount: int,
    kind: str,
    now: int,
    order_id: int | None = None,
    memo: str | None = None,
    actor: str | None = None,
) -> bool:
    """Move ``amount`` units from ``debit`` to ``credit`` exactly once. Returns False on replay.

    Raises :class:`InsufficientFunds` if the debited account (other than the external one) would
    go negative; nothing is written then.
    """
    if amount <= 0:
        return False
    if conn.execute(select(transfers.c.id).where(transfers.c.key == key)).first() is not None:
        return False
    add_pending(conn, [debit])
    debited = conn.execute(
        update(accounts)
        .where(accounts.c.id == debit)
        .where((accounts.c.kind == "external") | (accounts.c.balance >= amount))
        .values(balance=accounts.c.balance - amount)
    ).rowcount
    if debited != 1:
        raise InsufficientFunds(f"account {debit} cannot pay {amount}")
    _credits(conn).append((credit, amount))  # added at the end of the transaction
    # a concurrent twin with the same key fails here on the unique key, rolling back its moves
    conn.execute(
        insert(transfers).values(
            key=key,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            kind=kind,
            order_id=order_id,
            created_at=now,
            memo=memo,
            actor=actor,
        )
    )
    return True
