"""Double-entry ledger: accounts, exactly-once transfers, balances."""

from openclore.ledger.ledger import (
    PENDING_WITHDRAWALS,
    InsufficientFunds,
    account_key,
    ensure_system_accounts,
    ensure_wallet,
    pending_withdrawals_account,
    transfer,
    wallet_id,
)

__all__ = [
    "PENDING_WITHDRAWALS",
    "InsufficientFunds",
    "account_key",
    "ensure_system_accounts",
    "ensure_wallet",
    "pending_withdrawals_account",
    "transfer",
    "wallet_id",
]
