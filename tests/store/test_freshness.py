"""What each process keeps in memory (the market's versions, callers' tokens, the listing) and
how it learns it is stale: a cached request reads nothing from the database, and a change made by
another process (another replica, the admin CLI) shows within the documented bound."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from openclore.api.app import create_app
from openclore.engine.notify import subscribe
from openclore.market.accounts import revoke_token
from openclore.store import freshness, listen
from openclore.store.db import Database

from support import Market, free_port, ok

BOUND = freshness.RECHECK_SECONDS
SLACK = 10.0  # a loaded test machine's request latency on top of the bound


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not seen within the bound"
        time.sleep(0.02)
    return time.monotonic() - started


def cli(market: Market, *args: str) -> None:
    """The admin CLI in a process of its own (another process than the app's)."""
    done = subprocess.run(
        [sys.executable, "-m", "openclore", "admin", *args, "--database-url", market.db.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def no_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only notifications (PostgreSQL) or data_version (SQLite) can tell the app of a change."""
    monkeypatch.setattr(freshness, "RECHECK_SECONDS", 3600.0)


def test_a_cached_request_reads_nothing(market: Market, no_safety_net: None) -> None:
    host = market.user(name="host")
    sid = market.server(host)
    anonymous, owner = market.client(), market.client(host)
    ok(anonymous.get("/v1/marketplace"))
    if market.backend == "postgresql":  # trusted once the notifications are listened to
        until(lambda: market.db.freshness.listening, 10)
    for client in (anonymous, owner):  # the first request of each kind fills the caches
        ok(client.get("/v1/marketplace"))
    with statements(market.db) as seen:
        for _ in range(3):
            assert [s["id"] for s in ok(anonymous.get("/v1/marketplace"))["servers"]] == [sid]
            assert ok(owner.get("/v1/marketplace"))["my_servers"] == [sid]
            ok(owner.get("/v1/marketplace?gpu=3090"))
    assert seen == []


def test_changes_in_this_process_show_at_once(market: Market) -> None:
    host = market.user(name="host")
    owner = market.client(host)
    assert ok(owner.get("/v1/marketplace"))["my_servers"] == []
    sid = market.server(host)  # through another Database-level transaction, same process
    body = ok(owner.get("/v1/marketplace"))
    assert body["my_servers"] == [sid] and [s["id"] for s in body["servers"]] == [sid]
    renter = market.user()
    client = market.client(renter)
    ok(client.get("/v1/wallets"))
    with market.db.write() as conn:
        assert revoke_token(conn, renter, market.now())
    assert client.get("/v1/wallets").json()["code"] == 3


def test_another_process_revoking_a_token_reaches_the_app(
    market: Market, no_safety_net: None
) -> None:
    token = market.user(name="alice")
    client = market.client(token)
    ok(client.get("/v1/wallets"))
    ok(client.get("/v1/marketplace"))
    cli(market, "token", "revoke", token)
    until(lambda: client.get("/v1/wallets").json()["code"] == 3, SLACK)
    assert client.get("/v1/marketplace").json()["code"] == 3


def test_another_process_changing_the_listing_reaches_the_app(
    market: Market, no_safety_net: None
) -> None:
    host = market.user(name="host")
    sid = market.server(host, "rig-01")
    anonymous, owner = market.client(), market.client(host)
    assert [s["id"] for s in ok(anonymous.get("/v1/marketplace"))["servers"]] == [sid]
    assert ok(owner.get("/v1/marketplace"))["my_servers"] == [sid]
    cli(market, "server", "remove", "host", "rig-01")
    until(lambda: ok(anonymous.get("/v1/marketplace"))["servers"] == [], SLACK)
    until(lambda: ok(owner.get("/v1/marketplace"))["my_servers"] == [], SLACK)


def test_a_lost_listener_reads_every_time(market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: while the notification connection is down nothing is served from memory."""
    if market.backend != "postgresql":
        pytest.skip("SQLite has no listener")
    monkeypatch.setattr(listen, "RECONNECT_SECONDS", (3.0, 5.0))  # down long enough to see
    ok(market.client().get("/v1/marketplace"))
    watch = market.db.freshness
    until(lambda: watch.listening, 10)
    assert kill_listener(market) == 1
    until(lambda: not watch.listening, 10)
    with statements(market.db) as seen:
        ok(market.client().get("/v1/marketplace"))
    assert seen, "versions read while not listening"
    until(lambda: watch.listening, 15)  # reconnected


def listen_connections(market: Market) -> list[int]:
    """The backends of this process's LISTEN connections (by their application_name)."""
    with market.db.engine.connect() as conn:
        return [
            int(pid)
            for pid in conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name "
                    "AND datname = current_database()"
                ),
                {"name": listen.application_name()},
            ).scalars()
        ]


def kill_listener(market: Market) -> int:
    """Terminate this process's LISTEN connections; how many there were."""
    pids = listen_connections(market)
    with market.db.engine.connect() as conn:
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return len(pids)


def test_one_listen_connection_serves_the_versions_and_the_agents_wake_ups(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the version cache and a server's subscribers share the process's one LISTEN
    connection; when it is lost, both hear of it, and both work again on the new one (the
    subscribers are told to resynchronise, as notifications may have been lost)."""
    if market.backend != "postgresql":
        pytest.skip("SQLite has no listener")
    monkeypatch.setattr(listen, "RECONNECT_SECONDS", (1.0, 5.0))
    watch = market.db.freshness
    heard: list[str] = []
    sub = subscribe(market.db.engine, 4242, lambda: heard.append("woken"))
    try:
        assert sub.wait_ready(10)
        until(lambda: watch.listening, 10)
        assert len(listen_connections(market)) == 1
        assert listen.listener_count() == 1
        assert sub.listener is market.db.freshness._listener

        # a wake-up for the server and a version bump from another connection, both heard
        watch.versions()
        assert watch.cached() is not None
        with market.db.engine.connect() as conn:
            conn.execute(text("SELECT pg_notify('openclore_servers', '4242')"))
            conn.execute(text("SELECT pg_notify('openclore_changes', 'market')"))
            conn.commit()
        until(lambda: heard == ["woken"], 10)
        until(lambda: watch.cached() is None, 10)

        assert kill_listener(market) == 1
        until(lambda: not watch.listening, 10)
        until(lambda: watch.listening and sub.listener.ready.is_set(), 15)  # type: ignore[union-attr]
        until(lambda: heard == ["woken", "woken"], 10)  # told to resynchronise
        assert len(listen_connections(market)) == 1
    finally:
        sub.close()
    # the versions still listen on it; the last handler gone, the connection goes
    assert len(listen_connections(market)) == 1
    market.db.freshness.close()
    until(lambda: not listen_connections(market), 10)


@contextmanager
def replica(market: Market) -> Iterator[str]:
    """Another API process (``openclore serve``'s app) on the same database."""
    port = free_port()
    env = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        "OPENCLORE_TICK_INTERVAL": "0",
    }
    args = [sys.executable, "-m", "uvicorn", "openclore.serve:api_app_factory", "--factory"]
    proc = subprocess.Popen(
        [*args, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "replica did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_replicas_revocation_and_listing(market: Market) -> None:
    """Revoked or changed on one replica, refused or shown on the other within the bound."""
    host = market.user(name="host")
    sid = market.server(host, "rig-01")
    renter = market.user(name="renter")
    with replica(market) as other:
        far = httpx.Client(base_url=other, headers={"auth": renter}, timeout=30)
        far_anonymous = httpx.Client(base_url=other, timeout=30)
        try:
            ok(far.get("/v1/wallets"))  # cached there now
            assert [s["id"] for s in ok(far_anonymous.get("/v1/marketplace"))["servers"]] == [sid]
            # revoked through this replica's database
            with market.db.write() as conn:
                assert revoke_token(conn, renter, market.now())
            assert market.client(renter).get("/v1/wallets").json()["code"] == 3  # here: at once
            until(lambda: far.get("/v1/wallets").json()["code"] == 3, BOUND + SLACK)
            # the listing changed here shows there
            market.server(host, "rig-02")
            until(
                lambda: len(ok(far_anonymous.get("/v1/marketplace"))["servers"]) == 2, BOUND + SLACK
            )
        finally:
            far.close()
            far_anonymous.close()


def test_apps_on_one_database_keep_their_own_caches(market: Market) -> None:
    """Two apps in one process (tests make many): caches are per app, invalidation reaches all."""
    second_db = Database(market.db.url)
    try:
        second = create_app(market.settings, db=second_db, clock=market.clock)
        assert second.state.openclore.callers is not market.switch.app.state.openclore.callers
        assert second_db.freshness is not market.db.freshness
        before = second_db.freshness.versions()
        market.server(market.user(name="host"))
        assert second_db.freshness.versions().market > before.market
    finally:
        second_db.dispose()


def test_silently_lost_notifications_are_bounded_by_the_recheck(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener looks connected (or SQLite's data_version looks unchanged) but a change was
    never told: a revoked token still stops working within RECHECK_SECONDS."""
    token = market.user()
    other = market.user()
    with market.db.write() as conn:  # an earlier revocation (told): the auth version exists
        assert revoke_token(conn, other, market.now())
    ok(market.client(token).get("/v1/wallets"))
    watch = market.db.freshness
    if market.backend == "postgresql":
        until(lambda: watch.listening, 10)
    before = watch.versions()
    assert watch.cached() == before  # served from memory now
    # the revocation is written without any notification reaching this process: no NOTIFY on
    # PostgreSQL (a plain UPDATE), an unchanged data_version on SQLite (pinned)
    monkeypatch.setattr(watch, "_data_version", lambda: 0)
    watch.invalidate()
    held = watch.versions()  # read again with the pinned data_version: cached from here on
    with market.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE api_tokens SET revoked_at = 1 WHERE prefix = :p"), {"p": token[:8]}
        )
        conn.execute(text("UPDATE meta SET value = value + 1 WHERE key = 'auth_version'"))
    assert watch.cached() == held  # not told: still trusted, for now
    took = until(lambda: watch.versions().auth == held.auth + 1, BOUND + SLACK)
    assert took <= BOUND + SLACK
    assert market.client(token).get("/v1/wallets").json()["code"] == 3
