"""The accounts many bookings credit (the platform's, a host's with many servers) and the market's
versions are written at the very end of a transaction (ledger/ledger.py, store/db.py): a booking
in progress leaves them unlocked, and nothing inside the transaction sees the difference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import OperationalError

from openclore.ledger.ledger import (
    InsufficientFunds,
    add_pending,
    balance,
    ensure_wallet,
    system_account_id,
    transfer,
)
from openclore.market.accounts import lock_user
from openclore.store.db import (
    MARKET_VERSION,
    before_commit,
    get_meta,
    listing_changed,
    savepoint,
)
from openclore.store.schema import accounts, transfers

from support import Market


def _raw(conn: Connection, account: int) -> int:
    """The balance as the row holds it, without the ledger's help."""
    return int(
        conn.execute(select(accounts.c.balance).where(accounts.c.id == account)).scalar_one()
    )


def _wallets(market: Market, n: int) -> tuple[int, list[int]]:
    users = [market.user_id(market.user(f"w{i}")) for i in range(n)]
    with market.db.write() as conn:
        external = system_account_id(conn, "external", "bitcoin")
        return external, [ensure_wallet(conn, user, "bitcoin", "s") for user in users]


def test_a_credit_reaches_its_row_at_the_end_and_every_read_sees_it_before(
    market: Market,
) -> None:
    external, (a, b, c) = _wallets(market, 3)
    with market.db.write() as conn:
        assert transfer(conn, key="in", debit=external, credit=a, amount=70, kind="d", now=0)
        assert transfer(conn, key="c", debit=external, credit=c, amount=9, kind="d", now=0)
        assert _raw(conn, a) == 0  # not written yet: the row is not locked by this booking
        assert balance(conn, a) == 70  # ...but the ledger's reads count it
        assert (_raw(conn, a), _raw(conn, c)) == (70, 0)  # that account's only
        # credited and debited in one transaction: the debit sees the credit
        assert transfer(conn, key="more", debit=external, credit=a, amount=30, kind="d", now=0)
        assert transfer(conn, key="on", debit=a, credit=b, amount=100, kind="x", now=0)
        assert (_raw(conn, b), _raw(conn, c)) == (0, 0)  # a debit adds its own account's only
        with pytest.raises(InsufficientFunds):
            transfer(conn, key="over", debit=a, credit=b, amount=1, kind="x", now=0)
        add_pending(conn)  # every account's (before a statement reading balances itself)
        assert (_raw(conn, b), _raw(conn, c)) == (100, 9)
        add_pending(conn)  # added once
        assert transfer(conn, key="c2", debit=external, credit=c, amount=1, kind="d", now=0)
    with market.db.read() as conn:
        assert (_raw(conn, a), _raw(conn, b), _raw(conn, c)) == (0, 100, 10)
        assert _raw(conn, external) == -110


def test_a_transfer_keeps_who_made_it_and_why(market: Market) -> None:
    external, (a,) = _wallets(market, 1)
    with market.db.write() as conn:
        transfer(
            conn,
            key="k",
            debit=external,
            credit=a,
            amount=5,
            kind="adjust",
            now=7,
            order_id=None,
            memo="goodwill",
            actor="admin:root",
        )
    with market.db.read() as conn:
        row = conn.execute(select(transfers).where(transfers.c.key == "k")).one()
    assert (row.debit_account_id, row.credit_account_id, row.amount) == (external, a, 5)
    assert (row.kind, row.created_at, row.memo, row.actor) == (
        "adjust",
        7,
        "goodwill",
        "admin:root",
    )


def test_a_rolled_back_savepoint_takes_its_credits_with_it(market: Market) -> None:
    external, (a, b) = _wallets(market, 2)
    with market.db.write() as conn:
        transfer(conn, key="kept", debit=external, credit=a, amount=5, kind="d", now=0)
        with pytest.raises(RuntimeError), savepoint(conn):
            transfer(conn, key="gone", debit=external, credit=a, amount=7, kind="d", now=0)
            # a debit of `a` writes its pending credits (5 + 7) to the row now
            transfer(conn, key="gone2", debit=a, credit=b, amount=12, kind="x", now=0)
            transfer(conn, key="gone3", debit=external, credit=b, amount=1, kind="d", now=0)
            raise RuntimeError("undone")
        assert balance(conn, a) == 5 and balance(conn, b) == 0
    with market.db.read() as conn:
        assert (_raw(conn, a), _raw(conn, b), _raw(conn, external)) == (5, 0, -5)


