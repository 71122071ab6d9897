"""Rate limits decided in memory while one process decides them alone (store/ratelimit.py's
RateBudget), in the table as soon as another process decides them too: the same decisions as
the table's GCRA, never a burst of two across processes at any moment of the hand-over, and a
process that died alone waited out. Each "process" is a Database object of its own on the
test's database (its own engine, membership and memory); the HTTP tests run real replicas."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from openclore.api import pipeline
from openclore.engine.clock import ManualClock
from openclore.store import freshness, ratelimit
from openclore.store.db import Database
from openclore.store.ratelimit import RateBudget, RateSlots
from test_freshness import statements

from agent_support import wait_for
from support import Market, ok

LEASE, RENEW = 0.8, 0.2
SLACK = 5.0  # a loaded machine's delay on top of a renewal


def budget(db: Database, **options: float | bool) -> RateBudget:
    return RateBudget(db.engine, lease=LEASE, renew=RENEW, **options)  # type: ignore[arg-type]


@contextmanager
def process(market: Market, **options: float | bool) -> Iterator[RateBudget]:
    """Another process on the test's database: its own engine and membership."""
    db = Database(market.db.url, pool_size=3)
    b = budget(db, **options)
    try:
        yield b
    finally:
        b.close()
        db.dispose()


def rows(db: Database) -> dict[str, float]:
    with db.read() as conn:
        return {k: float(t) for k, t in conn.execute(text("SELECT key, tat FROM rate_limits"))}


def members(db: Database) -> dict[str, float | None]:
    with db.read() as conn:
        found = conn.execute(text("SELECT member, solo_until FROM rate_limit_members"))
        return {m: None if s is None else float(s) for m, s in found}


def test_a_lone_process_decides_in_memory_exactly_as_the_table(market: Market) -> None:
    b = budget(market.db)
    table = RateSlots(market.db.engine)
    rng = random.Random(7)
    now = 1000.0
    try:
        for step in range(400):
            now += rng.choice((0.0, 0.0625, 0.5, 0.875, 0.9375, 1.0, 1.5, 3.0))
            key = rng.choice("abc")
            interval = rng.choice((1.0, 0.5))
            prune = step % 7 == 0
            here = b.take(key, interval, now, 0.1, prune=prune)
            assert here == table.take(f"t:{key}", interval, now, 0.1, prune=prune), step
            if step % 11 == 0 and here[0]:
                b.refund(key, interval)
                table.refund(f"t:{key}", interval)
            if step % 37 == 0:
                b.forget(key)
                table.forget(f"t:{key}")
        assert b.alone
        assert all(k.startswith("t:") for k in rows(market.db))  # nothing written for memory
        (solo,) = members(market.db).values()
        assert solo is not None
    finally:
        b.close()
    assert members(market.db) == {}  # it left


def test_longer_limits_are_always_decided_in_the_table(market: Market) -> None:
    b = budget(market.db)
    try:
        assert b.take("short", 1.0, 1000.0, 0.1, prune=False) == (True, 1001.0)
        assert b.alone
        assert b.take("k:create_order", 5.0, 1000.0, 0.1, prune=False) == (True, 1005.0)
        assert b.take_here("k:create_order", 5.0, 1000.0, 0.1, prune=False) is None
        assert rows(market.db) == {"k:create_order": 1005.0}
        b.refund("k:create_order", 5.0)  # not in memory: moved back in the table
        assert rows(market.db) == {"k:create_order": 1000.0}
    finally:
        b.close()
    assert rows(market.db) == {"k:create_order": 1000.0, "short": 1001.0}  # written back


def test_a_newcomer_waits_for_the_lone_process_to_write_its_memory_back(market: Market) -> None:
    first = budget(market.db)
    try:
        t = 5000.0
        assert first.take("k", 1.0, t, 0.1, prune=False)[0]
        assert first.take("k", 1.0, t + 0.5, 0.1, prune=False) == (False, t + 1)
        assert first.alone and rows(market.db) == {}
        with process(market) as second:
            began = time.monotonic()
            # half a second after the first's slot: refused, since the first's memory is seen
            assert second.take("k", 1.0, t + 0.5, 0.1, prune=False) == (False, t + 1)
            assert time.monotonic() - began < RENEW + SLACK
            assert not first.alone and not second.alone
            assert rows(market.db) == {"k": t + 1}
            assert all(solo is None for solo in members(market.db).values())
            # from now on both decide in the table, one key's slots shared
            assert first.take("k", 1.0, t + 0.95, 0.1, prune=False) == (True, t + 2)
            assert second.take("k", 1.0, t + 1.5, 0.1, prune=False) == (False, t + 2)
            assert first.take_here("k", 1.0, t + 3, 0.1, prune=False) is None
        # the second left: the first decides alone again, from the table's rows
        wait_for(lambda: first.alone, SLACK, what="the first did not decide alone again")
        assert first.take("k", 1.0, t + 1.5, 0.1, prune=False) == (False, t + 2)
        assert first.take("k", 1.0, t + 1.95, 0.1, prune=False) == (True, t + 3)
    finally:
        first.close()


