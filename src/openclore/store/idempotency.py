"""Idempotency keys: a request's first answer, stored and replayed for retries with the same key.

A key is *claimed* in a transaction of its own (row ``running``, with a random owner), so a
concurrent twin on any process or replica sees it and waits instead of acting. The use case then
marks it ``done`` with the answer's bytes **inside its own transaction** (:func:`complete`): the
change and the stored answer commit together or not at all. :func:`complete` only succeeds for
the owner that still holds the key; if a stale claim was taken over meanwhile it raises
:class:`KeyLost` and the use case rolls back, so a key never acts twice.
"""

from __future__ import annotations

import contextlib
import random
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from openclore.store.db import Database, run_write
from openclore.store.schema import idempotency_keys

K = idempotency_keys


class KeyLost(Exception):
    """Another attempt took the key over: this one must not commit."""


@dataclass(frozen=True)
class Claim:
    """What to do with a request: ``run`` it (holding ``owner``), ``replay`` a stored answer,
    refuse a ``mismatch`` (same key, another request), or ``wait`` (the first is running)."""

    action: str
    owner: str = ""
    status: int = 200
    body: bytes = b""


def begin(
    db: Database,
    user_id: int,
    key: str,
    endpoint: str,
    request_hash: str,
    now: float,
    ttl: float,
    stale_after: float,
) -> Claim:
    def run(conn: Connection) -> Claim:
        if random.random() < 0.01:  # keys past their time go, a few at a time
            conn.execute(delete(K).where(K.c.created_at < now - ttl))
        where = (K.c.user_id == user_id) & (K.c.key == key)
        row = conn.execute(select(K).where(where).with_for_update()).first()
        if row is not None and row.created_at < now - ttl:
            conn.execute(delete(K).where(where))
            row = None
        owner = secrets.token_hex(16)
        if row is None:
            conn.execute(
                insert(K).values(
                    user_id=user_id,
                    key=key,
                    endpoint=endpoint,
                    request_hash=request_hash,
                    owner=owner,
                    state="running",
                    started_at=now,
                    created_at=now,
                )
            )
            return Claim("run", owner)
        if row.endpoint != endpoint or row.request_hash != request_hash:
            return Claim("mismatch")
        if row.state == "done":
            return Claim("replay", status=int(row.status), body=row.response.encode())
        if row.started_at < now - stale_after:  # its process died before answering
            conn.execute(update(K).where(where).values(owner=owner, started_at=now))
            return Claim("run", owner)
        return Claim("wait")

    for attempt in range(3):
        try:
            return run_write(db, run)
        except IntegrityError:  # a twin inserted the key first: read it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def complete(
    conn: Connection, user_id: int, key: str, owner: str, status: int, body: bytes
) -> None:
    """Store the answer in the caller's transaction; :class:`KeyLost` if no longer ours."""
    done = conn.execute(
        update(K)
        .where(K.c.user_id == user_id, K.c.key == key, K.c.owner == owner, K.c.state == "running")
        .values(state="done", status=status, response=body.decode())
    ).rowcount
    if done != 1:
        raise KeyLost(key)


def finish(db: Database, user_id: int, key: str, owner: str, status: int, body: bytes) -> None:
    """Store an answer that changed nothing (an error), in a transaction of its own."""

    def run(conn: Connection) -> None:
        with contextlib.suppress(KeyLost):
            complete(conn, user_id, key, owner, status, body)

    run_write(db, run)


def release(db: Database, user_id: int, key: str, owner: str) -> None:
    """Give the key up (an internal error): a retry runs the request again."""

    def run(conn: Connection) -> None:
        conn.execute(
            delete(K).where(
                K.c.user_id == user_id, K.c.key == key, K.c.owner == owner, K.c.state == "running"
            )
        )

    run_write(db, run)
