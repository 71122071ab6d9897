"""The audit log: who did what, when and from where.

Every admin command, API token issue and revoke, server settings change, price change and sign-in
is recorded with :func:`record`, in the same transaction as the change itself. The market's use
cases record their own entries (:func:`record_by`), for whichever entry point called them (the API,
the console, the CLI), from the :class:`Actor` they are given (a change that rolls
back leaves no entry, and no change is committed without its entry). Entries are never updated.

``actor`` names who acted: ``user:<id>`` (an API token's owner), ``admin:<login>`` (the
``openclore admin`` command, with the operating-system login that ran it), ``agent:<server id>``
(a host agent). ``source`` says from where: the client's address, or ``cli@<host>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from openclore.store.schema import audit_log

# the actions this market records (other features add theirs)
ADMIN = "admin."  # prefix of every admin command's action
TOKEN_ISSUE = "token.issue"
TOKEN_REVOKE = "token.revoke"
SERVER_SETTINGS = "server.settings"
SERVER_ADD = "server.add"
PRICE_CHANGE = "order.spot_price"
ORDER_CREATE = "order.create"
ORDER_CANCEL = "order.cancel"
SIGN_IN = "sign_in"

_MAX_TEXT = {"actor": 128, "action": 64, "target": 256, "source": 256}


@dataclass(frozen=True)
class Actor:
    """Who asks a use case for a change, by which credential and from where."""

    name: str  # user:<id> | admin:<login> | agent:<server id> | system
    user_id: int | None = None
    source: str = ""  # the client's address, web@<address>, cli@<host>
    via: str = ""  # the credential: key:<id>:<prefix>, password, session
    # the API key that acts (SPEC §8 scopes): what it may spend per currency and day (None: no
    # limit); orders it creates remember it, and the engine stops them at its limit
    key_id: int | None = None
    spend_limit: tuple[tuple[str, int], ...] | None = None

    @classmethod
    def user(
        cls,
        user_id: int,
        source: str = "",
        via: str = "",
        key_id: int | None = None,
        spend_limit: tuple[tuple[str, int], ...] | None = None,
    ) -> Actor:
        return cls(f"user:{user_id}", user_id, source, via, key_id, spend_limit)


SYSTEM = Actor("system")  # the market itself (tests, the demo world, the engine)


@dataclass(frozen=True)
class Entry:
    id: int
    at: int
    actor: str
    user_id: int | None
    action: str
    target: str
    detail: dict[str, Any]
    source: str


def record(
    conn: Connection,
    actor: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    source: str = "",
    *,
    user_id: int | None = None,
    at: int | None = None,
) -> None:
    """Add one entry, inside the caller's transaction. ``at`` defaults to the wall clock (the
    log records when it happened in the world, even in a time-travelling sandbox)."""
    values = {"actor": actor, "action": action, "target": target, "source": source}
    for key, limit in _MAX_TEXT.items():
        values[key] = values[key][:limit]
    conn.execute(
        insert(audit_log).values(
            at=int(time.time()) if at is None else at,
            user_id=user_id,
            detail=detail or {},
            **values,
        )
    )


def record_by(
    conn: Connection,
    actor: Actor,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    *,
    about: int | None = None,
) -> None:
    """The entry of a use case's change, by ``actor``, about user ``about`` (default: the
    actor's user). An operator's change is recorded as ``admin.<action>``, as every admin
    command is."""
    if actor.name.startswith("admin:") and not action.startswith(ADMIN):
        action = ADMIN + action
    detail = dict(detail or {})
    if actor.via:
        detail.setdefault("via", actor.via)
    user_id = actor.user_id if actor.user_id is not None else about
    record(conn, actor.name, action, target, detail, actor.source, user_id=user_id)


def entries(
    conn: Connection,
    *,
    user_id: int | None = None,
    since: int | None = None,
    limit: int = 1000,
    until: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[Entry]:
    """Newest last: the entries about (or by) ``user_id``, from ``since`` on (and before
    ``until``), whose actor, action and target contain the given texts (the operator's
    search)."""
    query = select(audit_log)
    if user_id is not None:
        query = query.where(audit_log.c.user_id == user_id)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if until is not None:
        query = query.where(audit_log.c.at < until)
    searched = (
        (audit_log.c.actor, actor),
        (audit_log.c.action, action),
        (audit_log.c.target, target),
    )
    for column, text in searched:
        if text:
            query = query.where(column.contains(text, autoescape=True))
    newest = query.order_by(audit_log.c.id.desc()).limit(limit)
    rows = list(conn.execute(newest))
    return [
        Entry(
            id=int(r.id),
            at=int(r.at),
            actor=str(r.actor),
            user_id=None if r.user_id is None else int(r.user_id),
            action=str(r.action),
            target=str(r.target),
            detail=dict(r.detail or {}),
            source=str(r.source),
        )
        for r in reversed(rows)
    ]
