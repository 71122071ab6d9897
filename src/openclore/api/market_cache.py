"""The marketplace listing, serialized once per market version and served as bytes.

Per-request serialization of a 10,000-server listing is the whole cost of the endpoint, so each
process keeps the serialized ``servers`` array (and a gzipped anonymous body) keyed by the
``market_version`` counter that every listing-changing transaction bumps. The counter itself is
held in memory (:mod:`openclore.store.freshness`), so a request for a cached listing costs no
database round trip.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openclore.api.wire import dumps
from openclore.config import Settings
from openclore.market.search import SearchIndex, build_index
from openclore.market.servers import marketplace_servers
from openclore.store.db import listing_version

log = logging.getLogger("openclore.market")


@dataclass(frozen=True)
class Listing:
    version: int
    servers_json: bytes  # b'[{...},...]'
    anonymous: bytes  # full body without a caller
    anonymous_gzip: bytes
    servers: list[dict[str, Any]]  # the listing as data (for queries and the web console)
    items_json: list[bytes]  # each server's JSON, in listing order
    _index: list[SearchIndex] = field(default_factory=list)

    @property
    def index(self) -> SearchIndex:
        """The search fields of every server, extracted on the first query of this version (the
        unfiltered listing never pays for it; two threads racing build the same index)."""
        if not self._index:
            self._index.append(build_index(self.servers))
        return self._index[0]


def _serialize(listing: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Each server as JSON; a server whose stored data cannot be serialized is left out (and
    logged) rather than failing the listing for everyone."""
    kept: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for item in listing:
        try:
            parts.append(dumps(item))
        except TypeError as exc:
            log.error("server %s left out of the marketplace: %s", item.get("id"), exc)
            continue
        kept.append(item)
    return kept, parts


class MarketCache:
    def __init__(self, settings: Settings, *, pooled: bool = False) -> None:
        """``pooled``: the database is reached through a transaction pooler (PgBouncer)."""
        self._settings = settings
        self._pooled = pooled
        self._listing: Listing | None = None
        self._lock = threading.Lock()

    def listing(self, conn: Connection) -> Listing:
        """The listing as of ``conn``'s transaction."""
        return self.at(listing_version(conn), lambda: conn)

    def known(self, version: int) -> Listing | None:
        """The listing if it is held at ``version`` (without reading)."""
        cached = self._listing
        return cached if cached is not None and cached.version == version else None

    def at(self, version: int, conn: Callable[[], Connection]) -> Listing:
        """The listing at ``version`` or later: from memory, else read through ``conn()`` (at the
        version that transaction sees)."""
        cached = self._listing
        if cached is not None and cached.version == version:
            return cached
        if self._pooled:
            # behind a transaction pooler the transaction reads once before waiting for the
            # lock: it then holds its server connection, so the thread holding the lock never
            # waits for one that threads waiting for the lock hold (with every server connection
            # so held, a pool deadlock until PgBouncer's query_wait_timeout, two minutes).
            # Not without one: there every waiter would take one of the process's own pool
            # connections while it waits, and a burst of listing reads left writes none
            listing_version(conn())
        with self._lock:
            reader = conn()
            version = listing_version(reader)  # what this transaction sees (maybe newer)
            cached = self._listing
            if cached is not None and cached.version == version:
                return cached
            kept, items = _serialize(marketplace_servers(reader, self._settings))
            servers_json = b"[" + b",".join(items) + b"]"
            anonymous = b"".join(self.parts_for(servers_json, []))
            cached = Listing(
                version,
                servers_json,
                anonymous,
                gzip.compress(anonymous, 6),
                kept,
                items,
            )
            self._listing = cached
            return cached

    @staticmethod
    def query_parts(
        listing: Listing, positions: list[int], total: int, my_servers: list[int]
    ) -> list[bytes]:
        """The body of a marketplace query: the chosen servers' cached JSON, joined."""
        return [
            b'{"servers":[',
            b",".join(listing.items_json[i] for i in positions),
            b'],"my_servers":'
            + dumps(my_servers)
            + b',"total":'
            + str(total).encode()
            + b',"code":0}',
        ]

    @staticmethod
    def parts_for(servers_json: bytes, my_servers: list[int]) -> list[bytes]:
        """The body for a caller, as parts sent one after another (the listing is not copied)."""
        return [
            b'{"servers":',
            servers_json,
            b',"my_servers":' + dumps(my_servers) + b',"code":0}',
        ]


class PartsResponse(Response):
    """A JSON response whose body is sent as several ASGI messages without joining them."""

    media_type = "application/json"

    def __init__(self, parts: list[bytes], headers: dict[str, str] | None = None) -> None:
        super().__init__(b"", headers=headers)
        self.parts = parts
        self.headers["content-length"] = str(sum(len(p) for p in parts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        for i, part in enumerate(self.parts):
            await send(
                {"type": "http.response.body", "body": part, "more_body": i < len(self.parts) - 1}
            )
