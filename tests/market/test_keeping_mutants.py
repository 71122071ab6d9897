"""Keeping work (market/keeping.py) pinned where the flow tests (test_keeping.py) do not look:
each use case's refusal by name and with its figures, its audit entry and event as written, the
agent woken after each change, which agents can keep a container, which other orders stand in
the way of a start, and the arithmetic of an extension at the hour boundaries.

Written to kill mutants of `scripts/mutation keeping`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.domain.errors import MarketError
from openclore.domain.money import spend_for
from openclore.engine.notify import subscribe
from openclore.ledger.ledger import balance, wallet_id
from openclore.market.keeping import (
    MAX_EXTEND_HOURS,
    extend_order,
    keeps_work,
    reset_order,
    restart_order,
    start_order,
    stop_order,
)
from openclore.market.wallets import deposit
from openclore.store.schema import orders, servers
from test_api_keys import make_key
from test_keeping import order_of, storage_server

from support import Market, audit_entries, error, ok, order_body, spot_body, stored_events

pytestmark = pytest.mark.origin("mutant")


def rent(market: Market, sid: int, body: dict[str, Any] | None = None) -> tuple[int, int]:
    """A renter with money and their order on ``sid``: (user id, order id)."""
    token = market.user(bitcoin="1")
    made = ok(market.client(token).post("/v1/create_order", json=body or order_body(sid)))
    return market.user_id(token), int(made["order_id"])


def run(market: Market, work: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """A use case as the market's own (no user acting), in a transaction of its own."""
    with market.db.write() as conn:
        return work(conn, *args, **kw)


def refused(market: Market, work: Callable[..., Any], *args: Any, **kw: Any) -> MarketError:
    with pytest.raises(MarketError) as caught:
        run(market, work, *args, **kw)
    return caught.value


@contextmanager
def woken(market: Market, sid: int) -> Iterator[threading.Event]:
    """Set when a commit tells the server's agent to look again."""
    told = threading.Event()
    sub = subscribe(market.db.engine, sid, told.set)
    try:
        yield told
    finally:
        sub.close()


def test_each_change_is_audited_and_told_about_whom_it_concerns(market: Market) -> None:
    sid = storage_server(market, market.user(), mrl=10)
    uid, oid = rent(market, sid)
    with woken(market, sid) as told:
        assert run(market, restart_order, uid, oid, market.now()) == 1
        assert told.wait(5)
    with woken(market, sid) as told:
        assert run(market, reset_order, uid, oid, market.now()) == 1
        assert told.wait(5)
    market.clock.advance(3600)  # an hour in: one more fits the server's 10
    assert run(market, extend_order, uid, oid, 1, market.now()) == 11 * 3600
    with woken(market, sid) as told:
        run(market, stop_order, uid, oid, market.now())
        assert told.wait(5)
    with woken(market, sid) as told:
        run(market, start_order, uid, oid, market.settings, market.now())
        assert told.wait(5)
    target = f"order:{oid}"
    for action, detail in (
        ("order.restart", {"n": 1}),
        ("order.reset", {"generation": 1}),
        ("order.extend", {"hours": 1}),
        ("order.stop", {}),
        ("order.start", {}),
    ):
        (found,) = audit_entries(market, action)
        assert (found["user_id"], found["target"], found["detail"]) == (uid, target, detail)
    told = {"user_id": uid, "order_id": oid, "server_id": sid}
    assert stored_events(market, "order.restarted") == [told]
    assert stored_events(market, "order.reset") == [told]
    assert stored_events(market, "order.extended") == [{**told, "mrl": 11 * 3600}]


def test_which_agents_keep_a_container() -> None:
    assert keeps_work({"simulated": True, "agent_protocol": None})
    assert keeps_work({"simulated": False, "agent_protocol": 3})
    assert keeps_work({"simulated": False, "agent_protocol": 4})
    assert not keeps_work({"simulated": False, "agent_protocol": 2})
    assert not keeps_work({"simulated": False, "agent_protocol": None})


