"""Rate limits held in the database (GCRA), so they hold across processes and replicas.

Each key stores a theoretical arrival time ``tat``. A request at ``now`` is allowed when
``tat - now <= tolerance``; it then moves ``tat`` to ``max(tat, now) + interval``. With
``interval = 1 s`` and ``tolerance = 0.1 s`` a client spacing calls 1 s apart is never refused by
jitter, and two calls in a burst never both pass. One atomic UPSERT … RETURNING decides
(:mod:`openclore.store.ratelimit`), so concurrent requests from any number of workers cannot both
slip through.

A row whose ``tat`` lies in the past decides exactly as a missing row would, so such rows are
deleted (at most every :data:`PRUNE_EVERY` seconds per process): the table holds only the keys
seen within the last interval, however many distinct keys callers make up.

A serving process decides through its database's :class:`~openclore.store.ratelimit.RateBudget`:
in memory while it is the only process deciding for that database, in the table otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from openclore.store.ratelimit import RateBudget, RateSlots

PRUNE_EVERY = 10.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until a request would be allowed with a full budget again
    retry_after: float  # seconds until the next request is allowed (0 when allowed)


class RateLimiter:
    """GCRA over the ``rate_limits`` table (an engine), or over a process's
    :class:`RateBudget` of it."""

    def __init__(self, slots: Engine | RateBudget, tolerance: float) -> None:
        self._slots = slots if isinstance(slots, RateBudget) else RateSlots(slots)
        self._tolerance = tolerance
        self._pruned_at = 0.0

    def hit(self, key: str, interval: float, now: float) -> Decision:
        prune = now - self._pruned_at >= PRUNE_EVERY
        allowed, tat = self._slots.take(key, interval, now, self._tolerance, prune=prune)
        if prune:
            self._pruned_at = now
        return self._decision(allowed, tat, now)

    def hit_here(self, key: str, interval: float, now: float) -> Decision | None:
        """:meth:`hit` when the process decides in memory now (nothing waits for the database:
        for the event loop), else ``None`` and nothing is taken."""
        if not isinstance(self._slots, RateBudget):
            return None
        prune = now - self._pruned_at >= PRUNE_EVERY
        taken = self._slots.take_here(key, interval, now, self._tolerance, prune=prune)
        if taken is None:
            return None
        if prune:
            self._pruned_at = now
        return self._decision(*taken, now)

    def _decision(self, allowed: bool, tat: float, now: float) -> Decision:
        if allowed:
            return Decision(True, 1, 0, max(0.0, tat - now), 0.0)
        wait = max(0.0, tat - now - self._tolerance)
        return Decision(False, 1, 0, max(0.0, tat - now), wait)

    def forget(self, key: str) -> None:
        """Drop a key's state (its next request is decided as a first one)."""
        self._slots.forget(key)

    def refund(self, key: str, interval: float) -> None:
        """Give back the slot a request took when a later check refused it after all."""
        self._slots.refund(key, interval)
