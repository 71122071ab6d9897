"""The listing's version moves when, and only when, a write changed what a listing shows.

One place decides it (:mod:`openclore.store.listing`, watched by ``Database.write()``): these
tests pin the statements it must see, and walk the use cases that change a listing and the
frequent writes that must not (heartbeats, billing ticks), on both databases.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Connection, update

from openclore.market.agents import agent_heartbeat
from openclore.store.db import listing_version
from openclore.store.listing import LISTED, touches_listing
from openclore.store.schema import metadata, servers

from support import Market, ok, order_body, spot_body


@pytest.mark.parametrize(
    ("statement", "moves"),
    [
        ("UPDATE servers SET last_seen=? WHERE servers.id = ?", False),
        ("UPDATE servers SET last_seen=%(last_seen)s WHERE servers.id = %(id_1)s", False),
        ("UPDATE servers SET last_seen=?, online=? WHERE servers.id = ?", True),
        ("UPDATE servers SET visibility=%(visibility)s WHERE servers.id = %(id_1)s", True),
        ("update servers set gpu_array = ? where servers.id = ?", True),
        ("SELECT servers.id FROM servers WHERE servers.id = ? FOR UPDATE", False),
        ("INSERT INTO orders (user_id, server_id) VALUES (?, ?)", True),
        ("INSERT INTO servers (name) VALUES (?) RETURNING id", True),
        ("DELETE FROM server_prices WHERE server_prices.server_id = ?", True),
        ("UPDATE server_prices SET enabled=? WHERE server_prices.id = ?", True),
        ("UPDATE usd_rates SET rate=?, updated_at=?", True),
        ("UPDATE orders SET running=?, billed_at=? WHERE orders.id = ?", True),
        ("UPDATE orders SET expired=?, ended_at=? WHERE orders.id = ?", True),
        ("UPDATE orders SET spend=?, billed_at=? WHERE orders.id = ?", False),
        ("UPDATE orders SET runtime_state=? WHERE orders.id = ? AND orders.running = 1", False),
        ("INSERT INTO events (user_id, type) VALUES (?, ?)", False),
        ("UPDATE accounts SET balance=? WHERE accounts.id = ?", False),
        ("DELETE FROM servers_archive WHERE 1", False),
        ("TRUNCATE users, servers, orders RESTART IDENTITY CASCADE", True),
        ("TRUNCATE users, events RESTART IDENTITY", False),
        # the tick's settlement on PostgreSQL: spend moves inside a CTE, the listing does not
        (
            """
            WITH w AS (SELECT 1), applied AS (
                UPDATE orders SET active_seconds = w.new_active, spend = w.new_spend,
                                  fee_paid = w.new_fee, billed_at = w.new_billed_at
                  FROM w WHERE orders.id = w.id AND orders.running AND NOT orders.expired
             RETURNING w.*) SELECT DISTINCT w.server_id FROM w
            """,
            False,
        ),
        ("WITH x AS (UPDATE orders SET price = 5 RETURNING id) SELECT 1", True),
        # what comes before SET is not an assignment
        ("WITH c AS (SELECT 1 WHERE running = 1) UPDATE orders SET spend = 1", False),
        # statements as written in the code, indented on their own lines
        ("\n    UPDATE servers SET online = :online\n    WHERE id = :id\n", True),
        ("\n    insert into usd_rates (currency) values (:c)", True),
        # when the assignments cannot be read, it counts as a change
        ("UPDATE orders SET (price, spot) = (SELECT 1, 0)", True),
    ],
)
def test_which_statements_change_the_listing(statement: str, moves: bool) -> None:
    assert touches_listing(statement) is moves


def test_every_listed_column_exists() -> None:
    """A renamed column would silently stop moving the version: the names must be real."""
    for table, columns in LISTED.items():
        assert table in metadata.tables
        assert columns is None or columns <= set(metadata.tables[table].c.keys()), table


def _version(market: Market) -> int:
    with market.db.read() as conn:
        return listing_version(conn)


def _moves(market: Market, action: Callable[[], object]) -> bool:
    before = _version(market)
    action()
    return _version(market) != before


def _write(market: Market, fn: Callable[[Connection], object]) -> Callable[[], None]:
    def run() -> None:
        with market.db.write() as conn:
            fn(conn)

    return run


def test_use_cases_that_change_the_listing_move_its_version(market: Market) -> None:
    host = market.user()
    h = market.client(host)
    assert _moves(market, lambda: market.server(host, "a"))
    sid = market.server(host, "b")
    renter = market.client(market.user(bitcoin="1"))
    order: dict[str, int] = {}

    def rent() -> None:
        order["id"] = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]

    assert _moves(market, rent)
    assert _moves(market, lambda: ok(renter.post("/v1/cancel_order", json=order)))
    assert _moves(
        market,
        lambda: ok(
            h.post(
                "/v1/set_server_settings",
                json={"name": "b", "on_demand": 0.0002, "spot": 0.000002},
            )
        ),
    )
    hide = update(servers).where(servers.c.id == sid).values(visibility="hidden")
    assert _moves(market, _write(market, lambda conn: conn.execute(hide)))


def test_a_write_rolled_back_leaves_the_version(market: Market) -> None:
    sid = market.server(market.user())
    before = _version(market)
    with pytest.raises(RuntimeError), market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=False))
        raise RuntimeError("changed my mind")
    assert _version(market) == before


def test_heartbeats_and_billing_ticks_leave_the_listing_alone(market: Market) -> None:
    """The frequent writes: an online server's heartbeat, and a tick billing running orders
    (spot and on demand) without any of them starting or stopping."""
    host = market.user()
    sid = market.server(host, "a")
    spot_sid = market.server(host, "s")
    renter = market.client(market.user(bitcoin="1"))
    ok(renter.post("/v1/create_order", json=order_body(sid)))
    ok(renter.post("/v1/create_order", json=spot_body(spot_sid, 0.00001)))
    market.advance(5)
    beat = _write(market, lambda conn: agent_heartbeat(conn, sid, market.now()))
    assert not _moves(market, beat)
    assert not _moves(market, lambda: market.advance(5))
    assert not _moves(market, lambda: market.advance(30))
