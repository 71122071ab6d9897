"""Double-entry ledger: accounts, exactly-once transfers, balances."""

from openclore.ledger.ledger import (
    InsufficientFunds,
    account_key,
    ensure_system_accounts,
    ensure_wallet,
    transfer,
    wallet_id,
)

__all__ = [
    "InsufficientFunds",
    "account_key",
    "ensure_system_accounts",
    "ensure_wallet",
    "transfer",
    "wallet_id",
]
