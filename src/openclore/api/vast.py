"""Vast.ai's API v0/v1 (the paths the ``vastai`` 1.9.1 CLI and SDK call), over the market's use
cases: offers, instances, SSH keys, the current user (docs/vast-compat.md).

Every path is served under both ``/api/v0`` and ``/api/v1``, spelled as the clients spell it
(trailing slashes included). A request authenticates with ``Authorization: Bearer <API token>``
(:func:`authenticate`, given the scope the endpoint needs); the offer search also answers without
one, as the Clore ``marketplace`` does (limited per address). Errors come in Vast's shape,
``{"success": false, "error": <name>, "msg": <sentence>}``, with the HTTP status of the error;
never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from openclore.api.state import AppState, Reader
from openclore.api.transport import BodyTooLarge, client_gone
from openclore.api.wire import dumps, parse_object
from openclore.domain.errors import (
    REGISTRY,
    CloreError,
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    MarketError,
    MissingScope,
    RateLimited,
    http_status,
)
from openclore.market import account_keys as key_service
from openclore.market import audit, vast, vast_offers
from openclore.market import keeping as keeping_service
from openclore.market import orders as order_service
from openclore.market.rates import current_rates

log = logging.getLogger("openclore.api")

PREFIXES = ("/api/v0", "/api/v1")
INSTANCE_PAGE = 25  # rows per page of GET /api/v1/instances/ (the clients ask for 25)

# the scopes (SPEC §8): reads, renting, the account's own things
READ, RENT, ACCOUNT = "read", "rent", "account"
# a read that also answers with no key at all (the offer search, as the Clore marketplace)
PUBLIC = "public"


@dataclass
class Caller:
    user_id: int
    token_id: int
    actor: audit.Actor


@dataclass
class VastCall:
    request: Request
    body: dict[str, Any]
    key: Caller | None  # None: a PUBLIC route called without a key
    now: int

    @property
    def caller(self) -> Caller:
        """The key's holder (every route but a PUBLIC one has one)."""
        assert self.key is not None
        return self.key


Work = Callable[[AppState, VastCall], Any]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: CloreError) -> Response:
    """A market error in Vast's shape: ``success`` false, ``error`` (a name), ``msg``."""
    headers: dict[str, str] = {}
    if isinstance(exc, MissingScope):
        scope = exc.extra.get("scope")
        name, msg = "missing_scope", f"this API key lacks the '{scope}' scope"
    elif isinstance(exc, MarketError):
        name = exc.name
        kind = REGISTRY.get(name)
        msg = kind.message if kind is not None else name.replace("_", " ")
    elif isinstance(exc, InvalidToken):
        name, msg = "invalid_api_key", exc.message or "invalid API key"
    elif isinstance(exc, InvalidInput):
        name, msg = "invalid_args", exc.message or "invalid request"
    elif isinstance(exc, InvalidEndpoint):
        name, msg = "not_found", exc.message or "no such endpoint"
    elif isinstance(exc, RateLimited):
        name, msg = "rate_limited", "too many requests, retry later"
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    else:
        name, msg = "internal_error", "internal error"
    body: dict[str, Any] = {"success": False, "error": name, "msg": msg}
    body.update({k: v for k, v in exc.extra.items() if k not in body})
    status = http_status(exc.code, getattr(exc, "name", None), "rest")
    if isinstance(exc, InvalidToken):
        status = 401
    if name == "missing_scope":
        status = 403
    return _json(body, status, headers)


def authenticate(state: AppState, request: Request, scope: str) -> Caller:
    """The caller of a Vast request (``Authorization: Bearer <API key>``), whose key has ``scope``
    (SPEC §8: ``missing_scope`` otherwise, before anything is read or done).

    The one place this API checks credentials; every endpoint names the scope it needs. The key
    is the Clore API's (the same cache of live keys, the same expiry), and the audit log and
    the key's spend limit see the caller as they do there (:meth:`Key.actor`)."""
    header = (request.headers.get("authorization") or "").strip()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("missing API key: send 'Authorization: Bearer <API key>'")
    _rate_limit(state, request, token)
    versions = state.db.freshness.versions()  # read before the key (as the Clore pipeline)
    with Reader(state.db) as reader:
        key = state.callers.key(token, versions.auth, reader)
    if key is None:
        _unknown_key(state, request, token)
        raise InvalidToken("invalid API key")
    if key.expired(state.now()):
        raise InvalidToken("API key expired")
    if not key.allows(scope):
        raise MissingScope(scope)
    source = request.client.host if request.client else ""
    return Caller(key.user_id, key.id, key.actor(source))


