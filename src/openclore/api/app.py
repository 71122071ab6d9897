"""The HTTP application: Clore API v1 under /v1, sandbox extensions under /sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from openclore.api import event_endpoints, idempotency, metrics
from openclore.api.agent_api import install_agent_api
from openclore.api.callers import Callers
from openclore.api.errors import error_response
from openclore.api.event_endpoints import StreamSlots
from openclore.api.market_cache import Listing, MarketCache, PartsResponse
from openclore.api.openapi import install_openapi
from openclore.api.ratelimit import RateLimiter
from openclore.api.request_ids import RequestId
from openclore.api.transport import BodyLimit, BodyTooLarge, DateHeader, too_large
from openclore.api.wire import dumps, parse_body, parse_object
from openclore.config import Settings
from openclore.domain.errors import (
    CloreError,
    InternalError,
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    MarketError,
    RateLimited,
)
from openclore.domain.money import to_units
from openclore.domain.text import check_pairs
from openclore.engine import housekeeping
from openclore.engine.clock import Clock, SandboxClock, SystemClock
from openclore.engine.ticker import tick
from openclore.engine.webhooks import Deliverer
from openclore.gateway.service import serve_gateway
from openclore.market import audit, inputs, search
from openclore.market import gigaspot as gigaspot_service
from openclore.market import logs as logs_service
from openclore.market import orders as order_service
from openclore.market import payments as payment_service
from openclore.market import servers as server_service
from openclore.market import statements as statement_service
from openclore.market import wallets as wallet_service
from openclore.market import webhooks as webhook_service
from openclore.market import withdrawals as withdrawal_service
from openclore.market.demo import reset_world
from openclore.market.stats import MarketFigures, market_figures
from openclore.store.db import Database, run_write
from openclore.store.freshness import Versions
from openclore.store.migrate import current_revision, head_revision

log = logging.getLogger("openclore.api")
log_engine = logging.getLogger("openclore.engine")


class Reader:
    """A request's read transaction, begun only when something has to be read (a request that
    is answered from memory never opens one); one for the caller and the answer."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._stack = contextlib.ExitStack()
        self._conn: Connection | None = None

    def __call__(self) -> Connection:
        if self._conn is None:
            self._conn = self._stack.enter_context(self._db.read())
        return self._conn

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn = None
        self._stack.__exit__(*exc)  # type: ignore[arg-type]


@dataclass
class Call:
    """What a handler gets: the parsed request, the caller and the current time."""

    request: Request
    body: dict[str, Any]
    user_id: int | None
    now: int
    db: Database
    reader: Reader | None = None  # the read transaction the caller was authenticated in
    versions: Versions | None = None  # the market's versions when the request came in

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: the request's own one when it has it (read-only endpoints)."""
        if self.reader is not None:
            yield self.reader()
        else:
            with self.db.read() as conn:
                yield conn


Handler = Callable[["AppState", Call], Any]


def _integrity_to_market(exc: Exception) -> CloreError:
    text = str(exc)
    # PostgreSQL names the index; SQLite names the columns
    if "uq_orders_spot_live" in text or "orders.server_id, orders.user_id" in text:
        return MarketError("you_already_have_spot_order")
    if "uq_orders_on_demand_live" in text or "orders.server_id" in text:
        return MarketError("server-already-rented")
    if "uq_servers_owner_name_live" in text:
        return MarketError("server_name_taken")
    if "balance_not_negative" in text:
        return MarketError("not_enough_balance")
    log.error("integrity error: %s", text)
    return InternalError("conflicting concurrent change, please retry")


