"""The console's routes: sign-in, renter, host and operator pages.

Each handler reads the form (checking the CSRF token), runs one market use case in one
transaction through the API's ``AppState`` (the same cache, clock and write wrapper the API
uses) and renders a template, or redirects with a one-time message (post/redirect/get).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import segno
from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from openclore.api.ratelimit import RateLimiter
from openclore.api.state import AppState
from openclore.config import Settings
from openclore.domain.errors import CloreError, InvalidInput, MarketError
from openclore.domain.money import UNITS_PER_COIN, AmountError, Coins, coins_str, to_units
from openclore.domain.text import check_pairs
from openclore.engine.clock import SandboxClock
from openclore.engine.ticker import tick
from openclore.market import accounts, audit, inputs, read_models, search, sessions
from openclore.market import logs as logs_service
from openclore.market import orders as order_service
from openclore.market import servers as server_service
from openclore.market import wallets as wallet_service
from openclore.web.i18n import LOCALES, Catalogs, negotiate
from openclore.web.messages import N_, error_text

HERE = Path(__file__).parent
SESSION_COOKIE = "oc_session"
PRE_CSRF_COOKIE = "oc_csrf"  # double-submit token of the sign-in form (no session yet)
PAGE_SIZE = 50
LOGS_WAIT = 4.0  # seconds a logs view waits for the agent (the view asks again every 5 s)
# a setting (or URL parameter) whose name holds one of these holds a credential: shown as set
# or not set
SECRET_PARTS = ("secret", "token", "pass", "credential")
SECRET_WORDS = frozenset({"key", "auth", "pwd"})
SIGNIN_INTERVAL = 2.0  # one sign-in attempt per 2 s per address, after a burst of 5
SIGNIN_BURST = 5


class Refused(Exception):
    """A request the console refuses outright (CSRF, not signed in, not an operator)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


BAD_TEXT = "bad text"
BAD_TEXT_MESSAGE = N_("It held characters that are not allowed (NUL or invalid text).")


def _check_text(pairs: Iterable[tuple[str, str]]) -> None:
    """Refuse a NUL or a lone surrogate in a path, query or form (400, never a database
    error): :mod:`openclore.domain.text`."""
    try:
        check_pairs(pairs, "request")
    except InvalidInput:
        raise Refused(400, BAD_TEXT) from None


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    words = set(lowered.replace("-", "_").split("_"))
    return any(part in lowered for part in SECRET_PARTS) or bool(SECRET_WORDS & words)


