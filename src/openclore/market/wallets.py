"""Wallets: balances and deposits."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection, select

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.money import to_coins, to_units
from openclore.domain.spot import runway_seconds
from openclore.engine.alerts import burn_per_day
from openclore.engine.outbox import BALANCE_ADJUSTED, DEPOSIT_CREDITED, emit
from openclore.ledger.ledger import (
    InsufficientFunds,
    ensure_wallet,
    system_account_id,
    transfer,
)
from openclore.store.schema import accounts, orders


def wallets(conn: Connection, user_id: int, settings: Settings) -> dict[str, Any]:
    rows = {
        r.currency: r
        for r in conn.execute(
            select(accounts).where(accounts.c.user_id == user_id, accounts.c.kind == "wallet")
        )
    }
    burns = burn_per_day(conn, [user_id])
    out = []
    for currency in settings.currencies:
        row = rows.get(currency)
        if row is None:
            continue
        burn = burns.get((user_id, currency), 0)
        out.append(
            {
                "name": currency,
                "deposit": row.deposit_address,
                "balance": to_coins(row.balance),
                "withdrawal_fee": to_coins(to_units(settings.withdrawal_fee.get(currency, 0))),
                # extensions: what the running orders cost per day, and how long that lasts
                "burn_per_day": to_coins(burn),
                "runway_seconds": runway_seconds(int(row.balance), burn),
            }
        )
    return {"wallets": out}


def deposit(
    conn: Connection,
    user_id: int,
    currency: str,
    amount: int,
    settings: Settings,
    now: int,
    *,
    key: str | None = None,
    actor: str | None = None,
    memo: str | None = None,
) -> bool:
    """Credit a wallet from the outside world (the external account of that currency).

    ``key`` makes a deposit idempotent (e.g. a blockchain transaction id); without it every call
    is a new deposit. ``actor`` records who credited it (an operator, a payment provider).
    Returns False when ``key`` was credited before (nothing is written then).
    """
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    if amount <= 0:
        raise MarketError("amount_too_low")
    wallet = ensure_wallet(conn, user_id, currency, settings.address_secret)
    applied = transfer(
        conn,
        key=f"deposit:{key or secrets.token_hex(12)}",
        debit=system_account_id(conn, "external", currency),
        credit=wallet,
        amount=amount,
        kind="deposit",
        now=now,
        memo=memo,
        actor=actor,
    )
    if applied:
        emit(conn, user_id, DEPOSIT_CREDITED, now, currency=currency, amount=to_coins(amount))
    return applied


def adjust(
    conn: Connection,
    user_id: int,
    currency: str,
    amount: int,
    settings: Settings,
    now: int,
    *,
    reason: str,
    actor: str,
    refund: bool = False,
    order_id: int | None = None,
) -> None:
    """An operator's refund (``refund``: always a credit) or adjustment (signed) of a wallet,
    booked against the outside world with the reason the user sees in the statement. A negative
    adjustment cannot take a wallet below zero (``not_enough_balance``)."""
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    if not reason.strip():
        raise MarketError("reason_required")
    if amount == 0 or (refund and amount < 0):
        raise MarketError("amount_too_low")
    if order_id is not None:
        renter = conn.execute(select(orders.c.user_id).where(orders.c.id == order_id)).scalar()
        if renter != user_id:
            raise MarketError("order_dont_exist")
    wallet = ensure_wallet(conn, user_id, currency, settings.address_secret)
    external = system_account_id(conn, "external", currency)
    debit, credit = (external, wallet) if amount > 0 else (wallet, external)
    try:
        transfer(
            conn,
            key=f"{'refund' if refund else 'adjustment'}:{secrets.token_hex(12)}",
            debit=debit,
            credit=credit,
            amount=abs(amount),
            kind="refund" if refund else "adjustment",
            now=now,
            order_id=order_id,
            memo=reason.strip(),
            actor=actor,
        )
    except InsufficientFunds:
        raise MarketError("not_enough_balance") from None
    emit(
        conn,
        user_id,
        BALANCE_ADJUSTED,
        now,
        currency=currency,
        amount=to_coins(amount),
        kind="refund" if refund else "adjustment",
        reason=reason.strip(),
        order_id=order_id,
    )
