"""A console route: a path, its methods and a module-level handler ``handler(console, request)``.

Each page module lists its routes (``ROUTES``); :func:`mount` adds them to the app, each wrapped
once: the path and query are checked for bad text, and a :class:`Refused` request becomes the
sign-in page (401), an htmx redirect (401 on a polled part) or the error page.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from openclore.web.common import BAD_TEXT, BAD_TEXT_MESSAGE, Refused, check_text
from openclore.web.context import Console

Handler = Callable[[Console, Request], Awaitable[Response]]
GET = ("GET",)
POST = ("POST",)


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    methods: tuple[str, ...] = GET


async def refused(c: Console, request: Request, exc: Refused) -> Response:
    """What a refused request gets back."""
    if exc.status == 401 and request.headers.get("hx-request"):
        # a polled part after the session ended: the whole page goes to sign-in
        return Response(status_code=204, headers={"HX-Redirect": "/signin"})
    if exc.status == 401:
        return RedirectResponse("/signin?next=" + urllib.parse.quote(request.url.path), 303)
    session = await c.session(request)
    text = c.t(request, "This request was refused.")
    if exc.message == "csrf":
        text += " " + c.t(request, "The form expired: reload the page and try again.")
    elif exc.message == BAD_TEXT:
        text += " " + c.t(request, BAD_TEXT_MESSAGE)
    return c.render(request, "error.html", session, exc.status, message=text)


def _endpoint(c: Console, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            check_text([("path", request.scope["path"])])
            check_text(request.query_params.multi_items())
            return await handler(c, request)
        except Refused as exc:
            return await refused(c, request, exc)

    return endpoint


def mount(app: FastAPI, c: Console, routes: Iterable[Route]) -> None:
    for route in routes:
        app.add_api_route(
            route.path,
            _endpoint(c, route.handler),
            methods=list(route.methods),
            include_in_schema=False,
        )
