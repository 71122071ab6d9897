"""Clore API v1's endpoints (under /v1) and the sandbox's (under /sandbox): one handler each,
and the table the pipeline (:mod:`openclore.api.pipeline`) serves them from."""

from __future__ import annotations

import functools
import time
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.api import event_endpoints
from openclore.api.account import ACCOUNT_ENDPOINTS
from openclore.api.keeping import KEEPING_ENDPOINTS
from openclore.api.listing import listing_response
from openclore.api.market_cache import PartsResponse
from openclore.api.state import AppState, Call, Endpoint
from openclore.api.state import caller_actor as _actor
from openclore.api.state import caller_id as _uid
from openclore.api.wire import dumps
from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import to_units
from openclore.engine.clock import SandboxClock
from openclore.market import gigaspot as gigaspot_service
from openclore.market import inputs, search
from openclore.market import logs as logs_service
from openclore.market import orders as order_service
from openclore.market import servers as server_service
from openclore.market import statements as statement_service
from openclore.market import wallets as wallet_service
from openclore.market import withdrawals as withdrawal_service
from openclore.market.demo import reset_world


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
    return listing_response(call.request, listing, call.user_id, mine)


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


V1_ENDPOINTS = [
    Endpoint("wallets", _wallets, readonly=True),
    Endpoint("my_servers", _my_servers, readonly=True),
    Endpoint("server_config", _server_config, readonly=True),
    Endpoint("marketplace", _marketplace, auth=False, readonly=True, memory_listing=True),
    Endpoint("my_orders", _my_orders, readonly=True),
    Endpoint("order_logs", _order_logs),
    Endpoint("spot_marketplace", _spot_marketplace, auth=False, readonly=True),
    Endpoint("set_server_settings", _set_server_settings, scope="host"),
    Endpoint("set_spot_price", _set_spot_price, scope="rent"),
    Endpoint("cancel_order", _cancel_order, scope="rent"),
    Endpoint("create_order", _create_order, extra_interval="create_order_interval", scope="rent"),
    Endpoint("add_server", _add_server, scope="host"),
    # events, webhooks and alerts (openclore extensions)
    Endpoint("events", event_endpoints.events, readonly=True),
    Endpoint("webhooks", event_endpoints.webhooks, scope="account"),
    Endpoint("delete_webhook", event_endpoints.delete_webhook, scope="account"),
    Endpoint("ping_webhook", event_endpoints.ping_webhook, scope="account"),
    Endpoint("webhook_deliveries", event_endpoints.webhook_deliveries, readonly=True),
    Endpoint("set_alerts", event_endpoints.set_alerts, scope="account"),
    Endpoint("alerts", event_endpoints.alerts, readonly=True),
    Endpoint("cancel_orders", _cancel_orders, scope="rent"),
    Endpoint("renter_fees", _renter_fees, auth=False, readonly=True),
    Endpoint("poh_balance", _poh_balance, readonly=True),
    Endpoint("get_gigaspot", _get_gigaspot, readonly=True),
    Endpoint(
        "create_gigaspot_orders",
        _create_gigaspot_orders,
        extra_interval="create_order_interval",
        array_body="orders",
        scope="rent",
    ),
    Endpoint("edit_gigaspot_orders", _edit_gigaspot_orders, array_body="orders", scope="rent"),
    Endpoint("transactions", _transactions, readonly=True),
    Endpoint("statement", _statement, readonly=True),
    Endpoint("withdraw", _withdraw, scope="money"),
    Endpoint("withdrawals", _withdrawals, readonly=True),
    *KEEPING_ENDPOINTS,
    *ACCOUNT_ENDPOINTS,
]

SANDBOX_ENDPOINTS = [
    Endpoint("advance_time", _sandbox_advance, sandbox=True, scope="account"),
    Endpoint("deposit", _sandbox_deposit, sandbox=True, scope="money"),
    Endpoint("reset", _sandbox_reset, sandbox=True, scope="account"),
]


def install_snapshot(app: FastAPI, state: AppState) -> None:
    """``/gigaspot/v1/snapshot``: get_gigaspot's v1_snapshot_url."""

    @app.get("/gigaspot/v1/snapshot", include_in_schema=False)
    async def _gigaspot_snapshot() -> Response:
        """get_gigaspot's v1_snapshot_url: the snapshot alone (clients fetch it without a
        token, as from live Clore's storage)."""

        def read() -> bytes:
            with state.db.read() as conn:
                return dumps(gigaspot_service.snapshot(conn, state.settings))

        return Response(await run_in_threadpool(read), media_type="application/json")
