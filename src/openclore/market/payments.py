"""Deposits from a payment provider: a signed, provider-neutral webhook, applied exactly once.

The provider (or a small adapter in front of it: BTCPay Server, a bank, a card processor) POSTs
``{"external_id", "currency", "amount", "user" | "address"}`` to ``/payments/deposit`` with the
header ``Openclore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``,
the scheme openclore's own webhooks sign with. A signature that does not verify, or a timestamp
outside the replay window, is refused before anything is read or written. The external id is the
deposit's transfer key, so a replayed or retried delivery credits nothing a second time; the same
id with another amount or account is a conflict, never a second deposit.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from sqlalchemy import Connection, select

from openclore.config import Settings
from openclore.domain.errors import InvalidToken, MarketError
from openclore.domain.money import to_coins
from openclore.market.accounts import UnknownUser, find_user
from openclore.market.wallets import deposit
from openclore.store.schema import accounts, transfers

SIGNATURE_HEADER = "Openclore-Signature"
MAX_HEADER = 512


class SignatureError(InvalidToken):
    """The delivery is not signed with the shared secret, or not now."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value a sender puts on ``body`` (for adapters and tests)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str | None, body: bytes, now: float, tolerance: int) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` with ``secret`` within
    ``tolerance`` seconds of ``now``. Any ``v1`` entry may match (a secret being rotated)."""
    if not header or len(header) > MAX_HEADER:
        raise SignatureError("missing_signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("missing_signature")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("bad_signature")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("timestamp_outside_window")


def _account_of(conn: Connection, user: str | None, address: str | None, currency: str) -> int:
    if address is not None:
        row = conn.execute(
            select(accounts.c.user_id, accounts.c.currency).where(
                accounts.c.deposit_address == address, accounts.c.kind == "wallet"
            )
        ).first()
        if row is None or row.currency != currency:
            raise MarketError("unknown_account")
        return int(row.user_id)
    assert user is not None
    try:
        return find_user(conn, user)
    except UnknownUser:
        raise MarketError("unknown_account") from None


def provider_deposit(
    conn: Connection,
    *,
    external_id: str,
    currency: str,
    amount: int,
    user: str | None,
    address: str | None,
    settings: Settings,
    now: int,
) -> dict[str, Any]:
    """Credit a provider's deposit once; a replay of the same one answers ``credited: false``."""
    if currency not in settings.currencies:
        raise MarketError("currency-not-allowed")
    user_id = _account_of(conn, user, address, currency)
    key = f"ext:{external_id}"
    earlier = conn.execute(
        select(transfers.c.amount, accounts.c.user_id, accounts.c.currency)
        .join(accounts, accounts.c.id == transfers.c.credit_account_id)
        .where(transfers.c.key == f"deposit:{key}")
    ).first()
    if earlier is not None and (
        earlier.amount != amount or earlier.user_id != user_id or earlier.currency != currency
    ):
        raise MarketError("deposit_conflict")
    credited = earlier is None and deposit(
        conn, user_id, currency, amount, settings, now, key=key, actor="payments-webhook"
    )
    return {
        "credited": credited,
        "external_id": external_id,
        "user_id": user_id,
        "currency": currency,
        "amount": to_coins(amount),
    }
