"""The request pipeline every Clore API endpoint goes through: the sandbox switch, the query's
text check, the in-memory listing fast path, then one worker-thread hop for the rate limit, the
body, the caller's authentication and the handler (under an Idempotency-Key when one is sent);
errors become the Clore error envelope, never a traceback."""

from __future__ import annotations

import hashlib
import logging
from email.utils import formatdate
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from openclore.api import idempotency, metrics
from openclore.api.errors import error_response
from openclore.api.listing import known_listing
from openclore.api.state import AppState, Call, Endpoint, Reader
from openclore.api.transport import BodyTooLarge, client_gone, too_large
from openclore.api.wire import dumps, parse_body
from openclore.config import Settings
from openclore.domain.errors import (
    CloreError,
    InternalError,
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    MissingScope,
    RateLimited,
)
from openclore.domain.text import check_pairs
from openclore.engine.clock import SandboxClock

log = logging.getLogger("openclore.api")

READ_ATTEMPTS = 3


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), media_type="application/json", headers=headers)


def _client_key(request: Request, token: str | None) -> str:
    if token:
        return "t:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    host = request.client.host if request.client else "unknown"
    return "a:" + host


def _rate_headers(decision_reset: float, remaining: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": "1",
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(max(0, round(decision_reset))),
    }


