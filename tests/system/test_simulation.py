"""A seeded, stateful simulation of the market, with the invariants checked after every step.

Hypothesis drives deposits, on-demand and spot orders, bid raises and lowerings, cancels, stops
and starts (SPEC §8: a stopped or preempted order pays its disk's storage), servers
going offline and online, settings changes, withdrawals (requested, approved, rejected), operator
refunds and clock jumps (ticks included) through the same market services the API calls, on
SQLite and PostgreSQL. After every step:

* the ledger sums to zero and no balance but the outside world's is negative;
* the orders that run on a server are the ones the rules choose (the live on-demand order, else
  the highest bid, ties to the earliest; on the server rented per GPU, its on-demand orders and
  then the bids by price per GPU while their GPUs fit; nothing while the server is offline), and
  no GPU is held twice;
* every order's ``spend`` equals the transfers booked for it, its ``fee_paid`` the fee transfers,
  so host earnings + fees = renter spend; ended orders never run;
* the pending-withdrawals account holds exactly the requests not yet decided.

At the end of every run, each user's monthly statements (every month the run touched) chain
opening to closing balance exactly, end at the wallet's balance, and their deposits, refunds and
withdrawals are the ones the run made.

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
from openclore.engine.billing import STARVATION_KEY, lock_server, resolve_server
from openclore.engine.ticker import tick
from openclore.ledger import ensure_system_accounts
from openclore.ledger.ledger import add_pending
from openclore.market import keeping as keeping_service
from openclore.market import orders as order_service
from openclore.market import servers as server_service
from openclore.market import statements as statement_service
from openclore.market import withdrawals as withdrawal_service
from openclore.market.accounts import create_user
from openclore.market.inputs import CreateOrderRequest, SetServerSettingsRequest
from openclore.market.wallets import adjust, deposit
from openclore.store.db import Database, run_write, set_meta
from openclore.store.schema import accounts, orders, servers, withdrawals

from market_model import Model, Rules
from market_model import Server as ModelServer
from support import booked_by_order, fresh_database

EXAMPLES = int(os.environ.get("OPENCLORE_SIM_EXAMPLES", "60"))
STEPS = int(os.environ.get("OPENCLORE_SIM_STEPS", "50"))
USERS = 4
SERVERS = 4
PARTIAL = 3  # the last server has four GPUs and rents them per GPU (SPEC §8)
STORAGE_PRICE = "0.0000003"  # per GB per day: a stopped order's 10-30 GB cost about a rent
GPUS = 4
# prices per day that do not divide 86,400 evenly (but one), so rounding shows
PRICES = [
    "0.0000005",
    "0.000001",
    "0.0000015",
    "0.0000042",
    "0.00001",
    "0.0000123457",
    "0.0000777777",
    "0.0864",
]
JUMPS = [0, 1, 5, 59, 600, 3599, 3600, 86400, 3 * 86400]
# two hours before a month ends, so that runs cross into the next month's statement
T0 = 1_701_388_800 - 7200  # 2023-11-30T22:00:00Z
WITHDRAWALS = ["0.000005", "0.00005", "0.0003"]
WITHDRAWAL_FEE = "0.000002"
ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


def make_machine(db: Database, stats: dict[str, int]) -> type[RuleBasedStateMachine]:
    config = Settings(
        database_url=db.url,
        max_active_orders=50,
        withdrawal_fee={"bitcoin": Decimal(WITHDRAWAL_FEE)},
    )
    fee = to_units(WITHDRAWAL_FEE)
    rules = Rules(
        creation_fee_on_demand=to_units(config.creation_fee_on_demand["bitcoin"]),
        creation_fee_spot=to_units(config.creation_fee_spot["bitcoin"]),
        fee_on_demand_bp=int(config.fee_on_demand * 100),
        fee_spot_bp=int(config.fee_spot * 100),
        runway_seconds=config.runway_seconds,
        max_active_orders=config.max_active_orders,
        lowering_interval=config.spot_lowering_interval,
    )

    class Market(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            _wipe(db)
            self.now = T0
            self.orders: list[int] = []
            self.model = Model(rules, T0)
            with db.write() as conn:
                ensure_system_accounts(conn, config.currencies)
                # the model does not know the starvation rule (tests/test_slots.py pins it)
                set_meta(conn, STARVATION_KEY, 10**9)
                self.users = [create_user(conn, f"u{i}", T0, config) for i in range(USERS)]
                for uid in self.users:
                    deposit(conn, uid, "bitcoin", to_units("0.001"), config, T0)
                    self.model.deposit(uid, to_units("0.001"))
                self.servers = []
                for i in range(SERVERS):
                    owner = self.users[i % 2]  # users 0 and 1 host, everyone rents
                    sid, _ = server_service.add_server(conn, owner, f"s{i}", T0, config)
                    gpus = GPUS if i == PARTIAL else 1
                    conn.execute(
                        update(servers)
                        .where(servers.c.id == sid)
                        .values(
                            connected=True,
                            online=True,
                            simulated=True,
                            last_seen=T0,
                            gpu_array=["NVIDIA GeForce RTX 4090"] * gpus,
                        )
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
                            partial_gpu_rental=i == PARTIAL,
                            # every server but the first offers a disk, priced per GB per day
                            disk_gb=10 * i,
                            storage_price=Decimal(STORAGE_PRICE),
                        ),
                        config,
                        T0,
                    )
                    self.servers.append(sid)
                    self.model.servers[sid] = ModelServer(
                        id=sid,
                        owner=owner,
                        online=True,
                        public=True,
                        mrl_hours=2 + 10 * i,
                        on_demand=to_units("0.00001"),
                        min_spot=to_units("0.000001"),
                        settled_at=T0,
                        gpus=gpus,
                        partial=i == PARTIAL,
                        disk_gb=10 * i,
                        storage=to_units(STORAGE_PRICE),
                    )

        def _run(self, fn: Any, expected: str | bool | None = False) -> Any:
            """Run one use case; compare its outcome with the model's (``False``: no opinion)."""
            try:
                result = run_write(db, fn)
                outcome = None
            except MarketError as exc:  # refused by a market rule: nothing may have been written
                stats[exc.name] = stats.get(exc.name, 0) + 1
                result, outcome = None, exc.name
            if expected is not False and not self.model.diverged:
                assert outcome == expected, (outcome, expected)
            return result

        def _step(self) -> None:
            """The model catches up with the market's clock before each request."""
            self.model.advance(self.now)

        @rule(user=st.integers(0, USERS - 1), amount=st.sampled_from(["0.000001", "0.0001", "0.5"]))
        def deposit(self, user: int, amount: str) -> None:
            self._step()
            self._run(
                lambda conn: deposit(
                    conn, self.users[user], "bitcoin", to_units(amount), config, self.now
                )
            )
            self.model.deposit(self.users[user], to_units(amount))

        @rule(user=st.integers(0, USERS - 1), amount=st.sampled_from(WITHDRAWALS))
        def withdraw(self, user: int, amount: str) -> None:
            self._step()
            uid, units = self.users[user], to_units(amount)
            wid = self._run(
                lambda conn: withdrawal_service.request_withdrawal(
                    conn, uid, "bitcoin", units, ADDRESS, config, self.now
                ),
                self.model.withdraw(uid, units, fee),
            )
            if wid is not None:
                self.model.requested(wid, uid, units, fee)

        @rule(data=st.data(), approve=st.booleans())
        def decide_withdrawal(self, data: st.DataObject, approve: bool) -> None:
            if not self.model.withdrawals:
                return
            self._step()
            wid = data.draw(st.sampled_from(sorted(self.model.withdrawals)))
            expected = self.model.decide(wid, approve)

            def run(conn: Any) -> None:
                if approve:
                    withdrawal_service.approve_withdrawal(conn, wid, f"tx{wid}", "sim", self.now)
                else:
                    withdrawal_service.reject_withdrawal(conn, wid, "simulated", "sim", self.now)

            outcome = self._run(run, False)
            assert outcome is None
            with db.read() as conn:
                state = conn.execute(
                    select(withdrawals.c.state).where(withdrawals.c.id == wid)
                ).scalar_one()
            assert state == self.model.withdrawals[wid].state, (wid, state, expected)

        @rule(user=st.integers(0, USERS - 1), amount=st.sampled_from(["0.000001", "0.0001"]))
        def refund(self, user: int, amount: str) -> None:
            self._step()
            uid = self.users[user]
            self._run(
                lambda conn: adjust(
                    conn,
                    uid,
                    "bitcoin",
                    to_units(amount),
                    config,
                    self.now,
                    reason="simulated refund",
                    actor="sim",
                    refund=True,
                ),
                None,
            )
            self.model.deposit(uid, to_units(amount))

        @rule(
            user=st.integers(0, USERS - 1),
            server=st.integers(0, SERVERS - 1),
            spot=st.booleans(),
            price=st.sampled_from(PRICES),
            gpus=st.sampled_from([None, None, 1, 2, 3, GPUS]),
        )
        def create(self, user: int, server: int, spot: bool, price: str, gpus: int | None) -> None:
            self._step()
            body: dict[str, Any] = {
                "currency": "bitcoin",
                "image": "busybox",
                "renting_server": self.servers[server],
                "type": "spot" if spot else "on-demand",
            }
            if spot:
                body["spotprice"] = Decimal(price)
            if gpus is not None:
                body["gpu_count"] = gpus
            req = CreateOrderRequest.model_validate(body)
            uid, sid, bid = self.users[user], self.servers[server], to_units(price)
            expected = self.model.create(uid, sid, spot, bid, gpus)
            oid = self._run(
                lambda conn: order_service.create_order(conn, uid, req, config, self.now),
                expected,
            )
            if oid is not None:
                self.orders.append(oid)
                self.model.created(oid, uid, sid, spot, bid, gpus)

        @rule(
            renter=st.integers(2, USERS - 1),
            server=st.integers(0, SERVERS - 1),
            spot=st.booleans(),
            price=st.sampled_from(PRICES[1:]),
            gpus=st.sampled_from([None, 1, 2]),
        )
        def rent(self, renter: int, server: int, spot: bool, price: str, gpus: int | None) -> None:
            """A renter who hosts nothing rents at a price the server accepts (most often)."""
            self.create(renter, server, spot, price, gpus)

        @rule(data=st.data(), price=st.sampled_from(PRICES))
        def bid(self, data: st.DataObject, price: str) -> None:
            if not self.orders:
                return
            self._step()
            oid = data.draw(st.sampled_from(self.orders))
            owner = self._owner(oid)
            expected = self.model.bid(oid, to_units(price)) if not self.model.diverged else False
            self._run(
                lambda conn: order_service.set_spot_price(
                    conn, owner, oid, to_units(price), config, self.now
                ),
                expected,
            )

        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            if not self.orders:
                return
            self._step()
            oid = data.draw(st.sampled_from(self.orders))
            owner = self._owner(oid)
            expected = self.model.cancel(oid) if not self.model.diverged else False
            self._run(
                lambda conn: order_service.cancel_order(conn, owner, oid, None, self.now),
                expected,
            )

        @rule(data=st.data())
        def stop(self, data: st.DataObject) -> None:
            """A renter stops an order: it keeps its disk and pays for it (SPEC §8)."""
            if not self.orders:
                return
            self._step()
            oid = data.draw(st.sampled_from(self._live(orders.c.running) or self.orders))
            owner = self._owner(oid)
            expected = self.model.stop(oid) if not self.model.diverged else False
            done = self._run(
                lambda conn: keeping_service.stop_order(conn, owner, oid, self.now) or True,
                expected,
            )
            stats["stops"] += bool(done)

        @rule(data=st.data(), seconds=st.sampled_from(JUMPS))
        def pause(self, data: st.DataObject, seconds: int) -> None:
            """Stop an order, let time pass (the engine ticks), start it again."""
            self.stop(data)
            self.advance(seconds)
            self.start(data)

        @rule(data=st.data())
        def start(self, data: st.DataObject) -> None:
            """A renter starts a stopped order again, or is refused and nothing changes."""
            if not self.orders:
                return
            self._step()
            oid = data.draw(st.sampled_from(self._live(orders.c.stopped) or self.orders))
            owner = self._owner(oid)
            expected = self.model.start(oid) if not self.model.diverged else False
            done = self._run(
                lambda conn: (
                    keeping_service.start_order(conn, owner, oid, config, self.now) or True
                ),
                expected,
            )
            stats["starts"] += bool(done)

        @rule(server=st.integers(0, SERVERS - 1), online=st.booleans())
        def set_online(self, server: int, online: bool) -> None:
            self._step()
            sid = self.servers[server]

            def run(conn: Any) -> None:
                lock_server(conn, sid)
                conn.execute(update(servers).where(servers.c.id == sid).values(online=online))
                resolve_server(conn, sid, self.now)

            self._run(run, None)
            self.model.set_online(sid, online)

        @rule(
            server=st.integers(0, SERVERS - 1),
            price=st.sampled_from(PRICES),
            mrl=st.integers(1, 48),
            available=st.booleans(),
        )
        def settings_change(self, server: int, price: str, mrl: int, available: bool) -> None:
            self._step()
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
                ),
                None,
            )
            self.model.change_settings(
                sid, available, mrl, to_units(Decimal(price)), to_units(Decimal(price) / 2)
            )

        @rule(seconds=st.sampled_from(JUMPS))
        def advance(self, seconds: int) -> None:
            """Time passes and the engine ticks."""
            self.now += seconds
            tick(db, self.now, config.agent_timeout)
            self._step()
            self.model.settle_all()

        @rule(seconds=st.sampled_from(JUMPS))
        def wait(self, seconds: int) -> None:
            """Time passes and nothing ticks: the next request finds the market unsettled."""
            self.now += seconds
            self._step()

        def teardown(self) -> None:
            self._statements_reconcile()
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
                stats["stored"] += conn.execute(
                    select(func.count()).where(orders.c.storage_spend > 0)
                ).scalar_one()
                stats["preempted"] += conn.execute(
                    select(func.count()).where(orders.c.stop_reason == "preempted")
                ).scalar_one()
                for state, n in conn.execute(
                    select(withdrawals.c.state, func.count()).group_by(withdrawals.c.state)
                ):
                    stats[state] = stats.get(state, 0) + int(n)
                    stats["withdrawn"] = stats.get("withdrawn", 0) + int(n)

        def _live(self, flag: Any) -> list[int]:
            """The live orders running (or stopped), to stop (or start) rather than others."""
            query = select(orders.c.id).where(orders.c.expired.is_(False), flag.is_(True))
            with db.read() as conn:
                return [int(i) for i in conn.execute(query.order_by(orders.c.id)).scalars()]

        def _owner(self, oid: int) -> int:
            with db.read() as conn:
                return int(
                    conn.execute(select(orders.c.user_id).where(orders.c.id == oid)).scalar_one()
                )

        def _statements_reconcile(self) -> None:
            """Every user's months chain from 0 to the wallet's balance, to the unit, and hold
            exactly the deposits, refunds and withdrawals the run made."""
            months = []
            month = statement_service.current_month(T0)
            while True:
                months.append(month)
                if month == statement_service.current_month(self.now):
                    break
                _start, end = statement_service.month_bounds(month)
                month = statement_service.current_month(end)
            with db.read() as conn:
                for uid in self.users:
                    opening = 0
                    totals: dict[str, int] = {}
                    for month in months:
                        s = statement_service.monthly_statement(
                            conn, uid, "bitcoin", month, config
                        )["statement"]
                        assert s["opening_balance"].units == opening, (uid, month)
                        kinds = {k: v.units for k, v in s["totals"].items()}
                        assert opening + sum(kinds.values()) == s["closing_balance"].units
                        opening = s["closing_balance"].units
                        for kind, value in kinds.items():
                            totals[kind] = totals.get(kind, 0) + value
                    wallet = conn.execute(
                        select(accounts.c.balance).where(accounts.c.key == f"wallet:bitcoin:{uid}")
                    ).scalar_one()
                    assert opening == wallet, (uid, opening, wallet)
                    stats["statements"] += len(months)
                    model = self.model
                    assert totals.get("deposit", 0) + totals.get("refund", 0) == (
                        model.deposits.get(uid, 0)
                    )
                    assert totals.get("withdrawal", 0) + totals.get("withdrawal_fee", 0) + (
                        totals.get("withdrawal_back", 0)
                    ) == -model.withdrawn(uid)

        @invariant()
        def pending_withdrawals_are_held(self) -> None:
            with db.read() as conn:
                held = conn.execute(
                    select(accounts.c.balance).where(
                        accounts.c.key == "pending_withdrawals:bitcoin"
                    )
                ).scalar_one()
            assert held == self.model.pending_withdrawals()

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
                    assert fee_leg == o.fee_paid == o.spend * o.fee_bp // 10000
                    stored = booked.get((o.id, "storage"), 0)
                    stored_fee = booked.get((o.id, "storage_fee"), 0)
                    assert stored + stored_fee == o.storage_spend, (o.id, stored, stored_fee)
                    assert stored_fee == o.storage_fee == o.storage_spend * o.fee_bp // 10000
                    assert booked.get((o.id, "creation_fee"), 0) == o.creation_fee
                    if o.expired:
                        assert not o.running

        @invariant()
        def the_market_matches_the_model(self) -> None:
            """What the engine booked so far, and the market brought up to now (in a transaction
            that is rolled back), are what the model says; at most one order runs per server."""
            self.model.advance(self.now)
            booked_orders, booked_wallets = _snapshot(db, self.servers, self.users, None)
            now_orders, now_wallets = _snapshot(db, self.servers, self.users, self.now)
            for rows in (booked_orders, now_orders):
                for i, sid in enumerate(self.servers):
                    running = [o for o in rows.values() if o["server_id"] == sid and o["running"]]
                    held = [g for o in running for g in o["gpus"] or ()]
                    assert len(held) == len(set(held)) and set(held) <= set(range(GPUS)), running
                    assert len(running) <= (GPUS if i == PARTIAL else 1)
                    stats["shared"] += len(running) > 1
            if self.model.diverged:
                stats["unmodelled"] += 1
                return
            stats["modelled"] += 1
            model = self.model
            for oid, want in model.orders.items():
                booked, now = booked_orders[oid], now_orders[oid]
                assert booked["spend"] == want.booked_spend(), (oid, booked, want)
                assert now["spend"] == want.spend(), (oid, now, want)
                assert now["active_seconds"] == want.seconds(), (oid, now, want)
                assert now["fee_paid"] == want.fee()
                assert booked["storage_spend"] == want.stored.booked_spend(), (oid, booked, want)
                assert now["stored_seconds"] == want.stored.seconds, (oid, now, want)
                assert now["storage_spend"] == want.stored.spend(), (oid, now, want)
                assert now["stopped"] == (want.stopped is not None), (oid, now, want)
                assert now["expired"] == (want.ended_at is not None), (oid, now, want)
                if want.ended_at is not None:
                    assert (now["ended_at"], now["end_reason"]) == (want.ended_at, want.end_reason)
            for sid in self.servers:
                holders = sorted(
                    int(o["id"])
                    for o in now_orders.values()
                    if o["server_id"] == sid and o["running"]
                )
                assert holders == model.running(sid), (sid, now_orders)
            for uid in self.users:
                assert booked_wallets[uid] == model.booked_balance(uid), uid
                assert now_wallets[uid] == model.balance(uid), uid

    return Market


