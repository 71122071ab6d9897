"""Engine factory and transaction helpers for both backends.

Each use case runs in one transaction: ``db.write()`` for changes, ``db.read()`` for queries.
On SQLite a write transaction starts with ``BEGIN IMMEDIATE`` so writers queue on the database
lock (with a busy timeout) instead of failing to upgrade a read lock; on PostgreSQL use cases take
row locks (``SELECT … FOR UPDATE``) on the rows they change.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from openclore.store.freshness import (
    AUTH_VERSION,
    MARKET_VERSION,
    Freshness,
    changed_here,
    notify,
    register_direct,
    url_key,
)
from openclore.store.listing import touches_listing
from openclore.store.ratelimit import RateBudget
from openclore.store.schema import meta, metadata

SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them to psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, pool_size: int = 10, prepared: bool = True) -> Engine:
    """``prepared=False``: no server-side prepared statements (psycopg prepares a statement run
    five times on a connection; behind a transaction pooler the next transaction may run on
    another server connection, which does not have it)."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            poolclass=NullPool if database in ("", ":memory:") else None,
        )
        _setup_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=20,
        pool_pre_ping=True,
        connect_args={} if prepared else {"prepare_threshold": None},
    )


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One database: an engine plus the transaction helpers every use case goes through."""

    def __init__(self, url: str, *, pool_size: int = 10, direct_url: str | None = None) -> None:
        """``direct_url``: ``url`` names a transaction pooler (PgBouncer) in front of the
        database this one reaches directly; LISTEN, session advisory locks and migrations use
        it (:attr:`direct_engine`), and ``url`` gets no prepared statements."""
        self.url = normalize_url(url)
        pooled = direct_url is not None and normalize_url(direct_url) != self.url
        self.engine = make_engine(self.url, pool_size=pool_size, prepared=not pooled)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.direct_engine = self.engine
        if pooled and self.is_postgres:
            # a session of its own for each use (a gateway's lock, a migration): few and rare
            self.direct_engine = create_engine(
                normalize_url(str(direct_url)), poolclass=NullPool, pool_pre_ping=True
            )
            register_direct(self.engine, self.direct_engine)
        event.listen(self.engine, "commit", _unflushed)
        event.listen(self.engine, "rollback", _drop_before_commit)
        key = url_key(self.engine)

        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            # after the commit (the ``commit`` event fires before it): this process's caches of
            # the database learn that a version moved before the request that moved it answers
            if record is not None and record.info.pop(_COMMITTED_CHANGE, None):
                changed_here(key)

        event.listen(self.engine, "checkin", _on_checkin)
        event.listen(self.engine, "before_cursor_execute", _watch_listing)
        self._freshness: Freshness | None = None
        self._freshness_lock = threading.Lock()
        self._rate_budget: RateBudget | None = None
        # name → work a write transaction that wrote what the listing shows runs last, before
        # its commit (the engine's standing-order match, SPEC §8); set by the composition root
        self.listing_hooks: dict[str, Callable[[Connection], None]] = {}

    @property
    def freshness(self) -> Freshness:
        """The market's versions as this process knows them (started on first use: a listener
        thread on PostgreSQL)."""
        if self._freshness is None:
            with self._freshness_lock:
                if self._freshness is None:
                    self._freshness = Freshness(self)
        return self._freshness

    def rate_budget(self, *, local: bool = True) -> RateBudget:
        """This process's rate limits on the database (:class:`RateBudget`: in memory while it is
        the only process deciding them); one per database object, made on first use."""
        with self._freshness_lock:
            if self._rate_budget is None:
                self._rate_budget = RateBudget(self.engine, local=local)
        return self._rate_budget

    @contextlib.contextmanager
    def write(self, stage: dict[str, bool] | None = None) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any exception. When it
        wrote what the listing shows, :attr:`listing_hooks` run at its end; work registered
        with :func:`before_commit` runs last, inside it. ``stage["committing"]`` is set once
        all of it ran, as the COMMIT goes out (:func:`run_write`)."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            try:
                with conn.begin():
                    yield conn
                    if conn.info.pop(_LISTING_WRITTEN, None):
                        # a server or GPU slots may have become available: whatever the hooks
                        # do (fill standing orders) commits with it, before anyone sees it
                        for hook in list(self.listing_hooks.values()):
                            hook(conn)
                        conn.info.pop(_LISTING_WRITTEN, None)
                        listing_changed(conn)
                    _run_before_commit(conn)
                    if stage is not None:
                        stage["committing"] = True
            finally:
                if not conn.invalidated:
                    conn.info.pop(_BEFORE_COMMIT, None)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def create_all(self) -> None:
        """Create the schema through the migrations (the one way a database gets its tables)."""
        from openclore.store.migrate import upgrade

        upgrade(self)

    def dispose(self) -> None:
        if self._rate_budget is not None:
            self._rate_budget.close()
        if self._freshness is not None:
            self._freshness.close()
            self._freshness = None
        self.engine.dispose()
        if self.direct_engine is not self.engine:
            self.direct_engine.dispose()


_BEFORE_COMMIT = "openclore_before_commit"
_VERSIONS = "openclore_versions"
_CHANGED = "openclore_changed"
_COMMITTED_CHANGE = "openclore_changed_committed"
_LISTING_WRITTEN = "openclore_listing_written"


def _watch_listing(
    conn: Connection, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    """Note a statement that wrote what the listing is made of (see
    :mod:`openclore.store.listing`): the write transaction moves the version once, at its end."""
    if touches_listing(statement):
        conn.info[_LISTING_WRITTEN] = True


def before_commit(
    conn: Connection,
    key: str,
    flush: Callable[[Connection, list[Any]], None],
    *,
    rank: int = 0,
) -> list[Any]:
    """A list bound to the current write transaction: ``flush(conn, items)`` runs once, as the
    transaction's last statements, with what was appended to it (dropped on rollback). Lets a
    layer batch rows that must commit with the change (an outbox) and take a short lock for
    them only at the end. Lists flush by ``rank``, then in the order they were made: the rows
    every transaction shares (the ledger's credits, rank 1; the market's versions, rank 2) are
    written last, so they stay locked from their UPDATE to the COMMIT only."""
    hooks: dict[str, tuple[Callable[[Connection, list[Any]], None], list[Any], int]]
    hooks = conn.info.setdefault(_BEFORE_COMMIT, {})
    if key not in hooks:
        hooks[key] = (flush, [], rank)
    items: list[Any] = hooks[key][1]
    return items


def pending(conn: Connection, key: str) -> list[Any]:
    """The current transaction's :func:`before_commit` list under ``key``, if it has one (the
    list itself, to append to), else an empty list bound to nothing."""
    hook = conn.info.get(_BEFORE_COMMIT, {}).get(key)
    return [] if hook is None else hook[1]


@contextlib.contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A part of the current write transaction that an exception undoes alone (a SAVEPOINT):
    its statements and what it appended to :func:`before_commit` lists (an event of a change
    that did not happen) are dropped; the exception goes on to the caller."""
    hooks = conn.info.get(_BEFORE_COMMIT, {})
    kept = {key: len(items) for key, (_, items, _) in hooks.items()}
    try:
        with conn.begin_nested():
            yield
    except BaseException:
        for key, (_, items, _) in conn.info.get(_BEFORE_COMMIT, {}).items():
            del items[kept.get(key, 0) :]
        raise


