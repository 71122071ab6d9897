"""The marketplace listing, serialized once per market version and served as bytes.

Per-request serialization of a 10,000-server listing is the whole cost of the endpoint, so each
process keeps the serialized ``servers`` array (and a gzipped anonymous body) keyed by the
``market_version`` counter that every listing-changing transaction bumps. A request costs one
indexed read of that counter, plus the caller's own server ids when authenticated.
"""

from __future__ import annotations

import gzip
import logging
import threading
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, select
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openclore.config import Settings
from openclore.domain.specs import clean_gpu_array, clean_specs
from openclore.market.servers import price_map, prices_of
from openclore.store.db import MARKET_VERSION, get_meta
from openclore.store.schema import orders, servers

log = logging.getLogger("openclore.market")


@dataclass(frozen=True)
class Listing:
    version: int
    servers_json: bytes  # b'[{...},...]'
    anonymous: bytes  # full body without a caller
    anonymous_gzip: bytes


def build_servers(conn: Connection, settings: Settings) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(servers)
        .where(
            servers.c.removed_at.is_(None),
            servers.c.visibility == "public",
            servers.c.online.is_(True),
        )
        .order_by(servers.c.id)
    ).all()
    prices = prices_of(conn, (r.id for r in rows))
    rented = set(
        conn.execute(
            select(orders.c.server_id).where(orders.c.expired.is_(False), orders.c.spot.is_(False))
        ).scalars()
    )
    out = []
    for r in rows:
        on_demand = price_map(prices[r.id], 0, settings.currencies, all_coins=False)
        spot = price_map(prices[r.id], 1, settings.currencies, all_coins=False)
        if not on_demand and not spot:
            continue  # nothing to rent it with
        out.append(
            {
                "id": r.id,
                "owner": r.owner_id,
                "mrl": r.mrl_hours,
                "price": {"on_demand": on_demand, "spot": spot},
                "rented": r.id in rented,
                "specs": clean_specs(r.specs),
                "allowed_coins": [c for c in settings.currencies if c in on_demand or c in spot],
                "gpu_array": clean_gpu_array(r.gpu_array),
                "reliability": r.reliability,
                "rating": {"avg": r.rating_avg, "cnt": r.rating_cnt},
            }
        )
    return out


def _serialize(listing: list[dict[str, Any]]) -> bytes:
    """The listing as JSON; a server whose stored data cannot be serialized is left out (and
    logged) rather than failing the listing for everyone."""
    try:
        return orjson.dumps(listing)
    except TypeError:
        parts = []
        for item in listing:
            try:
                parts.append(orjson.dumps(item))
            except TypeError as exc:
                log.error("server %s left out of the marketplace: %s", item.get("id"), exc)
        return b"[" + b",".join(parts) + b"]"


class MarketCache:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._listing: Listing | None = None
        self._lock = threading.Lock()

    def listing(self, conn: Connection) -> Listing:
        version = get_meta(conn, MARKET_VERSION)
        cached = self._listing
        if cached is not None and cached.version == version:
            return cached
        with self._lock:
            cached = self._listing
            if cached is not None and cached.version == version:
                return cached
            servers_json = _serialize(build_servers(conn, self._settings))
            anonymous = b"".join(self.parts_for(servers_json, []))
            cached = Listing(version, servers_json, anonymous, gzip.compress(anonymous, 6))
            self._listing = cached
            return cached

    @staticmethod
    def parts_for(servers_json: bytes, my_servers: list[int]) -> list[bytes]:
        """The body for a caller, as parts sent one after another (the listing is not copied)."""
        return [
            b'{"servers":',
            servers_json,
            b',"my_servers":' + orjson.dumps(my_servers) + b',"code":0}',
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
