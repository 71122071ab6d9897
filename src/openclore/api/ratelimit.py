"""Rate limits held in the database (GCRA), so they hold across processes and replicas.

Each key stores a theoretical arrival time ``tat``. A request at ``now`` is allowed when
``tat - now <= tolerance``; it then moves ``tat`` to ``max(tat, now) + interval``. With
``interval = 1 s`` and ``tolerance = 0.1 s`` a client spacing calls 1 s apart is never refused by
jitter, and two calls in a burst never both pass. One atomic UPSERT … RETURNING decides, so
concurrent requests from any number of workers cannot both slip through.

A row whose ``tat`` lies in the past decides exactly as a missing row would, so such rows are
deleted (at most every :data:`PRUNE_EVERY` seconds per process): the table holds only the keys
seen within the last interval, however many distinct keys callers make up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, TextClause, text

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
PRUNE_EVERY = 10.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until a request would be allowed with a full budget again
    retry_after: float  # seconds until the next request is allowed (0 when allowed)


class RateLimiter:
    """GCRA over the ``rate_limits`` table."""

    def __init__(self, engine: Engine, tolerance: float) -> None:
        self._engine = engine
        self._tolerance = tolerance
        self._sqlite = engine.dialect.name == "sqlite"
        self._pruned_at = 0.0

    def hit(self, key: str, interval: float, now: float) -> Decision:
        params = {
            "key": key,
            "now": now,
            "interval": interval,
            "new_tat": now + interval,
            "tolerance": self._tolerance,
        }
        with self._engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                tat = conn.execute(_UPSERT, params).scalar()
                if tat is None:
                    current = conn.execute(_PEEK, {"key": key}).scalar() or now
                if now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    conn.execute(_PRUNE, {"now": now})
        if tat is not None:
            return Decision(True, 1, 0, max(0.0, tat - now), 0.0)
        wait = max(0.0, float(current) - now - self._tolerance)
        return Decision(False, 1, 0, max(0.0, float(current) - now), wait)

    def forget(self, key: str) -> None:
        """Drop a key's state (its next request is decided as a first one)."""
        self._write(_FORGET, {"key": key})

    def refund(self, key: str, interval: float) -> None:
        """Give back the slot a request took when a later check refused it after all."""
        self._write(_REFUND, {"key": key, "interval": interval})

    def _write(self, statement: TextClause, params: dict[str, object]) -> None:
        with self._engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                conn.execute(statement, params)
