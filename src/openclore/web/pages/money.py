"""The wallets page: each wallet's balance, deposit address (and its QR code) and spend chart."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.money import UNITS_PER_COIN
from openclore.market import read_models
from openclore.market import wallets as wallet_service
from openclore.web.common import qr_svg
from openclore.web.context import Console
from openclore.web.routing import Route


async def wallets_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    now = c.state.now()

    def run(conn: Connection) -> Any:
        listed = wallet_service.wallets(conn, session.user_id, c.settings)["wallets"]
        series = {
            w["name"]: read_models.spend_series(conn, session.user_id, w["name"], now)
            for w in listed
        }
        return listed, series

    listed, series = await c.db(run)
    chart = {
        name: {"t": [t for t, _ in s], "v": [v / UNITS_PER_COIN for _, v in s]}
        for name, s in series.items()
    }
    qr = {w["name"]: qr_svg(w["deposit"]) for w in listed if w["deposit"]}
    return c.render(request, "wallets.html", session, wallets=listed, chart=chart, qr=qr)


ROUTES = [
    Route("/wallets", wallets_page),
]
