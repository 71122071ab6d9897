"""Sign-in and sign-out (an API token, or a password user), and the language/theme link."""

from __future__ import annotations

import time

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from openclore.market import accounts, api_keys, audit, sessions
from openclore.web.common import SESSION_COOKIE, safe_next, secure, web_source
from openclore.web.context import SIGNIN_INTERVAL, Console
from openclore.web.i18n import LOCALES
from openclore.web.routing import POST, Route

LIMITED_KEY = "limited"


async def home(c: Console, request: Request) -> Response:
    session = await c.session(request)
    return RedirectResponse("/market" if session else "/signin", 303)


async def signin_page(c: Console, request: Request) -> Response:
    return c.render(request, "signin.html", None, next=request.query_params.get("next", ""))


async def signin(c: Console, request: Request) -> Response:
    fields = await c.form(request, None)
    host = request.client.host if request.client else "unknown"
    decision = await run_in_threadpool(
        c.signin_limiter.hit, f"signin:{host}", SIGNIN_INTERVAL, c.state.rate_clock.now()
    )
    nxt = safe_next(fields.get("next", ""), "/market")
    if not decision.allowed:
        return c.render(
            request,
            "signin.html",
            None,
            429,
            next=nxt,
            error=c.t(request, "Too many sign-in attempts. Wait a few seconds and try again."),
        )
    token = fields.get("token", "").strip()
    name = fields.get("username", "").strip()
    password = fields.get("password", "")

    def who(conn: Connection) -> tuple[int, int | None] | str | None:
        if token:
            key = api_keys.key_for_token(conn, token)
            if key is not None and not api_keys.is_full(key):
                return LIMITED_KEY
            return accounts.authenticate_token(conn, token)
        if name and password:
            found = accounts.check_password(conn, name, password)
            return None if found is None else (found, None)
        return None

    credential: tuple[int, int | None] | str | None = await c.db(who)
    if credential == LIMITED_KEY:
        # the console's pages act with every scope and no limit: a limited key cannot start one
        message = c.t(
            request,
            "This API key is limited (scopes, a spend limit or an expiry). "
            "Sign in with a full key or your password.",
        )
        return c.render(request, "signin.html", None, 403, next=nxt, error=message)
    if credential is None or isinstance(credential, str):
        message = (
            c.t(request, "Unknown or revoked API token.")
            if token
            else c.t(request, "Wrong username or password.")
        )
        return c.render(request, "signin.html", None, 401, next=nxt, error=message)
    uid, token_id = credential
    via = f"token:{token[:8]}" if token_id is not None else "password"
    actor = audit.Actor.user(uid, web_source(request), via)
    sid: str = await c.db(
        lambda conn: sessions.start_session(conn, uid, int(time.time()), token_id, actor=actor),
        write=True,
    )
    response = RedirectResponse(nxt, 303)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        httponly=True,
        samesite="lax",
        secure=secure(request),
        path="/",
        max_age=sessions.SESSION_SECONDS,
    )
    return response


async def signout(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    sid = request.cookies.get(SESSION_COOKIE, "")
    await c.db(lambda conn: sessions.end_session(conn, sid), write=True)
    response = RedirectResponse("/signin", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def prefs(c: Console, request: Request) -> Response:
    """Language and theme (cookies; harmless, so a plain link)."""
    nxt = safe_next(request.query_params.get("next", ""), "/")
    response = RedirectResponse(nxt, 303)
    lang = request.query_params.get("lang")
    if lang in LOCALES:
        response.set_cookie("lang", lang, samesite="lax", path="/", max_age=365 * 86400)
    theme = request.query_params.get("theme")
    if theme in ("light", "dark", "auto"):
        response.set_cookie("theme", theme, samesite="lax", path="/", max_age=365 * 86400)
    return response


ROUTES = [
    Route("/", home),
    Route("/signin", signin_page),
    Route("/signin", signin, POST),
    Route("/signout", signout, POST),
    Route("/prefs", prefs),
]