class AppState:
    def __init__(
        self, settings: Settings, db: Database, clock: Clock, rate_clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        # rate limits follow the wall clock, even in a time-travelling sandbox
        self.rate_clock: Clock = rate_clock or SystemClock()
        self.limiter = RateLimiter(db.engine, settings.rate_limit_tolerance)
        self.market = MarketCache(settings)
        self.callers = Callers()
        self.streams = StreamSlots()  # open event streams per user

    def now(self) -> int:
        return int(self.clock.now())

    def tick(self, now: int) -> None:
        """One engine tick, timed for the metrics."""
        started = time.perf_counter()
        try:
            report = tick(
                self.db, now, self.settings.agent_timeout, self.settings.reliability_interval
            )
        except Exception:
            metrics.TICK_FAILURES.inc()
            raise
        metrics.TICK_SECONDS.observe(time.perf_counter() - started)
        metrics.ORDERS_SETTLED.inc(report.settled)

    def figures(self) -> MarketFigures:
        with self.db.read() as conn:
            return market_figures(conn)

    def db_write(
        self,
        fn: Callable[[Connection], Any],
        answer: Callable[[Any], dict[str, Any]] | None = None,
    ) -> Any:
        """Run one use case in one transaction (retried on deadlock); a unique index that
        refused a concurrent twin is reported as the market rule it protects. Under an
        Idempotency-Key the request's answer (``answer(result)``, else the result itself) is
        stored in the same transaction."""
        run, committed = idempotency.bind(fn, answer)
        try:
            out = run_write(self.db, run)
        except IntegrityError as exc:
            raise _integrity_to_market(exc) from None
        committed()
        return out


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), media_type="application/json", headers=headers)


