"""Run a gateway name in exactly one process: whoever holds the name's lock serves it, the
others (more ``serve`` workers, more replicas) wait and take over when the holder goes.

The lock is a PostgreSQL session advisory lock on a connection held for as long as the gateway
runs (released by the server when the process dies), or on SQLite an exclusive ``flock`` on a
file next to the database (released by the kernel when the process dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import text

from openclore.config import Settings
from openclore.gateway.server import Gateway
from openclore.store.db import Database

log = logging.getLogger("openclore.gateway")

RETRY_SECONDS = 5.0


class NameLock:
    """A non-blocking, process-lifetime lock on one gateway name."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn: Any = None
        self._fd: int | None = None

    @property
    def key(self) -> int:
        """The name's advisory lock key (a signed 64-bit integer)."""
        key = int.from_bytes(hashlib.sha256(f"gateway:{self.name}".encode()).digest()[:8], "big")
        return key - (1 << 64) if key >= 1 << 63 else key

    def acquire(self) -> bool:
        if self.db.is_postgres:
            # the database itself: behind a transaction pooler, a session lock would stay on a
            # server connection the pooler hands to others
            conn = self.db.direct_engine.connect()
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            )
            conn.commit()
            if got:
                self._conn = conn
            else:
                conn.close()
            return got
        # a file lock in the temporary directory, named after the database's absolute path, so
        # every process on this machine using that database finds the same one (and nothing is
        # written beside the database: a demo leaves nothing in the checkout but its database)
        path = Path(self.db.engine.url.database or "openclore.sqlite").resolve()
        digest = hashlib.sha256(f"{path}\n{self.name}".encode()).hexdigest()[:24]
        lock_path = Path(tempfile.gettempdir()) / f"openclore-gateway-{digest}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                # the connection goes back to the pool, its session (and a lock) would stay
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


async def serve_gateway(db: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Serve ``settings.gateway_name`` whenever this process holds its lock, until ``stop``.

    A port that cannot be bound (another program holds it) is not fatal: the lock goes back (a
    process elsewhere may take the name) and the attempt is repeated every ``RETRY_SECONDS``,
    logged at the first failure and then once a minute."""
    lock = NameLock(db, settings.gateway_name.lower())
    failures = 0
    while not stop.is_set():
        if not await asyncio.to_thread(lock.acquire):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
            continue
        gateway = Gateway(db, settings)
        try:
            try:
                await gateway.start()
            except OSError as exc:
                if failures % max(1, int(60 / RETRY_SECONDS)) == 0:
                    log.error(
                        "gateway %s cannot listen: %s (trying again every %.0f s)",
                        settings.gateway_name,
                        exc,
                        RETRY_SECONDS,
                    )
                failures += 1
            else:
                if failures:
                    log.info(
                        "gateway %s listening after %d failed tries",
                        settings.gateway_name,
                        failures,
                    )
                failures = 0
                await stop.wait()
        finally:
            await gateway.stop()
            await asyncio.to_thread(lock.release)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