def anonymous(state: AppState, request: Request) -> None:
    """An offer search without ``Authorization``: public, as the Clore ``marketplace`` is (SPEC
    §1), and limited per client address as every anonymous call is. A header that is there but
    wrong is still refused (:func:`authenticate`), never read as anonymous."""
    _address_limit(state, request)


def _token_key(token: str) -> str:
    return "t:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _rate_limit(state: AppState, request: Request, token: str) -> None:
    """The same per-key limit as the Clore API (``rate_limit_interval``)."""
    interval = state.settings.rate_limit_interval
    if interval <= 0:
        return
    decision = state.limiter.hit(_token_key(token), interval, state.rate_clock.now())
    if not decision.allowed:
        raise RateLimited(decision.retry_after)


def _unknown_key(state: AppState, request: Request, token: str) -> None:
    """An unknown key gets no budget of its own (random keys would each get one): the request
    counts against the caller's address instead, as in the Clore API."""
    interval = state.settings.rate_limit_interval
    if interval <= 0:
        return
    state.limiter.forget(_token_key(token))
    _address_limit(state, request)


def _address_limit(state: AppState, request: Request) -> None:
    interval = state.settings.rate_limit_interval
    if interval <= 0:
        return
    address = "a:" + (request.client.host if request.client else "unknown")
    decision = state.limiter.hit(address, interval, state.rate_clock.now())
    if not decision.allowed:
        raise RateLimited(decision.retry_after)


def _rates(state: AppState, conn: Connection) -> dict[str, int]:
    return current_rates(conn, state.settings)


def _int_param(value: Any, name: str) -> int:
    try:
        out = int(str(value))
    except ValueError:
        raise InvalidInput(f"{name}: expected an integer id") from None
    if not 0 <= out < 2**31:
        raise InvalidInput(f"{name}: out of range")
    return out


def _json_param(request: Request, name: str, default: Any) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidInput(f"{name}: not valid JSON") from None


# ------------------------------------------------------------------------------------- offers


def _offers(state: AppState, call: VastCall) -> dict[str, Any]:
    """The offers a Vast query selects; the caller plays no part (the search is public)."""
    body = call.body
    if "q" in body and isinstance(body["q"], dict):  # PUT /search/asks/ {"select_cols", "q"}
        body = body["q"]
    elif not body:  # an older client: GET /bundles/?q=<json>
        q = _json_param(call.request, "q", {})
        if not isinstance(q, dict):
            raise InvalidInput("q: expected a JSON object")
        body = q
    query = vast_offers.parse_offer_query(body)
    with state.db.read() as conn:
        listing = state.market.listing(conn)
        rates = _rates(state, conn)
    return {"offers": vast_offers.search_offers(listing.servers, rates, query, call.now)}


def _create_instance(state: AppState, call: VastCall) -> dict[str, Any]:
    offer_id = _int_param(call.request.path_params["id"], "id")
    ask = vast.read_create(call.body)
    with state.db.read() as conn:
        listing = state.market.listing(conn).servers
    order_id = state.db_write(
        lambda conn: vast.create_instance(
            conn,
            call.caller.user_id,
            offer_id,
            ask,
            listing,
            _rates(state, conn),
            state.settings,
            call.now,
            actor=call.caller.actor,
        )
    )
    return {"success": True, "new_contract": order_id}


# ------------------------------------------------------------------------------------- instances


def _instances_v1(state: AppState, call: VastCall) -> dict[str, Any]:
    raw_filters = _json_param(call.request, "select_filters", {})
    filters = vast_offers.parse_filters(raw_filters, "select_filters")
    order_by = _json_param(call.request, "order_by", [{"col": "id", "dir": "asc"}])
    if not isinstance(order_by, list) or not all(
        isinstance(o, dict) and isinstance(o.get("col"), str) for o in order_by
    ):
        raise InvalidInput("order_by: expected a list of {col, dir}")
    limit_raw = call.request.query_params.get("limit") or str(INSTANCE_PAGE)
    start_raw = call.request.query_params.get("after_token") or "0"
    try:
        limit = max(1, min(INSTANCE_PAGE, int(limit_raw)))
        start = max(0, int(start_raw))
    except ValueError:
        raise InvalidInput("limit and after_token: expected integers") from None
    with state.db.read() as conn:
        rows = vast.instances(conn, call.caller.user_id, _rates(state, conn), call.now)
    labels: dict[str, int] = {}
    for row in rows:
        labels[row["label"] or ""] = labels.get(row["label"] or "", 0) + 1
    rows = [r for r in rows if vast_offers.matches(r, filters)]
    vast_offers.sort_rows(rows, [(o["col"], o.get("dir") == "desc") for o in order_by])
    page = rows[start : start + limit]
    more = start + limit < len(rows)
    return {
        "instances": page,
        "next_token": str(start + limit) if more else None,
        "total_instances": len(rows),
        "label_counts": labels,
    }


