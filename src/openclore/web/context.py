"""The console's one piece of shared state: :class:`Console`, built once per app by
``install_console`` and handed to every page handler (``handler(console, request)``).

It holds the API's ``AppState`` (the same cache, clock and write wrapper the API uses), the
settings, the catalogs and one template environment per language, and the plumbing each
handler needs: the session, the CSRF-checked form, a use case run in one transaction, a render
with the console's headers, a redirect with a one-time message.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openclore.api.ratelimit import RateLimiter
from openclore.api.state import AppState
from openclore.config import Settings
from openclore.domain.errors import CloreError
from openclore.domain.money import UNITS_PER_COIN, Coins, coins_str
from openclore.market import search, sessions
from openclore.web.common import PRE_CSRF_COOKIE, SESSION_COOKIE, Refused, check_text, secure
from openclore.web.i18n import LOCALES, Catalogs, negotiate
from openclore.web.messages import error_text
from openclore.web.probe import Prober, Reach

HERE = Path(__file__).parent
SIGNIN_INTERVAL = 2.0  # one sign-in attempt per 2 s per address, after a burst of 5
SIGNIN_BURST = 5


def _usd_hour(per_day: Any, gpus: int = 1) -> str:
    """A USD price per day as dollars per hour (per GPU with ``gpus``), rounded for people:
    cents from $1 up, three significant digits under it ("$0.0417")."""
    units = per_day.units if isinstance(per_day, Coins) else int(per_day)
    hourly = Decimal(units) / UNITS_PER_COIN / 24 / max(gpus, 1)
    if hourly >= 1:
        return f"${hourly:,.2f}"
    if hourly <= 0:
        return "$0"
    # fixed-point at any size ("$0.0000514"; a float's "f" would stop at six decimals)
    return "$" + format(Decimal(f"{hourly:.3g}"), "f").rstrip("0").rstrip(".")


def _fmt_coins(value: Any) -> str:
    """An amount in coins, exact (``1.5``, ``0.000000001``)."""
    return coins_str(value.units if isinstance(value, Coins) else int(value))


def _gb(value: object) -> str:
    """A size in GB as people read it: hosts report RAM and VRAM as measured (62.67348861694336),
    shown to one decimal at most (62.7), whole sizes without one (24)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    rounded = round(number, 1)
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"


class Console:
    """The shared state and plumbing of the console's pages (``app.state.console``)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings: Settings = state.settings
        self.catalogs = Catalogs()
        self.envs = {lang: self._environment(lang) for lang in LOCALES}
        self.signin_limiter = RateLimiter(
            state.db.rate_budget(local=state.settings.rate_limit_local),
            SIGNIN_INTERVAL * (SIGNIN_BURST - 1),
        )
        # whether My orders' published endpoints answer (cached 5 s); an SSH host is the
        # agent's to report, so only addresses of the kinds allowed are probed
        settings = self.settings
        own = [*settings.public_hostnames, settings.gateway_name]
        self.probes = Prober(
            reach=Reach(
                trusted=frozenset(h.lower().rstrip(".") for h in own),
                allow_private=settings.connect_probe_private,
                allow_loopback=settings.sandbox_enabled,
            )
        )

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
        env.filters["usd_hour"] = _usd_hour
        env.filters["gb"] = _gb
        env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
        env.filters["duration"] = lambda s: _duration(int(s), t)
        env.globals["gpu_name"] = search.gpu_name
        env.globals["gpu_count"] = search.gpu_count
        env.globals["country_of"] = search.country_of
        return env

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
        check_text(fields.items())
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
            sandbox=self.settings.sandbox_enabled,
            now=self.state.now(),
            flash=_flash(flash),
            currencies=self.settings.currencies,
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
                secure=secure(request),
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
                secure=secure(request),
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