def _unflushed(conn: Connection) -> None:
    """A transaction other than ``Database.write()`` would commit without the rows: refuse the
    commit loudly (one that is rolled back, such as a what-if, may use them freely)."""
    conn.info.pop(_LISTING_WRITTEN, None)  # outside write(): migrations, a fresh schema
    if conn.info.pop(_CHANGED, None):  # told when the connection is checked in, after this
        conn.info[_COMMITTED_CHANGE] = True
    hooks = conn.info.pop(_BEFORE_COMMIT, None)
    if hooks and any(items for _, items, _ in hooks.values()):
        raise RuntimeError("rows for before_commit need a Database.write() transaction")


def _drop_before_commit(conn: Connection) -> None:
    if conn.invalidated:  # the connection was lost: what it held went with it (and reading
        return  # its info now would raise instead of the loss, which run_write retries)
    conn.info.pop(_BEFORE_COMMIT, None)
    conn.info.pop(_LISTING_WRITTEN, None)
    conn.info.pop(_CHANGED, None)


def _run_before_commit(conn: Connection) -> None:
    hooks = conn.info.pop(_BEFORE_COMMIT, None) or {}
    for flush, items, _ in sorted(hooks.values(), key=lambda hook: hook[2]):
        if items:
            flush(conn, items)


