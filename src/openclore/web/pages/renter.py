"""The renter's pages: the market, a server (and renting it), the orders, a bid, the logs."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError, MarketError
from openclore.domain.money import to_units
from openclore.domain.usd import usd_of
from openclore.market import gigaspot as gigaspot_service
from openclore.market import inputs, read_models, search, sessions
from openclore.market import logs as logs_service
from openclore.market import orders as order_service
from openclore.market import servers as server_service
from openclore.market import templates as template_service
from openclore.market import volumes as volume_service
from openclore.market import wallets as wallet_service
from openclore.market.rates import current_rates
from openclore.web.common import actor, kv_lines, price_input
from openclore.web.context import Console
from openclore.web.messages import error_text
from openclore.web.probe import connect_panels
from openclore.web.routing import POST, Route

PAGE_SIZE = 50
LOGS_WAIT = 4.0  # seconds a logs view waits for the agent (the view asks again every 5 s)


async def market(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    settings = c.settings
    params = dict(request.query_params)
    raw_page = params.pop("page", "1")
    page = max(1, int(raw_page)) if raw_page.isdigit() and len(raw_page) < 8 else 1
    params = {k: v for k, v in params.items() if k in search.PARAMS and v != ""}
    params.pop("limit", None)
    params.pop("offset", None)
    try:
        query = search.parse_query(
            {**params, "limit": str(PAGE_SIZE), "offset": str((page - 1) * PAGE_SIZE)},
            settings.currencies,
            settings.default_currency,
        )
    except CloreError as exc:
        query = search.MarketQuery(limit=PAGE_SIZE)
        error: str | None = error_text(c.t, request, exc)
    else:
        error = None

    def run(conn: Connection) -> tuple[list[dict[str, Any]], int]:
        if error is not None:  # a refused filter lists nothing (not everything)
            return [], 0
        listing = c.state.market.listing(conn)
        found = search.search(listing.index, query)
        return [listing.servers[i] for i in found.positions], found.total

    rows, total = await c.db(run)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    base = urllib.parse.urlencode(params)
    return c.render(
        request,
        "market.html",
        session,
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        params=params,
        base=base,
        currency=query.price_currency,
        error=error,
        sorts=search.SORTS,
    )


async def server_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    settings = c.settings
    server_id = int(request.path_params["server_id"])

    def run(conn: Connection) -> Any:
        listing = c.state.market.listing(conn)
        found = next((s for s in listing.servers if s["id"] == server_id), None)
        book = server_service.spot_marketplace(conn, server_id, session.user_id, settings)
        balances = {
            w["name"]: w["balance"].units
            for w in wallet_service.wallets(conn, session.user_id, settings)["wallets"]
        }
        offer = read_models.storage_offer(conn, server_id, settings.currencies)
        volumes = [
            v
            for v in volume_service.my_volumes(conn, session.user_id)["volumes"]
            if v["server_id"] == server_id and v["state"] in ("creating", "ready")
        ]
        usable = template_service.list_templates(conn, session.user_id)
        return found, book, balances, offer, volumes, usable

    found, book, balances, offer, volumes, usable = await c.db(run)
    if found is None:
        return c.render(
            request,
            "error.html",
            session,
            404,
            message=c.t(request, "This server is not on the market."),
        )
    quotes = {}
    for currency, price in found["price"]["on_demand"].items():
        quotes[currency] = read_models.rent_quote(price.units, balances.get(currency, 0), settings)
    return c.render(
        request,
        "server.html",
        session,
        server=found,
        book=book,
        quotes=quotes,
        balances=balances,
        fees=gigaspot_service.renter_fees(settings),  # as /v1/renter_fees answers
        offer=offer,
        volumes=volumes,
        templates=usable,
    )


async def rent(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    settings = c.settings
    server_id = int(request.path_params["server_id"])
    back = f"/servers/{server_id}"
    body: dict[str, Any] = {
        "renting_server": server_id,
        "currency": fields.get("currency", settings.default_currency),
        "image": fields.get("image", "").strip(),
        "type": "spot" if fields.get("type") == "spot" else "on-demand",
        "ports": kv_lines(fields.get("ports", ""), ":") or None,
        "env": kv_lines(fields.get("env", ""), "=") or None,
    }
    for key in ("ssh_key", "ssh_password", "jupyter_token", "command"):
        if fields.get(key, "").strip():
            body[key] = fields[key].strip()
    gpus = fields.get("gpu_count", "").strip()
    if gpus:  # some of a per-GPU server's GPUs (none: the whole server)
        body["gpu_count"] = int(gpus) if gpus.isdigit() else gpus
    body.update(_keeping_fields(fields))
    chosen = fields.get("template_id", "").strip()
    if chosen:  # the template's image and ports replace the form's (its env merges under it)
        body["template_id"] = int(chosen) if chosen.isdigit() and len(chosen) < 10 else chosen
        del body["image"]
        body.pop("ports")
    try:
        if body["type"] == "spot":
            body["spotprice"] = price_input(fields.get("spotprice", ""))
        req = inputs.validate_body(inputs.CreateOrderRequest, body)
        now = c.state.now()
        await c.db(
            lambda conn: order_service.create_order(
                conn, session.user_id, req, settings, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, back, exc)
    return c.redirect(request, "/orders", c.t(request, "Order created."))


def _keeping_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The rent form's disk, volumes (``volume_<id>``: where to mount it, empty: not) and timers
    (hours) as create_order's ``disk_gb``, ``volumes``, ``stop_after`` and ``terminate_after``;
    what is not a number goes as typed, for the validation to refuse in its words."""
    out: dict[str, Any] = {}
    disk = fields.get("disk_gb", "").strip()
    if disk:
        out["disk_gb"] = int(disk) if disk.isdigit() and len(disk) < 9 else disk
    mounts = {
        key.removeprefix("volume_"): path.strip()
        for key, path in fields.items()
        if key.startswith("volume_") and path.strip()
    }
    if mounts:
        out["volumes"] = mounts
    for name in ("stop_after", "terminate_after"):
        raw = fields.get(f"{name}_hours", "").strip()
        if raw:
            try:
                out[name] = int(Decimal(raw) * 3600)
            except (InvalidOperation, ValueError, OverflowError):
                out[name] = raw
    return out


