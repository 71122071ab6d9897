"""The ``rate_limits`` table's SQL: one GCRA slot per key (the policy is
:mod:`openclore.api.ratelimit`).

Each key stores a theoretical arrival time ``tat``. :meth:`RateSlots.take` moves it to
``max(tat, now) + interval`` when ``tat - now <= tolerance``, in one atomic UPSERT … RETURNING, so
concurrent requests from any number of workers cannot both slip through.

:class:`RateBudget` decides the same way in memory while its process is the only one deciding for
the database, and through :class:`RateSlots` as soon as it is not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy import Connection, Engine, TextClause, text

log = logging.getLogger("openclore.ratelimit")
T = TypeVar("T")

_UPSERT = text(
    """
    INSERT INTO rate_limits (key, tat) VALUES (:key, :new_tat)
    ON CONFLICT (key) DO UPDATE
       SET tat = (CASE WHEN rate_limits.tat > :now THEN rate_limits.tat ELSE :now END) + :interval
     WHERE rate_limits.tat - :now <= :tolerance
    RETURNING tat
    """
)
_PEEK = text("SELECT tat FROM rate_limits WHERE key = :key")
_REFUND = text("UPDATE rate_limits SET tat = tat - :interval WHERE key = :key")
_FORGET = text("DELETE FROM rate_limits WHERE key = :key")
_PRUNE = text("DELETE FROM rate_limits WHERE tat < :now")
_ALL = text("SELECT key, tat FROM rate_limits")
_LEAVE = text("DELETE FROM rate_limit_members WHERE member = :m")


class RateSlots:
    """The ``rate_limits`` rows, each written in a transaction of its own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    def take(
        self, key: str, interval: float, now: float, tolerance: float, *, prune: bool
    ) -> tuple[bool, float]:
        """Take the key's next slot when its ``tat`` is at most ``tolerance`` ahead of ``now``:
        ``(True, new tat)``, else ``(False, current tat)``. With ``prune``, rows whose ``tat``
        lies before ``now`` are deleted in the same transaction."""
        with self._engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                return self.take_in(conn, key, interval, now, tolerance, prune=prune)

    @staticmethod
    def take_in(
        conn: Connection, key: str, interval: float, now: float, tolerance: float, *, prune: bool
    ) -> tuple[bool, float]:
        """:meth:`take` inside the caller's transaction."""
        params = {
            "key": key,
            "now": now,
            "interval": interval,
            "new_tat": now + interval,
            "tolerance": tolerance,
        }
        tat = conn.execute(_UPSERT, params).scalar()
        if tat is None:
            current = conn.execute(_PEEK, {"key": key}).scalar() or now
        if prune:
            conn.execute(_PRUNE, {"now": now})
        if tat is not None:
            return True, float(tat)
        return False, float(current)

    def forget(self, key: str) -> None:
        """Drop a key's row."""
        self._write(_FORGET, {"key": key})

    def refund(self, key: str, interval: float) -> None:
        """Move a key's ``tat`` back by ``interval``."""
        self._write(_REFUND, {"key": key, "interval": interval})

    def _write(self, statement: TextClause, params: dict[str, object]) -> None:
        with self._engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                conn.execute(statement, params)


# ----------------------------------------------------------------------------- one process alone

LEASE = 2.0  # seconds a renewal lets a process that found itself alone decide in memory
RENEW = 0.5  # seconds between two renewals of a process's membership
HORIZON = 1.5  # the longest interval plus tolerance decided in memory (the 1 s limit, not 5 s)
# the longest a decision waits for the process's mode to settle: as long as a write waits for
# SQLite's lock (a renewal queues behind a long write there like any write)
WAIT = 30.0
_SETTLE_POLL = 0.05  # seconds between two looks at whether another process still decides alone
MEMBERS_LOCK = 0x4A7E  # pg advisory lock: renewals take it exclusively, decisions shared

