"""A seeded, stateful simulation of the market, with the invariants checked after every step.

Hypothesis drives deposits, on-demand and spot orders, bid raises and lowerings, cancels, servers
going offline and online, settings changes and clock jumps (ticks included) through the same
market services the API calls, on SQLite and PostgreSQL. After every step:

* the ledger sums to zero and no balance but the outside world's is negative;
* at most one order runs on a server, and it is the one the rules choose (the live on-demand
  order, else the highest bid, ties to the earliest; nothing while the server is offline);
* every order's ``spend`` equals the transfers booked for it, its ``fee_paid`` the fee transfers,
  so host earnings + fees = renter spend; ended orders never run.

Runs are derandomized (the same steps every run); set ``OPENCLORE_SIM_EXAMPLES`` and
``OPENCLORE_SIM_STEPS`` to search longer. A failure prints the exact steps to replay it.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import func, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.domain.money import to_units
from openclore.engine.billing import choose_running, lock_server, resolve_server
from openclore.engine.ticker import tick
from openclore.ledger import ensure_system_accounts
from openclore.market import orders as order_service
from openclore.market import servers as server_service
from openclore.market.accounts import create_user
from openclore.market.requests import CreateOrderRequest, SetServerSettingsRequest
from openclore.market.wallets import deposit
from openclore.store.db import Database, run_write
from openclore.store.schema import accounts, orders, servers

from conftest import T0, booked_by_order, fresh_database

EXAMPLES = int(os.environ.get("OPENCLORE_SIM_EXAMPLES", "60"))
STEPS = int(os.environ.get("OPENCLORE_SIM_STEPS", "50"))
USERS = 4
SERVERS = 3
PRICES = ["0.0000005", "0.000001", "0.0000015", "0.000002", "0.0000042", "0.00001", "0.0864"]
JUMPS = [0, 1, 5, 59, 600, 3599, 3600, 86400, 3 * 86400]


def make_machine(db: Database, stats: dict[str, int]) -> type[RuleBasedStateMachine]:
    config = Settings(database_url=db.url, max_active_orders=50)

    class Market(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            _wipe(db)
            self.now = T0
            self.orders: list[int] = []
            with db.write() as conn:
                ensure_system_accounts(conn, config.currencies)
                self.users = [create_user(conn, f"u{i}", T0, config) for i in range(USERS)]
                for uid in self.users:
                    deposit(conn, uid, "bitcoin", to_units("0.001"), config, T0)
                self.servers = []
                for i in range(SERVERS):
                    owner = self.users[i % 2]  # users 0 and 1 host, everyone rents
                    sid, _ = server_service.add_server(conn, owner, f"s{i}", T0, config)
                    conn.execute(
                        update(servers)
                        .where(servers.c.id == sid)
                        .values(connected=True, online=True, simulated=True, last_seen=T0)
                    )
                    server_service.set_server_settings(
                        conn,
                        owner,
                        SetServerSettingsRequest(
                            name=f"s{i}",
                            availability=True,
                            mrl=2 + 10 * i,
                            on_demand=Decimal("0.00001"),
                            spot=Decimal("0.000001"),
                        ),
                        config,
                        T0,
                    )
                    self.servers.append(sid)

        def _run(self, fn: Any) -> None:
            try:
                run_write(db, fn)
            except MarketError as exc:  # refused by a market rule: nothing may have been written
                stats[exc.name] = stats.get(exc.name, 0) + 1

        @rule(user=st.integers(0, USERS - 1), amount=st.sampled_from(["0.000001", "0.0001", "0.5"]))
        def deposit(self, user: int, amount: str) -> None:
            self._run(
                lambda conn: deposit(
                    conn, self.users[user], "bitcoin", to_units(amount), config, self.now
                )
            )

        @rule(
            user=st.integers(0, USERS - 1),
            server=st.integers(0, SERVERS - 1),
            spot=st.booleans(),
            price=st.sampled_from(PRICES),
        )
        def create(self, user: int, server: int, spot: bool, price: str) -> None:
            body: dict[str, Any] = {
                "currency": "bitcoin",
                "image": "busybox",
                "renting_server": self.servers[server],
                "type": "spot" if spot else "on-demand",
            }
            if spot:
                body["spotprice"] = Decimal(price)
            req = CreateOrderRequest.model_validate(body)

            def run(conn: Any) -> None:
                self.orders.append(
                    order_service.create_order(conn, self.users[user], req, config, self.now)
                )

            self._run(run)

        @rule(data=st.data(), price=st.sampled_from(PRICES))
        def bid(self, data: st.DataObject, price: str) -> None:
            if not self.orders:
                return
            oid = data.draw(st.sampled_from(self.orders))
            owner = self._owner(oid)
            self._run(
                lambda conn: order_service.set_spot_price(
                    conn, owner, oid, to_units(price), config, self.now
                )
            )

        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            if not self.orders:
                return
            oid = data.draw(st.sampled_from(self.orders))
            owner = self._owner(oid)
            self._run(lambda conn: order_service.cancel_order(conn, owner, oid, None, self.now))

        @rule(server=st.integers(0, SERVERS - 1), online=st.booleans())
        def set_online(self, server: int, online: bool) -> None:
            sid = self.servers[server]

            def run(conn: Any) -> None:
                lock_server(conn, sid)
                conn.execute(update(servers).where(servers.c.id == sid).values(online=online))
                resolve_server(conn, sid, self.now)

            self._run(run)

        @rule(
            server=st.integers(0, SERVERS - 1),
            price=st.sampled_from(PRICES),
            mrl=st.integers(1, 48),
            available=st.booleans(),
        )
        def settings_change(self, server: int, price: str, mrl: int, available: bool) -> None:
            sid = self.servers[server]
            req = SetServerSettingsRequest(
                name=f"s{server}",
                availability=available,
                mrl=mrl,
                on_demand=Decimal(price),
                spot=Decimal(price) / 2,
            )
            self._run(
                lambda conn: server_service.set_server_settings(
                    conn, self.users[server % 2], req, config, self.now
                )
            )
            del sid

        @rule(seconds=st.sampled_from(JUMPS))
        def advance(self, seconds: int) -> None:
            self.now += seconds
            tick(db, self.now, config.agent_timeout)

        def teardown(self) -> None:
            with db.read() as conn:
                stats["runs"] = stats.get("runs", 0) + 1
                stats["orders"] += conn.execute(
                    select(func.count()).select_from(orders)
                ).scalar_one()
                stats["billed"] += conn.execute(
                    select(func.count()).where(orders.c.spend > 0)
                ).scalar_one()
                stats["ended"] += conn.execute(
                    select(func.count()).where(orders.c.expired.is_(True))
                ).scalar_one()

        def _owner(self, oid: int) -> int:
            with db.read() as conn:
                return int(
                    conn.execute(select(orders.c.user_id).where(orders.c.id == oid)).scalar_one()
                )

        @invariant()
        def ledger_balances(self) -> None:
            stats["steps"] += 1
            with db.read() as conn:
                assert conn.execute(select(func.sum(accounts.c.balance))).scalar() in (0, None)
                negative = conn.execute(
                    select(func.count()).where(
                        accounts.c.kind != "external", accounts.c.balance < 0
                    )
                ).scalar()
                assert negative == 0

        @invariant()
        def orders_match_their_transfers(self) -> None:
            with db.read() as conn:
                booked = booked_by_order(conn)
                for o in conn.execute(select(orders)):
                    spend_leg = booked.get((o.id, "spend"), 0)
                    fee_leg = booked.get((o.id, "fee"), 0)
                    assert spend_leg + fee_leg == o.spend, (o.id, spend_leg, fee_leg, o.spend)
                    assert fee_leg == o.fee_paid
                    assert booked.get((o.id, "creation_fee"), 0) == o.creation_fee
                    assert o.spend == o.price * o.active_seconds // 86400 or o.spot
                    if o.expired:
                        assert not o.running

        @invariant()
        def the_right_order_runs(self) -> None:
            with db.read() as conn:
                online = {
                    r.id: r.online for r in conn.execute(select(servers.c.id, servers.c.online))
                }
                live = [
                    dict(r._mapping)
                    for r in conn.execute(select(orders).where(orders.c.expired.is_(False)))
                ]
            for sid in self.servers:
                here = [o for o in live if o["server_id"] == sid]
                running = [o["id"] for o in here if o["running"]]
                assert len(running) <= 1
                expected = choose_running(online[sid], here)
                assert running == ([] if expected is None else [expected]), (sid, here)

    return Market


def _wipe(db: Database) -> None:
    from openclore.store.schema import metadata

    from conftest import TABLES

    with db.engine.begin() as conn:
        if db.is_postgres:
            conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        else:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.mark.slow
def test_market_simulation(request: pytest.FixtureRequest, backend: str, tmp_path: Any) -> None:
    db = fresh_database(request, backend, tmp_path)
    stats = {"steps": 0, "orders": 0, "billed": 0, "ended": 0}
    machine = make_machine(db, stats)
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        machine.TestCase().runTest()
        # the runs really traded: orders were made, billed and ended
        assert stats["orders"] > 0 and stats["billed"] > 0 and stats["ended"] > 0, stats
        print(f"simulation on {backend}: {stats}")
    finally:
        db.dispose()
