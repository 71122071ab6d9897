"""Market events for host agents: "the desired containers of server N may have changed".

:func:`notify_server` is called inside the transaction that made the change; subscribers hear of
it only once that transaction commits, never before (a subscriber that re-read the database on a
notification delivered before the commit would read the old state and stay with it).

Delivery, both after commit:

- in-process: the ids are collected on the connection and handed to this process's subscribers
  when the connection goes back to the pool (SQLAlchemy has no "after commit" connection event;
  the ``commit`` event fires *before* the DBAPI commit, the pool ``checkin`` after it);
- across processes (PostgreSQL): ``pg_notify`` is transactional, so PostgreSQL delivers it at
  commit to every process listening. A process that has subscribers listens on the one
  connection it keeps for all its channels (:mod:`openclore.store.listen`), so an agent connected
  to any API replica hears of an order created on another within milliseconds. When that
  connection had to be re-opened, notifications may have been lost meanwhile: every subscriber of
  that database is then told to resynchronise.

Spurious or duplicate notifications are harmless by design: a subscriber re-reads the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, event, text

from openclore.store import listen
from openclore.store.freshness import listen_dsn

CHANNEL = listen.SERVERS
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
        self.listener: listen.Listener | None = None
        self.closed = False

    def wait_ready(self, timeout: float) -> bool:
        """Block until cross-process delivery is live (PostgreSQL), so that nothing committed
        after this returns can be missed. True at once where there is no listener."""
        return True if self.listener is None else self.listener.ready.wait(timeout)

    def close(self) -> None:
        hub.unsubscribe(self)


class Hub:
    """This process's subscribers; on PostgreSQL, one handler per database on the process's
    listener (:mod:`openclore.store.listen`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, dict[int, set[Subscription]]] = {}
        self._channels: dict[str, _Channel] = {}

    def subscribe(self, engine: Engine, server_id: int, callback: Callback) -> Subscription:
        key = database_key(engine)
        sub = Subscription(key, server_id, callback)
        _hook(engine)
        channel: _Channel | None = None
        with self._lock:
            self._subs.setdefault(key, {}).setdefault(server_id, set()).add(sub)
            if engine.dialect.name == "postgresql":
                channel = self._channels.get(key)
                if channel is None:
                    channel = self._channels[key] = _Channel(self, key)
        # outside the hub's lock: the listener calls the hub back under its own lock
        if channel is not None:
            sub.listener = channel.listener = listen.register(listen_dsn(engine), CHANNEL, channel)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        channel: _Channel | None = None
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
                channel = self._channels.pop(sub.key, None)
        if channel is not None and channel.listener is not None:
            channel.listener.remove(CHANNEL, channel)

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


class _Channel:
    """The hub's handler of one database's ``openclore_servers`` notifications
    (:class:`openclore.store.listen.Handler`)."""

    def __init__(self, hub: Hub, key: str) -> None:
        self.hub = hub
        self.key = key
        self.listener: listen.Listener | None = None

    def notified(self, channel: str, payload: str) -> None:
        if payload.isdigit():
            self.hub.deliver(self.key, {int(payload)})

    def connected(self, again: bool) -> None:
        if again:  # notifications sent while the connection was down are lost
            self.hub.deliver_all(self.key)

    def lost(self) -> None:
        pass  # subscribers wait on the listener's ``ready``


hub = Hub()


def subscribe(engine: Engine, server_id: int, callback: Callback) -> Subscription:
    """Call ``callback`` after every commit that may change ``server_id``'s desired containers,
    in this process or (PostgreSQL) any other one using the same database."""
    return hub.subscribe(engine, server_id, callback)


def set_soon(loop: asyncio.AbstractEventLoop, flag: asyncio.Event) -> None:
    """Set an asyncio event from any thread: what a subscriber of an event loop (an event stream,
    the webhook deliverer) gives :func:`subscribe` (the hub calls back from request or LISTEN
    threads); nothing happens once the loop is closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(flag.set)