def test_a_process_that_died_alone_is_waited_out(market: Market) -> None:
    dead_db = Database(market.db.url, pool_size=2)
    dead = budget(dead_db)
    t = time.time()
    assert dead.take("k", 1.0, t, 0.1, prune=False)[0]
    assert dead.alone
    (solo_until,) = members(market.db).values()
    dead._closed.set()  # its renewals stop and it never leaves: killed with its memory
    dead_db.engine.dispose()
    with process(market) as second:
        assert second.take("k", 1.0, time.time(), 0.1, prune=False)[0]
        with second._engine.connect() as conn:  # it decided at the database's time
            now = float(conn.execute(text(f"SELECT {ratelimit._NOW[conn.dialect.name]}")).scalar())
        # not before the dead one's lease and horizon: its slot (t + 1) had passed
        assert solo_until is not None and now >= solo_until >= t + LEASE
        # its row goes at the next renewal, and the second decides alone
        wait_for(
            lambda: dead.member not in members(market.db), SLACK, what="the dead one's row stayed"
        )
        wait_for(lambda: second.alone, SLACK, what="the second did not decide alone")


def test_no_burst_of_two_across_processes_through_every_hand_over(market: Market) -> None:
    """Threads of four processes take one key's slots on the real clock while processes come
    and go (alone, joined, left, alone again): the slots given are at least the interval minus
    the tolerance apart in every case."""
    interval, tolerance = 0.25, 0.05
    given: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(b: RateBudget) -> None:
        while not stop.is_set():
            now = time.time()
            if b.take("k", interval, now, tolerance, prune=False)[0]:
                with lock:
                    given.append(now)
            time.sleep(random.uniform(0, 0.02))

    first = budget(market.db)
    threads = [threading.Thread(target=hammer, args=(first,)) for _ in range(2)]
    try:
        for th in threads:
            th.start()
        time.sleep(0.6)
        assert first.alone
        with process(market) as second, process(market) as third:
            joined = [threading.Thread(target=hammer, args=(b,)) for b in (second, third)]
            for th in joined:
                th.start()
            time.sleep(1.0)
            assert not first.alone
            stop.set()
            for th in joined:
                th.join()
            stop.clear()
        wait_for(lambda: first.alone, SLACK, what="the first did not decide alone again")
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join()
        first.close()
    given.sort()
    gaps = [b - a for a, b in itertools.pairwise(given)]
    assert len(given) >= 4 and min(gaps) >= interval - tolerance - 1e-6, gaps


def test_a_process_not_deciding_in_memory_keeps_the_others_from_it(market: Market) -> None:
    with process(market, local=False) as table_only:
        assert table_only.take("a", 1.0, 1000.0, 0.1, prune=False)[0]
        assert not table_only.alone
        b = budget(market.db)
        try:
            assert b.take("b", 1.0, 1000.0, 0.1, prune=False)[0]
            assert not b.alone  # another member: decided in the table
            assert set(rows(market.db)) == {"a", "b"}
        finally:
            b.close()


