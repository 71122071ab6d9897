"""Withdrawals: a user asks, the operator pays out (or refuses), every step a ledger transfer.

A request moves the amount and the withdrawal fee from the wallet to the operator's
pending-withdrawals account at once, in the same transaction that records it, so the money cannot
be spent twice and a crash between request and payout loses nothing. Approval books the amount out
to the outside world (with the payout's transaction id) and the fee to the platform; rejection
books both back to the wallet. Rows are never deleted: a request ends ``approved`` or
``rejected``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.money import coins_str, to_coins, to_units
from openclore.engine.outbox import (
    WITHDRAWAL_APPROVED,
    WITHDRAWAL_REJECTED,
    WITHDRAWAL_REQUESTED,
    emit,
)
from openclore.ledger.addresses import valid_address
from openclore.ledger.ledger import (
    InsufficientFunds,
    pending_withdrawals_account,
    system_account_id,
    transfer,
    wallet_id,
)
from openclore.market.accounts import lock_user
from openclore.market.audit import Actor, record_by
from openclore.store.db import inserted_id
from openclore.store.schema import users, withdrawals

DAY = 86_400
STATES = ("pending", "approved", "rejected")


def fee_for(settings: Settings, currency: str) -> int:
    return to_units(settings.withdrawal_fee.get(currency, 0))


def request_withdrawal(
    conn: Connection,
    user_id: int,
    currency: str,
    amount: int,
    address: str,
    settings: Settings,
    now: int,
    *,
    actor: Actor | None = None,
) -> int:
    """Record a withdrawal and move amount + fee to the pending account; returns its id (and,
    given the ``actor``, its audit entry)."""
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    if amount <= 0:
        raise MarketError("amount_too_low")
    if not valid_address(currency, address):
        raise MarketError("invalid_address")
    lock_user(conn, user_id)  # the daily limit is counted and used under the user's lock
    limit = to_units(settings.withdrawal_daily_limit.get(currency, 0))
    if limit > 0:
        used = int(
            conn.execute(
                select(func.coalesce(func.sum(withdrawals.c.amount), 0)).where(
                    withdrawals.c.user_id == user_id,
                    withdrawals.c.currency == currency,
                    withdrawals.c.state != "rejected",
                    withdrawals.c.created_at > now - DAY,
                )
            ).scalar_one()
        )
        if used + amount > limit:
            raise MarketError(
                "withdrawal_limit_exceeded", limit_left=to_coins(max(0, limit - used))
            )
    wallet = wallet_id(conn, user_id, currency)
    if wallet is None:
        raise MarketError("not_enough_balance")
    fee = fee_for(settings, currency)
    wid = inserted_id(
        conn.execute(
            insert(withdrawals).values(
                user_id=user_id,
                currency=currency,
                amount=amount,
                fee=fee,
                address=address,
                state="pending",
                created_at=now,
            )
        )
    )
    pending = pending_withdrawals_account(conn, currency)
    memo = f"withdrawal #{wid} to {address}"
    try:
        transfer(
            conn,
            key=f"withdrawal:{wid}:request",
            debit=wallet,
            credit=pending,
            amount=amount,
            kind="withdrawal",
            now=now,
            memo=memo,
        )
        transfer(
            conn,
            key=f"withdrawal:{wid}:fee",
            debit=wallet,
            credit=pending,
            amount=fee,
            kind="withdrawal_fee",
            now=now,
            memo=memo,
        )
    except InsufficientFunds:
        raise MarketError("not_enough_balance") from None  # the caller's transaction rolls back
    _announce(conn, WITHDRAWAL_REQUESTED, user_id, wid, currency, amount, fee, now, address=address)
    if actor is not None:
        detail = {"currency": currency, "amount": coins_str(amount), "address": address}
        record_by(conn, actor, "withdrawal.request", f"withdrawal:{wid}", detail, about=user_id)
    return wid


def _announce(
    conn: Connection,
    type_: str,
    user_id: int,
    withdrawal_id: int,
    currency: str,
    amount: int,
    fee: int,
    now: int,
    **extra: str,
) -> None:
    """The user's event for a step of a withdrawal, in the step's transaction."""
    emit(
        conn,
        user_id,
        type_,
        now,
        withdrawal_id=withdrawal_id,
        currency=currency,
        amount=to_coins(amount),
        fee=to_coins(fee),
        **extra,
    )


def withdrawal_owner(conn: Connection, withdrawal_id: int) -> int | None:
    """The user who asked for a withdrawal (None: no such withdrawal)."""
    owner = conn.execute(
        select(withdrawals.c.user_id).where(withdrawals.c.id == withdrawal_id)
    ).scalar()
    return None if owner is None else int(owner)


def _locked(conn: Connection, withdrawal_id: int) -> Any:
    row = conn.execute(
        select(withdrawals).where(withdrawals.c.id == withdrawal_id).with_for_update()
    ).first()
    if row is None:
        raise MarketError("withdrawal_dont_exist")
    if row.state != "pending":
        raise MarketError("withdrawal_not_pending", state=row.state)
    return row


def approve_withdrawal(
    conn: Connection, withdrawal_id: int, txid: str, actor: str, now: int
) -> None:
    """The operator has paid the withdrawal out: ``txid`` is the payout's transaction id."""
    txid = txid.strip()
    if not txid or len(txid) > 128:
        raise MarketError("txid_required")
    row = _locked(conn, withdrawal_id)
    pending = pending_withdrawals_account(conn, row.currency)
    memo = f"withdrawal #{row.id} paid to {row.address}, txid {txid}"
    transfer(
        conn,
        key=f"withdrawal:{row.id}:payout",
        debit=pending,
        credit=system_account_id(conn, "external", row.currency),
        amount=row.amount,
        kind="payout",
        now=now,
        memo=memo,
        actor=actor,
    )
    transfer(
        conn,
        key=f"withdrawal:{row.id}:fee_earned",
        debit=pending,
        credit=system_account_id(conn, "platform", row.currency),
        amount=row.fee,
        kind="withdrawal_fee",
        now=now,
        memo=memo,
        actor=actor,
    )
    conn.execute(
        update(withdrawals)
        .where(withdrawals.c.id == row.id)
        .values(state="approved", decided_at=now, decided_by=actor, txid=txid)
    )
    _announce(
        conn,
        WITHDRAWAL_APPROVED,
        row.user_id,
        row.id,
        row.currency,
        row.amount,
        row.fee,
        now,
        address=row.address,
        txid=txid,
    )


