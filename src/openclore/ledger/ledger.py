"""Accounts and transfers: the one place money moves.

Why one place: the rules every movement must keep (exactly once, never below zero, always
balanced, every amount an exact integer) are then enforced once, here, instead of by each use case
that pays, bills, refunds or withdraws; the use cases say who pays whom how much, and why.

Every movement of money is one row in ``transfers`` plus the two balance updates, in the caller's
transaction. A transfer's ``key`` is unique, so replaying it (a retried request, a re-run tick) is a
no-op. Debits use ``balance >= amount`` in the UPDATE itself and a CHECK constraint, so a balance
can never go negative, whatever runs concurrently.
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update

from openclore.ledger.addresses import deposit_address
from openclore.store.db import inserted_id
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
    """An account's balance; with ``lock``, the row stays locked until the transaction ends, so
    no concurrent debit can change it between this read and the caller's transfers."""
    query = select(accounts.c.balance).where(accounts.c.id == account_id)
    if lock:
        query = query.with_for_update()
    return int(conn.execute(query).scalar_one())


def lock_accounts(conn: Connection, ids: list[int]) -> None:
    """Take the row locks of these accounts in id order. Every booking that moves money between
    several accounts locks them this way first, so two bookings never wait on each other's
    accounts in opposite orders (a deadlock PostgreSQL would break by failing one of them)."""
    wanted = sorted(set(ids))
    if len(wanted) > 1 and conn.dialect.name == "postgresql":
        conn.execute(
            select(accounts.c.id)
            .where(accounts.c.id.in_(wanted))
            .order_by(accounts.c.id)
            .with_for_update()
        ).all()


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
    lock_accounts(conn, [debit, credit])
    debited = conn.execute(
        update(accounts)
        .where(accounts.c.id == debit)
        .where((accounts.c.kind == "external") | (accounts.c.balance >= amount))
        .values(balance=accounts.c.balance - amount)
    ).rowcount
    if debited != 1:
        raise InsufficientFunds(f"account {debit} cannot pay {amount}")
    conn.execute(
        update(accounts).where(accounts.c.id == credit).values(balance=accounts.c.balance + amount)
    )
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
