"""The event outbox (engine/outbox.py) called directly, each value written out: events exist
only with their transaction, rendered exactly; each event goes to its own user's webhooks, by
each hook's filter (a ping to its one webhook), as a pending delivery of the exact body; the
wakes at commit; reading events back. Written to kill mutants (``scripts/mutation outbox``)."""

from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import insert, select

from openclore.domain.money import Coins
from openclore.engine import outbox
from openclore.engine.outbox import (
    DEPOSIT_CREDITED,
    ORDER_CREATED,
    ORDER_ENDED,
    USER_WAKE,
    WAKE_ID,
    WEBHOOK_PING,
    Event,
    delivery_row,
    emit,
    emit_ping,
    event_json,
    events_after,
    latest_event_id,
    render,
    user_wake_id,
)
from openclore.market.accounts import create_user
from openclore.store.schema import events, orders, servers, webhook_deliveries, webhooks

from support import Market, ok, order_body, spot_body

WALL = 1_800_000_123.25


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids the outbox wakes (at its flush), in order."""
    woken: list[int] = []
    monkeypatch.setattr(outbox, "notify_server", lambda _conn, wake_id: woken.append(wake_id))
    # the outbox module's clock only (the process's stays as it is)
    monkeypatch.setattr(outbox, "time", SimpleNamespace(time=lambda: WALL))
    return woken


def _users(market: Market, *names: str) -> list[int]:
    with market.db.write() as conn:
        return [create_user(conn, name, market.now(), market.settings) for name in names]


def _hook(market: Market, user_id: int, types: list[str] | None, deleted: bool = False) -> int:
    with market.db.write() as conn:
        found = conn.execute(
            insert(webhooks)
            .values(
                user_id=user_id,
                url="https://hooks.example/x",
                secret="s",
                events=types,
                created_at=market.now(),
                deleted_at=market.now() if deleted else None,
            )
            .returning(webhooks.c.id)
        ).scalar_one()
    return int(found)


def _events(market: Market) -> list[tuple[int, int, str, int, str]]:
    with market.db.read() as conn:
        return [
            (r.id, r.user_id, r.type, r.created_at, r.data)
            for r in conn.execute(select(events).order_by(events.c.id))
        ]


def _deliveries(market: Market) -> list[dict[str, Any]]:
    with market.db.read() as conn:
        return [
            {k: r._mapping[k] for k in ("webhook_id", "event_id", "body", "state", "attempts")}
            | {"next": r.next_attempt_at, "created": r.created_at}
            for r in conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id))
        ]


def test_the_wake_ids() -> None:
    assert WAKE_ID == 0 and USER_WAKE == 2**40
    assert user_wake_id(0) == 2**40 and user_wake_id(7) == 2**40 + 7


def test_an_event_is_rendered_compactly_with_exact_amounts() -> None:
    assert render({}) == "{}"
    assert render({"a": 1, "b": "x", "c": [True, None]}) == '{"a":1,"b":"x","c":[true,null]}'
    assert render({"spend": Coins(1), "price": Coins(12_345_678_901)}) == (
        '{"spend":0.000000001,"price":12.345678901}'
    )
    assert render({"x": Decimal("0.10000000000000000001")}) == '{"x":0.10000000000000000001}'
    with pytest.raises(TypeError):
        render({"x": object()})
    assert event_json(5, "order.ended", 1700, '{"a":1}') == (
        '{"id":5,"type":"order.ended","time":1700,"data":{"a":1}}'
    )


def test_an_event_exists_only_with_its_transaction(market: Market, wakes: list[int]) -> None:
    (alice,) = _users(market, "alice")
    with pytest.raises(AssertionError), market.db.write() as conn:
        emit(conn, alice, "order.exploded", 1)
    with pytest.raises(RuntimeError), market.db.write() as conn:
        emit(conn, alice, ORDER_CREATED, 1700, order_id=1)
        raise RuntimeError("the use case failed")
    assert _events(market) == [] and wakes == []
    with market.db.write() as conn:
        emit(conn, alice, ORDER_CREATED, 1700, order_id=1, price=Coins(5))
        assert _events(market) == []  # written at commit
    assert _events(market) == [
        (1, alice, ORDER_CREATED, 1700, '{"order_id":1,"price":0.000000005}')
    ]
    assert wakes == [user_wake_id(alice)]  # no webhook: no deliverer woken


def test_each_event_goes_to_its_own_users_webhooks_by_their_filters(
    market: Market, wakes: list[int]
) -> None:
    alice, bob, carol = _users(market, "alice", "bob", "carol")
    every = _hook(market, alice, None)
    ended_only = _hook(market, alice, [ORDER_ENDED, DEPOSIT_CREDITED])
    _hook(market, alice, None, deleted=True)
    bobs = _hook(market, bob, None)
    _hook(market, carol, [ORDER_ENDED])
    with market.db.write() as conn:
        emit(conn, alice, ORDER_CREATED, 1700, order_id=1)
        emit(conn, bob, ORDER_CREATED, 1701, order_id=2)
        emit(conn, alice, ORDER_ENDED, 1702, order_id=1)
        emit_ping(conn, alice, ended_only, 1703)  # to that one webhook, whatever its filter
        emit_ping(conn, alice, bobs, 1704)  # another user's webhook: delivered to none
        emit(conn, carol, ORDER_CREATED, 1705, order_id=3)  # carol's hook does not want it
    assert [(e[0], e[1], e[2], e[3]) for e in _events(market)] == [
        (1, alice, ORDER_CREATED, 1700),
        (2, bob, ORDER_CREATED, 1701),
        (3, alice, ORDER_ENDED, 1702),
        (4, alice, WEBHOOK_PING, 1703),
        (5, alice, WEBHOOK_PING, 1704),
        (6, carol, ORDER_CREATED, 1705),
    ]
    data = {e[0]: e[4] for e in _events(market)}
    assert data[4] == f'{{"webhook_id":{ended_only}}}'

    def sent(hook: int, event_id: int, type_: str, at: int) -> dict[str, Any]:
        body = event_json(event_id, type_, at, data[event_id])
        return {
            "webhook_id": hook,
            "event_id": event_id,
            "body": body,
            "state": "pending",
            "attempts": 0,
            "next": WALL,
            "created": WALL,
        }

    assert _deliveries(market) == [
        sent(every, 1, ORDER_CREATED, 1700),
        sent(bobs, 2, ORDER_CREATED, 1701),
        sent(every, 3, ORDER_ENDED, 1702),
        sent(ended_only, 3, ORDER_ENDED, 1702),
        sent(ended_only, 4, WEBHOOK_PING, 1703),
    ]
    # the deliverers once, then each user's streams once, in user order
    assert wakes == [WAKE_ID, *sorted(user_wake_id(u) for u in (alice, bob, carol))]


def test_a_delivery_row() -> None:
    assert delivery_row(3, None, "{}", 12.5) == {
        "webhook_id": 3,
        "event_id": None,
        "body": "{}",
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": 12.5,
        "created_at": 12.5,
    }


def test_events_are_read_back_per_user_after_an_id(market: Market, wakes: list[int]) -> None:
    alice, bob = _users(market, "alice", "bob")
    with market.db.read() as conn:
        assert latest_event_id(conn, alice) == 0
    with market.db.write() as conn:
        for i, (user, type_) in enumerate(
            [
                (alice, ORDER_CREATED),
                (bob, ORDER_CREATED),
                (alice, ORDER_ENDED),
                (alice, DEPOSIT_CREDITED),
                (alice, ORDER_CREATED),
                (bob, ORDER_ENDED),
            ]
        ):
            emit(conn, user, type_, 1000 + i, n=i)
    with market.db.read() as conn:
        assert latest_event_id(conn, alice) == 5 and latest_event_id(conn, bob) == 6

        def ids(after: int, limit: int, types: list[str] | None = None) -> list[int]:
            return [e.id for e in events_after(conn, alice, after, limit, types)]

        assert ids(0, 100) == [1, 3, 4, 5]
        assert ids(1, 100) == [3, 4, 5] and ids(3, 100) == [4, 5] and ids(5, 100) == []
        assert ids(0, 2) == [1, 3] and ids(0, 1) == [1]
        assert ids(0, 100, [ORDER_CREATED]) == [1, 5]
        assert ids(0, 100, [ORDER_ENDED, DEPOSIT_CREDITED]) == [3, 4]
        assert ids(0, 100, []) == [1, 3, 4, 5]
        assert ids(1, 1, [ORDER_CREATED]) == [5]
        assert events_after(conn, alice, 3, 1) == [
            Event(4, DEPOSIT_CREDITED, 1003, event_json(4, DEPOSIT_CREDITED, 1003, '{"n":3}'))
        ]


def test_a_ping_and_events_of_one_transaction_are_written_in_one_flush(
    market: Market, wakes: list[int]
) -> None:
    (alice,) = _users(market, "alice")
    hook = _hook(market, alice, [ORDER_ENDED])
    with market.db.write() as conn:
        emit_ping(conn, alice, hook, 1700)
        emit(conn, alice, ORDER_ENDED, 1701, order_id=1)
    assert [(e[0], e[2], e[4]) for e in _events(market)] == [
        (1, WEBHOOK_PING, f'{{"webhook_id":{hook}}}'),
        (2, ORDER_ENDED, '{"order_id":1}'),
    ]
    assert [d["event_id"] for d in _deliveries(market)] == [1, 2]
    assert wakes == [WAKE_ID, user_wake_id(alice)]  # once each: one flush


class Undo(Exception):
    """Rolls the transaction back (the rows above are made up: nothing is flushed)."""


ROW = {
    "id": 12,
    "user_id": 3,
    "server_id": 4,
    "spot": 1,
    "currency": "bitcoin",
    "disk_gb": 50,
    "storage_rate": 2_500_000_000,
    "ended_at": 1750,
    "spend": 7_000_000_001,
    "storage_spend": 0,
}


def _emitted(conn: Any) -> list[tuple[int, str, int, dict[str, Any]]]:
    """What the transaction has emitted so far (before its flush)."""
    from openclore.store.db import pending

    return [
        (user, type_, at, json.loads(data))
        for user, type_, at, data, _only in pending(conn, outbox._KEY)
    ]


def test_a_stopped_order_says_why_and_what_its_disk_costs(market: Market) -> None:
    with pytest.raises(Undo), market.db.write() as conn:
        outbox.order_stopped(conn, ROW, "timer", 1700)
        outbox.order_stopped(conn, {**ROW, "spot": 0, "disk_gb": 0, "storage_rate": 0}, "user", 9)
        assert _emitted(conn) == [
            (
                3,
                "order.stopped",
                1700,
                {
                    "order_id": 12,
                    "server_id": 4,
                    "spot": True,
                    "currency": "bitcoin",
                    "reason": "timer",
                    "disk_gb": 50,
                    "storage_per_day": 2.5,
                },
            ),
            (
                3,
                "order.stopped",
                9,
                {
                    "order_id": 12,
                    "server_id": 4,
                    "spot": False,
                    "currency": "bitcoin",
                    "reason": "user",
                    "disk_gb": 0,
                    "storage_per_day": 0,
                },
            ),
        ]
        raise Undo


def test_an_ended_order_says_what_it_spent_and_its_storage_only_when_it_paid_some(
    market: Market,
) -> None:
    base = {"order_id": 12, "server_id": 4, "spot": True, "currency": "bitcoin"}
    with pytest.raises(Undo), market.db.write() as conn:
        outbox.order_ended(conn, ROW, "balance", 1700)
        outbox.order_ended(conn, {**ROW, "storage_spend": 1}, "expired", 1701)
        outbox.order_ended(conn, {k: v for k, v in ROW.items() if k != "storage_spend"}, "x", 2)
        assert _emitted(conn) == [
            (
                3,
                ORDER_ENDED,
                1700,
                {**base, "reason": "balance", "ended_at": 1750, "spend": 7.000000001},
            ),
            (
                3,
                ORDER_ENDED,
                1701,
                {
                    **base,
                    "reason": "expired",
                    "ended_at": 1750,
                    "spend": 7.000000001,
                    "storage_spend": 1e-9,
                },
            ),
            (3, ORDER_ENDED, 2, {**base, "reason": "x", "ended_at": 1750, "spend": 7.000000001}),
        ]
        raise Undo


def test_a_servers_live_orders_with_their_state(market: Market) -> None:
    host = market.user("host")
    first, second = market.server(host, "one"), market.server(host, "two")
    renter = market.user("renter", bitcoin="1")
    client = market.client(renter)
    ids = [
        ok(client.post("/v1/create_order", json=body))["order_id"]
        for body in (order_body(first), spot_body(first, "0.000002"), order_body(second))
    ]
    with market.db.write() as conn:
        conn.execute(orders.update().where(orders.c.id == ids[1]).values(stopped=True, gpus=[0, 2]))
    with market.db.read() as conn:
        states = outbox.order_states(conn, first)
        assert states == {ids[0]: (True, (0,), False), ids[1]: (False, (0, 2), True)}
        assert outbox.order_states(conn, second) == {ids[2]: (True, (0,), False)}
    with market.db.write() as conn:
        conn.execute(orders.update().where(orders.c.id == ids[0]).values(expired=True))
        conn.execute(orders.update().where(orders.c.id == ids[2]).values(gpus=None))
    with market.db.read() as conn:
        assert list(outbox.order_states(conn, first)) == [ids[1]]
        assert outbox.order_states(conn, 999) == {}
        assert outbox.order_states(conn, second) == {ids[2]: (True, (), False)}


def test_what_happened_to_a_servers_orders_is_told_each_renter(market: Market) -> None:
    host = market.user("host")
    sid = market.server(host, "rig", gpu_array=["RTX"] * 4, specs={"gpu": "4x RTX"})
    renters = [market.user(f"r{i}", bitcoin="1") for i in range(3)]
    uids = [market.user_id(t) for t in renters]
    bodies = [order_body(sid), spot_body(sid, "0.000002"), spot_body(sid, "0.000003")]
    a, b, c = (
        ok(market.client(t).post("/v1/create_order", json=body))["order_id"]
        for t, body in zip(renters, bodies, strict=True)
    )
    base = {"server_id": sid, "currency": "bitcoin"}

    def changes(
        before: dict[int, tuple[bool, tuple[int, ...], bool]],
        online: bool = True,
        **rows: dict[str, Any],
    ) -> list[tuple[int, str, int, dict[str, Any]]]:
        """record_order_changes after setting the rows (``a``, ``b``, ``c``) as given; the
        transaction is rolled back."""
        ids = {"a": a, "b": b, "c": c}
        found: list[Any] = []
        with pytest.raises(Undo), market.db.write() as conn:
            conn.execute(servers.update().where(servers.c.id == sid).values(online=online))
            for name, values in rows.items():
                conn.execute(orders.update().where(orders.c.id == ids[name]).values(**values))
            outbox.record_order_changes(conn, sid, before, 1700)
            found = _emitted(conn)
            raise Undo
        return found

    stop = {"running": False, "gpus": []}
    assert changes({}) == []
    # in order id order, whatever the order of `before`
    ended = {"expired": True, "running": False, "end_reason": "cancelled", "ended_at": 1690}
    assert [
        (e[0], e[1], e[3]["reason"])
        for e in changes(
            {c: (False, (), False), a: (True, (0,), False)},
            a=ended,
            c={**ended, "end_reason": "balance"},
        )
    ] == [(uids[0], ORDER_ENDED, "cancelled"), (uids[2], ORDER_ENDED, "balance")]
    # started running: a per-GPU order says on which GPUs, a whole-server one does not
    assert changes(
        {b: (False, (), False), c: (False, (), False)},
        a=stop,
        b={"running": True, "gpu_count": 2, "gpus": [1, 3]},
        c={"running": True, "gpus": [0, 1, 2, 3]},
    ) == [
        (uids[1], "order.running", 1700, {"order_id": b, **base, "spot": True, "gpus": [1, 3]}),
        (uids[2], "order.running", 1700, {"order_id": c, **base, "spot": True}),
    ]
    # a running order that still runs, or one not running before nor now: nothing
    assert changes({a: (True, (0,), False), b: (False, (), False)}) == []
    # stopped by its renter or its timer: order.stopped; stopped by a preemption: outbid
    stopped = {**stop, "stopped": True, "stop_reason": "user", "disk_gb": 10}
    (event,) = changes({a: (True, (0, 1, 2, 3), False)}, a=stopped)
    assert event == (
        uids[0],
        "order.stopped",
        1700,
        {
            "order_id": a,
            **base,
            "spot": False,
            "reason": "user",
            "disk_gb": 10,
            "storage_per_day": 0,
        },
    )
    assert changes({a: (True, (0,), True)}, a=stopped)[0][1] == "order.paused"  # was stopped
    # the server went offline: paused
    assert changes({a: (True, (0,), False)}, online=False, a=stop) == [
        (
            uids[0],
            "order.paused",
            1700,
            {"order_id": a, **base, "spot": False, "reason": "server_offline"},
        )
    ]
    # every order that stopped running with its server is told
    paused = changes({a: (True, (0,), False), b: (True, (1,), False)}, online=False, a=stop, b=stop)
    assert [(e[0], e[1]) for e in paused] == [(uids[0], "order.paused"), (uids[1], "order.paused")]
    # offline, even with another order running: paused
    assert (
        changes(
            {b: (True, (0,), False), c: (True, (0, 1, 2, 3), False)},
            online=False,
            b=stop,
            c={"running": True, "gpus": [0, 1, 2, 3]},
        )[0][1]
        == "order.paused"
    )
    # the whole server taken by an on-demand order: preempted; by a higher bid: outbid (the
    # takers are among the server's live orders, all of them in `before`)
    taken = {"running": True, "gpus": [0, 1, 2, 3]}
    held = (True, (0, 1, 2, 3), False)  # a taker that already ran: nothing to say of it
    assert changes(
        {a: held, b: (True, (0, 1, 2, 3), False)}, a={**taken, "spot": False}, b=stop
    ) == [
        (
            uids[1],
            "order.outbid",
            1700,
            {"order_id": b, **base, "spot": True, "reason": "preempted"},
        )
    ]
    assert changes({b: (True, (0,), False), c: held}, a=stop, b=stop, c=taken) == [
        (uids[1], "order.outbid", 1700, {"order_id": b, **base, "spot": True, "reason": "outbid"})
    ]
    # a taker must be running: an ended one took nothing
    assert (
        changes({b: (True, (0,), False), c: held}, a=stop, b=stop, c={**taken, "expired": True})[0][
            1
        ]
        == "order.paused"
    )
    # a preempted order that keeps its disk says so
    preempted = {**stop, "stopped": True, "stop_reason": "preempted"}
    (event,) = changes({a: held, b: (True, (0,), False)}, a=taken, b=preempted)
    assert event[3] == {"order_id": b, **base, "spot": True, "reason": "preempted", "stopped": True}
    # per GPU: only the orders on the GPUs it lost took them; with none, it was outbid
    per_gpu = {**stop, "gpu_count": 2}
    assert changes(
        {a: (True, (0, 3), False), b: (True, (1, 2), False), c: (True, (2,), False)},
        a={"running": True, "gpu_count": 2, "gpus": [0, 3], "spot": False},
        b=per_gpu,
        c={"running": True, "gpu_count": 1, "gpus": [2]},
    ) == [
        (
            uids[1],
            "order.outbid",
            1700,
            {"order_id": b, **base, "spot": True, "reason": "outbid", "gpus_lost": [1, 2]},
        )
    ]
    assert (
        changes(
            {a: (True, (1, 3), False), b: (True, (1, 2), False)},
            a={"running": True, "gpu_count": 2, "gpus": [1, 3], "spot": False},
            b=per_gpu,
            c=stop,
        )[0][3]["reason"]
        == "preempted"
    )
    assert changes({b: (True, (1, 2), False)}, a=stop, b=per_gpu, c=stop)[0][3] == {
        "order_id": b,
        **base,
        "spot": True,
        "reason": "outbid",
        "gpus_lost": [1, 2],
    }
    # a whole-server order whose server nobody took (nothing running): paused
    assert changes({b: (True, (0, 1), False)}, a=stop, b=stop, c=stop)[0][1] == "order.paused"
    # an order that held no GPUs counts every running order as a taker
    assert (
        changes({a: held, b: (True, (), False)}, a={**taken, "spot": False}, b=stop)[0][3]["reason"]
        == "preempted"
    )
    # a running order that held no GPUs takes any lost ones
    assert (
        changes(
            {a: (True, (), False), b: (True, (1,), False)},
            a={"running": True, "gpus": [], "spot": False},
            b=per_gpu,
        )[0][3]["reason"]
        == "preempted"
    )


def test_a_created_order_says_what_it_is_and_its_price(market: Market) -> None:
    host = market.user("host")
    sid = market.server(host, "rig")
    renter = market.user("renter", bitcoin="1")
    oid = ok(market.client(renter).post("/v1/create_order", json=spot_body(sid, "0.000002")))[
        "order_id"
    ]
    with pytest.raises(Undo), market.db.write() as conn:
        outbox.order_created(conn, oid, 1700)
        assert _emitted(conn) == [
            (
                market.user_id(renter),
                ORDER_CREATED,
                1700,
                {
                    "order_id": oid,
                    "server_id": sid,
                    "spot": True,
                    "currency": "bitcoin",
                    "price": 0.000002,
                },
            )
        ]
        raise Undo