def reject_withdrawal(
    conn: Connection, withdrawal_id: int, reason: str, actor: str, now: int
) -> None:
    """The operator refuses the withdrawal: amount and fee go back to the wallet."""
    reason = reason.strip()
    if not reason:
        raise MarketError("reason_required")
    row = _locked(conn, withdrawal_id)
    wallet = wallet_id(conn, row.user_id, row.currency)
    assert wallet is not None  # the request was paid from it
    transfer(
        conn,
        key=f"withdrawal:{row.id}:back",
        debit=pending_withdrawals_account(conn, row.currency),
        credit=wallet,
        amount=row.amount + row.fee,
        kind="withdrawal_back",
        now=now,
        memo=f"withdrawal #{row.id} rejected: {reason}",
        actor=actor,
    )
    conn.execute(
        update(withdrawals)
        .where(withdrawals.c.id == row.id)
        .values(state="rejected", decided_at=now, decided_by=actor, reason=reason)
    )
    _announce(
        conn,
        WITHDRAWAL_REJECTED,
        row.user_id,
        row.id,
        row.currency,
        row.amount,
        row.fee,
        now,
        reason=reason,
    )


def _wire(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "currency": row.currency,
        "amount": to_coins(row.amount),
        "fee": to_coins(row.fee),
        "address": row.address,
        "state": row.state,
        "created_at": row.created_at,
        "decided_at": row.decided_at,
        "txid": row.txid,
        "reason": row.reason,
    }


def my_withdrawals(conn: Connection, user_id: int) -> dict[str, Any]:
    rows = conn.execute(
        select(withdrawals).where(withdrawals.c.user_id == user_id).order_by(withdrawals.c.id)
    )
    return {"withdrawals": [_wire(r) for r in rows]}


def all_withdrawals(conn: Connection, state: str | None = None) -> list[dict[str, Any]]:
    """Every request (for the operator), with the user's name; ``state`` filters."""
    query = select(withdrawals, users.c.name.label("user_name")).join(
        users, users.c.id == withdrawals.c.user_id
    )
    if state is not None:
        query = query.where(withdrawals.c.state == state)
    out = []
    for r in conn.execute(query.order_by(withdrawals.c.id)):
        item = _wire(r)
        item.update(
            user_id=r.user_id,
            user=r.user_name,
            decided_by=r.decided_by,
            amount_text=coins_str(r.amount),
            fee_text=coins_str(r.fee),
        )
        out.append(item)
    return out