def _masked_url(raw: str) -> str:
    """A URL without its password (nor any secret-like query parameter's value)."""
    try:
        url = make_url(raw)
    except Exception:
        return "set"
    query = {k: "hidden" if _is_secret(k) else v for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def shown_settings(settings: Settings) -> dict[str, Any]:
    """The settings as the operator page shows them: no secret anywhere. A secret setting is
    only said to be set or not; a URL's password is masked (the database URL's, or any other
    setting's)."""
    shown: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if _is_secret(name):
            shown[name] = "set" if value else "not set"
        elif isinstance(value, str) and "://" in value and "@" in value:
            shown[name] = _masked_url(value)
        else:
            shown[name] = value
    return shown


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def _fmt_coins(value: Any, digits: int | None = None) -> str:
    units = value.units if isinstance(value, Coins) else int(value)
    if digits is None:
        return coins_str(units)
    q = Decimal(units) / UNITS_PER_COIN
    return f"{q:.{digits}f}".rstrip("0").rstrip(".") if q else "0"


class Console:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.catalogs = Catalogs()
        self.envs = {lang: self._environment(lang) for lang in LOCALES}
        self.signin_limiter = RateLimiter(state.db.engine, SIGNIN_INTERVAL * (SIGNIN_BURST - 1))

    def _environment(self, lang: str) -> Environment:
        """One template environment per language, its catalog installed once."""
        translations = self.catalogs.get(lang)
        t = translations.gettext
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            extensions=["jinja2.ext.i18n"],
            auto_reload=False,
        )
        env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
        env.filters["coins"] = _fmt_coins
        env.filters["per_hour"] = lambda v: _fmt_coins(
            (v.units if isinstance(v, Coins) else int(v)) // 24
        )
        env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
        env.filters["duration"] = lambda s: _duration(int(s), t)
        env.globals["gpu_name"] = search.gpu_name
        env.globals["gpu_count"] = search.gpu_count
        env.globals["country_of"] = search.country_of
        return env

    # ------------------------------------------------------------------ plumbing

    def lang(self, request: Request) -> str:
        chosen = request.cookies.get("lang")
        if chosen in LOCALES:
            return str(chosen)
        return negotiate(request.headers.get("accept-language", ""))

    async def db(self, fn: Callable[[Connection], Any], write: bool = False) -> Any:
        if write:
            return await run_in_threadpool(self.state.db_write, fn)

        def read() -> Any:
            with self.state.db.read() as conn:
                return fn(conn)

        return await run_in_threadpool(read)

    async def session(self, request: Request) -> sessions.Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        now = int(time.time())
        found: sessions.Session | None = await self.db(
            lambda conn: sessions.session_for(conn, sid, now)
        )
        return found

    async def signed_in(self, request: Request, admin: bool = False) -> sessions.Session:
        found = await self.session(request)
        if found is None:
            raise Refused(401, "sign in")
        if admin and not found.admin:
            raise Refused(403, "operators only")
        return found

    async def form(self, request: Request, session: sessions.Session | None) -> dict[str, str]:
        """The posted form, after its CSRF token: the session's, or before sign-in the
        double-submit cookie's."""
        data = await request.form()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        _check_text(fields.items())
        sent = fields.pop("csrf", "") or request.headers.get("x-csrf-token", "")
        expected = session.csrf if session else request.cookies.get(PRE_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
            raise Refused(403, "csrf")
        return fields

    def render(
        self,
        request: Request,
        template: str,
        session: sessions.Session | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = self.lang(request)
        env = self.envs[lang]
        flash = request.cookies.get("flash")
        pre_csrf = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)
        body = env.get_template(template).render(
            request=request,
            path=request.url.path,
            lang=lang,
            theme=request.cookies.get("theme", "auto"),
            session=session,
            csrf=session.csrf if session else pre_csrf,
            sandbox=self.state.settings.sandbox_enabled,
            now=self.state.now(),
            flash=_flash(flash),
            currencies=self.state.settings.currencies,
            **context,
        )
        response = HTMLResponse(body, status_code=status)
        response.headers["Content-Language"] = lang
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["Cache-Control"] = "no-store"
        if flash:
            response.delete_cookie("flash", path="/")
        if session is None and PRE_CSRF_COOKIE not in request.cookies:
            response.set_cookie(
                PRE_CSRF_COOKIE,
                pre_csrf,
                httponly=True,
                samesite="strict",
                secure=_secure(request),
                path="/",
            )
        return response

    def t(self, request: Request, message: str) -> str:
        return self.catalogs.get(self.lang(request)).gettext(message)

    def redirect(
        self, request: Request, to: str, message: str | None = None, ok: bool = True
    ) -> Response:
        response = RedirectResponse(to, status_code=303)
        if message:
            response.set_cookie(
                "flash",
                base64.urlsafe_b64encode(json.dumps({"ok": ok, "text": message}).encode()).decode(),
                httponly=True,
                samesite="lax",
                secure=_secure(request),
                path="/",
                max_age=60,
            )
        return response

    def failed(self, request: Request, to: str, exc: CloreError) -> Response:
        return self.redirect(request, to, error_text(self.t, request, exc), ok=False)


def _flash(cookie: str | None) -> dict[str, Any] | None:
    """The one-time message a redirect left (base64url JSON; anything else is ignored)."""
    if not cookie or len(cookie) > 4096:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(cookie.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(found, dict) or not isinstance(found.get("text"), str):
        return None
    return {"ok": bool(found.get("ok")), "text": found["text"]}


def _duration(seconds: int, gettext: Callable[[str], str]) -> str:
    """A runway or countdown as days, hours and minutes, in the page's language."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return gettext("%(d)s d %(h)s h") % {"d": days, "h": hours}
    if hours:
        return gettext("%(h)s h %(m)s min") % {"h": hours, "m": minutes}
    return gettext("%(m)s min") % {"m": minutes}


def _price_input(raw: str) -> Decimal:
    """A price typed into a form: a non-negative number of coins the ledger can hold."""
    try:
        value = Decimal(raw.strip())
        if value.is_finite() and value >= 0:
            to_units(value)  # in range
            return value
    except (InvalidOperation, AmountError):
        pass
    raise MarketError("invalid_price")


def _kv_lines(raw: str, sep: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(sep)
        out[key.strip()] = value.strip()
    return out


def _web_source(request: Request) -> str:
    return "web@" + (request.client.host if request.client else "unknown")


def _actor(request: Request, session: sessions.Session) -> audit.Actor:
    """The signed-in person, as the use cases record them in the audit log."""
    return audit.Actor.user(session.user_id, _web_source(request), "session")


def _qr_svg(text: str) -> Markup:
    svg = segno.make(text, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return Markup(svg)


def install_console(app: FastAPI) -> None:
    """Mount the console on the API's app (same process, same use cases)."""
    state: AppState = app.state.openclore
    c = Console(state)
    app.state.console = c
    settings = state.settings

    def route(path: str, methods: tuple[str, ...] = ("GET",)) -> Callable[[Any], Any]:
        def add(fn: Callable[..., Any]) -> Any:
            async def endpoint(request: Request) -> Response:
                try:
                    _check_text([("path", request.scope["path"])])
                    _check_text(request.query_params.multi_items())
                    response: Response = await fn(request)
                    return response
                except Refused as exc:
                    if exc.status == 401 and request.headers.get("hx-request"):
                        # a polled part after the session ended: the whole page goes to sign-in
                        return Response(status_code=204, headers={"HX-Redirect": "/signin"})
                    if exc.status == 401:
                        return RedirectResponse(
                            "/signin?next=" + urllib.parse.quote(request.url.path), 303
                        )
                    session = await c.session(request)
                    text = c.t(request, "This request was refused.")
                    if exc.message == "csrf":
                        text += " " + c.t(
                            request, "The form expired: reload the page and try again."
                        )
                    elif exc.message == BAD_TEXT:
                        text += " " + c.t(request, BAD_TEXT_MESSAGE)
                    return c.render(request, "error.html", session, exc.status, message=text)

            app.add_api_route(path, endpoint, methods=list(methods), include_in_schema=False)
            return fn

        return add

    app.router.routes.insert(
        0, Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    )

    # ------------------------------------------------------------------ sign-in

    @route("/")
    async def home(request: Request) -> Response:
        session = await c.session(request)
        return RedirectResponse("/market" if session else "/signin", 303)

    @route("/signin")
    async def signin_page(request: Request) -> Response:
        return c.render(request, "signin.html", None, next=request.query_params.get("next", ""))

    @route("/signin", ("POST",))
    async def signin(request: Request) -> Response:
        fields = await c.form(request, None)
        host = request.client.host if request.client else "unknown"
        decision = await run_in_threadpool(
            c.signin_limiter.hit, f"signin:{host}", SIGNIN_INTERVAL, state.rate_clock.now()
        )
        nxt = fields.get("next", "")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/market"
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

        def who(conn: Connection) -> tuple[int, int | None] | None:
            if token:
                return accounts.authenticate_token(conn, token)
            if name and password:
                found = accounts.check_password(conn, name, password)
                return None if found is None else (found, None)
            return None

        credential: tuple[int, int | None] | None = await c.db(who)
        if credential is None:
            message = (
                c.t(request, "Unknown or revoked API token.")
                if token
                else c.t(request, "Wrong username or password.")
            )
            return c.render(request, "signin.html", None, 401, next=nxt, error=message)
        uid, token_id = credential
        via = f"token:{token[:8]}" if token_id is not None else "password"
        actor = audit.Actor.user(uid, _web_source(request), via)
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
            secure=_secure(request),
            path="/",
            max_age=sessions.SESSION_SECONDS,
        )
        return response

    @route("/signout", ("POST",))
    async def signout(request: Request) -> Response:
        session = await c.signed_in(request)
        await c.form(request, session)
        sid = request.cookies.get(SESSION_COOKIE, "")
        await c.db(lambda conn: sessions.end_session(conn, sid), write=True)
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @route("/prefs")
    async def prefs(request: Request) -> Response:
        """Language and theme (cookies; harmless, so a plain link)."""
        nxt = request.query_params.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        response = RedirectResponse(nxt, 303)
        lang = request.query_params.get("lang")
        if lang in LOCALES:
            response.set_cookie("lang", lang, samesite="lax", path="/", max_age=365 * 86400)
        theme = request.query_params.get("theme")
        if theme in ("light", "dark", "auto"):
            response.set_cookie("theme", theme, samesite="lax", path="/", max_age=365 * 86400)
        return response

    # ------------------------------------------------------------------ renter

    @route("/market")
    async def market(request: Request) -> Response:
        session = await c.signed_in(request)
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
            listing = state.market.listing(conn)
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

    @route("/servers/{server_id:int}")
    async def server_page(request: Request) -> Response:
        session = await c.signed_in(request)
        server_id = int(request.path_params["server_id"])

        def run(conn: Connection) -> Any:
            listing = state.market.listing(conn)
            found = next((s for s in listing.servers if s["id"] == server_id), None)
            book = server_service.spot_marketplace(conn, server_id, session.user_id, settings)
            balances = {
                w["name"]: w["balance"].units
                for w in wallet_service.wallets(conn, session.user_id, settings)["wallets"]
            }
            return found, book, balances

        found, book, balances = await c.db(run)
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
            quotes[currency] = read_models.rent_quote(
                price.units, balances.get(currency, 0), settings
            )
        return c.render(
            request,
            "server.html",
            session,
            server=found,
            book=book,
            quotes=quotes,
            balances=balances,
        )

    @route("/servers/{server_id:int}/rent", ("POST",))
    async def rent(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        server_id = int(request.path_params["server_id"])
        back = f"/servers/{server_id}"
        body: dict[str, Any] = {
            "renting_server": server_id,
            "currency": fields.get("currency", settings.default_currency),
            "image": fields.get("image", "").strip(),
            "type": "spot" if fields.get("type") == "spot" else "on-demand",
            "ports": _kv_lines(fields.get("ports", ""), ":") or None,
            "env": _kv_lines(fields.get("env", ""), "=") or None,
        }
        for key in ("ssh_key", "ssh_password", "jupyter_token", "command"):
            if fields.get(key, "").strip():
                body[key] = fields[key].strip()
        try:
            if body["type"] == "spot":
                body["spotprice"] = _price_input(fields.get("spotprice", ""))
            req = inputs.validate_body(inputs.CreateOrderRequest, body)
            now = state.now()
            await c.db(
                lambda conn: order_service.create_order(
                    conn, session.user_id, req, settings, now, actor=_actor(request, session)
                ),
                write=True,
            )
        except CloreError as exc:
            return c.failed(request, back, exc)
        return c.redirect(request, "/orders", c.t(request, "Order created."))

    @route("/orders")
    async def orders_page(request: Request) -> Response:
        session = await c.signed_in(request)
        return c.render(request, "orders.html", session, **(await _orders(session, request)))

    @route("/orders/rows")
    async def orders_rows(request: Request) -> Response:
        session = await c.signed_in(request)
        return c.render(request, "_order_rows.html", session, **(await _orders(session, request)))

    async def _orders(session: sessions.Session, request: Request) -> dict[str, Any]:
        completed = request.query_params.get("completed") == "1"
        now = state.now()
        board = await c.db(
            lambda conn: read_models.order_board(conn, session.user_id, settings, now, completed)
        )
        return {
            "orders": board,
            "completed": completed,
            "interval": settings.spot_lowering_interval,
        }

    @route("/orders/{order_id:int}/cancel", ("POST",))
    async def cancel(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        order_id = int(request.path_params["order_id"])
        issue = fields.get("issue", "").strip() or None
        now = state.now()
        try:
            await c.db(
                lambda conn: order_service.cancel_order(
                    conn, session.user_id, order_id, issue, now, actor=_actor(request, session)
                ),
                write=True,
            )
        except CloreError as exc:
            return c.failed(request, "/orders", exc)
        return c.redirect(request, "/orders", c.t(request, "Order cancelled."))

    @route("/orders/{order_id:int}/bid", ("POST",))
    async def bid(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        order_id = int(request.path_params["order_id"])
        now = state.now()
        try:
            desired = to_units(_price_input(fields.get("price", "")))
            if desired <= 0:
                raise MarketError("invalid_price")
            await c.db(
                lambda conn: order_service.set_spot_price(
                    conn,
                    session.user_id,
                    order_id,
                    desired,
                    settings,
                    now,
                    actor=_actor(request, session),
                ),
                write=True,
            )
        except CloreError as exc:
            return c.failed(request, "/orders", exc)
        return c.redirect(request, "/orders", c.t(request, "Bid changed."))

    @route("/orders/{order_id:int}/logs")
    async def logs_page(request: Request) -> Response:
        session = await c.signed_in(request)
        order_id = int(request.path_params["order_id"])
        return c.render(
            request,
            "logs.html",
            session,
            order_id=order_id,
            **(await _logs(request, session, order_id)),
        )

    @route("/orders/{order_id:int}/logs/lines")
    async def logs_lines(request: Request) -> Response:
        session = await c.signed_in(request)
        order_id = int(request.path_params["order_id"])
        return c.render(
            request,
            "_log_lines.html",
            session,
            order_id=order_id,
            **(await _logs(request, session, order_id)),
        )

    async def _logs(request: Request, session: sessions.Session, order_id: int) -> dict[str, Any]:
        """The order's last 200 lines through the market's logs use case (as ``order_logs``):
        a demo server answers at once; a real one's agent is asked and its answer awaited."""
        wall = int(time.time())  # the question's age is real time, whatever the market's clock
        now = state.now()
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

    @route("/wallets")
    async def wallets_page(request: Request) -> Response:
        session = await c.signed_in(request)
        now = state.now()

        def run(conn: Connection) -> Any:
            listed = wallet_service.wallets(conn, session.user_id, settings)["wallets"]
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
        qr = {w["name"]: _qr_svg(w["deposit"]) for w in listed if w["deposit"]}
        return c.render(request, "wallets.html", session, wallets=listed, chart=chart, qr=qr)

    # ------------------------------------------------------------------ host

    @route("/host")
    async def host_page(request: Request) -> Response:
        session = await c.signed_in(request)
        now = state.now()
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
            "series": {
                str(sid): [v / UNITS_PER_COIN for _, v in vals] for sid, vals in earned.items()
            },
        }
        return c.render(
            request,
            "host.html",
            session,
            servers=mine["servers"],
            limit=mine["limit"],
            chart=chart,
            currency=currency,
        )

    @route("/host/add", ("POST",))
    async def host_add(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        name = fields.get("name", "").strip()
        now = state.now()
        try:
            req = inputs.validate_body(inputs.AddServerRequest, {"name": name})
            _, token = await c.db(
                lambda conn: server_service.add_server(
                    conn, session.user_id, req.name, now, settings, actor=_actor(request, session)
                ),
                write=True,
            )
        except CloreError as exc:
            return c.failed(request, "/host", exc)
        market_url = str(request.base_url).rstrip("/")
        return c.render(
            request,
            "host_added.html",
            session,
            name=name,
            token=token,
            command=f"openclore agent --server-url {market_url} --init-token {token}",
        )

    @route("/host/servers/{name:path}")
    async def host_server(request: Request) -> Response:
        session = await c.signed_in(request)
        name = request.path_params["name"]
        try:
            config = await c.db(
                lambda conn: server_service.server_config(conn, session.user_id, name, settings)
            )
        except CloreError as exc:
            return c.failed(request, "/host", exc)
        return c.render(request, "host_server.html", session, config=config["config"])

    @route("/host/servers/{name:path}", ("POST",))
    async def host_server_save(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        name = request.path_params["name"]
        back = "/host/servers/" + urllib.parse.quote(name)
        body: dict[str, Any] = {"name": name, "availability": fields.get("availability") == "on"}
        now = state.now()
        try:
            if fields.get("mrl", "").strip():
                if not fields["mrl"].strip().isdigit():
                    raise MarketError("invalid_mrl")
                body["mrl"] = int(fields["mrl"])
            for currency in settings.currencies:
                for kind in ("on_demand", "spot"):
                    raw = fields.get(f"{currency}_{kind}", "").strip()
                    if raw:
                        body[f"{currency}_{kind}"] = _price_input(raw)
            req = inputs.validate_body(inputs.SetServerSettingsRequest, body)
            await c.db(
                lambda conn: server_service.set_server_settings(
                    conn, session.user_id, req, settings, now, actor=_actor(request, session)
                ),
                write=True,
            )
        except CloreError as exc:
            return c.failed(request, back, exc)
        return c.redirect(request, back, c.t(request, "Settings saved."))

    # ------------------------------------------------------------------ operator

    @route("/admin")
    async def admin_page(request: Request) -> Response:
        session = await c.signed_in(request, admin=True)
        now = state.now()
        currency = request.query_params.get("currency", settings.default_currency)
        if currency not in settings.currencies:
            currency = settings.default_currency

        def run(conn: Connection) -> Any:
            return (
                accounts.list_users(conn),
                read_models.all_servers(conn),
                read_models.platform_revenue(conn, currency, now),
            )

        users, all_servers, revenue = await c.db(run)
        shown = shown_settings(settings)
        chart = {"t": [t for t, _ in revenue], "v": [v / UNITS_PER_COIN for _, v in revenue]}
        return c.render(
            request,
            "admin.html",
            session,
            users=users,
            servers=all_servers,
            chart=chart,
            currency=currency,
            shown=shown,
            issued=request.cookies.get("issued"),
        )

    async def admin_action(
        request: Request,
        fn: Callable[[dict[str, str], int], Callable[[Connection], Any]],
        done: str,
        action: str,
    ) -> Response:
        """An operator's action, recorded in the audit log in its own transaction."""
        session = await c.signed_in(request, admin=True)
        fields = await c.form(request, session)
        now = state.now()
        source = _web_source(request)
        detail = {k: v[:128] for k, v in fields.items() if k != "csrf"}

        def run(conn: Connection) -> Any:
            result = fn(fields, now)(conn)
            audit.record(
                conn,
                f"admin:{session.name}",
                audit.ADMIN + action,
                request.url.path,
                detail,
                source,
                user_id=session.user_id,
            )
            return result

        try:
            result = await c.db(run, write=True)
        except CloreError as exc:
            return c.failed(request, "/admin", exc)
        except (accounts.UnknownUser, ValueError):
            return c.redirect(request, "/admin", c.t(request, "No such user."), ok=False)
        response = c.redirect(request, "/admin", c.t(request, done))
        if isinstance(result, str):  # a new token: shown once, on the next page only
            response.set_cookie(
                "issued",
                result,
                httponly=True,
                samesite="lax",
                secure=_secure(request),
                path="/admin",
                max_age=60,
            )
        return response

    @route("/admin/credit", ("POST",))
    async def admin_credit(request: Request) -> Response:
        def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
            amount = to_units(_price_input(f.get("amount", "")))
            return lambda conn: wallet_service.deposit(
                conn,
                accounts.find_user(conn, f.get("user", "")),
                f.get("currency", ""),
                amount,
                settings,
                now,
            )

        return await admin_action(request, fn, N_("Wallet credited."), "deposit")

    @route("/admin/token", ("POST",))
    async def admin_token(request: Request) -> Response:
        def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
            return lambda conn: accounts.issue_token(
                conn, accounts.find_user(conn, f.get("user", "")), now
            )

        return await admin_action(request, fn, N_("Token issued."), "token.issue")

    @route("/admin/revoke", ("POST",))
    async def admin_revoke(request: Request) -> Response:
        def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
            return lambda conn: accounts.revoke_token_prefix(
                conn, accounts.find_user(conn, f.get("user", "")), f.get("prefix", ""), now
            )

        return await admin_action(request, fn, N_("Token revoked."), "token.revoke")

    @route("/admin/signout", ("POST",))
    async def admin_signout(request: Request) -> Response:
        def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
            return lambda conn: sessions.end_user_sessions(
                conn, accounts.find_user(conn, f.get("user", ""))
            )

        return await admin_action(request, fn, N_("Sessions ended."), "user.signout")

    @route("/admin/servers/{server_id:int}/hide", ("POST",))
    async def admin_hide(request: Request) -> Response:
        server_id = int(request.path_params["server_id"])
        return await admin_action(
            request,
            lambda f, now: lambda conn: read_models.hide_server(conn, server_id),
            N_("Server hidden."),
            "server.hide",
        )

    @route("/admin/servers/{server_id:int}/remove", ("POST",))
    async def admin_remove(request: Request) -> Response:
        server_id = int(request.path_params["server_id"])
        return await admin_action(
            request,
            lambda f, now: lambda conn: read_models.remove_server_by_id(conn, server_id, now),
            N_("Server removed."),
            "server.remove",
        )

    # ------------------------------------------------------------------ sandbox

    @route("/sandbox/advance", ("POST",))
    async def sandbox_advance(request: Request) -> Response:
        session = await c.signed_in(request)
        fields = await c.form(request, session)
        back = fields.get("next", "/market")
        if not back.startswith("/") or back.startswith("//"):
            back = "/market"
        if not settings.sandbox_enabled:
            raise Refused(404, "no sandbox")
        seconds = 86400 if fields.get("seconds") == "86400" else 3600
        await c.db(lambda conn: SandboxClock.advance(conn, seconds), write=True)
        await run_in_threadpool(tick, state.db, state.now(), settings.agent_timeout)
        return c.redirect(request, back, c.t(request, "The market's clock moved forward."))
