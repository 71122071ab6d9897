"""The console's routes: sign-in, renter, money, host, operator and sandbox pages.

Each page module (:mod:`openclore.web.pages`) holds module-level handlers and a route table
(``ROUTES``). A handler gets the console's shared state (:class:`~openclore.web.context.Console`)
and the request, reads the form (checking the CSRF token), runs one market use case in one
transaction through the API's ``AppState`` (the same cache, clock and write wrapper the API
uses) and renders a template, or redirects with a one-time message (post/redirect/get).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from openclore.api.state import AppState
from openclore.web.context import HERE, Console
from openclore.web.pages import host, money, operator, renter, sandbox, signin
from openclore.web.routing import Route, mount

# in this order (a path's GET and POST are two routes, matched in turn)
ROUTES: list[Route] = [
    *signin.ROUTES,
    *renter.ROUTES,
    *money.ROUTES,
    *host.ROUTES,
    *operator.ROUTES,
    *sandbox.ROUTES,
]


def install_console(app: FastAPI) -> None:
    """Mount the console on the API's app (same process, same use cases)."""
    state: AppState = app.state.openclore
    console = Console(state)
    app.state.console = console
    app.router.routes.insert(
        0, Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    )
    mount(app, console, ROUTES)