def run_write(db: Database, fn: Callable[[Connection], T], attempts: int = 8) -> T:
    """Run ``fn`` in one write transaction, retrying when the database reports a deadlock or a
    serialization failure, or drops the connection before the commit (the transaction was rolled
    back whole, so running it again is safe)."""
    for attempt in range(attempts):
        stage: dict[str, bool] = {}
        try:
            with db.write(stage) as conn:
                result = fn(conn)
            return result
        except DBAPIError as exc:
            # a connection lost before COMMIT was sent took its transaction with it: safe to run
            # again (the rows written at its end included); lost during COMMIT, the outcome is
            # unknown and the error goes to the caller
            lost = (exc.connection_invalidated or _ended(exc)) and not stage.get("committing")
            if attempt + 1 < attempts and (lost or _retryable(exc)):
                # jittered exponential backoff: the transactions that deadlocked (typically
                # the tick's bulk update and a per-order booking) do not meet again in step
                time.sleep(random.uniform(0.5, 1.0) * min(0.5, 0.01 * 2**attempt))
                continue
            raise
    raise AssertionError("unreachable")


def _ended(exc: DBAPIError) -> bool:
    """The server ended the session (terminated by an administrator, a shutdown): the error came
    before the socket's end, so the connection does not read as lost yet, but it is."""
    return getattr(exc.orig, "sqlstate", None) in ("57P01", "57P02", "57P03")


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in ("40P01", "40001", "55P03"):  # deadlock, serialization, lock not available
        return True
    return "database is locked" in str(exc)


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT just added."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def get_meta(conn: Connection, key: str, default: int = 0) -> int:
    value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return default if value is None else int(value)


def _upsert_meta(conn: Connection, key: str, value: int, *, add: bool) -> None:
    """One atomic statement, so concurrent first writers of a key never clash on its index."""
    from sqlalchemy.dialects import postgresql, sqlite

    stmt = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(meta)
    stmt = stmt.values(key=key, value=value)
    new = meta.c.value + stmt.excluded.value if add else stmt.excluded.value
    conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": new}))


def set_meta(conn: Connection, key: str, value: int) -> None:
    _upsert_meta(conn, key, value, add=False)


def bump_meta(conn: Connection, key: str) -> None:
    """Increment a counter (e.g. the marketplace version) inside the caller's transaction."""
    _upsert_meta(conn, key, 1, add=True)


def listing_version(conn: Connection) -> int:
    """The marketplace version: it moves whenever anything a listing shows changes."""
    return get_meta(conn, MARKET_VERSION)


def _changed(conn: Connection, key: str) -> None:
    """Move a version at the very end of the transaction (its row is the one every writer
    shares: locked from there to the COMMIT only)."""
    keys = before_commit(conn, _VERSIONS, _bump_versions, rank=2)
    if key not in keys:
        keys.append(key)


def _bump_versions(conn: Connection, keys: list[str]) -> None:
    for key in sorted(set(keys)):  # in key order: two transactions never wait on each other
        bump_meta(conn, key)
        conn.info.setdefault(_CHANGED, set()).add(key)
    notify(conn, sorted(set(keys)))


def listing_changed(conn: Connection) -> None:
    """Something every marketplace listing shows (or a user's own servers) changed: cached
    listings are stale at commit, in every process (see :mod:`openclore.store.freshness`).
    A write transaction calls it by itself when it wrote a listed table
    (:mod:`openclore.store.listing`); use cases never need to."""
    _changed(conn, MARKET_VERSION)


def tokens_changed(conn: Connection) -> None:
    """API tokens were revoked or thrown away: cached token lookups are stale at commit."""
    _changed(conn, AUTH_VERSION)


__all__ = [
    "MARKET_VERSION",
    "Database",
    "before_commit",
    "bump_meta",
    "get_meta",
    "listing_changed",
    "metadata",
    "pending",
    "run_write",
    "savepoint",
    "set_meta",
    "tokens_changed",
]
