"""Database.write() and run_write(): a write transaction whose connection is lost before its
COMMIT is run again whole, the rows it left for its end (before_commit) included: the loss is
what run_write sees, never an error about the rollback that follows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text

from openclore.store.db import before_commit, run_write

from support import Market


def _terminated(market: Market, conn: Connection) -> None:
    """The server ends the session (an administrator's pg_terminate_backend)."""
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with market.db.engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other.commit()


def _closed(_market: Market, conn: Connection) -> None:
    """The socket goes away under the driver (the connection reads as lost at once)."""
    conn.connection.dbapi_connection.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("cut", [_terminated, _closed], ids=["terminated", "closed"])
def test_a_write_cut_off_while_flushing_its_last_rows_runs_again(
    market: Market, cut: Callable[[Market, Connection], None]
) -> None:
    if cut is _terminated and market.backend != "postgresql":
        pytest.skip("PostgreSQL only: a backend terminated mid-transaction")
    attempts: list[int] = []

    def flush(conn: Connection, items: list[Any]) -> None:
        if len(attempts) == 1:
            cut(market, conn)
        for item in items:
            conn.execute(text("INSERT INTO meta (key, value) VALUES ('cut-test', :v)"), {"v": item})

    def write(conn: Connection) -> int:
        attempts.append(1)
        before_commit(conn, "cut-test", flush).append(len(attempts))
        return len(attempts)

    assert run_write(market.db, write) == 2
    with market.db.read() as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE key = 'cut-test'")).scalar()
    assert value == 2  # the second attempt's row, once