def _snapshot(
    db: Database, server_ids: list[int], users: list[int], settle_to: int | None
) -> tuple[dict[int, dict[str, Any]], dict[int, int]]:
    """Orders and wallets as booked, or (``settle_to``) as every server settled to that moment
    would show them, in a transaction that is rolled back."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn = conn.execution_options(sqlite_immediate=True)
        transaction = conn.begin()
        try:
            if settle_to is not None:
                for sid in server_ids:
                    lock_server(conn, sid)
                    resolve_server(conn, sid, settle_to)
            add_pending(conn)  # the credits booked above, read below by a query of its own
            rows = {r.id: dict(r._mapping) for r in conn.execute(select(orders))}
            wallets = {
                int(r.user_id): int(r.balance)
                for r in conn.execute(
                    select(accounts.c.user_id, accounts.c.balance).where(
                        accounts.c.kind == "wallet", accounts.c.currency == "bitcoin"
                    )
                )
            }
        finally:
            transaction.rollback()
    return rows, {uid: wallets.get(uid, 0) for uid in users}


def _wipe(db: Database) -> None:
    from openclore.store.schema import metadata

    from support import TABLES

    with db.engine.begin() as conn:
        if db.is_postgres:
            conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        else:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.mark.slow
def test_market_simulation(request: pytest.FixtureRequest, backend: str, tmp_path: Any) -> None:
    db = fresh_database(request, backend, tmp_path)
    stats = {
        "steps": 0,
        "orders": 0,
        "billed": 0,
        "ended": 0,
        "modelled": 0,
        "unmodelled": 0,
        "statements": 0,
        "shared": 0,
        "stops": 0,
        "starts": 0,
        "stored": 0,
        "preempted": 0,
    }
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
        # money moved in and out: withdrawals requested, decided and refused, refunds
        assert all(stats.get(k, 0) > 0 for k in ("withdrawn", "approved", "rejected")), stats
        # and most runs crossed a month's end, so statements chain across months
        assert stats["statements"] > 1.5 * USERS * stats["runs"], stats
        # the server rented per GPU really ran several orders at once
        assert stats["shared"] > 0, stats
        # orders were stopped and started again, paid for their disks, and bids were preempted
        keeping = {k: stats[k] for k in ("stops", "starts", "stored", "preempted")}
        assert all(keeping.values()), keeping
        # the model stops once a wallet runs dry: most steps must still be checked against it
        assert stats["modelled"] > 2 * stats["unmodelled"], stats
        print(f"simulation on {backend}: {stats}")
    finally:
        db.dispose()