def _bool_query(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidInput(f"{name}: must be true or false")


# ----------------------------------------------------------------------------- endpoint bodies


def _wallets(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return wallet_service.wallets(conn, _uid(call), state.settings)


def _my_servers(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return server_service.my_servers(conn, _uid(call), state.settings)


def _server_config(state: AppState, call: Call) -> dict[str, Any]:
    body = dict(call.body)
    if "server_name" not in body and "server_name" in call.request.query_params:
        body["server_name"] = call.request.query_params["server_name"]
    req = inputs.validate_body(inputs.ServerNameRequest, body)
    with call.read() as conn:
        return server_service.server_config(conn, _uid(call), req.server_name, state.settings)


def _marketplace(state: AppState, call: Call) -> Response:
    params = call.request.query_params
    query = None
    if search.has_query(params):  # the extension; no parameter: the cached listing as it is
        query = search.parse_query(
            params, state.settings.currencies, state.settings.default_currency
        )
    assert call.reader is not None and call.versions is not None  # a read-only endpoint
    market_version = call.versions.market
    listing = state.market.at(market_version, call.reader)
    mine: list[int] = []
    if call.user_id is not None:
        mine = state.callers.own_servers(call.user_id, market_version, call.reader)
    if query is not None:
        found = search.search(listing.index, query)
        return PartsResponse(state.market.query_parts(listing, found.positions, found.total, mine))
    return _listing_response(call.request, listing, call.user_id, mine)


def _listing_response(
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


def _known_listing(state: AppState, request: Request, token: str | None) -> Response | None:
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
    return _listing_response(request, listing, user_id, mine)


def _my_orders(state: AppState, call: Call) -> dict[str, Any]:
    completed = _bool_query(call.request, "return_completed")
    with call.read() as conn:
        return order_service.my_orders(conn, _uid(call), completed, state.settings)


def _spot_marketplace(state: AppState, call: Call) -> dict[str, Any]:
    raw = call.request.query_params.get("market", call.body.get("market"))
    if isinstance(raw, bool) or raw is None:
        raise InvalidInput("market: a server id is required")
    try:
        server_id = int(str(raw))
    except ValueError:
        raise InvalidInput("market: must be a server id (integer)") from None
    if not 0 <= server_id < 2**31:
        return {"exists": False}
    with call.read() as conn:
        return server_service.spot_marketplace(conn, server_id, call.user_id, state.settings)


def _source(call: Call) -> str:
    return call.request.client.host if call.request.client else ""


def _actor(call: Call) -> audit.Actor:
    """The caller, as the use cases record it in the audit log."""
    token = (call.request.headers.get("auth") or "").strip()
    return audit.Actor.user(_uid(call), _source(call), f"token:{token[:8]}" if token else "")


def _set_server_settings(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.SetServerSettingsRequest, call.body)

    def run(conn: Connection) -> None:
        server_service.set_server_settings(
            conn, _uid(call), req, state.settings, call.now, actor=_actor(call)
        )

    state.db_write(run)
    return {}


def _set_spot_price(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.SetSpotPriceRequest, call.body)
    desired = to_units(req.desired_price)
    if desired <= 0:
        raise InvalidInput("desired_price: must be positive")

    def run(conn: Connection) -> None:
        order_service.set_spot_price(
            conn, _uid(call), req.order_id, desired, state.settings, call.now, actor=_actor(call)
        )

    state.db_write(run)
    return {}


def _cancel_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.CancelOrderRequest, call.body)
    state.db_write(
        lambda conn: order_service.cancel_order(
            conn, _uid(call), req.id, req.issue, call.now, req.rating, actor=_actor(call)
        )
    )
    return {}


def _cancel_orders(state: AppState, call: Call) -> dict[str, Any]:
    """Each order cancelled in its own transaction: one that fails leaves the others done.
    ``failed_to_cancel`` (live Clore: the ids, as strings) plus ``results``, per order."""
    req = inputs.validate_body(inputs.CancelOrdersRequest, call.body)
    results: list[dict[str, Any]] = []
    seen: set[int] = set()
    for order_id in req.order_ids:
        if order_id in seen:
            continue
        seen.add(order_id)
        try:
            state.db_write(
                functools.partial(
                    order_service.cancel_order,
                    user_id=_uid(call),
                    order_id=order_id,
                    issue=None,
                    now=call.now,
                    actor=_actor(call),
                )
            )
            results.append({"id": order_id, "cancelled": True})
        except MarketError as exc:
            results.append({"id": order_id, "cancelled": False, "error": exc.name})
    return {
        "failed_to_cancel": [str(r["id"]) for r in results if not r["cancelled"]],
        "results": results,
    }


def _renter_fees(state: AppState, call: Call) -> dict[str, Any]:
    return gigaspot_service.renter_fees(state.settings)


def _poh_balance(state: AppState, call: Call) -> dict[str, Any]:
    return gigaspot_service.poh_balance()


def _snapshot_url(call: Call) -> str:
    return str(call.request.base_url).rstrip("/") + "/gigaspot/v1/snapshot"


def _get_gigaspot(state: AppState, call: Call) -> dict[str, Any]:
    """Live Clore answers with a URL the snapshot is fetched from (clients fetch it without the
    API token); openclore serves it at /gigaspot/v1/snapshot and also sends it inline."""
    with call.read() as conn:
        snapshot = gigaspot_service.snapshot(conn, state.settings)
    return {
        "my_user_id": call.user_id,
        "v1_snapshot_url": _snapshot_url(call),
        "creation_fees": gigaspot_service.creation_fees(state.settings),
        "snapshot": snapshot,
    }


def _create_gigaspot_orders(state: AppState, call: Call) -> dict[str, Any]:
    """Each bid in its own transaction, like a create_order each."""
    req = inputs.validate_body(inputs.CreateGigaspotOrdersRequest, call.body)
    created: list[dict[str, Any]] = []
    failed_oc: list[int] = []
    failed: list[int] = []
    too_low: list[int] = []
    for item in req.orders:
        try:
            order_id, problem = state.db_write(
                functools.partial(
                    gigaspot_service.create_order,
                    user_id=_uid(call),
                    item=item,
                    settings=state.settings,
                    now=call.now,
                    actor=_actor(call),
                )
            )
        except MarketError as exc:
            (too_low if exc.name in gigaspot_service.TOO_LOW else failed).append(
                item.renting_server
            )
            continue
        created.append({"server": item.renting_server, "order_id": order_id})
        if problem is not None:
            failed_oc.append(item.renting_server)
            created[-1]["oc_error"] = problem
    return {
        "failed_to_oc_servers": failed_oc,
        "failed_to_rent_servers": failed,
        "too_low_bids_servers": too_low,
        "orders": created,
    }


def _edit_gigaspot_order(conn: Connection, state: AppState, call: Call, item: Any) -> Any:
    return gigaspot_service.edit_order(
        conn,
        user_id=_uid(call),
        item=item,
        settings=state.settings,
        now=call.now,
        actor=_actor(call),
    )


def _edit_gigaspot_orders(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.EditGigaspotOrdersRequest, call.body)
    done: list[int] = []
    failed: list[int] = []
    too_low: list[int] = []
    failed_oc: list[int] = []
    for item in req.orders:
        try:
            problem = state.db_write(
                functools.partial(_edit_gigaspot_order, state=state, call=call, item=item)
            )
        except MarketError as exc:
            (too_low if exc.name in gigaspot_service.TOO_LOW_EDIT else failed).append(item.order_id)
            continue
        done.append(item.order_id)
        if problem is not None:
            failed_oc.append(item.order_id)
    return {
        "success_to_update_ids": done,
        "failed_to_update_ids": failed,
        "too_low_bid_ids": too_low,
        "failed_to_oc_ids": failed_oc,
    }


def _create_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.CreateOrderRequest, call.body)

    def run(conn: Connection) -> dict[str, Any]:
        order_id = order_service.create_order(
            conn, _uid(call), req, state.settings, call.now, actor=_actor(call)
        )
        # Connection fields are left out here: the agent publishes them after start, and the
        # clore-ai SDK's Order model cannot load them as the lists they are (my_orders has them).
        order = order_service.order_detail(conn, order_id, state.settings)
        for field in ("pub_cluster", "tcp_ports", "http_port", "http_pub"):
            order.pop(field, None)
        answer = {"order_id": order_id, "order": order}
        dumps(answer)  # an answer that cannot be sent rolls the order back (never a silent rent)
        return answer

    result: dict[str, Any] = state.db_write(run)
    return result


def _add_server(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.AddServerRequest, call.body)

    def run(conn: Connection) -> tuple[int, str]:
        return server_service.add_server(
            conn, _uid(call), req.name, call.now, state.settings, actor=_actor(call)
        )

    server_id, token = state.db_write(run, answer=lambda out: {"id": out[0], "init_token": out[1]})
    return {"id": server_id, "init_token": token}


def _sandbox_advance(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.SandboxAdvanceRequest, call.body)

    state.db_write(lambda conn: SandboxClock.advance(conn, req.seconds))
    now = state.now()
    state.tick(now)
    return {"now": now}


def _sandbox_reset(state: AppState, call: Call) -> dict[str, Any]:
    """Throw the market away and restore the demo world, with the clock back to real time."""
    state.db_write(lambda conn: reset_world(conn, state.settings, int(time.time())))
    return {}


def _sandbox_deposit(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.SandboxDepositRequest, call.body)
    amount = to_units(req.amount)
    state.db_write(
        lambda conn: wallet_service.deposit(
            conn, _uid(call), req.currency, amount, state.settings, call.now
        )
    )
    return {}


LOGS_WAIT = 10.0  # seconds an order_logs request waits for the agent's answer


def _order_logs(state: AppState, call: Call) -> dict[str, Any]:
    order_id = _int_param(call, "id")
    if order_id is None:
        raise InvalidInput("id: the order id is required")
    tail = _int_param(call, "tail", logs_service.DEFAULT_TAIL)
    assert tail is not None
    if not 0 < order_id < 2**31:
        raise MarketError("order_dont_exist")
    wall = int(time.time())  # the question's age is real time, whatever the market's clock
    asked = state.db_write(
        lambda conn: logs_service.ask_logs(conn, _uid(call), order_id, tail, wall, call.now)
    )
    if isinstance(asked, list):  # a demo server answers at once
        return {"logs": asked}
    request_id = asked
    deadline = time.monotonic() + LOGS_WAIT
    while time.monotonic() < deadline:
        with state.db.read() as conn:
            lines = logs_service.answer_of(conn, request_id)
        if lines is not None:
            return {"logs": lines}
        time.sleep(0.05)
    raise MarketError("agent_did_not_answer")


def _param(call: Call, name: str) -> Any:
    """A parameter from the query string, else from the JSON body."""
    return call.request.query_params.get(name, call.body.get(name))


def _int_param(call: Call, name: str, default: int | None = None) -> int | None:
    raw = _param(call, name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not str(raw).lstrip("-").isdigit() or len(str(raw)) > 15:
        raise InvalidInput(f"{name}: must be an integer")
    return int(str(raw))


def _str_param(call: Call, name: str) -> str | None:
    raw = _param(call, name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise InvalidInput(f"{name}: must be a string")
    return str(raw)


def _transactions(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return statement_service.transactions(
            conn,
            _uid(call),
            state.settings,
            currency=_str_param(call, "currency"),
            since=_int_param(call, "since"),
            until=_int_param(call, "until"),
            limit=_int_param(call, "limit", 100) or 0,
            cursor=_str_param(call, "cursor"),
        )


def _statement(state: AppState, call: Call) -> dict[str, Any]:
    currency = _str_param(call, "currency") or state.settings.default_currency
    month = _str_param(call, "month") or statement_service.current_month(call.now)
    with call.read() as conn:
        return statement_service.monthly_statement(
            conn, _uid(call), currency, month, state.settings
        )


def _withdraw(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.WithdrawRequest, call.body)
    amount = to_units(req.amount)

    def run(conn: Connection) -> dict[str, Any]:
        wid = withdrawal_service.request_withdrawal(
            conn,
            _uid(call),
            req.currency,
            amount,
            req.address,
            state.settings,
            call.now,
            actor=_actor(call),
        )
        mine = withdrawal_service.my_withdrawals(conn, _uid(call))["withdrawals"]
        return {"withdrawal": next(w for w in mine if w["id"] == wid)}

    result: dict[str, Any] = state.db_write(run)
    return result


def _withdrawals(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return withdrawal_service.my_withdrawals(conn, _uid(call))


def _uid(call: Call) -> int:
    assert call.user_id is not None
    return call.user_id


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    auth: bool = True  # False: token optional
    extra_interval: str | None = None  # name of an extra per-endpoint rate limit setting
    readonly: bool = False  # answered inside the caller's authentication transaction
    sandbox: bool = False
    array_body: str | None = None  # a JSON array body arrives as {array_body: [...]}


V1_ENDPOINTS = [
    Endpoint("wallets", _wallets, readonly=True),
    Endpoint("my_servers", _my_servers, readonly=True),
    Endpoint("server_config", _server_config, readonly=True),
    Endpoint("marketplace", _marketplace, auth=False, readonly=True),
    Endpoint("my_orders", _my_orders, readonly=True),
    Endpoint("order_logs", _order_logs),
    Endpoint("spot_marketplace", _spot_marketplace, auth=False, readonly=True),
    Endpoint("set_server_settings", _set_server_settings),
    Endpoint("set_spot_price", _set_spot_price),
    Endpoint("cancel_order", _cancel_order),
    Endpoint("create_order", _create_order, extra_interval="create_order_interval"),
    Endpoint("add_server", _add_server),
    # events, webhooks and alerts (openclore extensions)
    Endpoint("events", event_endpoints.events, readonly=True),
    Endpoint("webhooks", event_endpoints.webhooks),
    Endpoint("delete_webhook", event_endpoints.delete_webhook),
    Endpoint("ping_webhook", event_endpoints.ping_webhook),
    Endpoint("webhook_deliveries", event_endpoints.webhook_deliveries, readonly=True),
    Endpoint("set_alerts", event_endpoints.set_alerts),
    Endpoint("alerts", event_endpoints.alerts, readonly=True),
    Endpoint("cancel_orders", _cancel_orders),
    Endpoint("renter_fees", _renter_fees, auth=False, readonly=True),
    Endpoint("poh_balance", _poh_balance, readonly=True),
    Endpoint("get_gigaspot", _get_gigaspot, readonly=True),
    Endpoint(
        "create_gigaspot_orders",
        _create_gigaspot_orders,
        extra_interval="create_order_interval",
        array_body="orders",
    ),
    Endpoint("edit_gigaspot_orders", _edit_gigaspot_orders, array_body="orders"),
    Endpoint("transactions", _transactions, readonly=True),
    Endpoint("statement", _statement, readonly=True),
    Endpoint("withdraw", _withdraw),
    Endpoint("withdrawals", _withdrawals, readonly=True),
]

SANDBOX_ENDPOINTS = [
    Endpoint("advance_time", _sandbox_advance, sandbox=True),
    Endpoint("deposit", _sandbox_deposit, sandbox=True),
    Endpoint("reset", _sandbox_reset, sandbox=True),
]


# ----------------------------------------------------------------------------- the app


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


async def _ticker(state: AppState) -> None:
    """The engine's tick every ``tick_interval`` seconds, in every process (ticks are
    idempotent and replica-safe)."""
    interval = state.settings.tick_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(state.tick, state.now())
        except Exception:  # keep ticking; the next tick settles whatever this one missed
            log_engine.exception("engine tick failed")


async def _housekeeper(state: AppState) -> None:
    """Old events and finished webhook deliveries go (:mod:`openclore.engine.housekeeping`),
    soon after the process starts and then every hour."""
    await asyncio.sleep(housekeeping.FIRST_DELAY)
    while True:
        try:
            purged = await run_in_threadpool(
                housekeeping.purge,
                state.db,
                state.now(),
                time.time(),
                state.settings.event_retention_days,
            )
            if purged.events or purged.deliveries:
                log_engine.info(
                    "purged %d events and %d webhook deliveries older than %d days",
                    purged.events,
                    purged.deliveries,
                    state.settings.event_retention_days,
                )
        except Exception:  # tried again at the next run
            log_engine.exception("housekeeping failed")
        await asyncio.sleep(housekeeping.INTERVAL)


def create_app(
    settings: Settings,
    db: Database | None = None,
    clock: Clock | None = None,
    *,
    background_ticker: bool = False,
    rate_clock: Clock | None = None,
    gateway: bool = False,
) -> FastAPI:
    """Build the application. ``db``, ``clock`` (the market's time) and ``rate_clock`` (the wall
    clock rate limits follow) are injectable for tests and the sandbox; ``background_ticker``
    runs the engine's tick while the app serves (``openclore serve``)."""
    database = db or Database(settings.database_url)
    if clock is None:
        clock = SandboxClock(database.engine) if settings.sandbox_enabled else SystemClock()
    state = AppState(settings, database, clock, rate_clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if background_ticker and settings.tick_interval > 0:
            tasks.append(asyncio.create_task(_ticker(state)))
        if background_ticker and settings.event_retention_days > 0:
            tasks.append(asyncio.create_task(_housekeeper(state)))
        if background_ticker and settings.webhook_delivery:
            deliverer = Deliverer(database, webhook_service.policy(settings))
            tasks.append(asyncio.create_task(deliverer.run()))
        gateway_stop = asyncio.Event()
        gateway_task = None
        if gateway:
            gateway_task = asyncio.create_task(serve_gateway(database, settings, gateway_stop))
        try:
            yield
        finally:
            if gateway_task is not None:
                gateway_stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gateway_task, 10)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if db is None:  # the app opened it
                database.dispose()
            if background_ticker:  # a server process ends (`openclore serve`)
                metrics.process_exit()

    app = FastAPI(
        lifespan=lifespan,
        title="openclore",
        version="1.0",
        description=(
            "A self-hostable GPU-rental marketplace speaking the Clore.ai API v1. Every response "
            "carries `code` (0 OK, 1 internal, 2 invalid input, 3 invalid token, 4 invalid "
            "endpoint, 5 rate limit, 6 named error in `error`). Authenticate with the `auth` "
            "header."
        ),
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.openclore = state
    # a request answered from memory must not need the database for anything else: not for a
    # rate limit (held in the database), nor for the time (a sandbox clock's offset)
    served_from_memory = settings.rate_limit_interval <= 0 and not isinstance(clock, SandboxClock)

    async def run_endpoint(ep: Endpoint, request: Request) -> Response:
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
            if ep.handler is _marketplace and served_from_memory and not raw:
                known = _known_listing(state, request, token)
                if known is not None:
                    request.state.clore_code = 0
                    known.headers["Date"] = formatdate(state.now(), usegmt=True)
                    return known
            # one worker-thread hop per request: rate limit, parse, authenticate, run
            headers, result = await run_in_threadpool(_handle, ep, request, token, raw)
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
        except Exception:  # never a traceback on the wire
            log.exception("internal error on %s", ep.name)
            request.state.clore_code = 1
            response = error_response(InternalError("internal error"), mode)
        response.headers.update(headers)
        return response

    def _check_rate(ep: Endpoint, request: Request, token: str | None) -> dict[str, str]:
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

    def _handle(
        ep: Endpoint, request: Request, token: str | None, raw: bytes
    ) -> tuple[dict[str, str], Any]:
        headers = _check_rate(ep, request, token)
        now = state.now()
        # the answer's Date is the market's time: a travelled sandbox clock included
        headers["Date"] = formatdate(now, usegmt=True)
        try:
            body = parse_body(raw, ep.array_body)
            return headers, _dispatch(ep, request, token, body, now)
        except InvalidToken as exc:
            if token:
                _unknown_token(request, token)
            exc.headers = headers
            raise
        except CloreError as exc:
            exc.headers = headers
            raise

    def _unknown_token(request: Request, token: str) -> None:
        """An unknown token gets no rate-limit budget of its own (random tokens would each get
        one): its slot is dropped and the call counts against the caller's address instead."""
        interval = settings.rate_limit_interval
        if interval <= 0:
            return
        state.limiter.forget(_client_key(request, token))
        decision = state.limiter.hit(_client_key(request, None), interval, state.rate_clock.now())
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def _dispatch(
        ep: Endpoint, request: Request, token: str | None, body: dict[str, Any], now: int
    ) -> Any:
        for attempt in range(READ_ATTEMPTS):
            try:
                # the versions are read before the caller: a token revoked after this moment
                # shows as a newer auth version on the next request
                versions = database.freshness.versions()
                with Reader(database) as reader:
                    user_id = state.callers.user(token, versions.auth, reader) if token else None
                    if user_id is None and (ep.auth or token):
                        raise InvalidToken("invalid api token")
                    if ep.readonly:  # one transaction (if any) for the caller and the answer
                        call = Call(request, body, user_id, now, database, reader, versions)
                        return ep.handler(state, call)
                break
            except DBAPIError as exc:
                # a connection the database dropped (restart, pg_terminate_backend): reading
                # again on a fresh one is safe; writes retry in run_write, before their commit
                if not exc.connection_invalidated or attempt + 1 == READ_ATTEMPTS:
                    raise
        call = Call(request, body, user_id, now, database)
        key = idempotency.key_of(request)
        if key is None or user_id is None:
            return ep.handler(state, call)
        return idempotency.run_once(
            database,
            request,
            ep.name,
            key,
            user_id,
            body,
            settings.http_status,
            settings.idempotency_ttl,
            lambda: ep.handler(state, call),
        )

    def register(prefix: str, ep: Endpoint) -> None:
        async def endpoint(request: Request) -> Response:
            return await run_endpoint(ep, request)

        endpoint.__name__ = ep.name
        app.add_api_route(
            f"{prefix}/{ep.name}",
            endpoint,
            methods=["GET", "POST"],
            name=ep.name,
            include_in_schema=False,
        )

    for ep in V1_ENDPOINTS:
        register("/v1", ep)
    for ep in SANDBOX_ENDPOINTS:
        register("/sandbox", ep)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            return error_response(InvalidEndpoint("invalid endpoint"), settings.http_status)
        return error_response(InvalidInput(str(exc.detail)), settings.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidInput("invalid request"), settings.http_status)

    @app.get("/gigaspot/v1/snapshot", include_in_schema=False)
    async def _gigaspot_snapshot() -> Response:
        """get_gigaspot's v1_snapshot_url: the snapshot alone (clients fetch it without a
        token, as from live Clore's storage)."""

        def read() -> bytes:
            with database.read() as conn:
                return dumps(gigaspot_service.snapshot(conn, settings))

        return Response(await run_in_threadpool(read), media_type="application/json")

    @app.post("/payments/deposit", include_in_schema=False)
    async def payments_deposit(request: Request) -> Response:
        raw = await request.body()
        try:
            answer = await run_in_threadpool(_payment_deposit, request, raw)
            return _json({**answer, "code": 0})
        except CloreError as exc:
            # a provider reads HTTP statuses: the REST mapping whatever the API's mode
            return error_response(exc, "rest")
        except BodyTooLarge:
            return too_large(settings.max_body_bytes)
        except Exception:
            log.exception("internal error on the deposit webhook")
            return error_response(InternalError("internal error"), "rest")

    def _payment_deposit(request: Request, raw: bytes) -> dict[str, Any]:
        secret = settings.payments_webhook_secret
        if not secret:
            raise InvalidEndpoint("the deposit webhook is off (set payments_webhook_secret)")
        # checked before the body is even parsed: an unsigned or stale delivery writes nothing
        payment_service.verify(
            secret,
            request.headers.get(payment_service.SIGNATURE_HEADER),
            raw,
            state.rate_clock.now(),
            settings.payments_webhook_tolerance,
        )
        req = inputs.validate_body(inputs.PaymentDepositRequest, parse_object(raw))
        amount = to_units(req.amount)
        now = state.now()

        def run(conn: Connection) -> dict[str, Any]:
            return payment_service.provider_deposit(
                conn,
                external_id=req.external_id,
                currency=req.currency,
                amount=amount,
                user=None if req.user is None else str(req.user),
                address=req.address,
                settings=settings,
                now=now,
            )

        try:
            return run_write(database, run)
        except IntegrityError:  # a concurrent delivery of the same id won: this one is a replay
            return run_write(database, run)

    install_agent_api(app, state)  # host agents: /agent/v1, apart from the Clore API
    install_operations(app, state)
    install_openapi(app, V1_ENDPOINTS, SANDBOX_ENDPOINTS)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DateHeader)
    app.add_middleware(metrics.Metrics)
    app.add_middleware(RequestId)  # outermost: every log line of the request carries its id
    return app


# ----------------------------------------------------------------------------- operations

READ_ATTEMPTS = 3
METRICS_TOKEN_REQUIRED = "metrics token required: send 'Authorization: Bearer <token>'"
METRICS_OFF = (
    "metrics are not public: set OPENCLORE_METRICS_TOKEN and scrape with 'Authorization: Bearer "
    "<token>', or set OPENCLORE_METRICS_PUBLIC=1 to serve them to anyone"
)
READY_TIMEOUT = 5.0
_HEAD: list[str | None] = []  # the migrations' head, read once per process


def _schema_head() -> str | None:
    if not _HEAD:
        _HEAD.append(head_revision())
    return _HEAD[0]


def install_operations(app: FastAPI, state: AppState) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (its database answers and is migrated to
    this code's head) and ``/metrics`` (Prometheus), outside the Clore API."""

    def plain(status: int, body: dict[str, Any]) -> Response:
        return Response(dumps(body), status_code=status, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return plain(200, {"status": "ok"})

    def _readiness() -> tuple[bool, str]:
        try:
            current = current_revision(state.db)
        except Exception as exc:
            log.warning("readiness: database unreachable: %s", str(exc).splitlines()[0])
            return False, "database unreachable"
        head = _schema_head()
        if current != head:
            return False, f"database schema at {current}, this code needs {head}"
        return True, "ready"

    async def readyz(_request: Request) -> Response:
        try:
            ready, reason = await asyncio.wait_for(run_in_threadpool(_readiness), READY_TIMEOUT)
        except TimeoutError:
            ready, reason = False, "database did not answer in time"
        if ready:
            return plain(200, {"status": "ready"})
        return plain(503, {"status": "not ready", "reason": reason})

    async def metrics_endpoint(request: Request) -> Response:
        # the figures include every wallet's total and the platform's revenue: a scraper shows
        # the token, unless the operator made them public
        token = state.settings.metrics_token
        if token:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                answer = plain(401, {"error": METRICS_TOKEN_REQUIRED})
                answer.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return answer
        elif not state.settings.metrics_public:
            return plain(403, {"error": METRICS_OFF})
        try:
            body, content_type = await run_in_threadpool(metrics.render, state.figures)
        except Exception:
            log.exception("metrics could not be read")
            return plain(503, {"error": "metrics unavailable"})
        return Response(body, media_type=content_type)

    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
