"""Storage billing (engine/storage.py, SPEC §8) with every answer written out: what a stopped
order's disk and a volume pay, to whom, under which transfer key and kind, what is left when
the balance runs out one unit short or exactly covers the bill, and which servers the tick
takes the exact way for storage.

Written to kill the mutants `scripts/mutation storage` found alive: the functions are driven
directly, inside one transaction each, on rows whose numbers make each rule's answer exact.
The rate is 1,000 units a second (86,400,000 a day) with a 10 % fee unless a test says
otherwise, so 5 more seconds cost 5,000 units, 4,500 to the host and 500 to the platform."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, delete, insert, select, update

from openclore.engine.notify import _PENDING
from openclore.engine.outbox import VOLUME_ENDED
from openclore.engine.storage import (
    bill_volume,
    servers_storing,
    settle_stored,
    settle_volumes,
    storage_bill,
)
from openclore.ledger.ledger import balance, system_account_id, wallet_id
from openclore.store.schema import accounts, events, orders, transfers, volumes

from support import Market, ok, order_body

pytestmark = pytest.mark.origin("mutant")

RATE = 86_400_000  # 1,000 units a second
FEE_BP = 1_000  # 10 %
BTC = "bitcoin"


def units(n: int) -> str:
    """``n`` units as the coins ``Market.user`` deposits."""
    assert 0 <= n < 10**9
    return f"0.{n:09d}"


def people(market: Market, renter_units: int) -> tuple[int, int, int]:
    """(renter id, host id, server id): a renter holding exactly ``renter_units``."""
    host = market.user()
    sid = market.server(host, "store")
    renter = market.user(bitcoin=units(renter_units)) if renter_units else market.user()
    return market.user_id(renter), market.user_id(host), sid


def wallets(conn: Connection, renter: int, host: int) -> tuple[int, int, int]:
    found = (
        wallet_id(conn, renter, BTC),
        wallet_id(conn, host, BTC),
        system_account_id(conn, "platform", BTC),
    )
    assert None not in found
    return found  # type: ignore[return-value]


def balances(market: Market, renter: int, host: int) -> tuple[int, int, int]:
    with market.db.read() as conn:
        return tuple(balance(conn, a) for a in wallets(conn, renter, host))  # type: ignore[return-value]


def booked(market: Market) -> list[tuple[Any, ...]]:
    """The storage transfers: (key, debit, credit, amount, kind, order id, time)."""
    with market.db.read() as conn:
        rows = conn.execute(
            select(
                transfers.c.key,
                transfers.c.debit_account_id,
                transfers.c.credit_account_id,
                transfers.c.amount,
                transfers.c.kind,
                transfers.c.order_id,
                transfers.c.created_at,
            )
            .where(transfers.c.kind.in_(("storage", "storage_fee")))
            .order_by(transfers.c.id)
        ).all()
    return [tuple(r) for r in rows]


def bill(market: Market, **given: Any) -> tuple[int, int, int, bool]:
    args: dict[str, Any] = dict(
        ref="order:7",
        currency=BTC,
        rate=RATE,
        seconds=10,
        more=5,
        spent=10_000,
        fee_paid=1_000,
        fee_bp=FEE_BP,
        now=123,
    )
    args.update(given)
    with market.db.write() as conn:
        return storage_bill(conn, **args)


# ------------------------------------------------------------------------------ storage_bill


def test_storage_pays_the_host_and_the_platform_under_cumulative_keys(market: Market) -> None:
    renter, host, sid = people(market, 10_000)
    r0, h0, p0 = balances(market, renter, host)
    got = bill(market, user_id=renter, server_id=sid, order_id=7)
    assert got == (15, 15_000, 1_500, False)
    with market.db.read() as conn:
        r, h, p = wallets(conn, renter, host)
    assert booked(market) == [
        ("order:7:storage:13500", r, h, 4_500, "storage", 7, 123),
        ("order:7:storage_fee:1500", r, p, 500, "storage_fee", 7, 123),
    ]
    assert balances(market, renter, host) == (r0 - 5_000, h0 + 4_500, p0 + 500)


def test_a_balance_that_covers_the_bill_exactly_is_not_short(market: Market) -> None:
    renter, host, sid = people(market, 5_000)
    assert bill(market, user_id=renter, server_id=sid) == (15, 15_000, 1_500, False)
    assert balances(market, renter, host)[0] == 0


def test_one_unit_short_bills_the_seconds_the_balance_covers(market: Market) -> None:
    renter, host, sid = people(market, 4_999)
    _, h0, p0 = balances(market, renter, host)
    assert bill(market, user_id=renter, server_id=sid) == (14, 14_000, 1_400, True)
    assert [(k, a) for k, _, _, a, *_ in booked(market)] == [
        ("order:7:storage:12600", 3_600),
        ("order:7:storage_fee:1400", 400),
    ]
    assert balances(market, renter, host) == (999, h0 + 3_600, p0 + 400)


def test_storage_spend_rounds_down_of_the_whole_time(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    # 100 units a day for 86,399 seconds: 99.998… → 99, fee 9 (of the total, not the part)
    got = bill(
        market,
        ref="volume:3",
        user_id=renter,
        server_id=sid,
        rate=100,
        seconds=0,
        more=86_399,
        spent=0,
        fee_paid=0,
    )
    assert got == (86_399, 99, 9, False)
    assert [(k, a, o) for k, _, _, a, _, o, _ in booked(market)] == [
        ("volume:3:storage:90", 90, None),
        ("volume:3:storage_fee:9", 9, None),
    ]


def test_nothing_more_to_pay_books_nothing(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    # one more second at 100 units a day is still 0 units in all
    got = bill(market, user_id=renter, server_id=sid, rate=100, seconds=0, more=1, spent=0)
    assert got == (1, 0, 0, False)
    assert bill(market, user_id=renter, server_id=sid, more=0) == (10, 10_000, 1_000, False)
    assert booked(market) == []


def test_a_renter_without_a_wallet_in_the_currency_pays_nothing_and_is_short(
    market: Market,
) -> None:
    renter, _host, sid = people(market, 10_000)
    got = bill(market, user_id=renter, server_id=sid, currency="no-such-coin")
    assert got == (10, 10_000, 1_000, True)
    assert booked(market) == []


def test_a_renter_without_a_wallet_has_nothing_at_all_to_pay_with(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    # at one unit a second a single unit would buy a second: there is none
    got = bill(
        market,
        user_id=renter,
        server_id=sid,
        currency="no-such-coin",
        rate=86_400,
        seconds=10,
        spent=10,
        fee_paid=1,
    )
    assert got == (10, 10, 1, True)


def test_a_host_without_a_wallet_in_the_currency_is_an_error(market: Market) -> None:
    renter, host, sid = people(market, 10_000)
    with market.db.write() as conn:
        conn.execute(
            delete(accounts).where(
                accounts.c.user_id == host, accounts.c.currency == BTC, accounts.c.kind == "wallet"
            )
        )
    with pytest.raises(LookupError, match=f"the host of server {sid} has no bitcoin wallet"):
        bill(market, user_id=renter, server_id=sid)


# ----------------------------------------------------------------------------- settle_stored


def stopped_order(renter: int, sid: int, **changes: Any) -> dict[str, Any]:
    order = dict(
        id=41,
        user_id=renter,
        server_id=sid,
        currency=BTC,
        stopped=True,
        stored_at=1_000,
        storage_rate=RATE,
        stored_seconds=10,
        storage_spend=10_000,
        storage_fee=1_000,
        fee_bp=FEE_BP,
    )
    order.update(changes)
    return order


def stored(market: Market, order: dict[str, Any], until: int, now: int = 2_000) -> Any:
    with market.db.write() as conn:
        return settle_stored(conn, order, until, now)


def test_a_stopped_orders_disk_is_billed_to_until_at_now(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    got = stored(market, stopped_order(renter, sid), 1_005)
    assert got == {
        "stored_seconds": 15,
        "storage_spend": 15_000,
        "storage_fee": 1_500,
        "stored_at": 1_005,
    }
    assert [(k, a, o, t) for k, _, _, a, _, o, t in booked(market)] == [
        ("order:41:storage:13500", 4_500, 41, 2_000),
        ("order:41:storage_fee:1500", 500, 41, 2_000),
    ]


def test_a_stopped_order_whose_renter_runs_short_ends_at_the_last_second_paid(
    market: Market,
) -> None:
    renter, _host, sid = people(market, 4_999)
    got = stored(market, stopped_order(renter, sid), 1_005)
    assert got == {
        "stored_seconds": 14,
        "storage_spend": 14_000,
        "storage_fee": 1_400,
        "stored_at": 1_004,
        "ended_at": 1_004,
    }


def test_a_free_disk_counts_its_seconds_and_books_nothing(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    got = stored(market, stopped_order(renter, sid, storage_rate=0), 1_005)
    assert got == {"stored_seconds": 15, "stored_at": 1_005}
    assert booked(market) == []


def test_a_disk_of_one_unit_a_day_is_billed_not_free(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    order = stopped_order(
        renter, sid, storage_rate=1, stored_seconds=0, storage_spend=0, storage_fee=0
    )
    got = stored(market, order, 1_000 + 86_400)
    assert got == {
        "stored_seconds": 86_400,
        "storage_spend": 1,
        "storage_fee": 0,
        "stored_at": 1_000 + 86_400,
    }
    assert [(k, a) for k, _, _, a, *_ in booked(market)] == [("order:41:storage:1", 1)]


@pytest.mark.parametrize(
    "changes, until",
    [
        ({"stopped": False}, 1_005),
        ({"stored_at": None}, 1_005),
        ({}, 1_000),  # nothing since stored_at
        ({}, 999),
    ],
)
def test_nothing_to_bill_for_a_disk_gives_no_values(
    market: Market, changes: dict[str, Any], until: int
) -> None:
    renter, _host, sid = people(market, 10_000)
    assert stored(market, stopped_order(renter, sid, **changes), until) == {}
    assert booked(market) == []


# ------------------------------------------------------------------------------- bill_volume


def add_volume(market: Market, renter: int, sid: int, **changes: Any) -> int:
    row = dict(
        user_id=renter,
        server_id=sid,
        name="data",
        size_gb=10,
        currency=BTC,
        rate=RATE,
        fee_bp=FEE_BP,
        created_at=990,
        billed_at=1_000,
        seconds=10,
        spend=10_000,
        fee_paid=1_000,
        state="ready",
    )
    row.update(changes)
    with market.db.write() as conn:
        return int(conn.execute(insert(volumes).values(**row)).inserted_primary_key[0])


def volume(market: Market, vid: int) -> dict[str, Any]:
    with market.db.read() as conn:
        return dict(conn.execute(select(volumes).where(volumes.c.id == vid)).one()._mapping)


def billed(market: Market, vid: int) -> tuple[Any, ...]:
    v = volume(market, vid)
    return v["seconds"], v["spend"], v["fee_paid"], v["billed_at"], v["state"], v["ended_at"]


def volume_events(market: Market) -> list[tuple[Any, ...]]:
    import json

    with market.db.read() as conn:
        rows = conn.execute(
            select(events.c.user_id, events.c.type, events.c.created_at, events.c.data)
            .where(events.c.type == VOLUME_ENDED)
            .order_by(events.c.id)
        ).all()
    return [(r.user_id, r.type, r.created_at, json.loads(r.data)) for r in rows]


def test_a_volume_is_billed_to_until_under_its_own_key(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    vid = add_volume(market, renter, sid)
    with market.db.write() as conn:
        assert bill_volume(conn, volume(market, vid), 1_005) is False
    assert billed(market, vid) == (15, 15_000, 1_500, 1_005, "ready", None)
    assert [(k, a, o, t) for k, _, _, a, _, o, t in booked(market)] == [
        (f"volume:{vid}:storage:13500", 4_500, None, 1_005),
        (f"volume:{vid}:storage_fee:1500", 500, None, 1_005),
    ]
    assert volume_events(market) == []


def test_a_volume_whose_renter_runs_short_ends_and_says_so(market: Market) -> None:
    renter, _host, sid = people(market, 4_999)
    vid = add_volume(market, renter, sid)
    with market.db.write() as conn:
        assert bill_volume(conn, volume(market, vid), 1_005) is True
    assert billed(market, vid) == (14, 14_000, 1_400, None, "ended", 1_004)
    assert volume_events(market) == [
        (
            renter,
            VOLUME_ENDED,
            1_005,
            {"volume_id": vid, "server_id": sid, "reason": "balance", "ended_at": 1_004},
        )
    ]


@pytest.mark.parametrize("billed_at, until", [(None, 1_005), (1_000, 1_000), (1_000, 999)])
def test_a_volume_with_nothing_to_bill_is_left_alone(
    market: Market, billed_at: Any, until: int
) -> None:
    renter, _host, sid = people(market, 10_000)
    vid = add_volume(market, renter, sid, billed_at=billed_at)
    before = billed(market, vid)
    with market.db.write() as conn:
        assert bill_volume(conn, volume(market, vid), until) is False
    assert billed(market, vid) == before
    assert booked(market) == []


# ---------------------------------------------------------------------------- settle_volumes


def test_a_servers_live_volumes_are_billed_in_id_order_and_an_ended_one_tells_the_agent(
    market: Market,
) -> None:
    # enough for the first volume's 5 seconds (5,000) and 2 of the second's
    renter, _host, sid = people(market, 7_500)
    other = market.server(market.user(), "elsewhere")
    first = add_volume(market, renter, sid)
    second = add_volume(market, renter, sid, state="creating")
    gone = add_volume(market, renter, sid, state="deleted")
    current = add_volume(market, renter, sid, billed_at=1_005)
    away = add_volume(market, renter, other)
    # rows in another order than their ids: PostgreSQL keeps a row moved to another server
    # and back last in its heap and its server index (SQLite keeps rowid order)
    with market.db.write() as conn:
        conn.execute(update(volumes).where(volumes.c.id == first).values(server_id=other))
    with market.db.write() as conn:
        conn.execute(update(volumes).where(volumes.c.id == first).values(server_id=sid))
    untouched = {v: billed(market, v) for v in (gone, current, away)}
    with market.db.write() as conn:
        assert settle_volumes(conn, sid, 1_005) is True
        assert sid in conn.info.get(_PENDING, set())
    assert billed(market, first) == (15, 15_000, 1_500, 1_005, "ready", None)
    assert billed(market, second) == (12, 12_000, 1_200, None, "ended", 1_002)
    assert {v: billed(market, v) for v in untouched} == untouched
    assert [e[3]["volume_id"] for e in volume_events(market)] == [second]


def test_volumes_that_all_pay_do_not_wake_the_agent(market: Market) -> None:
    renter, _host, sid = people(market, 10_000)
    vid = add_volume(market, renter, sid)
    with market.db.write() as conn:
        assert settle_volumes(conn, sid, 1_005) is False
        assert sid not in conn.info.get(_PENDING, set())
    assert billed(market, vid)[:4] == (15, 15_000, 1_500, 1_005)


# ---------------------------------------------------------------------------- servers_storing


def test_the_servers_with_storage_to_bill_or_a_timer_due(market: Market) -> None:
    host = market.user()
    renter_token = market.user(bitcoin="1")
    renter = market.client(renter_token)
    renter_id = market.user_id(renter_token)
    now = market.now()

    def with_order(name: str, **values: Any) -> int:
        sid = market.server(host, name)
        oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
        with market.db.write() as conn:
            conn.execute(update(orders).where(orders.c.id == oid).values(**values))
        return sid

    def with_volume(name: str, **values: Any) -> int:
        sid = market.server(host, name)
        add_volume(market, renter_id, sid, **{"billed_at": now - 1, **values})
        return sid

    stopping = dict(stopped=True, running=False, storage_rate=RATE)
    due = [
        with_order("disk", **stopping, stored_at=now - 1),
        with_order("timer-now", stop_at=now),
        with_order("timer-past", stop_at=now - 10),
        with_volume("ready"),
        with_volume("creating", state="creating"),
        with_order("disk-one-unit", **{**stopping, "storage_rate": 1}, stored_at=now - 1),
        with_volume("volume-one-unit", rate=1),
    ]
    not_due = [
        with_order("disk-just-stored", **stopping, stored_at=now),
        with_order("free-disk", **{**stopping, "storage_rate": 0}, stored_at=now - 1),
        with_order("ended", **stopping, stored_at=now - 1, expired=True),
        with_order("running", storage_rate=RATE, stored_at=now - 1),
        with_order("timer-later", stop_at=now + 1),
        with_order("ended-timer", stop_at=now, expired=True, running=False),
        with_volume("free-volume", rate=0),
        with_volume("deleted", state="deleted"),
        with_volume("just-billed", billed_at=now),
    ]
    with market.db.read() as conn:
        found = servers_storing(conn, now)
    assert found == sorted(due)
    assert not set(found) & set(not_due)
