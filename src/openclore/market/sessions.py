"""Web console sessions: a random id in an HttpOnly cookie, its SHA-256 in ``web_sessions``.

Each session carries its own CSRF token, which every form the session posts must send back."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from openclore.store.schema import users, web_sessions

SESSION_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Session:
    user_id: int
    name: str
    role: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def start_session(conn: Connection, user_id: int, now: int) -> str:
    """A new session for the user; returns the cookie value (shown nowhere else)."""
    session_id = secrets.token_urlsafe(32)
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
    conn.execute(
        insert(web_sessions).values(
            id_hash=_hash(session_id),
            user_id=user_id,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + SESSION_SECONDS,
        )
    )
    return session_id


def session_for(conn: Connection, session_id: str | None, now: int) -> Session | None:
    if not session_id or len(session_id) > 128:
        return None
    row = conn.execute(
        select(web_sessions.c.user_id, web_sessions.c.csrf, users.c.name, users.c.role)
        .join(users, users.c.id == web_sessions.c.user_id)
        .where(web_sessions.c.id_hash == _hash(session_id), web_sessions.c.expires_at > now)
    ).first()
    if row is None:
        return None
    return Session(int(row.user_id), str(row.name), str(row.role), str(row.csrf))


def end_session(conn: Connection, session_id: str) -> None:
    conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == _hash(session_id)))