def test_rows_every_transaction_shares_are_written_last(market: Market) -> None:
    external, (a,) = _wallets(market, 1)
    flushed: list[str] = []
    with market.db.write() as conn:
        # made before any credit, at the versions' rank: it runs after the credits
        before_commit(
            conn, "late", lambda c, _items: flushed.append(f"late {_raw(c, a)}"), rank=2
        ).append(1)
        listing_changed(conn)  # the versions first asked for, written last
        transfer(conn, key="in", debit=external, credit=a, amount=3, kind="d", now=0)
        for name in ("outbox", "other"):
            before_commit(conn, name, lambda _c, items: flushed.extend(items)).append(name)
        version_before = get_meta(conn, MARKET_VERSION)

        def watch(c: Connection, _items: list[object]) -> None:
            flushed.append(f"{_raw(c, a)}/{get_meta(c, MARKET_VERSION)}")

        before_commit(conn, "watch", watch).append(1)
    # the plain lists in the order they were made, then the credits, then the versions
    assert flushed == ["outbox", "other", f"0/{version_before}", "late 3"]
    with market.db.read() as conn:
        assert _raw(conn, a) == 3
        assert get_meta(conn, MARKET_VERSION) == version_before + 1


@contextmanager
def _other(market: Market) -> Iterator[Connection]:
    with market.db.engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL lock_timeout = '2s'"))
        yield conn
        conn.rollback()


def _locked(market: Market, sql: str, **params: object) -> bool:
    """Whether another transaction would wait for this row lock."""
    with _other(market) as conn:
        try:
            conn.execute(text(sql + " NOWAIT"), params).all()
        except OperationalError as exc:
            assert "could not obtain lock" in str(exc)
            return True
        return False


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_booking_in_progress_leaves_the_platform_and_the_versions_unlocked(
    market: Market,
) -> None:
    external, (renter, host) = _wallets(market, 2)
    with market.db.write() as conn:
        transfer(conn, key="fund", debit=external, credit=renter, amount=1000, kind="d", now=0)
        platform = system_account_id(conn, "platform", "bitcoin")
        version = get_meta(conn, MARKET_VERSION)
    account = "SELECT id FROM accounts WHERE id = :id FOR NO KEY UPDATE"
    meta = "SELECT key FROM meta WHERE key = :key FOR NO KEY UPDATE"
    with market.db.write() as conn:
        transfer(conn, key="pay", debit=renter, credit=host, amount=900, kind="s", now=1)
        transfer(conn, key="fee", debit=renter, credit=platform, amount=100, kind="f", now=1)
        listing_changed(conn)
        # what it pays from is held (no concurrent debit between its check and its commit)...
        assert balance(conn, renter, lock=True) == 0
        assert _locked(market, account, id=renter)
        # ...yet not against a row referencing it (a foreign key's check takes KEY SHARE)
        assert not _locked(
            market, "SELECT id FROM accounts WHERE id = :id FOR KEY SHARE", id=renter
        )
        # ...what it pays to, and the market's version, are not: other bookings go on
        assert not _locked(market, account, id=host)
        assert not _locked(market, account, id=platform)
        assert not _locked(market, meta, key=MARKET_VERSION)
        with market.db.write() as other:  # another booking credits the platform meanwhile
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            transfer(other, key="x", debit=external, credit=platform, amount=1, kind="d", now=1)
            listing_changed(other)
    with market.db.read() as conn:
        assert (_raw(conn, renter), _raw(conn, host), _raw(conn, platform)) == (0, 900, 101)
        assert _raw(conn, external) == -1001
        assert get_meta(conn, MARKET_VERSION) == version + 2


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_users_turn_lock_lets_rows_referencing_the_user_go_in(market: Market) -> None:
    """Per-user limits are counted under the user's row lock; an idempotency key or an audit
    entry of the same user (a foreign key to it) is not held up by it."""
    user = market.user_id(market.user("turns"))
    user_row = "SELECT id FROM users WHERE id = :id FOR "
    with market.db.write() as conn:
        lock_user(conn, user)
        assert _locked(market, user_row + "NO KEY UPDATE", id=user)
        assert not _locked(market, user_row + "KEY SHARE", id=user)
