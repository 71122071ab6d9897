"""The whole marketplace listing for a caller, from the cached bytes, and its fast path: the
plain listing answered from memory, on the event loop, when everything it needs is known current
(:class:`MemoryListing`, in front of the application's middlewares)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openclore.api import metrics
from openclore.api.market_cache import Listing, MarketCache, PartsResponse
from openclore.api.request_ids import REQUEST_ID_HEADER, incoming_request_id, request_id
from openclore.api.state import AppState


class AnswersHere(Protocol):
    """What :class:`MemoryListing` asks of the pipeline (:meth:`Pipeline.listing_here`)."""

    def listing_here(self, request: Request) -> Response | None: ...

PATH = "/v1/marketplace"


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


class MemoryListing:
    """The outermost layer of the application: a plain ``GET /v1/marketplace`` (no query, no
    body) that :meth:`Pipeline.listing_here` can answer from memory is sent from here, with what
    the layers it skips would have added (the request id, the count and time in the metrics);
    every other request goes through the application. A request answered here costs the
    listing's bytes and a few dictionary lookups: the routing, the endpoint's machinery and the
    four middlewares' wrapped sends cost as much again on a 5 MB listing (docs/benchmarks.md)."""

    def __init__(self, app: ASGIApp, pipeline: AnswersHere) -> None:
        self.app = app
        self.pipeline = pipeline
        self._counted: tuple[Any, Any] | None = None  # its metrics' series, made on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "GET"
            or scope["query_string"]
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        for name, value in scope["headers"]:  # a body, however announced: the usual way
            if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                await self.app(scope, receive, send)
                return
        answer = self.pipeline.listing_here(Request(scope))
        if answer is None:
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope) or uuid.uuid4().hex
        header = (REQUEST_ID_HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], header]
            await send(message)

        token = request_id.set(rid)  # uvicorn's access line is logged under it
        try:
            await answer(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
        if self._counted is None:
            self._counted = (
                metrics.REQUESTS.labels(PATH, "GET", "200", "0"),
                metrics.LATENCY.labels(PATH),
            )
        self._counted[0].inc()
        self._counted[1].observe(time.perf_counter() - started)
