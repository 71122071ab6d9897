"""The callers cache (api/callers.py) on its own: what it remembers, for which version, what it
reads again, and what it never serves from memory. The database lookups it wraps are replaced by
counting stand-ins (their own tests are the API's); freshness and revocation across processes are
tests/store/test_freshness.py's.

Written to kill the mutants `scripts/mutation callers` found alive with the freshness tests
alone."""

from __future__ import annotations

from typing import Any

import pytest

from openclore.api import callers as callers_module
from openclore.api.callers import Callers
from openclore.market.api_keys import ALL_SCOPES, Key

pytestmark = pytest.mark.origin("mutant")


def key(user_id: int, scopes: frozenset[str] = ALL_SCOPES, expires_at: int | None = None) -> Key:
    return Key(
        id=user_id * 10,
        user_id=user_id,
        prefix="p",
        scopes=scopes,
        expires_at=expires_at,
        spend_limit=None,
    )


class Lookups:
    """Stand-ins for the database: tokens → keys, users → server ids, and every read counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, keys: dict[str, Key]) -> None:
        self.keys = keys
        self.servers: dict[int, list[int]] = {}
        self.reads = 0
        self.conn = object()
        monkeypatch.setattr(callers_module, "key_for_token", self._key_for_token)
        monkeypatch.setattr(callers_module, "own_server_ids", self._own_server_ids)

    def connect(self) -> Any:
        self.reads += 1
        return self.conn

    def _key_for_token(self, conn: Any, token: str) -> Key | None:
        assert conn is self.conn
        return self.keys.get(token)

    def _own_server_ids(self, conn: Any, user_id: int) -> list[int]:
        assert conn is self.conn
        return list(self.servers.get(user_id, []))


def test_a_token_is_read_once_per_auth_version(monkeypatch: pytest.MonkeyPatch) -> None:
    db = Lookups(monkeypatch, {"tok": key(7)})
    c = Callers()
    assert c.known_user("tok", 1) is None  # nothing remembered yet, and nothing read
    assert db.reads == 0
    assert c.user("tok", 1, db.connect) == 7 and db.reads == 1
    assert c.key("tok", 1, db.connect) == key(7) and db.reads == 1  # from memory
    assert c.known_user("tok", 1) == 7
    assert c.known_user("tok", 2) is None  # a newer version: not trusted
    assert c.user("tok", 2, db.connect) == 7 and db.reads == 2  # read again
    assert c.known_user("tok", 2) == 7 and c.known_user("tok", 1) is None
    assert c.known_user("other", 2) is None


def test_unknown_empty_and_overlong_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    long_ok, too_long = "a" * 256, "a" * 257
    db = Lookups(monkeypatch, {long_ok: key(3), too_long: key(4), "": key(5)})
    c = Callers()
    # an unknown token is read every time (a token issued a moment ago works at once)
    assert c.user("nobody", 1, db.connect) is None and db.reads == 1
    assert c.user("nobody", 1, db.connect) is None and db.reads == 2
    # empty and over 256 characters: refused without a read, even were they stored
    assert c.key("", 1, db.connect) is None and db.reads == 2
    assert c.key(too_long, 1, db.connect) is None and db.reads == 2
    assert c.known_user(too_long, 1) is None and c.known_user("", 1) is None
    # 256 characters is a token like any other
    assert c.user(long_ok, 1, db.connect) == 3 and db.reads == 3
    assert c.known_user(long_ok, 1) == 3


def test_a_key_that_cannot_read_or_that_expires_is_left_to_the_full_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = Lookups(
        monkeypatch,
        {"rent": key(1, frozenset({"rent"})), "ends": key(2, expires_at=10**10), "ok": key(3)},
    )
    c = Callers()
    for token in ("rent", "ends", "ok"):
        c.key(token, 1, db.connect)
    assert c.known_user("rent", 1) is None  # remembered, but the fast path needs `read`
    assert c.known_user("ends", 1) is None  # and no expiry to check
    assert c.known_user("ok", 1) == 3
    assert c.user("rent", 1, db.connect) == 1 and db.reads == 3  # the full path has it


def test_a_users_servers_are_read_once_per_market_version(monkeypatch: pytest.MonkeyPatch) -> None:
    db = Lookups(monkeypatch, {})
    db.servers = {7: [3, 5]}
    c = Callers()
    assert c.known_servers(7, 1) is None
    assert c.own_servers(7, 1, db.connect) == [3, 5] and db.reads == 1
    assert c.own_servers(7, 1, db.connect) == [3, 5] and db.reads == 1
    assert c.known_servers(7, 1) == [3, 5]
    db.servers[7] = [3]
    assert c.known_servers(7, 2) is None
    assert c.own_servers(7, 2, db.connect) == [3] and db.reads == 2
    assert c.known_servers(7, 2) == [3] and c.known_servers(8, 2) is None


def test_a_full_table_is_emptied_before_the_next_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callers_module, "MAX_ENTRIES", 2)
    db = Lookups(monkeypatch, {"a": key(1), "b": key(2), "c": key(3)})
    c = Callers()
    c.key("a", 1, db.connect)
    c.key("b", 1, db.connect)
    assert (c.known_user("a", 1), c.known_user("b", 1)) == (1, 2)  # full, not yet emptied
    c.key("c", 1, db.connect)
    assert (c.known_user("a", 1), c.known_user("b", 1), c.known_user("c", 1)) == (None, None, 3)
    for user in (1, 2):
        c.own_servers(user, 1, db.connect)
    assert c.known_servers(1, 1) == [] and c.known_servers(2, 1) == []
    c.own_servers(3, 1, db.connect)
    assert (c.known_servers(1, 1), c.known_servers(2, 1), c.known_servers(3, 1)) == (None, None, [])
