"""The one source of "now". Tests and the sandbox move time without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from sqlalchemy import Connection, Engine

from openclore.store.db import get_meta, set_meta


class Clock(Protocol):
    def now(self) -> float:
        """Current unix time in seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, value: float) -> None:
        with self._lock:
            self._now = value


CLOCK_OFFSET_KEY = "sandbox_clock_offset"


class SandboxClock:
    """System time plus an offset kept in the database, so every API process and replica of a
    sandbox sees the same travelled time. ``/sandbox/advance_time`` moves the offset."""

    def __init__(self, engine: Engine, base: Clock | None = None) -> None:
        self._engine = engine
        self._base = base or SystemClock()

    def offset(self) -> int:
        with self._engine.connect() as conn:
            return get_meta(conn, CLOCK_OFFSET_KEY)

    def now(self) -> float:
        return self._base.now() + self.offset()

    def now_in(self, conn: Connection) -> float:
        """The time, its offset read in the caller's transaction: work inside a transaction takes
        no second connection (behind a transaction pooler with every server connection held by
        such transactions, waiting for one would never end)."""
        return self._base.now() + get_meta(conn, CLOCK_OFFSET_KEY)

    @staticmethod
    def advance(conn: Connection, seconds: int) -> None:
        """Move every process's sandbox clock forward (in the caller's transaction)."""
        set_meta(conn, CLOCK_OFFSET_KEY, get_meta(conn, CLOCK_OFFSET_KEY) + seconds)

    @staticmethod
    def reset(conn: Connection) -> None:
        """Back to real time (in the caller's transaction)."""
        set_meta(conn, CLOCK_OFFSET_KEY, 0)


def now_in(clock: Clock, conn: Connection) -> float:
    """``clock``'s time for work inside ``conn``'s transaction."""
    return clock.now_in(conn) if isinstance(clock, SandboxClock) else clock.now()
