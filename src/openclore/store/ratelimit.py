"""The ``rate_limits`` table's SQL: one GCRA slot per key (the policy is
:mod:`openclore.api.ratelimit`).

Each key stores a theoretical arrival time ``tat``. :meth:`RateSlots.take` moves it to
``max(tat, now) + interval`` when ``tat - now <= tolerance``, in one atomic UPSERT … RETURNING, so
concurrent requests from any number of workers cannot both slip through.
"""

from __future__ import annotations

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
        params = {
            "key": key,
            "now": now,
            "interval": interval,
            "new_tat": now + interval,
            "tolerance": tolerance,
        }
        with self._engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
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
