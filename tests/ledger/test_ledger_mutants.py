"""Ledger rules (ledger/ledger.py, ledger/addresses.py) that a mutant the rest of the suite let
through changed (scripts/mutation, docs/testing.md), each pinned with numbers written here; moved
from the former tests/test_mutants.py (marker ``origin("mutant")``)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from openclore.ledger.addresses import deposit_address
from openclore.ledger.ledger import (
    InsufficientFunds,
    ensure_wallet,
    system_account_id,
    transfer,
)
from openclore.store.schema import accounts

from support import Market

pytestmark = pytest.mark.origin("mutant")


def test_system_accounts_are_keyed_by_kind_and_currency(market: Market) -> None:
    with market.db.read() as conn:
        found = {
            r.key: (r.kind, r.currency)
            for r in conn.execute(select(accounts).where(accounts.c.user_id.is_(None)))
        }
    assert found == {
        "platform:bitcoin": ("platform", "bitcoin"),
        "external:bitcoin": ("external", "bitcoin"),
        "platform:CLORE-Blockchain": ("platform", "CLORE-Blockchain"),
        "external:CLORE-Blockchain": ("external", "CLORE-Blockchain"),
        "platform:USD-Blockchain": ("platform", "USD-Blockchain"),
        "external:USD-Blockchain": ("external", "USD-Blockchain"),
        # money on its way out: withdrawals asked for and not yet approved or rejected
        "pending_withdrawals:bitcoin": ("platform", "bitcoin"),
        "pending_withdrawals:CLORE-Blockchain": ("platform", "CLORE-Blockchain"),
        "pending_withdrawals:USD-Blockchain": ("platform", "USD-Blockchain"),
    }


def test_a_wallets_deposit_address_comes_from_the_secret(market: Market) -> None:
    uid = market.user_id(market.user())
    with market.db.write() as conn:
        wallet = ensure_wallet(conn, uid, "ETH", "a secret")
        address = conn.execute(
            select(accounts.c.deposit_address).where(accounts.c.id == wallet)
        ).scalar()
    assert address == deposit_address("a secret", uid, "ETH")


def test_a_transfer_moves_even_one_unit_and_never_nothing(market: Market) -> None:
    uid = market.user_id(market.user())
    with market.db.write() as conn:
        wallet = ensure_wallet(conn, uid, "bitcoin", "s")
        external = system_account_id(conn, "external", "bitcoin")
        assert transfer(conn, key="one", debit=external, credit=wallet, amount=1, kind="d", now=0)
        assert not transfer(conn, key="0", debit=external, credit=wallet, amount=0, kind="d", now=0)
        with pytest.raises(InsufficientFunds, match=rf"^account {wallet} cannot pay 2$"):
            transfer(conn, key="two", debit=wallet, credit=external, amount=2, kind="w", now=0)
        assert conn.execute(select(accounts.c.balance).where(accounts.c.id == wallet)).scalar() == 1
