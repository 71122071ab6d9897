"""Console sessions (market/sessions.py) driven directly: what a session row holds, the second it
ends, which credential ends it, and how many rows each way of ending them removes.

Written to kill the mutants `scripts/mutation sessions` found alive: the session's lifetime and
the purge of expired rows at their boundary second, the cookie and CSRF lengths, the 128
character cap on a presented id, a token session of another user, the sign-in's audit entry and
the counts the operator's sign-out reports."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from openclore.market.accounts import create_user, issue_token
from openclore.market.audit import SIGN_IN, SYSTEM
from openclore.market.sessions import (
    SESSION_SECONDS,
    end_session,
    end_token_sessions,
    end_user_sessions,
    session_for,
    start_session,
)
from openclore.store.schema import api_tokens, audit_log, users, web_sessions

from support import Market

pytestmark = pytest.mark.origin("mutant")

NOW = 1_000_000


def person(market: Market, name: str) -> tuple[int, int]:
    """(user id, id of a fresh API token of theirs)."""
    with market.db.write() as conn:
        uid = create_user(conn, name, NOW, market.settings)
        issue_token(conn, uid, NOW)
        token_id = conn.execute(
            select(func.max(api_tokens.c.id)).where(api_tokens.c.user_id == uid)
        ).scalar_one()
    return uid, int(token_id)


def start(market: Market, uid: int, token_id: int | None = None, now: int = NOW) -> str:
    with market.db.write() as conn:
        return start_session(conn, uid, now, token_id)


def found(market: Market, session_id: Any, now: int = NOW) -> Any:
    with market.db.read() as conn:
        return session_for(conn, session_id, now)


def rows(market: Market) -> list[tuple[Any, ...]]:
    with market.db.read() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    web_sessions.c.id_hash,
                    web_sessions.c.user_id,
                    web_sessions.c.token_id,
                    web_sessions.c.created_at,
                    web_sessions.c.expires_at,
                ).order_by(web_sessions.c.created_at, web_sessions.c.id_hash)
            )
        ]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_session_row_holds_the_hash_the_user_the_token_and_a_week(market: Market) -> None:
    uid, token_id = person(market, "ann")
    by_password = start(market, uid)
    by_token = start(market, uid, token_id, now=NOW + 1)
    assert len(by_password) == 43 and len(by_token) == 43  # 32 random bytes, URL-safe
    assert rows(market) == [
        (sha(by_password), uid, None, NOW, NOW + 7 * 86400),
        (sha(by_token), uid, token_id, NOW + 1, NOW + 1 + 7 * 86400),
    ]
    assert SESSION_SECONDS == 7 * 86400
    session = found(market, by_password)
    assert (session.user_id, session.name, session.role, session.admin) == (
        uid,
        "ann",
        "user",
        False,
    )
    assert len(session.csrf) == 32  # 24 random bytes, URL-safe
    assert found(market, by_token).csrf not in ("", session.csrf)


def test_a_sign_in_is_audited_about_the_user(market: Market) -> None:
    uid, _ = person(market, "ann")
    start(market, uid)
    with market.db.read() as conn:
        entry = conn.execute(
            select(
                audit_log.c.actor,
                audit_log.c.user_id,
                audit_log.c.action,
                audit_log.c.target,
                audit_log.c.detail,
            ).where(audit_log.c.action == SIGN_IN)
        ).one()
    assert tuple(entry) == (SYSTEM.name, uid, SIGN_IN, f"user:{uid}", {"into": "console"})


def test_a_session_ends_at_its_last_second(market: Market) -> None:
    uid, _ = person(market, "ann")
    cookie = start(market, uid)
    end = NOW + SESSION_SECONDS
    assert found(market, cookie, end - 1) is not None
    assert found(market, cookie, end) is None


def test_a_new_session_purges_the_expired_ones_and_only_those(market: Market) -> None:
    uid, _ = person(market, "ann")
    old = start(market, uid)
    end = NOW + SESSION_SECONDS
    start(market, uid, now=end)  # the old one ends now: not yet purged
    assert sha(old) in [r[0] for r in rows(market)]
    start(market, uid, now=end + 1)  # now it is past
    assert sha(old) not in [r[0] for r in rows(market)]
    assert len(rows(market)) == 2


def test_a_presented_id_is_at_most_128_characters(market: Market) -> None:
    uid, _ = person(market, "ann")
    for length in (128, 129):
        cookie = "c" * length
        with market.db.write() as conn:
            conn.execute(
                insert(web_sessions).values(
                    id_hash=sha(cookie),
                    user_id=uid,
                    token_id=None,
                    csrf="x",
                    created_at=NOW,
                    expires_at=NOW + 10,
                )
            )
    assert found(market, "c" * 128) is not None
    assert found(market, "c" * 129) is None
    for nothing in (None, ""):
        assert found(market, nothing) is None
    assert found(market, "\udc80") is None  # a lone surrogate from a cookie: no error


def test_a_token_session_lives_while_its_token_does_and_only_its_owners(market: Market) -> None:
    uid, token_id = person(market, "ann")
    _other, other_token = person(market, "bob")
    cookie = start(market, uid, token_id)
    assert found(market, cookie) is not None
    # a session row naming another user's token is not a session
    with market.db.write() as conn:
        conn.execute(
            update(web_sessions)
            .where(web_sessions.c.id_hash == sha(cookie))
            .values(token_id=other_token)
        )
    assert found(market, cookie) is None
    with market.db.write() as conn:
        conn.execute(
            update(web_sessions)
            .where(web_sessions.c.id_hash == sha(cookie))
            .values(token_id=token_id)
        )
        conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=NOW))
    assert found(market, cookie) is None


def test_an_admins_session_says_so(market: Market) -> None:
    uid, _ = person(market, "root")
    with market.db.write() as conn:
        conn.execute(update(users).where(users.c.id == uid).values(role="admin"))
    session = found(market, start(market, uid))
    assert (session.role, session.admin) == ("admin", True)


def test_ending_one_session_leaves_the_others(market: Market) -> None:
    uid, _ = person(market, "ann")
    first, second = start(market, uid), start(market, uid)
    with market.db.write() as conn:
        end_session(conn, first)
    assert found(market, first) is None
    assert found(market, second) is not None


def test_signing_a_user_out_counts_what_ended(market: Market) -> None:
    uid, token_id = person(market, "ann")
    other, _ = person(market, "bob")
    start(market, uid)
    start(market, uid)
    kept = start(market, uid, token_id)
    theirs = start(market, other)
    with market.db.write() as conn:
        assert end_user_sessions(conn, uid, password_only=True) == 2
    assert found(market, kept) is not None
    with market.db.write() as conn:
        assert end_user_sessions(conn, uid) == 1
        assert end_user_sessions(conn, uid) == 0
    assert found(market, kept) is None
    assert found(market, theirs) is not None


def test_revoked_tokens_end_their_sessions_and_no_others(market: Market) -> None:
    uid, token_id = person(market, "ann")
    _, second_token = person(market, "ann2")
    by_token = [start(market, uid, token_id), start(market, uid, token_id)]
    by_password = start(market, uid)
    with market.db.write() as conn:
        assert end_token_sessions(conn, []) == 0
        assert end_token_sessions(conn, [second_token]) == 0
        assert end_token_sessions(conn, [token_id]) == 2
    assert [found(market, c) for c in by_token] == [None, None]
    assert found(market, by_password) is not None
