"""Client-side pacing: one call per ``interval``, one create_order per ``create_order_interval``.

Each call *reserves* a send slot under a lock and then sleeps, outside the lock, until its slot.
The lock is held only for arithmetic, never across a sleep or an ``await``, so the same schedule
serialises threads (``Client``) and asyncio tasks (``AsyncClient``) alike, and nobody waits when
the server is not limiting: the first call goes at once, and a later one waits only for what is
left of the interval since the previous send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    """A send schedule for one API token. Share one between clients that use the same token."""

    def __init__(
        self,
        interval: float = 1.0,
        create_order_interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval < 0 or create_order_interval < 0:
            raise ValueError("intervals must not be negative")
        self.interval = interval
        self.create_order_interval = create_order_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_any = float("-inf")
        self._next_create = float("-inf")

    def reserve(self, create_order: bool = False) -> float:
        """Take the next free slot; return how many seconds to wait before sending."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_any)
            if create_order:
                start = max(start, self._next_create)
                self._next_create = start + self.create_order_interval
            self._next_any = start + self.interval
            return start - now

    def hold(self, seconds: float, create_order: bool = False) -> None:
        """The server refused with Retry-After: send nothing for ``seconds``."""
        with self._lock:
            until = self._clock() + max(0.0, seconds)
            self._next_any = max(self._next_any, until)
            if create_order:
                self._next_create = max(self._next_create, until)


class NoPacing(Pacer):
    """Pacing switched off (``rate_limit=False``): never waits, still honours Retry-After."""

    def __init__(self) -> None:
        super().__init__(0.0, 0.0)