def test_refusals_by_name(market: Market) -> None:
    sid = storage_server(market, market.user())
    uid, oid = rent(market, sid)
    now = market.now()
    assert refused(market, start_order, uid, oid, market.settings, now).name == "order_not_stopped"
    run(market, stop_order, uid, oid, now)
    assert refused(market, stop_order, uid, oid, now).name == "order_already_stopped"
    assert refused(market, restart_order, uid, oid, now).name == "order_not_running"
    poor = market.settings.model_copy(update={"runway_seconds": 10**9})
    assert refused(market, start_order, uid, oid, poor, now).name == "not_enough_balance"
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=False))
    assert refused(market, start_order, uid, oid, market.settings, now).name == "server-offline"
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=True))
    run(market, start_order, uid, oid, market.settings, now)
    with market.db.write() as conn:  # an agent that cannot keep a container
        conn.execute(
            update(servers).where(servers.c.id == sid).values(simulated=False, agent_protocol=2)
        )
    assert refused(market, restart_order, uid, oid, now).name == "stop_not_supported"
    assert refused(market, reset_order, uid, oid, now).name == "stop_not_supported"
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(simulated=True))
    with market.db.write() as conn:
        conn.execute(update(orders).where(orders.c.id == oid).values(expired=True))
    assert refused(market, restart_order, uid, oid, now).name == "order_not_active"


def test_an_agent_of_protocol_3_keeps_a_stopped_order(market: Market) -> None:
    sid = storage_server(market, market.user())
    uid, oid = rent(market, sid)
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == sid)
            .values(simulated=False, agent_protocol=3, last_seen=market.now())
        )
    run(market, stop_order, uid, oid, market.now())
    run(market, start_order, uid, oid, market.settings, market.now())


def test_a_waiting_bid_has_nothing_to_stop_an_offline_rental_does(market: Market) -> None:
    sid = storage_server(market, market.user())
    _, rich = rent(market, sid, spot_body(sid, "0.00005"))
    uid, waiting = rent(market, sid, spot_body(sid, "0.00002"))
    assert refused(market, stop_order, uid, waiting, market.now()).name == "order_not_running"
    other = storage_server(market, market.user())
    owner, on_demand = rent(market, other)
    with market.db.write() as conn:  # its server went offline: not running, still stoppable
        conn.execute(update(servers).where(servers.c.id == other).values(online=False))
    run(market, stop_order, owner, on_demand, market.now())
    assert rich != waiting


def test_a_stopped_spot_order_starts_again_as_a_running_bid(market: Market) -> None:
    sid = storage_server(market, market.user())
    token = market.user(bitcoin="1")
    alice = market.client(token)
    oid = ok(alice.post("/v1/create_order", json=spot_body(sid, "0.00002")))["order_id"]
    uid = market.user_id(token)
    run(market, stop_order, uid, oid, market.now())
    market.clock.advance(60)
    run(market, start_order, uid, oid, market.settings, market.now())
    started = order_of(alice, oid)
    assert started["state"] == "running" and "stop_reason" not in started
    with market.db.read() as conn:
        row = conn.execute(select(orders).where(orders.c.id == oid)).one()
    assert (row.stopped, row.stop_reason, row.stored_at, row.running) == (False, None, None, True)


def test_a_stopped_spot_order_outbid_is_refused_with_its_gpus(market: Market) -> None:
    sid = storage_server(market, market.user())
    uid, oid = rent(market, sid, spot_body(sid, "0.00002"))
    run(market, stop_order, uid, oid, market.now())
    rent(market, sid)  # an on-demand renter takes the server
    no = refused(market, start_order, uid, oid, market.settings, market.now())
    assert (no.name, no.extra) == ("gpus_not_free", {"gpu_count": 1})


def test_a_whole_server_start_waits_only_for_live_on_demand_orders(market: Market) -> None:
    quad = storage_server(market, market.user(), gpus=4)
    uid, oid = rent(market, quad)
    run(market, stop_order, uid, oid, market.now())
    _, other = rent(market, quad)  # an on-demand order rents it while it is stopped
    no = refused(market, start_order, uid, oid, market.settings, market.now())
    assert (no.name, no.extra) == ("gpus_not_free", {"gpu_count": 4})
    with market.db.read() as conn:
        owner = conn.execute(select(orders.c.user_id).where(orders.c.id == other)).scalar_one()
    run(market, stop_order, owner, other, market.now())  # a stopped one stands in no one's way
    _, bid = rent(market, quad, spot_body(quad, "0.0004"))  # nor does a spot bid
    run(market, start_order, uid, oid, market.settings, market.now())
    with market.db.read() as conn:
        state = dict(conn.execute(select(orders.c.id, orders.c.running)).all())
    assert state[oid] is True and state[bid] is False