class Pipeline:
    """Runs endpoints for one app (one :class:`AppState`)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings
        # a request answered from memory must not need the database for anything else: not for
        # the time (a sandbox clock's offset), nor for its rate limit (decided in memory while
        # this process is the only one deciding them: see _rate_here)
        self.served_from_memory = not isinstance(state.clock, SandboxClock)
        self.listing_endpoint: Endpoint | None = None  # the one answered from memory

    def register(self, app: FastAPI, prefix: str, ep: Endpoint) -> None:
        """Serve ``ep`` at ``{prefix}/{ep.name}`` (GET and POST)."""
        if ep.memory_listing:
            self.listing_endpoint = ep

        async def endpoint(request: Request) -> Response:
            return await self.run(ep, request)

        endpoint.__name__ = ep.name
        app.add_api_route(
            f"{prefix}/{ep.name}",
            endpoint,
            methods=["GET", "POST"],
            name=ep.name,
            include_in_schema=False,
        )

    async def run(self, ep: Endpoint, request: Request) -> Response:
        settings, state = self.settings, self.state
        mode = settings.http_status
        headers: dict[str, str] = {}
        try:
            if ep.sandbox and not settings.sandbox_enabled:
                raise InvalidEndpoint(
                    "sandbox mode is off (start with --demo or OPENCLORE_SANDBOX=1)"
                )
            if request.scope.get("query_string"):
                check_pairs(request.query_params.multi_items(), "query")
            token = (request.headers.get("auth") or "").strip() or None
            raw = await request.body()
            rated = None
            if ep.memory_listing and self.served_from_memory and not raw:
                rated = self._rate_here(ep, request, token)
                if rated is not None:
                    known = known_listing(state, request, token)
                    if known is not None:
                        return self._from_memory(request, known, rated)
            # one worker-thread hop per request: rate limit, parse, authenticate, run
            headers, result = await run_in_threadpool(
                self._handle, ep, request, token, raw, rated
            )
            request.state.clore_code = 0
            if isinstance(result, Response):
                result.headers.update(headers)
                return result
            result["code"] = 0
            return _json(result, headers)
        except CloreError as exc:
            response = error_response(exc, mode)
            headers = exc.headers
            request.state.clore_code = exc.code
            if isinstance(exc, RateLimited):
                metrics.RATE_LIMITED.labels(ep.name).inc()
        except BodyTooLarge:
            request.state.clore_code = 2
            return too_large(settings.max_body_bytes)
        except ClientDisconnect:
            return client_gone(request.url.path)
        except Exception:  # never a traceback on the wire
            log.exception("internal error on %s", ep.name)
            request.state.clore_code = 1
            response = error_response(InternalError("internal error"), mode)
        response.headers.update(headers)
        return response

    def _check_rate(self, ep: Endpoint, request: Request, token: str | None) -> dict[str, str]:
        settings, state = self.settings, self.state
        interval = settings.rate_limit_interval
        if interval <= 0:
            return {}
        key = _client_key(request, token)
        wall = state.rate_clock.now()
        decision = state.limiter.hit(key, interval, wall)
        if not decision.allowed:
            raise RateLimited(decision.retry_after)
        extra = getattr(settings, ep.extra_interval) if ep.extra_interval else 0
        if extra > 0:
            second = state.limiter.hit(f"{key}:{ep.name}", extra, wall)
            if not second.allowed:
                # a refused create_order does not use up the token's next-second call
                state.limiter.refund(key, interval)
                raise RateLimited(second.retry_after)
        return _rate_headers(decision.reset, 0)

    def listing_here(self, request: Request) -> Response | None:
        """The plain listing (no query, no body) when it is held in memory and its rate limit
        is allowed in memory: the answer with its rate-limit headers and Date, ready to send.
        Else ``None``, nothing taken: the request goes the usual way (a refusal included)."""
        ep = self.listing_endpoint
        if ep is None or not self.served_from_memory:
            return None
        token = (request.headers.get("auth") or "").strip() or None
        known = known_listing(self.state, request, token)
        if known is None:
            return None
        try:
            rated = self._rate_here(ep, request, token)
        except RateLimited:  # answered the usual way
            return None
        if rated is None:
            return None
        return self._from_memory(request, known, rated)

    def _from_memory(
        self, request: Request, known: Response, rated: dict[str, str]
    ) -> Response:
        """The listing held in memory, with its rate-limit headers and the market's Date."""
        request.state.clore_code = 0
        known.headers.update(rated)
        known.headers["Date"] = formatdate(self.state.now(), usegmt=True)
        return known

    def _rate_here(
        self, ep: Endpoint, request: Request, token: str | None
    ) -> dict[str, str] | None:
        """:meth:`_check_rate` when it needs no database (no limits, or this process decides
        them in memory now): its headers (:class:`RateLimited` when refused), or ``None`` when
        it must be decided in the thread."""
        interval = self.settings.rate_limit_interval
        if interval <= 0:
            return {}
        if ep.extra_interval:
            return None
        key = _client_key(request, token)
        decision = self.state.limiter.hit_here(key, interval, self.state.rate_clock.now())
        if decision is None:
            return None
        if not decision.allowed:
            raise RateLimited(decision.retry_after)
        return _rate_headers(decision.reset, 0)

    def _handle(
        self,
        ep: Endpoint,
        request: Request,
        token: str | None,
        raw: bytes,
        rated: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], Any]:
        """``rated``: the headers of the rate limit already decided for this request."""
        headers = self._check_rate(ep, request, token) if rated is None else dict(rated)
        now = self.state.now()
        # the answer's Date is the market's time: a travelled sandbox clock included
        headers["Date"] = formatdate(now, usegmt=True)
        try:
            body = parse_body(raw, ep.array_body)
            return headers, self._dispatch(ep, request, token, body, now)
        except InvalidToken as exc:
            if token and not isinstance(exc, MissingScope):  # a known key keeps its budget
                self._unknown_token(request, token)
            exc.headers = headers
            raise
        except CloreError as exc:
            exc.headers = headers
            raise

    def _unknown_token(self, request: Request, token: str) -> None:
        """An unknown token gets no rate-limit budget of its own (random tokens would each get
        one): its slot is dropped and the call counts against the caller's address instead."""
        state = self.state
        interval = self.settings.rate_limit_interval
        if interval <= 0:
            return
        state.limiter.forget(_client_key(request, token))
        decision = state.limiter.hit(_client_key(request, None), interval, state.rate_clock.now())
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def _dispatch(
        self, ep: Endpoint, request: Request, token: str | None, body: dict[str, Any], now: int
    ) -> Any:
        state = self.state
        database = state.db
        for attempt in range(READ_ATTEMPTS):
            try:
                # the versions are read before the caller: a token revoked after this moment
                # shows as a newer auth version on the next request
                versions = database.freshness.versions()
                with Reader(database) as reader:
                    key = state.callers.key(token, versions.auth, reader) if token else None
                    if key is None and (ep.auth or token):
                        raise InvalidToken("invalid api token")
                    if key is not None:
                        if key.expired(now):
                            raise InvalidToken("api key expired")
                        # refused before anything is read or done
                        if ep.scope is not None and not key.allows(ep.scope):
                            raise MissingScope(ep.scope)
                    user_id = None if key is None else key.user_id
                    if ep.readonly:  # one transaction (if any) for the caller and the answer
                        call = Call(request, body, user_id, now, database, reader, versions, key)
                        return ep.handler(state, call)
                break
            except DBAPIError as exc:
                # a connection the database dropped (restart, pg_terminate_backend): reading
                # again on a fresh one is safe; writes retry in run_write, before their commit
                if not exc.connection_invalidated or attempt + 1 == READ_ATTEMPTS:
                    raise
        call = Call(request, body, user_id, now, database, key=key)
        idem = idempotency.key_of(request)
        if idem is None or user_id is None:
            return ep.handler(state, call)
        return idempotency.run_once(
            database,
            request,
            ep.name,
            idem,
            user_id,
            body,
            self.settings.http_status,
            self.settings.idempotency_ttl,
            lambda: ep.handler(state, call),
        )


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """An unknown path or method is ``invalid endpoint``; any other HTTP or validation error the
    framework raises is ``invalid input``, in the Clore envelope; a client that went away while
    sending its body is logged as such, not as an internal error."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            return error_response(InvalidEndpoint("invalid endpoint"), settings.http_status)
        return error_response(InvalidInput(str(exc.detail)), settings.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidInput("invalid request"), settings.http_status)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _exc: ClientDisconnect) -> Response:
        # any other endpoint (the deposit webhook, the agents', the console's forms)
        return client_gone(request.url.path)
