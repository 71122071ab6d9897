"""Who is calling, from memory: API tokens and each user's own servers, per app instance.

A token's user is remembered with the ``auth_version`` it was read at, and trusted only while that
is still the current version (:mod:`openclore.store.freshness`: revoking a token bumps it, in
every process at once on SQLite, within the notification's delivery on PostgreSQL, and never later
than ``RECHECK_SECONDS``). Only live tokens are remembered: an unknown token is read every time,
so a token issued a moment ago works at once and made-up tokens take no memory. A user's own
server ids (``my_servers`` in the marketplace answer) are remembered the same way against the
``market_version``, which adding or removing a server bumps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Connection

from openclore.market.accounts import hash_token
from openclore.market.api_keys import Key, key_for_token
from openclore.market.servers import own_server_ids

MAX_ENTRIES = 10_000  # per table; a full table is emptied (a cheap, bounded forgetting)


class Callers:
    def __init__(self) -> None:
        self._tokens: dict[str, tuple[Key, int]] = {}  # token digest -> (key, auth version)
        self._servers: dict[int, tuple[int, list[int]]] = {}  # user -> (market version, ids)
        self._lock = threading.Lock()

    def known_user(self, token: str, auth_version: int) -> int | None:
        """The token's user if remembered at ``auth_version``, else None (without reading); a
        key that cannot read, or that expires, is left to the full path."""
        if not token or len(token) > 256:
            return None
        held = self._tokens.get(hash_token(token))
        if held is None or held[1] != auth_version:
            return None
        key = held[0]
        return key.user_id if key.allows("read") and key.expires_at is None else None

    def known_servers(self, user_id: int, market_version: int) -> list[int] | None:
        held = self._servers.get(user_id)
        return held[1] if held is not None and held[0] == market_version else None

    def user(self, token: str, auth_version: int, conn: Callable[[], Connection]) -> int | None:
        """The user a live token belongs to, or None."""
        key = self.key(token, auth_version, conn)
        return None if key is None else key.user_id

    def key(self, token: str, auth_version: int, conn: Callable[[], Connection]) -> Key | None:
        """The live key a token is, or None. ``auth_version`` must have been read before the
        token is looked up (a revocation after it then shows as a newer version)."""
        if not token or len(token) > 256:
            return None
        digest = hash_token(token)
        held = self._tokens.get(digest)
        if held is not None and held[1] == auth_version:
            return held[0]
        key = key_for_token(conn(), token)
        if key is not None:
            with self._lock:
                if len(self._tokens) >= MAX_ENTRIES:
                    self._tokens.clear()
                self._tokens[digest] = (key, auth_version)
        return key

    def own_servers(
        self, user_id: int, market_version: int, conn: Callable[[], Connection]
    ) -> list[int]:
        held = self._servers.get(user_id)
        if held is not None and held[0] == market_version:
            return held[1]
        ids = own_server_ids(conn(), user_id)
        with self._lock:
            if len(self._servers) >= MAX_ENTRIES:
                self._servers.clear()
            self._servers[user_id] = (market_version, ids)
        return ids
