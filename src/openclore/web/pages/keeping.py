"""Keeping work in the console (SPEC §8): an order's stop, start, restart, reset and extend, each
after a confirmation page (the GET of the path; its form posts to the same path), and the
renter's volumes (list, create on a server, delete after a confirmation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.config import Settings
from openclore.domain.errors import CloreError, MarketError
from openclore.domain.money import coins_str
from openclore.market import audit, inputs
from openclore.market import keeping as keeping_service
from openclore.market import orders as order_service
from openclore.market import volumes as volume_service
from openclore.web.common import actor, id_input
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.routing import POST, Route

ORDERS = "/orders"
VOLUMES = "/volumes"

# ----------------------------------------------------------------------------- orders


@dataclass(frozen=True)
class Action:
    """One keeping action on an order: its confirmation page's words and what it runs."""

    title: str
    text: str
    button: str
    done: str
    danger: bool
    run: Callable[[Connection, int, int, Settings, int, audit.Actor, dict[str, str]], Any]


def _extend(
    conn: Connection,
    user_id: int,
    order_id: int,
    settings: Settings,
    now: int,
    who: audit.Actor,
    fields: dict[str, str],
) -> int:
    raw = fields.get("hours", "").strip()
    hours: Any = int(raw) if raw.isdigit() and len(raw) < 9 else raw
    req = inputs.validate_body(inputs.ExtendOrderRequest, {"id": order_id, "hours": hours})
    return keeping_service.extend_order(conn, user_id, order_id, req.hours, now, actor=who)


ACTIONS: dict[str, Action] = {
    "stop": Action(
        N_("Stop this order?"),
        N_(
            "Its GPUs go back to the market. Its container and disk are kept, and it pays only "
            "for storage until you start it again."
        ),
        N_("Stop"),
        N_("Order stopped: its files are kept."),
        False,
        lambda conn, uid, oid, s, now, who, f: keeping_service.stop_order(
            conn, uid, oid, now, actor=who
        ),
    ),
    "start": Action(
        N_("Start this order again?"),
        N_(
            "It takes GPUs on the same server again, in the same container, and pays its price "
            "again. When someone else rents them now, it stays stopped."
        ),
        N_("Start"),
        N_("Order started."),
        False,
        lambda conn, uid, oid, s, now, who, f: keeping_service.start_order(
            conn, uid, oid, s, now, actor=who
        ),
    ),
    "restart": Action(
        N_("Restart this order's container?"),
        N_("The same container starts again; its files stay."),
        N_("Restart"),
        N_("Restart asked of the host."),
        False,
        lambda conn, uid, oid, s, now, who, f: keeping_service.restart_order(
            conn, uid, oid, now, actor=who
        ),
    ),
    "reset": Action(
        N_("Reset this order's container?"),
        N_(
            "A new container is made from its image: the files in the container are lost. Its "
            "volumes and ports stay."
        ),
        N_("Reset"),
        N_("Reset asked of the host."),
        True,
        lambda conn, uid, oid, s, now, who, f: keeping_service.reset_order(
            conn, uid, oid, now, actor=who
        ),
    ),
    "extend": Action(
        N_("Extend this order?"),
        N_("It may run this many hours longer, within the host's longest rental."),
        N_("Extend"),
        N_("Order extended."),
        False,
        _extend,
    ),
}


def _mine(conn: Connection, user_id: int, order_id: int, settings: Settings) -> dict[str, Any]:
    listed = order_service.my_orders(conn, user_id, False, settings)["orders"]
    found = next((o for o in listed if o["id"] == order_id), None)
    if found is None:
        raise MarketError("order_dont_exist")
    result: dict[str, Any] = found
    return result


def _subject(c: Console, request: Request, order: dict[str, Any]) -> str:
    """What the confirmation page names: the order, and what it costs stopped."""
    line = c.t(request, "Order #%(id)s") % {"id": order["id"]}
    if order.get("disk_gb"):
        line += " · " + c.t(
            request, "%(gb)s GB kept for %(price)s %(currency)s a day while stopped"
        ) % {
            "gb": order["disk_gb"],
            "price": coins_str(order["storage_per_day"].units),
            "currency": order["currency"],
        }
    return line


