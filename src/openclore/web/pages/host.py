"""The host's pages: their servers and earnings, adding a server, a server's settings."""

from __future__ import annotations

import urllib.parse
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError, MarketError
from openclore.domain.money import UNITS_PER_COIN
from openclore.market import inputs, read_models
from openclore.market import servers as server_service
from openclore.web.common import actor, price_input
from openclore.web.context import Console
from openclore.web.routing import POST, Route


async def host_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    settings = c.settings
    now = c.state.now()
    currency = request.query_params.get("currency", settings.default_currency)
    if currency not in settings.currencies:
        currency = settings.default_currency

    def run(conn: Connection) -> Any:
        mine = server_service.my_servers(conn, session.user_id, settings)
        earned = read_models.earnings_series(conn, session.user_id, currency, now)
        return mine, earned

    mine, earned = await c.db(run)
    days: list[tuple[int, int]] = next(iter(earned.values()), [])
    chart = {
        "t": [t for t, _ in days],
        "series": {str(sid): [v / UNITS_PER_COIN for _, v in vals] for sid, vals in earned.items()},
    }
    return c.render(
        request,
        "host.html",
        session,
        servers=mine["servers"],
        limit=mine["limit"],
        chart=chart,
        currency=currency,
        agent_timeout=settings.agent_timeout,
    )


async def host_add(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    name = fields.get("name", "").strip()
    now = c.state.now()
    try:
        req = inputs.validate_body(inputs.AddServerRequest, {"name": name})
        _, token = await c.db(
            lambda conn: server_service.add_server(
                conn, session.user_id, req.name, now, c.settings, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, "/host", exc)
    market_url = (c.settings.public_url or str(request.base_url)).rstrip("/")
    return c.render(
        request,
        "host_added.html",
        session,
        name=name,
        token=token,
        market_url=market_url,
        install="sudo python3 -m venv /opt/openclore/venv && "
        "sudo /opt/openclore/venv/bin/pip install openclore",
        command=f"sudo /opt/openclore/venv/bin/openclore agent --server-url {market_url} "
        f"--init-token {token}",
    )


async def host_server(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    name = request.path_params["name"]
    try:
        config = await c.db(
            lambda conn: server_service.server_config(conn, session.user_id, name, c.settings)
        )
    except CloreError as exc:
        return c.failed(request, "/host", exc)
    return c.render(request, "host_server.html", session, config=config["config"])


async def host_server_save(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    settings = c.settings
    name = request.path_params["name"]
    back = "/host/servers/" + urllib.parse.quote(name)
    body: dict[str, Any] = {"name": name, "availability": fields.get("availability") == "on"}
    now = c.state.now()
    try:
        if fields.get("mrl", "").strip():
            if not fields["mrl"].strip().isdigit():
                raise MarketError("invalid_mrl")
            body["mrl"] = int(fields["mrl"])
        if fields.get("per_gpu_form") == "1":  # the server has the GPUs for it
            body["partial_gpu_rental"] = fields.get("partial_gpu_rental") == "on"
            least = fields.get("min_gpus", "").strip()
            if least:
                body["min_gpus"] = int(least) if least.isdigit() else least
        disk = fields.get("disk_gb", "").strip()
        if disk:  # the disk each rental gets (0: none offered)
            body["disk_gb"] = int(disk) if disk.isdigit() and len(disk) < 9 else disk
        for currency in settings.currencies:
            for kind in ("on_demand", "spot", "storage"):
                raw = fields.get(f"{currency}_{kind}", "").strip()
                if raw:
                    body[f"{currency}_{kind}"] = price_input(raw)
        req = inputs.validate_body(inputs.SetServerSettingsRequest, body)
        await c.db(
            lambda conn: server_service.set_server_settings(
                conn, session.user_id, req, settings, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, back, exc)
    return c.redirect(request, back, c.t(request, "Settings saved."))


ROUTES = [
    Route("/host", host_page),
    Route("/host/add", host_add, POST),
    Route("/host/servers/{name:path}", host_server),
    Route("/host/servers/{name:path}", host_server_save, POST),
]
