"""Console handlers called directly, without a server: a :class:`Console` for a test's market
(whose templates also find ``probe.html``, a page that shows every value handed to it) and a
Starlette request built from its parts."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from jinja2 import ChoiceLoader, DictLoader
from starlette.requests import Request

from openclore.api.app import create_app
from openclore.engine.clock import Clock
from openclore.web.app import install_console
from openclore.web.context import Console

from support import Market

# a template that shows every value the console hands each page
PROBE = (
    "path={{ path }}|lang={{ lang }}|theme={{ theme }}|user={{ session.name if session else '-' }}"
    "|csrf={{ csrf }}|sandbox={{ sandbox }}|now={{ now }}|flash={{ flash }}"
    "|currencies={{ currencies|join(',') }}|extra={{ extra }}|req={{ request.url.path }}"
)


def make_console(market: Market, rate_clock: Clock | None = None, **overrides: Any) -> Console:
    if overrides:
        market.reconfigure(**overrides)
    app = create_app(market.settings, db=market.db, clock=market.clock, rate_clock=rate_clock)
    install_console(app)
    console: Console = app.state.console
    for env in console.envs.values():
        env.loader = ChoiceLoader([DictLoader({"probe.html": PROBE}), env.loader])  # type: ignore[list-item]
    return console


def request(
    path: str = "/market",
    *,
    method: str = "GET",
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    scheme: str = "http",
    query: str = "",
    client: str | None = "203.0.113.9",
) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    body = urlencode(form or {}).encode()
    if form is not None:
        raw.append((b"content-type", b"application/x-www-form-urlencoded"))
        raw.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": raw,
        "client": None if client is None else (client, 5000),
        "server": ("testserver", 80),
        "root_path": "",
    }
    return Request(scope, receive)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def set_cookies(response: Any) -> list[str]:
    return [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]
