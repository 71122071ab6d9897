"""Web console sessions: a random id in an HttpOnly cookie, its SHA-256 in ``web_sessions``.

Each session carries its own CSRF token, which every form the session posts must send back.

A session lives no longer than the credential it was started with: one started with an API token
ends when that token is revoked (it is looked up with its token, and the revocation deletes it);
one started with a password ends when the password changes; an operator can end all of a user's
sessions at once (``openclore admin user signout``, the console's operator page)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, insert, or_, select

from openclore.market.audit import SIGN_IN, SYSTEM, Actor, record_by
from openclore.store.schema import api_tokens, users, web_sessions

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


def start_session(
    conn: Connection,
    user_id: int,
    now: int,
    token_id: int | None = None,
    *,
    actor: Actor = SYSTEM,
) -> str:
    """A new session for the user, started with the API token ``token_id`` (None: with the
    password), a console sign-in audited as ``actor``'s; returns the cookie value (shown nowhere
    else)."""
    session_id = secrets.token_urlsafe(32)
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
    conn.execute(
        insert(web_sessions).values(
            id_hash=_hash(session_id),
            user_id=user_id,
            token_id=token_id,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + SESSION_SECONDS,
        )
    )
    record_by(conn, actor, SIGN_IN, f"user:{user_id}", {"into": "console"}, about=user_id)
    return session_id


def session_for(conn: Connection, session_id: str | None, now: int) -> Session | None:
    if not session_id or len(session_id) > 128:
        return None
    row = conn.execute(
        select(web_sessions.c.user_id, web_sessions.c.csrf, users.c.name, users.c.role)
        .join(users, users.c.id == web_sessions.c.user_id)
        .outerjoin(api_tokens, api_tokens.c.id == web_sessions.c.token_id)
        .where(
            web_sessions.c.id_hash == _hash(session_id),
            web_sessions.c.expires_at > now,
            # a token's session lives only while its token does
            or_(
                web_sessions.c.token_id.is_(None),
                and_(
                    api_tokens.c.revoked_at.is_(None),
                    api_tokens.c.user_id == web_sessions.c.user_id,
                ),
            ),
        )
    ).first()
    if row is None:
        return None
    return Session(int(row.user_id), str(row.name), str(row.role), str(row.csrf))


def end_session(conn: Connection, session_id: str) -> None:
    conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == _hash(session_id)))


def end_user_sessions(conn: Connection, user_id: int, *, password_only: bool = False) -> int:
    """End a user's sessions (only those started with the password, when it changed); returns
    how many ended."""
    query = delete(web_sessions).where(web_sessions.c.user_id == user_id)
    if password_only:
        query = query.where(web_sessions.c.token_id.is_(None))
    return int(conn.execute(query).rowcount)


def end_token_sessions(conn: Connection, token_ids: list[int]) -> int:
    """End the sessions started with these (revoked) tokens."""
    if not token_ids:
        return 0
    return int(
        conn.execute(delete(web_sessions).where(web_sessions.c.token_id.in_(token_ids))).rowcount
    )
