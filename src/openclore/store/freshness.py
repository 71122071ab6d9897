"""The market's versions held in memory, and how a process learns they moved.

Two counters in ``meta`` say whether what a process cached is still right: ``market_version``
(bumped by every transaction that changes what a marketplace listing shows, or a user's servers)
and ``auth_version`` (bumped when API tokens are revoked or thrown away). A request reads them from
:meth:`Freshness.versions`, which answers from memory while nothing says they moved, so a cached
listing or token costs no database round trip.

What says they moved:

* In this process: a transaction that bumped one tells every :class:`Freshness` of the same
  database (any ``Database`` instance on that URL in this process) when its connection is checked
  back in to the pool, after the commit.
* On PostgreSQL, from other processes and replicas: the bumping transaction sends
  ``pg_notify('openclore_changes', …)``, delivered when (and only if) it commits. Each process
  listens on the one connection it keeps for all its channels (:mod:`openclore.store.listen`).
  While that connection is down, nothing is trusted: every request reads the versions (as if
  there were no cache) until it is back.
* On SQLite: ``PRAGMA data_version`` on a dedicated connection moves whenever any other
  connection, of any process, commits to the file; checking it costs microseconds and no query.

A safety net bounds staleness whatever happens to notifications: versions older than
:data:`RECHECK_SECONDS` are read again. So a change made on one replica is seen by every other
within the notification's delivery (milliseconds), and never later than ``RECHECK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, Engine, text

from openclore.store import listen


class Database(Protocol):
    """What the freshness of a database needs of :class:`openclore.store.db.Database` (which
    owns one, so this module does not import it)."""

    engine: Engine
    is_sqlite: bool
    is_postgres: bool

    def read(self) -> AbstractContextManager[Connection]: ...


CHANNEL = listen.CHANGES
MARKET_VERSION = "market_version"
AUTH_VERSION = "auth_version"
RECHECK_SECONDS = 1.0  # the staleness bound should every notification be lost

_READ = text("SELECT key, value FROM meta WHERE key IN ('market_version', 'auth_version')")

# Every Freshness of one database URL in this process, so that a commit through any Database
# instance reaches them all at once (the state itself stays per instance).
_LOCAL: dict[str, weakref.WeakSet[Freshness]] = {}
_LOCAL_LOCK = threading.Lock()


@dataclass(frozen=True)
class Versions:
    market: int
    auth: int


def read_versions(conn: Connection) -> Versions:
    found = {str(k): int(v) for k, v in conn.execute(_READ)}
    return Versions(found.get(MARKET_VERSION, 0), found.get(AUTH_VERSION, 0))


def url_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


# engine (url_key) → the libpq URL of the database itself, where the engine goes through a
# transaction pooler: LISTEN needs a session of its own, which a pooler does not keep
_DIRECT: dict[str, str] = {}


def register_direct(engine: Engine, direct: Engine) -> None:
    """``engine`` goes through a pooler; ``direct`` reaches the same database without one."""
    _DIRECT[url_key(engine)] = _libpq(direct)


def listen_dsn(engine: Engine) -> str:
    """The libpq URL a LISTEN connection for ``engine``'s database opens (never the pooler)."""
    return _DIRECT.get(url_key(engine)) or _libpq(engine)


def _libpq(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def changed_here(url: str) -> None:
    """A transaction on ``url`` that bumped a version committed in this process."""
    with _LOCAL_LOCK:
        watchers = list(_LOCAL.get(url, ()))
    for watcher in watchers:
        watcher.invalidate()


class Freshness:
    """The versions of one database, from memory while they are known to be current."""

    def __init__(self, db: Database, recheck: float | None = None) -> None:
        self._db = db
        self._recheck = RECHECK_SECONDS if recheck is None else recheck
        self._lock = threading.Lock()
        self._epoch = 0  # moves on every sign of a change
        # what was read: versions, the epoch and data_version before the read, when
        self._held: tuple[Versions, int, int, float] | None = None
        self._listening = False
        self._listener: listen.Listener | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._enabled = False
        self._key = url_key(db.engine)
        database = db.engine.url.database or ""
        if db.is_sqlite and database not in ("", ":memory:"):
            self._sqlite = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
            self._enabled = True
        elif db.is_postgres:
            self._enabled = True
            # the listener holds its handlers weakly: one nobody closed still goes away
            self._listener = listen.register(listen_dsn(db.engine), CHANNEL, self)
        with _LOCAL_LOCK:
            _LOCAL.setdefault(self._key, weakref.WeakSet()).add(self)

    # ------------------------------------------------------------------------- the versions

    def cached(self) -> Versions | None:
        """The versions if they are known to be current without reading them, else None."""
        held = self._held
        if held is not None and self._current(held):
            return held[0]
        return None

    def versions(self) -> Versions:
        held = self._held
        if held is not None and self._current(held):
            return held[0]
        with self._lock:
            epoch = self._epoch
            data_version = self._data_version()
        with self._db.read() as conn:
            found = read_versions(conn)
        if self._enabled:
            with self._lock:
                if epoch == self._epoch:
                    self._held = (found, epoch, data_version, time.monotonic())
        return found

    def _current(self, held: tuple[Versions, int, int, float]) -> bool:
        _, epoch, data_version, at = held
        if epoch != self._epoch or time.monotonic() - at >= self._recheck:
            return False
        if self._sqlite is not None:
            with self._lock:
                return self._data_version() == data_version
        return self._listening

    def data_version(self) -> int:
        """SQLite: a number that moves whenever another connection committed (no table read);
        0 elsewhere."""
        with self._lock:
            return self._data_version()

    def _data_version(self) -> int:
        if self._sqlite is None:
            return 0
        try:
            return int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return -1  # cannot tell: never equal to a value read when it could

    def invalidate(self) -> None:
        with self._lock:
            self._epoch += 1
            self._held = None

    @property
    def listening(self) -> bool:
        """PostgreSQL: the notification connection is up (tests and health)."""
        return self._listening

    # ------------------------------------------------------------------------- PostgreSQL
    # (listen.Handler: called from the listener's thread)

    def notified(self, channel: str, payload: str) -> None:
        self.invalidate()

    def connected(self, again: bool) -> None:
        self.invalidate()  # anything may have changed while not listening
        self._listening = True

    def lost(self) -> None:
        self._listening = False
        self.invalidate()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.remove(CHANNEL, self)
            self._listener = None
        self._listening = False
        with _LOCAL_LOCK:
            watchers = _LOCAL.get(self._key)
            if watchers is not None:
                watchers.discard(self)
                if not watchers:
                    del _LOCAL[self._key]
        if self._sqlite is not None:
            with self._lock, contextlib.suppress(sqlite3.Error):
                self._sqlite.close()
            self._sqlite = None


def notify(conn: Connection, kinds: Iterable[str]) -> None:
    """Tell every process (PostgreSQL: when this transaction commits) what changed."""
    if conn.dialect.name == "postgresql":
        for kind in kinds:
            conn.execute(
                text("SELECT pg_notify(:channel, :kind)"), {"channel": CHANNEL, "kind": kind}
            )