_NOW = {  # the database's clock, in unix seconds: leases never compare two hosts' clocks
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_PUT = text(
    "INSERT INTO rate_limits (key, tat) VALUES (:key, :tat)"
    " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat"
)


class Unsettled(RuntimeError):
    """No decision could be made: the database did not answer the renewals for :data:`WAIT`
    seconds, so this process neither decides alone nor knows that nobody else does."""


class RateBudget:
    """The rate limits of one database as this process decides them.

    While this process is the only one deciding for the database (one ``serve`` process, the
    usual deployment and the demo), it decides the short limits (an interval plus tolerance up to
    :data:`HORIZON`: the 1 s per-token limit) in memory: the same GCRA as the ``rate_limits``
    rows, with no write per request. Longer limits (``create_order``'s 5 s, the console's sign-in
    burst) are always decided in the table. As soon as another process deciding for the database
    shows up, every process decides everything in the table, as :class:`RateSlots` does.

    How that stays exact (never two processes deciding one key apart):

    - Each process keeps a row in ``rate_limit_members``, renewed every :data:`RENEW` seconds for
      :data:`LEASE`. A renewal runs under an exclusive lock (an advisory lock on PostgreSQL, the
      write lock on SQLite); a short decision in the table runs under the same lock shared.
    - A renewal that finds no other live member loads the ``rate_limits`` rows into memory and
      sets its ``solo_until`` to the database's clock plus :data:`LEASE` plus :data:`HORIZON`; the
      process then decides in memory until its own monotonic clock says :data:`LEASE` has passed
      since the renewal began. So ``solo_until`` lies past every slot it may hand out in memory.
    - A short decision in the table first checks that no member's ``solo_until`` lies ahead; else
      it decides nothing and waits: the lone process sees the newcomer's row at its next renewal,
      writes what it changed in memory back to ``rate_limits``, clears its ``solo_until`` and
      decides in the table from then on. A process that died alone (its memory lost) is waited out
      until its ``solo_until``, when every slot it handed out has passed.

    A newcomer's first short decisions thus wait up to :data:`RENEW` seconds (:data:`LEASE` plus
    :data:`HORIZON` after a lone process was killed): that is the whole cost of exactness.
    ``local=False`` never decides alone, but is still a member, so that no other process does
    beside it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        local: bool = True,
        lease: float = LEASE,
        renew: float = RENEW,
        horizon: float = HORIZON,
    ) -> None:
        self._engine = engine
        self.lease, self.renew_every, self.horizon = lease, renew, horizon
        self._slots = RateSlots(engine)
        self._dialect = engine.dialect.name
        self._pg = self._dialect == "postgresql"
        self.local = local
        self.member = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._solo = False  # deciding in memory, until the monotonic clock reaches _deadline
        self._deadline = 0.0
        self._changing = False  # a renewal is writing the memory back: decisions wait
        self._tats: dict[str, float] = {}
        self._dirty: set[str] = set()  # keys changed in memory since the process went solo
        self._started = False
        self._closed = threading.Event()
        self._renew_lock = threading.Lock()  # one renewal at a time (the first one, the thread's)
        now = _NOW[self._dialect]
        self._solo_anywhere = text(
            f"SELECT 1 FROM rate_limit_members WHERE solo_until > {now} LIMIT 1"
        )
        self._renewal = (
            text(f"SELECT {now}"),
            text(
                "INSERT INTO rate_limit_members (member, seen_until) VALUES (:m, :until)"
                " ON CONFLICT (member) DO UPDATE SET seen_until = :until"
            ),
            text(  # a member that died alone goes once its slots have passed, not before
                "DELETE FROM rate_limit_members WHERE member <> :m AND seen_until < :now"
                " AND (solo_until IS NULL OR solo_until < :now)"
            ),
            text("SELECT 1 FROM rate_limit_members WHERE member <> :m LIMIT 1"),
            text("UPDATE rate_limit_members SET solo_until = :solo WHERE member = :m"),
        )

    # -- decisions

    def take(
        self, key: str, interval: float, now: float, tolerance: float, *, prune: bool
    ) -> tuple[bool, float]:
        """As :meth:`RateSlots.take`, in memory while this process decides alone."""
        if interval + tolerance > self.horizon:
            return self._slots.take(key, interval, now, tolerance, prune=prune)
        return self._decide(
            lambda: self._take(key, interval, now, tolerance, prune),
            lambda conn: self._slots.take_in(conn, key, interval, now, tolerance, prune=prune),
        )

    def take_here(
        self, key: str, interval: float, now: float, tolerance: float, *, prune: bool
    ) -> tuple[bool, float] | None:
        """:meth:`take` when it can be decided at once in memory, else ``None`` (nothing taken):
        for answers given on the event loop, which must not wait for the database."""
        if interval + tolerance > self.horizon:
            return None
        with self._cond:
            if self._started and self._alone():
                return self._take(key, interval, now, tolerance, prune)
        return None

    def forget(self, key: str) -> None:
        """Drop a key's slot (in memory and in the table: the key's limit may be either)."""

        def here() -> bool:
            self._tats.pop(key, None)
            self._dirty.discard(key)
            return True  # its row too, from before this process decided alone

        def there(conn: Connection) -> bool:
            conn.execute(_FORGET, {"key": key})
            return False

        if self._decide(here, there):
            self._slots.forget(key)

    def refund(self, key: str, interval: float) -> None:
        """Move a key's slot back by ``interval``, where it is held."""

        def here() -> bool:
            if key not in self._tats:
                return False
            self._tats[key] -= interval
            self._dirty.add(key)
            return True

        if not self._decide(here, lambda conn: False):
            self._slots.refund(key, interval)

    @property
    def alone(self) -> bool:
        """Whether this process decides short limits in memory now."""
        with self._cond:
            return self._alone()

    def _alone(self) -> bool:
        return self._solo and not self._changing and time.monotonic() < self._deadline

    def _take(
        self, key: str, interval: float, now: float, tolerance: float, prune: bool
    ) -> tuple[bool, float]:
        """:data:`_UPSERT` (and :data:`_PRUNE`) on the memory; called under ``_cond``."""
        tats = self._tats
        tat = tats.get(key)
        if tat is not None and tat - now > tolerance:
            result = (False, tat)
        else:
            tats[key] = (now if tat is None or tat < now else tat) + interval
            self._dirty.add(key)
            result = (True, tats[key])
        if prune:
            for stale in [k for k, t in tats.items() if t < now]:
                del tats[stale]
                self._dirty.discard(stale)  # its row, if any, is older still
        return result

    def _decide(self, here: Callable[[], T], there: Callable[[Connection], T]) -> T:
        """``here()`` under ``_cond`` while this process decides alone, else ``there(conn)`` in
        a transaction that saw nobody deciding alone."""
        self._start()
        give_up = time.monotonic() + WAIT
        while True:
            with self._cond:
                while self._changing or (self._solo and time.monotonic() >= self._deadline):
                    # a renewal is due or writing the memory back: it settles the mode
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise Unsettled("rate limits: no renewal of this process's membership")
                    self._cond.wait(min(left, _SETTLE_POLL))
                if self._solo:
                    return here()
            with self._begin() as conn:
                if conn.execute(self._solo_anywhere).first() is None:
                    return there(conn)
            # a process (another, or this one since the look above) decides alone: wait for it
            if time.monotonic() >= give_up:
                raise Unsettled("rate limits: another process keeps deciding alone")
            self._closed.wait(_SETTLE_POLL)

    @contextlib.contextmanager
    def _begin(self, *, exclusive: bool = False) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if not self._pg:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                if self._pg:
                    lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
                    conn.execute(text(f"SELECT {lock}(:k)"), {"k": MEMBERS_LOCK})
                yield conn

    # -- membership

    def _start(self) -> None:
        if self._started:
            return
        with self._renew_lock:
            if self._started:
                return
            self._renew()  # the first decision knows its mode
            self._started = True
        threading.Thread(
            target=_renewing,
            args=(weakref.ref(self), self._closed, self.renew_every),
            name="openclore-rate-budget",
            daemon=True,
        ).start()

    def renew(self) -> None:
        """Renew this process's membership: from now on it decides short limits alone if it is
        the only member, in the table if it is not (writing its memory back first)."""
        with self._renew_lock:
            if not self._closed.is_set():
                self._renew()

    def _renew(self) -> None:
        began = time.monotonic()
        clock, upsert, expire, others, solo = self._renewal
        try:
            with self._begin(exclusive=True) as conn:
                now = float(conn.execute(clock).scalar_one())
                member = {"m": self.member, "now": now, "until": now + self.lease}
                conn.execute(upsert, member)
                conn.execute(expire, member)
                alone = self.local and conn.execute(others, member).first() is None
                if alone and not self._solo:
                    tats = {k: float(t) for k, t in conn.execute(_ALL)}
                    with self._cond:
                        self._tats, self._dirty = tats, set()
                elif self._solo and not alone:
                    with self._cond:
                        self._changing = True
                    self._write_back(conn)
                until = now + self.lease + self.horizon if alone else None
                conn.execute(solo, {"m": self.member, "solo": until})
        except BaseException:
            with self._cond:  # the memory stays as it was; decisions wait for the next renewal
                self._changing = False
                self._cond.notify_all()
            raise
        with self._cond:
            if not alone:
                self._tats, self._dirty = {}, set()
            self._solo = alone
            self._deadline = began + self.lease
            self._changing = False
            self._cond.notify_all()

    def _write_back(self, conn: Connection) -> None:
        """What changed in memory becomes the ``rate_limits`` rows (nobody else wrote those
        keys meanwhile); called while decisions wait (``_changing``)."""
        rows = [{"key": k, "tat": self._tats[k]} for k in self._dirty if k in self._tats]
        if rows:
            conn.execute(_PUT, rows)

    def close(self) -> None:
        """Stop renewing and leave: the memory is written back and the membership dropped, so
        the other processes need not wait out its lease."""
        if self._closed.is_set():
            return
        self._closed.set()
        if not self._started:
            return
        try:
            with self._renew_lock, self._begin(exclusive=True) as conn:
                with self._cond:
                    self._changing = True
                if self._solo:
                    self._write_back(conn)
                conn.execute(_LEAVE, {"m": self.member})
        except Exception:  # the database is gone: the lease runs out by itself
            log.warning("rate limits: could not leave the members cleanly", exc_info=True)
        finally:
            with self._cond:
                self._solo = False
                self._changing = False
                self._tats, self._dirty = {}, set()
                self._cond.notify_all()


def _renewing(ref: weakref.ref[RateBudget], closed: threading.Event, every: float) -> None:
    while not closed.wait(every):
        budget = ref()
        if budget is None:
            return
        try:
            budget.renew()
        except Exception:
            log.warning("rate limits: renewal failed; retrying", exc_info=True)
        del budget
