"""One PostgreSQL LISTEN connection per process and database, for every channel.

Two parts of a serving process hear of other processes' commits through PostgreSQL's NOTIFY:
the version cache (:mod:`openclore.store.freshness`, channel ``openclore_changes``) and the
wake-ups of agents' channels and event streams (:mod:`openclore.engine.notify`,
``openclore_servers``). Each held a connection of its own; here one thread per database (its
libpq URL, never a transaction pooler: :func:`openclore.store.freshness.listen_dsn`) LISTENs on
all of :data:`CHANNELS` on one autocommit connection and hands each notification to the handlers
of its channel. So a replica costs PostgreSQL its pool plus one connection.

A lost connection is re-opened with a backoff (:data:`RECONNECT_SECONDS`). Every handler hears
of the loss (:meth:`Handler.lost`) and of each connection (:meth:`Handler.connected`, with
``again`` set when it is a reconnection: notifications sent meanwhile are lost, so the handler
resynchronises). A handler registered while the connection is up hears ``connected`` at once.

Handlers are held weakly: one that nobody closed and that was collected simply stops being
called, and the thread ends (within :data:`POLL`) when no handler is left. The connection
carries ``application_name`` ``openclore listen <pid>``, so an operator sees whose it is.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

log = logging.getLogger("openclore.store")

CHANGES = "openclore_changes"  # the market's versions moved (freshness)
SERVERS = "openclore_servers"  # a server's desired containers may have changed (notify)
CHANNELS = (CHANGES, SERVERS)
POLL = 0.5  # seconds between two looks at whether handlers are left
RECONNECT_SECONDS = (0.2, 5.0)  # the first and the longest wait before reconnecting


class Handler(Protocol):
    """What a listener calls. Calls come from the listener's thread and must be quick;
    ``connected`` and ``lost`` are called under the listener's lock (so that a handler never
    hears them out of order), so they must not register or unregister handlers."""

    def notified(self, channel: str, payload: str) -> None: ...

    def connected(self, again: bool) -> None: ...

    def lost(self) -> None: ...


def application_name() -> str:
    return f"openclore listen {os.getpid()}"


_LOCK = threading.Lock()  # the registry; taken before any listener's own lock
_LISTENERS: dict[str, Listener] = {}


def register(dsn: str, channel: str, handler: Handler) -> Listener:
    """Call ``handler`` for ``channel``'s notifications on the database at ``dsn``; starts this
    process's listener for it where there is none yet."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    with _LOCK:
        listener = _LISTENERS.get(dsn)
        if listener is None or listener.finished:
            listener = Listener(dsn)
            _LISTENERS[dsn] = listener
            listener.start()  # its first look at its handlers waits for this lock
        listener.add(channel, handler)
    return listener


def listener_count() -> int:
    """How many LISTEN threads this process runs (tests and health)."""
    with _LOCK:
        return sum(1 for listener in _LISTENERS.values() if not listener.finished)


class Listener(threading.Thread):
    """``LISTEN`` on every channel of :data:`CHANNELS` for one database, re-opened with backoff."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="openclore-listen", daemon=True)
        self.dsn = dsn
        self.ready = threading.Event()  # the connection is up and listening
        self.finished = False  # no handler was left: it ended (set under the registry's lock)
        self._lock = threading.Lock()
        self._handlers: dict[str, weakref.WeakSet[Handler]] = {
            c: weakref.WeakSet() for c in CHANNELS
        }
        self._pause = threading.Event()  # never set: a wait that ends on its timeout

    def add(self, channel: str, handler: Handler) -> None:
        with self._lock:
            self._handlers[channel].add(handler)
            if self.ready.is_set():
                handler.connected(again=False)

    def remove(self, channel: str, handler: Handler) -> None:
        with self._lock:
            self._handlers[channel].discard(handler)

    def _all(self) -> list[Handler]:
        return [h for channel in CHANNELS for h in self._handlers[channel]]

    def _idle(self) -> bool:
        """No handler left: leave the registry and end. Decided under the registry's lock, so a
        registration either came first (and keeps this listener) or starts a new one."""
        with _LOCK:
            with self._lock:
                if any(len(handlers) for handlers in self._handlers.values()):
                    return False
            self.finished = True
            if _LISTENERS.get(self.dsn) is self:
                del _LISTENERS[self.dsn]
            return True

    def _deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            handlers = list(self._handlers.get(channel, ()))
        for handler in handlers:
            try:
                handler.notified(channel, payload)
            except Exception:  # one handler's failure is its own
                log.exception("notification handler failed")

    def _set_ready(self, up: bool, again: bool = False) -> None:
        with self._lock:
            if up:
                self.ready.set()
                for handler in self._all():
                    handler.connected(again=again)
            elif self.ready.is_set():
                self.ready.clear()
                for handler in self._all():
                    handler.lost()

    def run(self) -> None:
        import psycopg

        wait = RECONNECT_SECONDS[0]
        before = False  # connected once already: a new connection may have missed some
        while not self._idle():
            try:
                with psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=application_name(),
                ) as conn:
                    conn.execute("; ".join(f"LISTEN {channel}" for channel in CHANNELS))
                    self._set_ready(True, again=before)
                    before = True
                    wait = RECONNECT_SECONDS[0]
                    while not self._idle():
                        for note in conn.notifies(timeout=POLL):
                            self._deliver(note.channel, note.payload)
                        if conn.closed or conn.broken:
                            raise psycopg.OperationalError("notification connection lost")
            except Exception as exc:
                if not self.finished:
                    log.warning("LISTEN connection lost (%s); retrying in %.1fs", exc, wait)
            finally:
                self._set_ready(False)
            if self.finished:
                return
            self._pause.wait(wait)
            wait = min(wait * 2, RECONNECT_SECONDS[1])
