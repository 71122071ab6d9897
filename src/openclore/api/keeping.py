"""Keeping work's endpoints (openclore extensions, SPEC §8): stop_order, start_order,
restart_order, reset_order, extend_order, create_volume, volumes, delete_volume."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from openclore.api.state import AppState, Call, Endpoint
from openclore.api.state import caller_actor as _actor
from openclore.api.state import caller_id as _uid
from openclore.market import inputs
from openclore.market import keeping as keeping_service
from openclore.market import orders as order_service
from openclore.market import volumes as volume_service


def _order_answer(conn: Connection, state: AppState, order_id: int) -> dict[str, Any]:
    return {"order": order_service.order_detail(conn, order_id, state.settings)}


def _stop_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)

    def run(conn: Connection) -> dict[str, Any]:
        keeping_service.stop_order(conn, _uid(call), req.id, call.now, actor=_actor(call))
        return _order_answer(conn, state, req.id)

    result: dict[str, Any] = state.db_write(run)
    return result


def _start_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)

    def run(conn: Connection) -> dict[str, Any]:
        keeping_service.start_order(
            conn, _uid(call), req.id, state.settings, call.now, actor=_actor(call)
        )
        return _order_answer(conn, state, req.id)

    result: dict[str, Any] = state.db_write(run)
    return result


def _restart_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    number = state.db_write(
        lambda conn: keeping_service.restart_order(
            conn, _uid(call), req.id, call.now, actor=_actor(call)
        ),
        answer=lambda n: {"restart": n},  # what an Idempotency-Key replays
    )
    return {"restart": number}


def _reset_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    generation = state.db_write(
        lambda conn: keeping_service.reset_order(
            conn, _uid(call), req.id, call.now, actor=_actor(call)
        ),
        answer=lambda n: {"generation": n},
    )
    return {"generation": generation}


def _extend_order(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.ExtendOrderRequest, call.body)
    mrl = state.db_write(
        lambda conn: keeping_service.extend_order(
            conn, _uid(call), req.id, req.hours, call.now, actor=_actor(call)
        ),
        answer=lambda n: {"mrl": n},
    )
    return {"mrl": mrl}


def _create_volume(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.CreateVolumeRequest, call.body)

    def run(conn: Connection) -> dict[str, Any]:
        volume_id = volume_service.create_volume(
            conn,
            _uid(call),
            req.server_id,
            req.size_gb,
            req.name,
            req.currency,
            state.settings,
            call.now,
            actor=_actor(call),
        )
        mine = volume_service.my_volumes(conn, _uid(call))["volumes"]
        return {"volume_id": volume_id, "volume": next(v for v in mine if v["id"] == volume_id)}

    result: dict[str, Any] = state.db_write(run)
    return result


def _volumes(state: AppState, call: Call) -> dict[str, Any]:
    raw = call.request.query_params.get("include_ended", call.body.get("include_ended"))
    include = str(raw).lower() in ("true", "1", "yes")
    with call.read() as conn:
        return volume_service.my_volumes(conn, _uid(call), include)


def _delete_volume(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.OrderIdRequest, call.body)
    state.db_write(
        lambda conn: volume_service.delete_volume(
            conn, _uid(call), req.id, call.now, actor=_actor(call)
        )
    )
    return {}


KEEPING_ENDPOINTS = [
    Endpoint("stop_order", _stop_order, scope="rent"),
    Endpoint("start_order", _start_order, scope="rent"),
    Endpoint("restart_order", _restart_order, scope="rent"),
    Endpoint("reset_order", _reset_order, scope="rent"),
    Endpoint("extend_order", _extend_order, scope="rent"),
    Endpoint("create_volume", _create_volume, scope="rent"),
    Endpoint("volumes", _volumes, readonly=True),
    Endpoint("delete_volume", _delete_volume, scope="rent"),
]
