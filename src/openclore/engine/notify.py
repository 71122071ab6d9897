"""Market events for host agents: "the desired containers of server N may have changed".

:func:`notify_server` is called inside the transaction that made the change; subscribers hear of
it only once that transaction commits, never before (a subscriber that re-read the database on a
notification delivered before the commit would read the old state and stay with it).

Delivery, both after commit:

- in-process: the ids are collected on the connection and handed to this process's subscribers
  when the connection goes back to the pool (SQLAlchemy has no "after commit" connection event;
  the ``commit`` event fires *before* the DBAPI commit, the pool ``checkin`` after it);
- across processes (PostgreSQL): ``pg_notify`` is transactional, so PostgreSQL delivers it at
  commit to every process listening. Each process that has subscribers keeps one ``LISTEN``
  connection (psycopg 3, autocommit, ``notifies()`` in a daemon thread), so an agent connected to
  any API replica hears of an order created on another within milliseconds. When the ``LISTEN``
  connection had to be re-opened, notifications may have been lost meanwhile: every subscriber of
  that database is then told to resynchronise.

Spurious or duplicate notifications are harmless by design: a subscriber re-reads the state.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, event, text

from openclore.store.freshness import listen_dsn

CHANNEL = "openclore_servers"
_PENDING = "openclore_notify"
_COMMITTED = "openclore_notify_committed"

log = logging.getLogger("openclore.events")

Callback = Callable[[], None]


def notify_server(conn: Connection, server_id: int) -> None:
    """Tell subscribers of ``server_id`` that its desired containers may have changed, once the
    caller's transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": str(server_id)},
        )
    _hook(conn.engine)
    conn.info.setdefault(_PENDING, set()).add(server_id)


# ----------------------------------------------------------------------------- commit hooks

_hooked: weakref.WeakSet[Engine] = weakref.WeakSet()
_hook_lock = threading.Lock()


def _hook(engine: Engine) -> None:
    if engine in _hooked:
        return
    with _hook_lock:
        if engine in _hooked:
            return
        key = database_key(engine)
        event.listen(engine, "commit", _on_commit)
        event.listen(engine, "rollback", _on_rollback)

        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            committed = record.info.pop(_COMMITTED, None)
            if committed:
                hub.deliver(key, committed)

        event.listen(engine, "checkin", _on_checkin)
        _hooked.add(engine)


def _on_commit(conn: Connection) -> None:
    pending = conn.info.pop(_PENDING, None)
    if pending:
        conn.info.setdefault(_COMMITTED, set()).update(pending)


def _on_rollback(conn: Connection) -> None:
    # a connection the database dropped has no info left to clear (reading it would raise and
    # hide the disconnect the caller retries on)
    if not conn.invalidated:
        conn.info.pop(_PENDING, None)


def database_key(engine: Engine) -> str:
    """Which database a notification belongs to (several may live in one process: tests)."""
    return engine.url.render_as_string(hide_password=True)


# ----------------------------------------------------------------------------- subscribers


class Subscription:
    """One subscriber's interest in one server. ``callback`` runs in whatever thread delivers
    (a request thread or the LISTEN thread): it must be quick and thread-safe, typically
    ``loop.call_soon_threadsafe(event.set)``."""

    def __init__(self, key: str, server_id: int, callback: Callback) -> None:
        self.key = key
        self.server_id = server_id
        self.callback = callback
        self.listener: _PgListener | None = None
        self.closed = False

    def wait_ready(self, timeout: float) -> bool:
        """Block until cross-process delivery is live (PostgreSQL), so that nothing committed
        after this returns can be missed. True at once where there is no listener."""
        return True if self.listener is None else self.listener.ready.wait(timeout)

    def close(self) -> None:
        hub.unsubscribe(self)


class Hub:
    """This process's subscribers, and one PostgreSQL LISTEN thread per database in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, dict[int, set[Subscription]]] = {}
        self._listeners: dict[str, _PgListener] = {}

    def subscribe(self, engine: Engine, server_id: int, callback: Callback) -> Subscription:
        key = database_key(engine)
        sub = Subscription(key, server_id, callback)
        _hook(engine)
        with self._lock:
            self._subs.setdefault(key, {}).setdefault(server_id, set()).add(sub)
            if engine.dialect.name == "postgresql":
                listener = self._listeners.get(key)
                if listener is None or not listener.is_alive() or listener.stopping:
                    listener = _PgListener(self, key, listen_dsn(engine))
                    self._listeners[key] = listener
                    listener.start()
                sub.listener = listener
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub.closed:
                return
            sub.closed = True
            by_server = self._subs.get(sub.key, {})
            subs = by_server.get(sub.server_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del by_server[sub.server_id]
            if not by_server:
                self._subs.pop(sub.key, None)
                listener = self._listeners.pop(sub.key, None)
                if listener is not None:
                    listener.stop()

    def deliver(self, key: str, server_ids: set[int]) -> None:
        with self._lock:
            by_server = self._subs.get(key)
            if not by_server:
                return
            targets = [s for sid in server_ids for s in by_server.get(sid, ())]
        for sub in targets:
            _call(sub)

    def deliver_all(self, key: str) -> None:
        with self._lock:
            targets = [s for subs in self._subs.get(key, {}).values() for s in subs]
        for sub in targets:
            _call(sub)

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for by in self._subs.values() for s in by.values())


def _call(sub: Subscription) -> None:
    try:
        sub.callback()
    except Exception:  # a subscriber's failure is its own
        log.exception("event subscriber failed")


class _PgListener(threading.Thread):
    """``LISTEN openclore_servers`` on a dedicated autocommit connection, re-opened with backoff."""

    POLL = 0.5

    def __init__(self, hub: Hub, key: str, conninfo: str) -> None:
        super().__init__(name="openclore-pg-listen", daemon=True)
        self.hub = hub
        self.key = key
        self.conninfo = conninfo
        self.ready = threading.Event()
        self.stopping = False
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self.stopping = True
        self._stop_event.set()

    def run(self) -> None:
        import psycopg

        backoff = 0.1
        connected_before = False
        while not self._stop_event.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as pg:
                    pg.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    if connected_before:  # notifications sent while we were away are lost
                        self.hub.deliver_all(self.key)
                    connected_before = True
                    backoff = 0.1
                    while not self._stop_event.is_set():
                        for note in pg.notifies(timeout=self.POLL):
                            if note.payload.isdigit():
                                self.hub.deliver(self.key, {int(note.payload)})
            except Exception as exc:
                self.ready.clear()
                if self._stop_event.is_set():
                    break
                log.warning("LISTEN connection lost (%s); retrying in %.1fs", exc, backoff)
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.ready.clear()


hub = Hub()


def subscribe(engine: Engine, server_id: int, callback: Callback) -> Subscription:
    """Call ``callback`` after every commit that may change ``server_id``'s desired containers,
    in this process or (PostgreSQL) any other one using the same database."""
    return hub.subscribe(engine, server_id, callback)
