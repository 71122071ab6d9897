"""Users and API tokens. Tokens are stored as SHA-256 hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, insert, or_, select, update

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.ledger import ensure_wallet
from openclore.market.audit import TOKEN_ISSUE, TOKEN_REVOKE, Actor, record_by
from openclore.market.sessions import end_token_sessions, end_user_sessions
from openclore.store.db import inserted_id, tokens_changed
from openclore.store.schema import api_tokens, users

TOKEN_ALPHABET = string.ascii_letters + string.digits


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(length: int = 32) -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


class UnknownUser(LookupError):
    pass


def create_user(conn: Connection, name: str, now: int, settings: Settings) -> int:
    user_id = inserted_id(conn.execute(insert(users).values(name=name, created_at=now)))
    for currency in settings.currencies:
        ensure_wallet(conn, user_id, currency, settings.address_secret)
    return user_id


def lock_user(conn: Connection, user_id: int) -> None:
    """Take the user's row lock: per-user limits are counted and used under it, so concurrent
    requests of one user (from any number of tokens and processes) take turns."""
    # NO KEY: rows referencing the user (an idempotency key, an audit entry) still go in meanwhile
    conn.execute(
        select(users.c.id).where(users.c.id == user_id).with_for_update(key_share=True)
    ).first()


def find_user(conn: Connection, ref: str | int) -> int:
    """A user by id or by name."""
    query = select(users.c.id)
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        query = query.where(or_(users.c.id == int(ref), users.c.name == str(ref)))
    else:
        query = query.where(users.c.name == ref)
    found = conn.execute(query.order_by(users.c.id)).scalar()
    if found is None:
        raise UnknownUser(f"no user {ref!r}")
    return int(found)


def issue_token(conn: Connection, user_id: int, now: int, token: str | None = None) -> str:
    token = token or new_token()
    conn.execute(
        insert(api_tokens).values(
            user_id=user_id, token_hash=hash_token(token), prefix=token[:8], created_at=now
        )
    )
    return token


def revoke_token(conn: Connection, token: str, now: int) -> bool:
    """Revoke a token given in full (and end the console sessions started with it). Returns
    False if no live token matched."""
    ids = _live_token_ids(
        conn, (api_tokens.c.token_hash == hash_token(token)) & api_tokens.c.revoked_at.is_(None)
    )
    _revoke(conn, ids, now)
    return len(ids) == 1


def _live_token_ids(conn: Connection, where: Any) -> list[int]:
    return [int(i) for i in conn.execute(select(api_tokens.c.id).where(where)).scalars()]


def _revoke(conn: Connection, ids: list[int], now: int) -> None:
    if not ids:
        return
    conn.execute(update(api_tokens).where(api_tokens.c.id.in_(ids)).values(revoked_at=now))
    end_token_sessions(conn, ids)
    tokens_changed(conn)


def token_owner(conn: Connection, token: str) -> int | None:
    """The user a token (live or revoked) was issued to, or None."""
    owner = conn.execute(
        select(api_tokens.c.user_id).where(api_tokens.c.token_hash == hash_token(token))
    ).scalar()
    return None if owner is None else int(owner)


def authenticate(conn: Connection, token: str) -> int | None:
    """The user a live token belongs to, or None."""
    found = authenticate_token(conn, token)
    return None if found is None else found[0]


def authenticate_token(conn: Connection, token: str) -> tuple[int, int] | None:
    """(user id, token id) of a live token, or None."""
    if not token or len(token) > 256:
        return None
    digest = hash_token(token)
    row = conn.execute(
        select(api_tokens.c.id, api_tokens.c.user_id, api_tokens.c.token_hash).where(
            api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None)
        )
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return int(row.user_id), int(row.id)


# ----------------------------------------------------------------------------- passwords, roles

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
MIN_PASSWORD = 8
ROLES = ("user", "admin")


def set_password(conn: Connection, user_id: int, password: str) -> None:
    """Set the user's console password; every session started with the old one ends."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=_hasher.hash(password))
    )
    end_user_sessions(conn, user_id, password_only=True)


def set_role(conn: Connection, user_id: int, role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role: one of {', '.join(ROLES)}")
    conn.execute(update(users).where(users.c.id == user_id).values(role=role))


def check_password(conn: Connection, name: str, password: str) -> int | None:
    """The user whose name and password these are, or None. An unknown name costs a hash
    check too, so timing does not tell which names exist."""
    row = conn.execute(
        select(users.c.id, users.c.password_hash).where(users.c.name == name)
    ).first()
    stored = row.password_hash if row is not None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or stored is None:
        return None
    return int(row.id)


_DUMMY_HASH = _hasher.hash("not a password of anyone")


def list_users(conn: Connection) -> list[dict[str, object]]:
    """Every user with its role and live token prefixes (the operator's view)."""
    live: dict[int, list[str]] = {}
    for t in conn.execute(
        select(api_tokens.c.user_id, api_tokens.c.prefix)
        .where(api_tokens.c.revoked_at.is_(None))
        .order_by(api_tokens.c.id)
    ):
        live.setdefault(int(t.user_id), []).append(str(t.prefix))
    return [
        {
            "id": int(r.id),
            "name": str(r.name),
            "role": str(r.role),
            "password": r.password_hash is not None,
            "tokens": live.get(int(r.id), []),
        }
        for r in conn.execute(
            select(users.c.id, users.c.name, users.c.role, users.c.password_hash).order_by(
                users.c.id
            )
        )
    ]


def revoke_token_prefix(conn: Connection, user_id: int, prefix: str, now: int) -> int:
    """Revoke a user's live tokens that start with ``prefix`` (as the operator sees them), and
    end the console sessions started with them."""
    ids = _live_token_ids(
        conn,
        (api_tokens.c.user_id == user_id)
        & (api_tokens.c.prefix == prefix)
        & api_tokens.c.revoked_at.is_(None),
    )
    _revoke(conn, ids, now)
    return len(ids)


# ----------------------------------------------------------------------------- self-service keys


def my_tokens(conn: Connection, user_id: int) -> list[dict[str, Any]]:
    """The user's live API tokens as the user may see them: prefix and creation time (never
    the token, which is kept only as a hash)."""
    rows = conn.execute(
        select(api_tokens.c.prefix, api_tokens.c.created_at)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
        .order_by(api_tokens.c.id)
    )
    return [{"prefix": str(r.prefix), "created_at": int(r.created_at)} for r in rows]


def create_own_token(conn: Connection, actor: Actor, now: int) -> str:
    """A new API token for the acting user (shown to them once), recorded in the audit log."""
    assert actor.user_id is not None
    token = issue_token(conn, actor.user_id, now)
    record_by(conn, actor, TOKEN_ISSUE, f"user:{actor.user_id}", {"prefix": token[:8]})
    return token


def revoke_own_token(conn: Connection, actor: Actor, prefix: str, now: int) -> None:
    """Revoke the acting user's live tokens starting with ``prefix`` (and the console sessions
    started with them); ``api_key_dont_exist`` when none matches."""
    assert actor.user_id is not None
    if not prefix or len(prefix) > 8 or revoke_token_prefix(conn, actor.user_id, prefix, now) == 0:
        raise MarketError("api_key_dont_exist")
    record_by(conn, actor, TOKEN_REVOKE, f"user:{actor.user_id}", {"prefix": prefix})