def test_a_renewal_that_fails_stops_the_memory_at_its_lease(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without renewals the process stops deciding in memory when its lease ends, and a
    decision then waits for one (and gives up after WAIT rather than guess)."""
    b = budget(market.db)
    try:
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False)[0]
        b._closed.set()  # no renewals any more
        wait_for(lambda: not b.alone, SLACK, what="the memory outlived its lease")
        assert b.take_here("k", 1.0, 1002.0, 0.1, prune=False) is None
        monkeypatch.setattr(ratelimit, "WAIT", 0.3)
        with pytest.raises(ratelimit.Unsettled, match="no renewal of this process's membership"):
            b.take("k", 1.0, 1002.0, 0.1, prune=False)
    finally:
        b._closed.clear()
        b.close()


# ----------------------------------------------------------------------------- over HTTP


def test_the_listing_at_default_limits_is_answered_from_memory(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default limits on (one process: the usual deployment) a cached listing request
    neither reads nor writes the database nor leaves the event loop, yet the second call in a
    second is refused."""
    hops: list[object] = []
    hop = pipeline.run_in_threadpool

    async def counted(func: Any, *args: Any) -> Any:
        hops.append(func)
        return await hop(func, *args)

    monkeypatch.setattr(pipeline, "run_in_threadpool", counted)
    monkeypatch.setattr(freshness, "RECHECK_SECONDS", 3600.0)  # no versions' re-read meanwhile
    wall = ManualClock(7000.0)
    market.reconfigure(rate_limit_interval=1.0, create_order_interval=5.0, rate_clock=wall)
    # no renewal meanwhile: on SQLite its write (any write) makes the next request re-read the
    # market's versions in a worker thread
    budget = market.db.rate_budget()
    budget.lease = budget.renew_every = 3600.0
    host = market.user(name="host")
    sid = market.server(host)
    anonymous, owner = market.client(), market.client(host)
    for client in (anonymous, owner):  # the first requests fill the caches and start the budget
        ok(client.get("/v1/marketplace"))
        wall.advance(1.0)
    if market.backend == "postgresql":  # trusted once the notifications are listened to
        wait_for(lambda: market.db.freshness.listening, SLACK, what="not listening")
    ok(anonymous.get("/v1/marketplace"))
    ok(owner.get("/v1/marketplace"))
    wall.advance(1.0)
    hops.clear()
    with statements(market.db) as seen:
        for _ in range(3):
            first = anonymous.get("/v1/marketplace")
            assert [s["id"] for s in ok(first)["servers"]] == [sid]
            assert first.headers["RateLimit-Limit"] == "1"
            assert ok(owner.get("/v1/marketplace"))["my_servers"] == [sid]
            refused = owner.get("/v1/marketplace")
            assert refused.status_code == 429 and refused.json() == {"code": 5}
            assert refused.headers["Retry-After"] == "1"
            wall.advance(0.5)
            assert anonymous.get("/v1/marketplace").status_code == 429
            wall.advance(0.5)
    assert seen == [] and hops == []
    assert budget.alone
    assert rows(market.db) == {}


# ----------------------------------------------------------------------------- its parts


def db_now(db: Database) -> float:
    with db.read() as conn:
        return float(conn.execute(text(f"SELECT {ratelimit._NOW[conn.dialect.name]}")).scalar_one())


def test_a_members_row_says_until_when_it_is_seen_and_decides_alone(market: Market) -> None:
    b = budget(market.db, horizon=1.25)
    try:
        assert b.take_here("k", 1.0, 1000.0, 0.1, prune=False) is None  # not started yet
        before = db_now(market.db)
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False) == (True, 1001.0)
        after = db_now(market.db)
        with market.db.read() as conn:
            (member, seen, solo), *others = conn.execute(
                text("SELECT member, seen_until, solo_until FROM rate_limit_members")
            ).all()
        assert others == [] and member == b.member
        assert before + LEASE <= seen <= after + LEASE
        assert seen + 1.25 == pytest.approx(solo, abs=1e-6)
        assert b.take_here("k", 1.0, 1000.95, 0.1, prune=False) == (True, 1002.0)
        assert b.take_here("k", 1.0, 1001.0, 0.1, prune=False) == (False, 1002.0)
        # a limit longer than the horizon is not decided here
        assert b.take_here("k2", 1.0, 1000.0, 0.3, prune=False) is None
        assert b.take_here("k2", 1.0, 1000.0, 0.25, prune=False) == (True, 1001.0)
    finally:
        b.close()


def test_forgetting_and_refunding_reach_wherever_the_slot_is(market: Market) -> None:
    b = budget(market.db)
    try:
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False)[0]
        RateSlots(market.db.engine).take("k", 5.0, 1000.0, 0.1, prune=False)  # a stale row too
        b.forget("k")  # alone: in memory and in the table
        assert rows(market.db) == {}
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False) == (True, 1001.0)
        b.refund("k", 1.0)
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False) == (True, 1001.0)
        with process(market) as other:  # decided in the table from now on
            assert other.take("k", 1.0, 1000.5, 0.1, prune=False) == (False, 1001.0)
            other.refund("k", 1.0)
            assert rows(market.db) == {"k": 1000.0}
            b.forget("k")
            assert rows(market.db) == {}
    finally:
        b.close()


def test_a_failed_renewal_is_logged_and_the_next_one_goes_on(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    b = budget(market.db)
    renew = RateBudget._renew
    failures = [1]

    def failing(self: RateBudget) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("database away")
        renew(self)

    try:
        assert b.take("k", 1.0, 1000.0, 0.1, prune=False)[0]
        with caplog.at_level("WARNING", logger="openclore.ratelimit"):
            monkeypatch.setattr(RateBudget, "_renew", failing)
            wait_for(lambda: not failures, SLACK, what="no renewal was tried")
            wait_for(lambda: b.alone, SLACK, what="the next renewal did not go on")
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0] == "rate limits: renewal failed; retrying"
        assert caplog.records[0].exc_info is not None
    finally:
        b.close()


def test_leaving_without_the_database_is_logged(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(market.db.url, pool_size=2)
    b = budget(db)
    assert b.take("k", 1.0, 1000.0, 0.1, prune=False)[0]

    def refuse(*_: Any, **__: Any) -> Any:
        raise RuntimeError("database away")

    b._begin = refuse  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="openclore.ratelimit"):
        b.close()
    assert [r.getMessage() for r in caplog.records] == [
        "rate limits: could not leave the members cleanly"
    ]
    assert not b.alone
    b.close()  # once is enough
    db.dispose()


def test_a_decision_gives_up_when_another_process_keeps_deciding_alone(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    with market.db.write() as conn:  # a lone process whose lease reaches far ahead
        conn.execute(
            text("INSERT INTO rate_limit_members VALUES ('other', :until, :until)"),
            {"until": db_now(market.db) + 3600},
        )
    b = budget(market.db)
    monkeypatch.setattr(ratelimit, "WAIT", 0.3)
    try:
        with pytest.raises(ratelimit.Unsettled, match="another process keeps deciding alone"):
            b.take("k", 1.0, 1000.0, 0.1, prune=False)
        assert not b.alone
    finally:
        b.close()
