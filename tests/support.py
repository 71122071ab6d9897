"""Helpers for the tests: a market over real HTTP, request bodies, assertions. The fixtures that
build them are in conftest.py; test modules import from here."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from openclore.api.app import create_app
from openclore.config import Settings
from openclore.domain.money import to_units
from openclore.engine.clock import ManualClock
from openclore.engine.ticker import tick
from openclore.ledger.statements import booked_by_order as booked_by_order  # the tests' books
from openclore.market.accounts import create_user, issue_token
from openclore.market.servers import add_server
from openclore.market.wallets import deposit
from openclore.store.db import Database, normalize_url
from openclore.store.schema import audit_log, events, metadata, server_prices, servers

PG_SERVER_URL = os.environ.get(
    "OPENCLORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_DATABASE = f"openclore_test_{os.getpid()}"
PG_URL = str(make_url(normalize_url(PG_SERVER_URL)).set(database=PG_DATABASE))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
T0 = 1_700_000_000
HEADER_TIMEOUT = 3.0  # the test server's; `openclore serve` defaults to 10 s
METRICS_TOKEN = "test-metrics-token"  # the tests' markets' (/metrics needs one, or to be public)
ADDRESS_SECRET = "test-address-secret"  # `serve` outside the sandbox refuses the default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Switch:
    """An ASGI app that forwards to whichever app the current test installed."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        await self.app(scope, receive, send)


TABLES = ", ".join(t.name for t in metadata.sorted_tables)


def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Database:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "market.sqlite"
        shutil.copy(template, target)
        return Database(f"sqlite:///{target}")
    pg: Database = request.getfixturevalue("pg_template")
    with pg.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    return Database(PG_URL)


def test_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "rate_limit_interval": 0,
        "create_order_interval": 0,
        "tick_interval": 0,
        "sandbox": True,
        "metrics_token": METRICS_TOKEN,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Market:
    """A running market for one test: database, clock, app and HTTP base URL."""

    db: Database
    settings: Settings
    clock: ManualClock
    url: str
    switch: Switch
    backend: str
    clients: list[httpx.Client] = field(default_factory=list)
    _users: int = 0

    def reconfigure(self, rate_clock: ManualClock | None = None, **overrides: Any) -> None:
        """Rebuild the app with other settings (same database and clock); ``rate_clock`` makes
        rate limits follow a clock the test moves instead of the wall clock."""
        self.settings = test_settings(self.db.url, **overrides)
        self.switch.app = create_app(
            self.settings, db=self.db, clock=self.clock, rate_clock=rate_clock
        )

    def now(self) -> int:
        return int(self.clock.now())

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"auth": token} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def user(self, name: str | None = None, **balances: str) -> str:
        """A new user with a token and deposits (``bitcoin="0.01"``); returns the token."""
        self._users += 1
        name = name or f"user{self._users}"
        with self.db.write() as conn:
            uid = create_user(conn, name, self.now(), self.settings)
            token = issue_token(conn, uid, self.now())
            for currency, amount in balances.items():
                currency = currency.replace("_", "-")
                deposit(conn, uid, currency, to_units(Decimal(amount)), self.settings, self.now())
        return token

    def user_id(self, token: str) -> int:
        from openclore.market.accounts import authenticate

        with self.db.read() as conn:
            uid = authenticate(conn, token)
        assert uid is not None
        return uid

    def server(
        self,
        owner_token: str,
        name: str = "rig",
        *,
        on_demand: str = "0.00001",
        spot: str = "0.000001",
        currency: str = "bitcoin",
        mrl: int = 72,
        online: bool = True,
        visibility: str = "public",
        specs: dict[str, Any] | None = None,
        gpu_array: list[str] | None = None,
    ) -> int:
        """An online, public server with prices, as a connected agent would leave it (with one
        RTX 3090 unless ``gpu_array`` says otherwise: ``[]`` with ``specs={"gpu": "0x"}`` is a
        machine whose agent found no GPU)."""
        owner = self.user_id(owner_token)
        with self.db.write() as conn:
            server_id, _ = add_server(conn, owner, name, self.now(), self.settings)
            conn.execute(
                servers.update()
                .where(servers.c.id == server_id)
                .values(
                    connected=True,
                    online=online,
                    simulated=True,
                    last_seen=self.now(),
                    visibility=visibility,
                    mrl_hours=mrl,
                    specs=specs
                    or {"gpu": "1x NVIDIA GeForce RTX 3090", "gpuram": 24, "net": {"cc": "CZ"}},
                    gpu_array=["NVIDIA GeForce RTX 3090"] if gpu_array is None else gpu_array,
                )
            )
            conn.execute(
                server_prices.insert().values(
                    server_id=server_id,
                    currency=currency,
                    on_demand=to_units(Decimal(on_demand)),
                    spot=to_units(Decimal(spot)),
                )
            )
        return server_id

    def advance(self, seconds: int) -> None:
        """Move the clock and run the engine tick, as the background ticker would."""
        self.clock.advance(seconds)
        tick(self.db, self.now(), self.settings.agent_timeout)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.db.dispose()


def ok(response: httpx.Response) -> dict[str, Any]:
    """Assert a code-0 response and return its body."""
    body: dict[str, Any] = response.json()
    assert body.get("code") == 0, body
    return body


def error(response: httpx.Response) -> str:
    body = response.json()
    assert body.get("code") == 6, body
    return str(body["error"])


ON_DEMAND_ORDER = {
    "currency": "bitcoin",
    "image": "cloreai/ubuntu20.04-jupyter",
    "type": "on-demand",
    "ports": {"22": "tcp", "8888": "http"},
    "env": {"VARIABLE_NAME": "VARIABLE_VALUE"},
}


def order_body(server_id: int, **extra: Any) -> dict[str, Any]:
    return {**ON_DEMAND_ORDER, "renting_server": server_id, **extra}


def spot_body(server_id: int, price: str | float, **extra: Any) -> dict[str, Any]:
    body = order_body(server_id, type="spot", **extra)
    body["spotprice"] = float(price) if isinstance(price, str) else price
    return body


def stored_events(market: Market, type_: str) -> list[dict[str, Any]]:
    """The outbox's events of one type, oldest first: each its data with the user it is for."""
    with market.db.read() as conn:
        rows = conn.execute(
            select(events.c.user_id, events.c.data)
            .where(events.c.type == type_)
            .order_by(events.c.id)
        ).all()
    return [{"user_id": r.user_id, **json.loads(r.data)} for r in rows]


def audit_entries(market: Market, action: str) -> list[dict[str, Any]]:
    """The audit log's entries of one action, oldest first, as rows."""
    with market.db.read() as conn:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.id)
        ).all()
    return [dict(r._mapping) for r in rows]
