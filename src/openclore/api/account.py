"""Renters' own things (openclore extensions, SPEC §8): add_ssh_key, ssh_keys, delete_ssh_key,
attach_ssh_key, create_template, templates, delete_template, create_api_key, api_keys, api_key,
revoke_api_key; create_standing_order, standing_orders, cancel_standing_order."""

from __future__ import annotations

from typing import Any

from openclore.api import idempotency
from openclore.api.state import AppState, Call, Endpoint
from openclore.api.state import caller_actor as _actor
from openclore.api.state import caller_id as _uid
from openclore.domain.errors import InvalidInput
from openclore.market import account_keys, api_keys, inputs, standing, templates


def _add_ssh_key(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.AddSshKeyRequest, call.body)
    key = state.db_write(
        lambda conn: account_keys.add_key(
            conn, _uid(call), req.name, req.public_key, call.now, actor=_actor(call)
        ),
        answer=lambda k: {"key": k},
    )
    return {"key": key}


def _ssh_keys(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return {"keys": account_keys.list_keys(conn, _uid(call))}


def _delete_ssh_key(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    state.db_write(
        lambda conn: account_keys.delete_key(conn, _uid(call), req.id, call.now, actor=_actor(call))
    )
    return {}


def _attach_ssh_key(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.AttachSshKeyRequest, call.body)
    added = state.db_write(
        lambda conn: account_keys.attach_key(
            conn, _uid(call), req.order_id, req.key_id, call.now, actor=_actor(call)
        ),
        answer=lambda a: {"attached": a},
    )
    return {"attached": added}


def _create_template(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.CreateTemplateRequest, call.body)
    template = state.db_write(
        lambda conn: templates.create_template(conn, _uid(call), req, call.now, actor=_actor(call)),
        answer=lambda t: {"template": t},
    )
    return {"template": template}


def _templates(state: AppState, call: Call) -> dict[str, Any]:
    q = call.request.query_params.get("q", call.body.get("q"))
    with call.read() as conn:
        found = templates.list_templates(conn, _uid(call), q if isinstance(q, str) else None)
    return {"templates": found}


def _delete_template(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    state.db_write(
        lambda conn: templates.delete_template(
            conn, _uid(call), req.id, call.now, actor=_actor(call)
        )
    )
    return {}


def _create_api_key(state: AppState, call: Call) -> dict[str, Any]:
    if idempotency.key_of(call.request) is not None:
        # a stored answer would hold the secret, which the market never keeps
        raise InvalidInput("create_api_key takes no Idempotency-Key: its secret is never stored")
    req = inputs.validate_body(inputs.CreateApiKeyRequest, call.body)
    scopes = api_keys.parse_scopes(req.scopes)
    limit = api_keys.parse_spend_limit(req.spend_limit, state.settings.currencies)
    made = state.db_write(
        lambda conn: api_keys.create_key(
            conn,
            _uid(call),
            name=req.name,
            scopes=scopes,
            expires_at=req.expires_at if req.expires_in is None else call.now + req.expires_in,
            spend_limit=limit,
            now=call.now,
            creator=call.key,
            actor=_actor(call),
        ),
    )
    row, secret = made
    return {"key": row, "secret": secret}


def _api_keys(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return {"keys": api_keys.list_keys(conn, _uid(call), call.now)}


def _api_key(state: AppState, call: Call) -> dict[str, Any]:
    """The key this request is made with: its scopes, expiry, spend limit and today's spend."""
    assert call.key is not None
    with call.read() as conn:
        return {"key": api_keys.key_info(conn, call.key, call.now)}


def _revoke_api_key(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    state.db_write(
        lambda conn: api_keys.revoke_key(
            conn, _uid(call), req.id, call.now, call.key, actor=_actor(call)
        )
    )
    return {}


def _create_standing_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.CreateStandingOrderRequest, call.body)
    placed = state.db_write(
        lambda conn: standing.create_standing_order(
            conn, _uid(call), req, call.body, state.settings, call.now, actor=_actor(call)
        ),
        answer=lambda s: {"standing_order": s},
    )
    return {"standing_order": placed}


def _standing_orders(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return {"standing_orders": standing.list_standing_orders(conn, _uid(call), call.now)}


def _cancel_standing_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    cancelled = state.db_write(
        lambda conn: standing.cancel_standing_order(
            conn, _uid(call), req.id, call.now, actor=_actor(call)
        ),
        answer=lambda s: {"standing_order": s},
    )
    return {"standing_order": cancelled}


ACCOUNT_ENDPOINTS = [
    Endpoint("add_ssh_key", _add_ssh_key, scope="account"),
    Endpoint("ssh_keys", _ssh_keys, readonly=True),
    Endpoint("delete_ssh_key", _delete_ssh_key, scope="account"),
    Endpoint("attach_ssh_key", _attach_ssh_key, scope="account"),
    Endpoint("create_template", _create_template, scope="rent"),
    Endpoint("templates", _templates, readonly=True),
    Endpoint("delete_template", _delete_template, scope="rent"),
    Endpoint("create_api_key", _create_api_key, scope="account"),
    Endpoint("api_keys", _api_keys, readonly=True),
    Endpoint("api_key", _api_key, readonly=True, scope=None),
    Endpoint("revoke_api_key", _revoke_api_key, scope="account"),
    Endpoint(
        "create_standing_order",
        _create_standing_order,
        extra_interval="create_order_interval",
        scope="rent",
    ),
    Endpoint("standing_orders", _standing_orders, readonly=True, scope="read"),
    Endpoint("cancel_standing_order", _cancel_standing_order, scope="rent"),
]
