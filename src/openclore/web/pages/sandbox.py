"""The sandbox banner's button: move the market's clock forward and run the engine's tick."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.engine.clock import SandboxClock
from openclore.engine.ticker import tick
from openclore.web.common import Refused, safe_next
from openclore.web.context import Console
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


ROUTES = [
    Route("/sandbox/advance", sandbox_advance, POST),
]
