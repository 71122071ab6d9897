"""The sandbox banner: move the market's clock forward (and run the engine's tick), credit
play money to one's own wallet, reset the demo world (after a confirmation): the sandbox API's
advance_time, deposit and reset."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError
from openclore.domain.money import to_units
from openclore.engine.clock import SandboxClock
from openclore.engine.ticker import tick
from openclore.market import wallets as wallet_service
from openclore.market.demo import reset_world
from openclore.web.common import Refused, price_input, safe_next
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.routing import POST, Route


async def sandbox_advance(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    back = safe_next(fields.get("next", ""), "/market")
    if not c.settings.sandbox_enabled:
        raise Refused(404, "no sandbox")
    seconds = 86400 if fields.get("seconds") == "86400" else 3600
    await c.db(lambda conn: SandboxClock.advance(conn, seconds), write=True)
    await run_in_threadpool(tick, c.state.db, c.state.now(), c.settings.agent_timeout)
    return c.redirect(request, back, c.t(request, "The market's clock moved forward."))


async def sandbox_credit(c: Console, request: Request) -> Response:
    """Play money into the signed-in user's wallet (``/sandbox/deposit``)."""
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    back = safe_next(fields.get("next", ""), "/wallets")
    if not c.settings.sandbox_enabled:
        raise Refused(404, "no sandbox")
    now = c.state.now()
    try:
        amount = to_units(price_input(fields.get("amount", "")))
        currency = fields.get("currency", "")
        await c.db(
            lambda conn: wallet_service.deposit(
                conn, session.user_id, currency, amount, c.settings, now, memo="sandbox"
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, back, exc)
    return c.redirect(request, back, c.t(request, "Play money credited."))


async def sandbox_reset_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    if not c.settings.sandbox_enabled:
        raise Refused(404, "no sandbox")
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Reset the demo world?"),
        text=N_("Every order, server, wallet and user goes; the demo world comes back as new."),
        subject=c.t(request, "Sandbox"),
        action="/sandbox/world/reset",
        button=N_("Reset"),
        back="/market",
        fields=[],
    )


async def sandbox_reset(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    if not c.settings.sandbox_enabled:
        raise Refused(404, "no sandbox")
    try:
        await c.db(lambda conn: reset_world(conn, c.settings, int(time.time())), write=True)
    except CloreError as exc:
        return c.failed(request, "/market", exc)
    return c.redirect(request, "/signin", c.t(request, "The demo world was reset."))


ROUTES = [
    Route("/sandbox/advance", sandbox_advance, POST),
    Route("/sandbox/credit", sandbox_credit, POST),
    Route("/sandbox/world/reset", sandbox_reset_confirm),
    Route("/sandbox/world/reset", sandbox_reset, POST),
]
