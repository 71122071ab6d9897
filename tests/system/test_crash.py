"""A real server process killed with SIGKILL in the middle of billing loses and duplicates nothing.

The market holds a few thousand running orders; a sandbox server process is asked to advance the
clock (which runs a tick over all of them) and is killed -9 at a random moment, again and again.
Afterwards the ledger must still balance to the unit, every order's spend must equal the
transfers booked for it and the seconds it was billed for, and one more tick must bring every
order to exactly price × elapsed / 86400.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import func, insert, select, update

from openclore.engine.clock import CLOCK_OFFSET_KEY
from openclore.engine.ticker import tick
from openclore.ledger.ledger import account_key
from openclore.store.db import get_meta
from openclore.store.schema import accounts, orders, server_prices, servers, users

from support import Market, booked_by_order, free_port

ORDERS = 3000
RENTERS = 30
KILLS = 6


def populate(market: Market) -> str:
    """Bulk-load running on-demand orders (created now, in real time, as the server process
    sees it); returns a token for the sandbox endpoints."""
    token = market.user()
    start = int(time.time())
    with market.db.write() as conn:
        first = int(conn.execute(select(func.max(users.c.id))).scalar_one()) + 1
        ids = list(range(first, first + RENTERS + 1))
        conn.execute(insert(users), [{"id": i, "name": f"bulk{i}", "created_at": 0} for i in ids])
        conn.execute(
            insert(accounts),
            [
                {
                    "key": account_key("wallet", "bitcoin", i),
                    "kind": "wallet",
                    "user_id": i,
                    "currency": "bitcoin",
                    "balance": 10**12,
                }
                for i in ids
            ],
        )
        conn.execute(
            update(accounts)
            .where(accounts.c.key == "external:bitcoin")
            .values(balance=accounts.c.balance - 10**12 * len(ids))
        )
        host = ids[-1]
        conn.execute(
            insert(servers),
            [
                {
                    "id": 1000 + i,
                    "owner_id": host,
                    "name": f"s{i}",
                    "init_token": f"{i:048d}",
                    "connected": True,
                    "online": True,
                    "simulated": True,
                    "visibility": "public",
                    "mrl_hours": 720,
                    "reliability": 1.0,
                    "rating_avg": 0.0,
                    "rating_cnt": 0,
                    "bg_command": "",
                    "bg_times_updated": 0,
                    "created_at": start,
                }
                for i in range(ORDERS)
            ],
        )
        conn.execute(
            insert(server_prices),
            [
                {"server_id": 1000 + i, "currency": "bitcoin", "on_demand": 10**6, "spot": 0}
                for i in range(ORDERS)
            ],
        )
        conn.execute(
            insert(orders),
            [
                {
                    "id": 1000 + i,
                    "user_id": ids[i % RENTERS],
                    "server_id": 1000 + i,
                    "spot": False,
                    "currency": "bitcoin",
                    "price": 86_400 + 7 * i,
                    "fee_bp": 500,
                    "creation_fee": 0,
                    "mrl": 720 * 3600,
                    "ct": start,
                    "image": "busybox",
                    "command": "",
                    "env": {},
                    "ports": {},
                    "autossh_entrypoint": False,
                    "running": True,
                    "expired": False,
                    "active_seconds": 0,
                    "billed_at": start,
                    "spend": 0,
                    "fee_paid": 0,
                    "tcp_ports": [],
                }
                for i in range(ORDERS)
            ],
        )
    return token


def check_books(market: Market) -> None:
    with market.db.read() as conn:
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0
        booked = booked_by_order(conn)
        for o in conn.execute(select(orders).where(orders.c.id >= 1000)):
            assert booked.get((o.id, "spend"), 0) + booked.get((o.id, "fee"), 0) == o.spend
            assert booked.get((o.id, "fee"), 0) == o.fee_paid
            # every second between creation and billed_at was billed exactly once
            assert o.active_seconds == o.billed_at - o.ct, o.id
            assert o.spend == o.price * o.active_seconds // 86400


@pytest.mark.slow
def test_kill_9_mid_billing_loses_and_duplicates_nothing(market: Market) -> None:
    token = populate(market)
    port = free_port()
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_SANDBOX": "1",
        "OPENCLORE_TICK_INTERVAL": "0",
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
    }
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(9)
    killed_mid_tick = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "openclore", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(url + "/openapi.json", timeout=1)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.1)

        def advance(answered: list[object]) -> None:
            try:
                r = httpx.post(
                    url + "/sandbox/advance_time",
                    json={"seconds": rng.randint(60, 7200)},
                    headers={"auth": token},
                    timeout=30,
                )
                answered.append(r.json())
            except httpx.HTTPError as exc:
                answered.append(exc)

        # time one whole tick, then kill the next one somewhere inside it (after a first one:
        # a fresh process's first request also fills its caches, and takes a few times longer)
        advance([])
        started = time.perf_counter()
        advance([])
        duration = time.perf_counter() - started
        answered: list[object] = []
        caller = threading.Thread(target=advance, args=(answered,))
        caller.start()
        time.sleep(rng.uniform(0.1, 0.8) * duration)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        caller.join(timeout=30)
        killed_mid_tick += isinstance(answered[0], httpx.HTTPError)
        check_books(market)
    assert killed_mid_tick >= KILLS // 2, f"only {killed_mid_tick} kills landed inside a tick"
    # the next tick (any process) brings every order to exactly what the elapsed time costs
    now = int(time.time()) + get_meta_offset(market)
    tick(market.db, now, 60)
    check_books(market)
    with market.db.read() as conn:
        stale = conn.execute(
            select(func.count()).where(orders.c.id >= 1000, orders.c.billed_at != now)
        ).scalar()
    assert stale == 0


def get_meta_offset(market: Market) -> int:
    with market.db.read() as conn:
        return get_meta(conn, CLOCK_OFFSET_KEY)