def _instances_v0(state: AppState, call: VastCall) -> dict[str, Any]:
    with state.db.read() as conn:
        rows = vast.instances(conn, call.caller.user_id, _rates(state, conn), call.now)
    return {"instances": rows}


def _instance(state: AppState, call: VastCall) -> dict[str, Any]:
    order_id = _int_param(call.request.path_params["id"], "id")
    with state.db.read() as conn:
        row = vast.instance(conn, call.caller.user_id, order_id, _rates(state, conn), call.now)
    return {"instances": row}


def _instance_filters(state: AppState, call: VastCall) -> dict[str, Any]:
    return {"filters": []}


def _change_instance(state: AppState, call: VastCall) -> dict[str, Any]:
    order_id = _int_param(call.request.path_params["id"], "id")
    body, uid, actor = call.body, call.caller.user_id, call.caller.actor
    wanted = body.get("state")
    if wanted is None and "label" not in body:
        raise InvalidInput('expected {"state": "stopped"|"running"} or {"label": ...}')
    if wanted not in (None, "stopped", "running"):
        raise InvalidInput('state: expected "stopped" or "running"')
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidInput("label: expected a string")

    def run(conn: Connection) -> None:
        if wanted == "stopped":
            keeping_service.stop_order(conn, uid, order_id, call.now, actor=actor)
        elif wanted == "running":
            keeping_service.start_order(conn, uid, order_id, state.settings, call.now, actor=actor)
        if "label" in body:
            vast.set_label(conn, uid, order_id, label, actor=actor)

    state.db_write(run)
    return {"success": True}


def _destroy_instance(state: AppState, call: VastCall) -> dict[str, Any]:
    order_id = _int_param(call.request.path_params["id"], "id")
    state.db_write(
        lambda conn: order_service.cancel_order(
            conn, call.caller.user_id, order_id, None, call.now, actor=call.caller.actor
        )
    )
    return {"success": True}


def _change_bid(state: AppState, call: VastCall) -> dict[str, Any]:
    order_id = _int_param(call.request.path_params["id"], "id")
    price = vast.read_price(call.body.get("price"))
    state.db_write(
        lambda conn: vast.change_bid(
            conn,
            call.caller.user_id,
            order_id,
            price,
            _rates(state, conn),
            state.settings,
            call.now,
            actor=call.caller.actor,
        )
    )
    return {"success": True}


def _reboot_instance(state: AppState, call: VastCall) -> dict[str, Any]:
    order_id = _int_param(call.request.path_params["id"], "id")
    state.db_write(
        lambda conn: keeping_service.restart_order(
            conn, call.caller.user_id, order_id, call.now, actor=call.caller.actor
        )
    )
    return {"success": True}


# ------------------------------------------------------------------------------------- account


def _vast_key(view: dict[str, Any], user_id: int) -> dict[str, Any]:
    return {
        "id": view["id"],
        "user_id": user_id,
        "key": view["public_key"],
        "public_key": view["public_key"],
        "name": view["name"],
        "fingerprint": view["fingerprint"],
        "created_at": view["created_at"],
        "deleted_at": None,
    }


def _key_text(body: dict[str, Any]) -> tuple[str, str]:
    text = body.get("ssh_key")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("ssh_key: the public key text is required")
    words = text.split()
    name = " ".join(words[2:])[:64] if len(words) > 2 else "vastai"
    return text, name or "vastai"


def _ssh_keys(state: AppState, call: VastCall) -> list[dict[str, Any]]:
    uid = call.caller.user_id
    with state.db.read() as conn:
        return [_vast_key(k, uid) for k in key_service.list_keys(conn, uid)]


def _add_ssh_key(state: AppState, call: VastCall) -> dict[str, Any]:
    uid = call.caller.user_id
    text, name = _key_text(call.body)
    view = state.db_write(
        lambda conn: key_service.add_key(conn, uid, name, text, call.now, actor=call.caller.actor)
    )
    return {"success": True, "key": _vast_key(view, uid), **_vast_key(view, uid)}