def _action(request: Request) -> Action:
    """The action a path names: ``/orders/7/stop`` → stop (the routes list no other)."""
    return ACTIONS[request.url.path.rsplit("/", 1)[-1]]


async def order_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    order_id = int(request.path_params["order_id"])
    action = _action(request)
    try:
        order = await c.db(lambda conn: _mine(conn, session.user_id, order_id, c.settings))
    except CloreError as exc:
        return c.failed(request, ORDERS, exc)
    extend = action is ACTIONS["extend"]
    return c.render(
        request,
        "confirm.html",
        session,
        title=action.title,
        text=action.text,
        subject=_subject(c, request, order),
        action=request.url.path,
        button=action.button,
        danger=action.danger,
        back=f"{ORDERS}#actions-{order_id}",
        fields=[{"name": "hours", "label": N_("Hours"), "required": True}] if extend else [],
    )


async def order_act(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    order_id = int(request.path_params["order_id"])
    action = _action(request)
    now = c.state.now()
    who = actor(request, session)
    try:
        await c.db(
            lambda conn: action.run(conn, session.user_id, order_id, c.settings, now, who, fields),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, ORDERS, exc)
    return c.redirect(request, ORDERS, c.t(request, action.done))


# ----------------------------------------------------------------------------- volumes


async def volumes_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    every = request.query_params.get("all") == "1"
    found = await c.db(lambda conn: volume_service.my_volumes(conn, session.user_id, every))
    server = request.query_params.get("server", "")
    return c.render(
        request,
        "volumes.html",
        session,
        volumes=found["volumes"],
        every=every,
        server=server if server.isdigit() else "",
    )


async def volume_create(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    try:
        server_id = id_input(fields.get("server_id", ""), "server_id")
        size = fields.get("size_gb", "").strip()
        body = {
            "server_id": server_id,
            "size_gb": int(size) if size.isdigit() and len(size) < 9 else size,
            "name": fields.get("name", "").strip(),
            "currency": fields.get("currency") or None,
        }
        req = inputs.validate_body(inputs.CreateVolumeRequest, body)
        volume_id = await c.db(
            lambda conn: volume_service.create_volume(
                conn,
                session.user_id,
                req.server_id,
                req.size_gb,
                req.name,
                req.currency,
                c.settings,
                now,
                actor=actor(request, session),
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, VOLUMES, exc)
    return c.redirect(request, VOLUMES, c.t(request, "Volume #%(id)s created.") % {"id": volume_id})


async def volume_delete_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    volume_id = int(request.path_params["volume_id"])
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Delete this volume?"),
        text=N_("Its files are deleted on the host and it is no longer billed."),
        subject=f"#{volume_id}",
        action=request.url.path,
        button=N_("Delete"),
        back=VOLUMES,
        fields=[],
    )


async def volume_delete(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    volume_id = int(request.path_params["volume_id"])
    now = c.state.now()
    try:
        await c.db(
            lambda conn: volume_service.delete_volume(
                conn, session.user_id, volume_id, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, VOLUMES, exc)
    return c.redirect(request, VOLUMES, c.t(request, "Volume deleted."))


ROUTES = [
    *(
        route
        for name in ACTIONS
        for route in (
            Route(f"{ORDERS}/{{order_id:int}}/{name}", order_confirm),
            Route(f"{ORDERS}/{{order_id:int}}/{name}", order_act, POST),
        )
    ),
    Route(VOLUMES, volumes_page),
    Route(VOLUMES, volume_create, POST),
    Route(VOLUMES + "/{volume_id:int}/delete", volume_delete_confirm),
    Route(VOLUMES + "/{volume_id:int}/delete", volume_delete, POST),
]
