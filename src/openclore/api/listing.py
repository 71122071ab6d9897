"""The whole marketplace listing for a caller, from the cached bytes, and its fast path: the
plain listing answered from memory, on the event loop, when everything it needs is known current."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from openclore.api.market_cache import Listing, MarketCache, PartsResponse
from openclore.api.state import AppState


def listing_response(
    request: Request, listing: Listing, user_id: int | None, mine: list[int]
) -> Response:
    """The whole listing (no query) for a caller, from the cached bytes."""
    if user_id is None:
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(
                listing.anonymous_gzip,
                media_type="application/json",
                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
            )
        return Response(listing.anonymous, media_type="application/json")
    return PartsResponse(MarketCache.parts_for(listing.servers_json, mine))


def known_listing(state: AppState, request: Request, token: str | None) -> Response | None:
    """The plain listing when everything it needs is held in memory and known current (no
    database read, no worker thread), else None: the request then goes the usual way."""
    if request.scope.get("query_string"):
        return None
    versions = state.db.freshness.cached()
    if versions is None:
        return None
    listing = state.market.known(versions.market)
    if listing is None:
        return None
    user_id, mine = None, []
    if token:
        user_id = state.callers.known_user(token, versions.auth)
        if user_id is None:
            return None
        known = state.callers.known_servers(user_id, versions.market)
        if known is None:
            return None
        mine = known
    return listing_response(request, listing, user_id, mine)