def test_a_per_gpu_order_starts_beside_another_renters_gpus(market: Market) -> None:
    quad = storage_server(market, market.user(), gpus=4, partial_gpu_rental=True)
    uid, oid = rent(market, quad, order_body(quad, gpu_count=1))
    run(market, stop_order, uid, oid, market.now())
    rent(market, quad, order_body(quad, gpu_count=2))
    run(market, start_order, uid, oid, market.settings, market.now())


def test_a_start_is_within_the_keys_spend_limit(market: Market) -> None:
    sid = storage_server(market, market.user())
    token = market.user(bitcoin="1")
    owner = market.client(token)
    oid = ok(owner.post("/v1/create_order", json=order_body(sid)))["order_id"]
    ok(owner.post("/v1/stop_order", json={"id": oid}))
    _, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.00001"})
    bot = market.client(secret)
    assert error(bot.post("/v1/start_order", json={"id": oid})) == "spend_limit_exceeded"
    ok(owner.post("/v1/start_order", json={"id": oid}))


def test_extend_out_of_range_says_how_many_hours_fit(market: Market) -> None:
    sid = storage_server(market, market.user(), mrl=10)
    uid, oid = rent(market, sid)
    start = market.now()

    def most(after: int, hours: int) -> Any:
        no = refused(market, extend_order, uid, oid, hours, start + after)
        assert no.name == "extend_out_of_range"
        return no.extra["max_hours"]

    # outside 1..MAX_EXTEND_HOURS: the server's own maximum
    assert most(0, 0) == 10
    assert most(0, MAX_EXTEND_HOURS + 1) == 10
    assert most(3600, MAX_EXTEND_HOURS) == 1  # in range: what fits after an hour
    # three hours in: 7 h left, 3 fit (an int, never 3.0)
    fits = most(10800, 5)
    assert fits == 3 and isinstance(fits, int)
    assert most(10795, 5) == 2  # five seconds short of it: 2 whole hours fit
    # 3595 s in, an hour more would be 5 s past the server's maximum
    assert most(3595, 1) == 0
    assert run(market, extend_order, uid, oid, 1, start + 3600) == 11 * 3600


def test_a_whole_server_spot_start_refused_names_all_its_gpus(market: Market) -> None:
    quad = storage_server(market, market.user(), gpus=4)
    uid, oid = rent(market, quad, spot_body(quad, "0.0002"))
    run(market, stop_order, uid, oid, market.now())
    rent(market, quad)
    no = refused(market, start_order, uid, oid, market.settings, market.now())
    assert (no.name, no.extra) == ("gpus_not_free", {"gpu_count": 4})


def test_a_start_needs_the_runway_to_the_unit(market: Market) -> None:
    sid = storage_server(market, market.user())  # 0.0001 a day: 100,000 units
    uid, oid = rent(market, sid)
    run(market, stop_order, uid, oid, market.now())
    price = 100_000
    while True:  # a balance an exact runway of whole seconds can equal
        with market.db.read() as conn:
            held = balance(conn, wallet_id(conn, uid, "bitcoin"))
        seconds = -(-held * 86400 // price)
        if spend_for(price, seconds) == held:
            break
        with market.db.write() as conn:
            deposit(conn, uid, "bitcoin", 1, market.settings, market.now())
    exact = market.settings.model_copy(update={"runway_seconds": seconds})
    more = market.settings.model_copy(update={"runway_seconds": seconds + 1})
    assert refused(market, start_order, uid, oid, more, market.now()).name == "not_enough_balance"
    run(market, start_order, uid, oid, exact, market.now())


def test_a_start_with_a_key_that_spent_its_day_is_refused(market: Market) -> None:
    sid = storage_server(market, market.user())  # 0.0001 a day
    owner = market.client(market.user(bitcoin="1"))
    _, secret = make_key(owner, scopes=["read", "rent"], spend_limit={"bitcoin": "0.0001"})
    bot = market.client(secret)
    oid = ok(bot.post("/v1/create_order", json=order_body(sid)))["order_id"]
    market.advance(86400)  # a day's rent reaches the key's limit: the order stops at it
    assert order_of(owner, oid)["state"] == "stopped"
    refusal = bot.post("/v1/start_order", json={"id": oid}).json()
    assert refusal["error"] == "spend_limit_reached" and refusal["currency"] == "bitcoin"