def _update_ssh_key(state: AppState, call: VastCall) -> dict[str, Any]:
    uid = call.caller.user_id
    key_id = _int_param(call.request.path_params["id"], "id")
    text, name = _key_text(call.body)

    def run(conn: Connection) -> dict[str, Any]:
        key_service.delete_key(conn, uid, key_id, call.now, actor=call.caller.actor)
        return key_service.add_key(conn, uid, name, text, call.now, actor=call.caller.actor)

    view = state.db_write(run)
    return {"success": True, "key": _vast_key(view, uid)}


def _delete_ssh_key(state: AppState, call: VastCall) -> dict[str, Any]:
    key_id = _int_param(call.request.path_params["id"], "id")
    state.db_write(
        lambda conn: key_service.delete_key(
            conn, call.caller.user_id, key_id, call.now, actor=call.caller.actor
        )
    )
    return {"success": True}


def _current_user(state: AppState, call: VastCall) -> dict[str, Any]:
    with state.db.read() as conn:
        return vast.current_user(conn, call.caller.user_id, _rates(state, conn), state.settings)


# ------------------------------------------------------------------------------------- routing

# (method, path under each prefix, handler, scope)
ROUTES: list[tuple[str, str, Work, str]] = [
    ("POST", "/bundles/", _offers, PUBLIC),
    ("GET", "/bundles/", _offers, PUBLIC),
    ("PUT", "/search/asks/", _offers, PUBLIC),
    ("PUT", "/asks/{id}/", _create_instance, RENT),
    ("GET", "/instances/", _instances_v1, READ),
    ("GET", "/instances", _instances_v1, READ),  # older clients (vastai-sdk 0.2), no slash
    ("GET", "/instances/filters/", _instance_filters, READ),
    ("GET", "/instances/{id}/", _instance, READ),
    ("PUT", "/instances/{id}/", _change_instance, RENT),
    ("DELETE", "/instances/{id}/", _destroy_instance, RENT),
    ("PUT", "/instances/bid_price/{id}/", _change_bid, RENT),
    ("PUT", "/instances/reboot/{id}/", _reboot_instance, RENT),
    ("GET", "/ssh/", _ssh_keys, ACCOUNT),
    ("POST", "/ssh/", _add_ssh_key, ACCOUNT),
    ("PUT", "/ssh/{id}/", _update_ssh_key, ACCOUNT),
    ("DELETE", "/ssh/{id}/", _delete_ssh_key, ACCOUNT),
    ("GET", "/users/current", _current_user, READ),
    ("GET", "/users/current/", _current_user, READ),
]


def _handler(state: AppState, work: Work, scope: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            raw = await request.body()
            body = parse_object(raw) if request.method != "GET" else {}

            def run() -> Any:
                caller: Caller | None = None
                if scope != PUBLIC:
                    caller = authenticate(state, request, scope)
                elif "authorization" in request.headers:
                    caller = authenticate(state, request, READ)
                else:
                    anonymous(state, request)
                return work(state, VastCall(request, body, caller, state.now()))

            return _json(await run_in_threadpool(run))
        except CloreError as exc:
            return error_response(exc)
        except BodyTooLarge:
            return _json(
                {"success": False, "error": "invalid_args", "msg": "request body too large"}, 413
            )
        except ClientDisconnect:
            return client_gone(request.url.path)
        except Exception:  # never a traceback on the wire
            log.exception("internal error on %s %s", request.method, request.url.path)
            return error_response(CloreError("internal error"))

    return endpoint


async def _not_found(request: Request) -> Response:
    return error_response(InvalidEndpoint(f"no such endpoint: {request.method} {request.url.path}"))


def install_vast_api(app: FastAPI, state: AppState) -> None:
    """Serve the Vast-compatible API under /api/v0 and /api/v1."""
    for prefix in PREFIXES:
        for method, path, work, scope in ROUTES:
            if prefix == "/api/v0" and work is _instances_v1:
                work = _instances_v0  # v0 lists every instance at once
            endpoint = _handler(state, work, scope)
            endpoint.__name__ = f"vast_{work.__name__.strip('_')}"
            app.add_api_route(prefix + path, endpoint, methods=[method], include_in_schema=False)
        # anything else under the prefix: Vast's 404, not the Clore envelope
        app.add_api_route(
            prefix + "/{rest:path}",
            _not_found,
            methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
            include_in_schema=False,
        )
