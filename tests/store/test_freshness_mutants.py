"""The version cache (store/freshness.py) driven directly: which rows it reads, when what it read
is trusted and when it is read again (the staleness bound to the tick, a change told during the
read, SQLite's data_version, the PostgreSQL listener up or down), what reaches which cache, and
how it lets go of its connection and its listener.

Written to kill mutants of `scripts/mutation freshness` the HTTP tests (test_freshness.py) do
not see: they go through a whole app, where a cache that reads too often only costs time."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from openclore.store import freshness, listen
from openclore.store.db import Database, set_meta
from openclore.store.freshness import Freshness, Versions

from support import Market

pytestmark = pytest.mark.origin("mutant")


class Clock:
    """time.monotonic as the module reads it, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The module's own clock only: the rest of the process (the server's event loop, the
    listener threads) keeps the real one."""
    tick = Clock()
    monkeypatch.setattr(freshness, "time", SimpleNamespace(monotonic=tick))
    return tick


@pytest.fixture
def sqlite_db(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    target = tmp_path / "fresh.sqlite"
    shutil.copy(sqlite_template, target)
    db = Database(f"sqlite:///{target}")
    yield db
    db.dispose()


def set_versions(db: Database, market: int, auth: int) -> None:
    with db.engine.begin() as conn:
        set_meta(conn, freshness.MARKET_VERSION, market)
        set_meta(conn, freshness.AUTH_VERSION, auth)


class Standin:
    """A Database as Freshness sees it, whose reads can run code first (a change told while the
    versions are being read) and whose engine may name another database than it reads."""

    def __init__(self, real: Database, engine: Engine | None = None) -> None:
        self.real = real
        self.engine = engine or real.engine
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.before_read: list[Freshness] = []
        self.reads = 0

    @contextmanager
    def read(self) -> Iterator[Connection]:
        self.reads += 1
        for watch in self.before_read:
            watch.invalidate()
        with self.real.read() as conn:
            yield conn


def test_the_versions_are_the_two_meta_rows_and_zero_without_them(sqlite_db: Database) -> None:
    set_versions(sqlite_db, 7, 11)
    with sqlite_db.read() as conn:
        assert freshness.read_versions(conn) == Versions(market=7, auth=11)
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM meta"))
    with sqlite_db.read() as conn:
        assert freshness.read_versions(conn) == Versions(market=0, auth=0)


def test_what_was_read_is_trusted_until_the_bound_and_not_at_it(
    sqlite_db: Database, clock: Clock
) -> None:
    assert freshness.RECHECK_SECONDS == 1.0  # the bound docs/operations.md promises
    set_versions(sqlite_db, 3, 4)
    watch = Freshness(sqlite_db)
    try:
        assert watch.cached() is None  # nothing read yet
        assert watch.versions() == Versions(3, 4)
        assert watch.cached() == Versions(3, 4)
        clock.now += 0.999
        assert watch.cached() == Versions(3, 4)
        clock.now += 0.001  # exactly the bound: read again
        assert watch.cached() is None
    finally:
        watch.close()


def test_a_bound_given_replaces_the_default(sqlite_db: Database, clock: Clock) -> None:
    watch = Freshness(sqlite_db, recheck=5.0)
    try:
        held = watch.versions()
        clock.now += 4.9
        assert watch.cached() == held
        clock.now += 0.1
        assert watch.cached() is None
    finally:
        watch.close()
    watch = Freshness(sqlite_db, recheck=0.0)  # zero means every request reads
    try:
        watch.versions()
        assert watch.cached() is None
    finally:
        watch.close()


def test_versions_answer_from_memory_and_read_again_after_a_change(sqlite_db: Database) -> None:
    standin = Standin(sqlite_db)
    watch = Freshness(standin)
    try:
        set_versions(sqlite_db, 1, 1)
        assert watch.versions() == Versions(1, 1)
        assert watch.versions() == Versions(1, 1)
        assert standin.reads == 1
        set_versions(sqlite_db, 2, 5)  # another connection commits: data_version moves
        assert watch.cached() is None
        assert watch.versions() == Versions(2, 5)
        assert standin.reads == 2
        assert watch.cached() == Versions(2, 5)
    finally:
        watch.close()


def test_a_change_told_during_the_read_leaves_nothing_trusted(sqlite_db: Database) -> None:
    standin = Standin(sqlite_db)
    watch = Freshness(standin)
    watch.invalidate()  # told before: a read may be held from here on
    standin.before_read.append(watch)
    try:
        set_versions(sqlite_db, 6, 2)
        assert watch.versions() == Versions(6, 2)
        assert watch.cached() is None  # what it read may predate the change
        standin.before_read.clear()
        watch.versions()
        assert watch.cached() is not None
    finally:
        watch.close()


def test_a_database_only_this_connection_sees_is_never_cached(sqlite_db: Database) -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        standin = Standin(sqlite_db, create_engine(url))
        watch = Freshness(standin)
        try:
            watch.versions()
            watch.versions()
            assert watch.cached() is None
            assert standin.reads == 2
        finally:
            watch.close()
            standin.engine.dispose()


def test_data_version_moves_with_other_commits_and_is_never_equal_when_unreadable(
    sqlite_db: Database,
) -> None:
    watch = Freshness(sqlite_db)
    try:
        first = watch.data_version()
        assert first >= 1
        assert watch.data_version() == first
        set_versions(sqlite_db, 9, 9)
        assert watch.data_version() > first
        held = watch.versions()
        assert watch.cached() == held
        assert watch._sqlite is not None
        watch._sqlite.close()  # cannot tell any more
        assert watch.data_version() == -1
        assert watch.cached() is None
    finally:
        watch.close()
    assert watch.data_version() == 0  # closed: no connection of its own left


def test_invalidate_and_the_listeners_calls_drop_what_was_read(sqlite_db: Database) -> None:
    watch = Freshness(sqlite_db)
    try:
        assert watch.listening is False  # SQLite: there is no listener
        for told in (
            lambda: watch.invalidate(),
            lambda: watch.notified(freshness.CHANNEL, "market"),
            lambda: watch.lost(),
        ):
            watch.versions()
            assert watch.cached() is not None
            told()
            assert watch.cached() is None
        watch.versions()
        watch.connected(again=True)
        assert watch.cached() is None
        assert watch.listening is True
        watch.lost()
        assert watch.listening is False
        watch.connected(again=False)
    finally:
        watch.close()
    assert watch.listening is False  # closed: not listening, whatever it heard last


def test_a_commit_here_reaches_every_cache_of_that_database_and_no_other(
    sqlite_db: Database, sqlite_template: Path, tmp_path: Path
) -> None:
    other_path = tmp_path / "other.sqlite"
    shutil.copy(sqlite_template, other_path)
    other_db = Database(f"sqlite:///{other_path}")
    one, two, elsewhere = Freshness(sqlite_db), Freshness(sqlite_db), Freshness(other_db)
    key = freshness.url_key(sqlite_db.engine)
    try:
        for watch in (one, two, elsewhere):
            watch.versions()
        freshness.changed_here(key)
        assert one.cached() is None
        assert two.cached() is None
        assert elsewhere.cached() is not None
        one.close()
        assert two in freshness._LOCAL[key]
        assert one not in freshness._LOCAL[key]
        two.versions()
        freshness.changed_here(key)
        assert two.cached() is None
    finally:
        for watch in (one, two, elsewhere):
            watch.close()
        other_db.dispose()
    # the last cache of a database gone, so is its entry (the market's own one stays)
    assert freshness.url_key(other_db.engine) not in freshness._LOCAL


def test_the_listen_address_is_the_database_itself_with_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(freshness, "_DIRECT", {})
    pooled = create_engine("postgresql+psycopg://app:s3cret@pooler:6432/market")
    direct = create_engine("postgresql+psycopg://app:s3cret@db:5432/market")
    assert "s3cret" in freshness.url_key(pooled)
    assert freshness.listen_dsn(pooled) == "postgresql://app:s3cret@pooler:6432/market"
    freshness.register_direct(pooled, direct)
    assert freshness.listen_dsn(pooled) == "postgresql://app:s3cret@db:5432/market"
    assert freshness.listen_dsn(direct) == "postgresql://app:s3cret@db:5432/market"


def _until(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def test_what_was_read_is_trusted_while_listening_on_postgresql(market: Market) -> None:
    """PostgreSQL trusts what it read only while its listener is up; SQLite goes by
    data_version whatever the listener calls say (it has none)."""
    pg = market.backend == "postgresql"
    watch = Freshness(market.db, recheck=3600.0)
    try:
        _until(lambda: watch.listening or not pg)
        held = watch.versions()
        assert watch.cached() == held
        watch.lost()  # the connection went down: nothing is trusted
        watch.versions()
        assert watch.cached() == (None if pg else held)
        watch.connected(again=True)
        watch.versions()
        assert watch.cached() == held
        if pg:
            assert watch.data_version() == 0  # no data_version of its own
    finally:
        watch.close()
    assert watch.listening is False
    if pg:
        assert watch.cached() is None


def test_a_closed_cache_hears_nothing_more(market: Market) -> None:
    pg = market.backend == "postgresql"
    watch = Freshness(market.db, recheck=3600.0)
    _until(lambda: watch.listening or not pg)
    listener = watch._listener
    assert (listener is not None) == pg
    watch.close()
    assert watch._listener is None and watch.listening is False
    watch.versions()
    if pg:
        assert watch.cached() is None  # not listening: never trusted
        assert listener is not None and watch not in listener._all()
    watch.close()  # twice is harmless
    assert watch._listener is None and watch.listening is False


def test_notify_is_postgresqls_and_one_notification_per_kind(market: Market) -> None:
    if market.backend == "sqlite":
        sent: list[str] = []
        with market.db.write() as conn:
            conn.connection.driver_connection.set_trace_callback(sent.append)  # type: ignore[union-attr]
            freshness.notify(conn, ["market", "auth"])
            conn.connection.driver_connection.set_trace_callback(None)  # type: ignore[union-attr]
        assert sent == []
        return
    with psycopg.connect(freshness.listen_dsn(market.db.engine), autocommit=True) as listening:
        listening.execute(f"LISTEN {listen.CHANGES}")
        with market.db.write() as conn:
            freshness.notify(conn, ["market", "auth"])
        heard = [(n.channel, n.payload) for n in listening.notifies(timeout=5, stop_after=2)]
    assert heard == [(listen.CHANGES, "market"), (listen.CHANGES, "auth")]