async def orders_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    return c.render(request, "orders.html", session, **(await _orders(c, session, request)))


async def orders_rows(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    return c.render(request, "_order_rows.html", session, **(await _orders(c, session, request)))


async def _orders(c: Console, session: sessions.Session, request: Request) -> dict[str, Any]:
    settings = c.settings
    completed = request.query_params.get("completed") == "1"
    now = c.state.now()
    board, rates = await c.db(
        lambda conn: (
            read_models.order_board(conn, session.user_id, settings, now, completed),
            current_rates(conn, settings),
        )
    )
    for o in board:  # dollars per hour first, as on the marketplace (the coin price beside it)
        rate = rates.get(o["currency"])
        if rate is not None:
            o["usd_per_day"] = usd_of(o["price"].units, rate)
    await connect_panels(board, c.probes)  # the renter's own published endpoints, nobody else's
    return {
        "orders": board,
        "completed": completed,
        "interval": settings.spot_lowering_interval,
    }


async def cancel(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    order_id = int(request.path_params["order_id"])
    issue = fields.get("issue", "").strip() or None
    now = c.state.now()
    try:
        await c.db(
            lambda conn: order_service.cancel_order(
                conn, session.user_id, order_id, issue, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, "/orders", exc)
    return c.redirect(request, "/orders", c.t(request, "Order cancelled."))


async def bid(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    order_id = int(request.path_params["order_id"])
    now = c.state.now()
    try:
        desired = to_units(price_input(fields.get("price", "")))
        if desired <= 0:
            raise MarketError("invalid_price")
        await c.db(
            lambda conn: order_service.set_spot_price(
                conn,
                session.user_id,
                order_id,
                desired,
                c.settings,
                now,
                actor=actor(request, session),
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, "/orders", exc)
    return c.redirect(request, "/orders", c.t(request, "Bid changed."))


async def logs_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    order_id = int(request.path_params["order_id"])
    return c.render(
        request,
        "logs.html",
        session,
        order_id=order_id,
        **(await _logs(c, request, session, order_id)),
    )


async def logs_lines(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    order_id = int(request.path_params["order_id"])
    return c.render(
        request,
        "_log_lines.html",
        session,
        order_id=order_id,
        **(await _logs(c, request, session, order_id)),
    )


async def _logs(
    c: Console, request: Request, session: sessions.Session, order_id: int
) -> dict[str, Any]:
    """The order's last 200 lines through the market's logs use case (as ``order_logs``):
    a demo server answers at once; a real one's agent is asked and its answer awaited."""
    wall = int(time.time())  # the question's age is real time, whatever the market's clock
    now = c.state.now()
    try:
        asked = await c.db(
            lambda conn: logs_service.ask_logs(
                conn, session.user_id, order_id, logs_service.DEFAULT_TAIL, wall, now
            ),
            write=True,
        )
        if isinstance(asked, list):
            return {"lines": asked}
        request_id = int(asked)
        deadline = time.monotonic() + LOGS_WAIT
        while time.monotonic() < deadline:
            lines = await c.db(lambda conn: logs_service.answer_of(conn, request_id))
            if lines is not None:
                return {"lines": lines}
            await asyncio.sleep(0.1)
        raise MarketError("agent_did_not_answer")
    except CloreError as exc:
        return {"lines": [], "error": error_text(c.t, request, exc)}


ROUTES = [
    Route("/market", market),
    Route("/servers/{server_id:int}", server_page),
    Route("/servers/{server_id:int}/rent", rent, POST),
    Route("/orders", orders_page),
    Route("/orders/rows", orders_rows),
    Route("/orders/{order_id:int}/cancel", cancel, POST),
    Route("/orders/{order_id:int}/bid", bid, POST),
    Route("/orders/{order_id:int}/logs", logs_page),
    Route("/orders/{order_id:int}/logs/lines", logs_lines),
]
