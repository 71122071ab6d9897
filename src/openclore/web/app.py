"""The console's routes: sign-in, renter, money, host, operator and sandbox pages.

Each page module (:mod:`openclore.web.pages`) holds module-level handlers and a route table
(``ROUTES``). A handler gets the console's shared state (:class:`~openclore.web.context.Console`)
and the request, reads the form (checking the CSRF token), runs one market use case in one
transaction through the API's ``AppState`` (the same cache, clock and write wrapper the API
uses) and renders a template, or redirects with a one-time message (post/redirect/get).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from openclore.api.state import AppState
from openclore.web.context import HERE, Console
from openclore.web.pages import (
    account,
    host,
    keeping,
    money,
    operator,
    operator_money,
    operator_tools,
    renter,
    sandbox,
    signin,
    things,
)
from openclore.web.routing import Route, mount

# the API's paths (and the machines' ones): JSON answers, their own encoding; everything
# else is the console's
API_PREFIXES = (
    "/v1/",
    "/agent/",
    "/sandbox/advance_time",
    "/sandbox/deposit",
    "/sandbox/reset",
    "/payments/",
    "/gigaspot/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi",
)

# in this order (a path's GET and POST are two routes, matched in turn)
ROUTES: list[Route] = [
    *signin.ROUTES,
    *renter.ROUTES,
    *keeping.ROUTES,
    *money.ROUTES,
    *account.ROUTES,
    *things.ROUTES,
    *host.ROUTES,
    *operator.ROUTES,
    *operator_money.ROUTES,
    *operator_tools.ROUTES,
    *sandbox.ROUTES,
]


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/v1", "/agent")


class ConsoleGzip:
    """gzip for the console's pages and assets when the browser asks for it; the API's paths
    pass untouched (the marketplace listing comes gzipped already, the event stream must not
    be buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=500, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_api_path(scope["path"]):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _not_found_page(app: FastAPI, console: Console) -> None:
    """An unknown console path (or a form's path asked with GET: 405) is an HTML page in the
    reader's language; the API's paths keep the API's JSON answer."""
    api_handler: Any = app.exception_handlers[StarletteHTTPException]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code not in (404, 405) or is_api_path(request.url.path):
            answer: Response = await api_handler(request, exc)
            return answer
        session = await console.session(request)
        message = console.t(request, "There is no page at this address.")
        return console.render(
            request, "error.html", session, exc.status_code, message=message, title="Page not found"
        )

    app.add_exception_handler(StarletteHTTPException, handler)


def install_console(app: FastAPI) -> None:
    """Mount the console on the API's app (same process, same use cases)."""
    state: AppState = app.state.openclore
    console = Console(state)
    app.state.console = console
    app.router.routes.insert(
        0, Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    )
    mount(app, console, ROUTES)
    _not_found_page(app, console)
    app.add_middleware(ConsoleGzip)
