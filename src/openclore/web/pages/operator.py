"""The operator's page (users, servers, revenue, settings without secrets) and their actions,
each recorded in the audit log in the action's own transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import Response

from openclore.config import Settings
from openclore.domain.errors import CloreError
from openclore.domain.money import UNITS_PER_COIN, to_units
from openclore.domain.usd import rate_text
from openclore.market import accounts, audit, rates, read_models, sessions
from openclore.market import wallets as wallet_service
from openclore.web.common import price_input, secure, web_source
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.routing import POST, Route

# a setting (or URL parameter) whose name holds one of these holds a credential: shown as set
# or not set
SECRET_PARTS = ("secret", "token", "pass", "credential")
SECRET_WORDS = frozenset({"key", "auth", "pwd"})

# an action: from the form and the time, the use case to run in the audited transaction
Action = Callable[[dict[str, str], int], Callable[[Connection], Any]]


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


async def admin_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request, admin=True)
    settings = c.settings
    now = c.state.now()
    currency = request.query_params.get("currency", settings.default_currency)
    if currency not in settings.currencies:
        currency = settings.default_currency

    def run(conn: Connection) -> Any:
        return (
            accounts.list_users(conn),
            read_models.all_servers(conn),
            read_models.platform_revenue(conn, currency, now),
            rates.current_rates(conn, settings),
            rates.stored_rates(conn),
        )

    users, all_servers, revenue, in_use, stored = await c.db(run)
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
        rates={cur: (rate_text(r), cur in stored) for cur, r in sorted(in_use.items())},
    )


async def admin_action(
    c: Console,
    request: Request,
    fn: Action,
    done: str,
    action: str,
    back: str = "/admin",
    target: str | None = None,
    about: Callable[[Connection], int | None] | None = None,
) -> Response:
    """An operator's action, recorded in the audit log in its own transaction (``target``: what
    it acted on, default the form's path; ``about``: the user it concerns, default the
    operator); then back to ``back`` with its message."""
    session = await c.signed_in(request, admin=True)
    fields = await c.form(request, session)
    now = c.state.now()
    source = web_source(request)
    # what the form said, never a password
    detail = {k: v[:128] for k, v in fields.items() if k != "csrf" and "password" not in k}

    def run(conn: Connection) -> Any:
        result = fn(fields, now)(conn)
        audit.record(
            conn,
            f"admin:{session.name}",
            audit.ADMIN + action,
            target or request.url.path,
            detail,
            source,
            user_id=session.user_id if about is None else about(conn),
        )
        return result

    try:
        result = await c.db(run, write=True)
    except CloreError as exc:
        return c.failed(request, back, exc)
    except (accounts.UnknownUser, ValueError):
        return c.redirect(request, back, c.t(request, "No such user."), ok=False)
    response = c.redirect(request, back, c.t(request, done))
    if isinstance(result, str):  # a new token: shown once, on the next page only
        response.set_cookie(
            "issued",
            result,
            httponly=True,
            samesite="lax",
            secure=secure(request),
            path="/admin",
            max_age=60,
        )
    return response


async def admin_credit(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        amount = to_units(price_input(f.get("amount", "")))
        return lambda conn: wallet_service.deposit(
            conn,
            accounts.find_user(conn, f.get("user", "")),
            f.get("currency", ""),
            amount,
            c.settings,
            now,
        )

    return await admin_action(c, request, fn, N_("Wallet credited."), "deposit")


def _token(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
    return lambda conn: accounts.issue_token(conn, accounts.find_user(conn, f.get("user", "")), now)


def _revoke(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
    return lambda conn: accounts.revoke_token_prefix(
        conn, accounts.find_user(conn, f.get("user", "")), f.get("prefix", ""), now
    )


def _signout(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
    return lambda conn: sessions.end_user_sessions(
        conn, accounts.find_user(conn, f.get("user", ""))
    )


async def admin_token(c: Console, request: Request) -> Response:
    return await admin_action(c, request, _token, N_("Token issued."), "token.issue")


async def admin_revoke(c: Console, request: Request) -> Response:
    return await admin_action(c, request, _revoke, N_("Token revoked."), "token.revoke")


async def admin_signout(c: Console, request: Request) -> Response:
    return await admin_action(c, request, _signout, N_("Sessions ended."), "user.signout")


async def admin_hide(c: Console, request: Request) -> Response:
    server_id = int(request.path_params["server_id"])
    return await admin_action(
        c,
        request,
        lambda f, now: lambda conn: read_models.hide_server(conn, server_id),
        N_("Server hidden."),
        "server.hide",
    )


async def admin_remove(c: Console, request: Request) -> Response:
    server_id = int(request.path_params["server_id"])
    return await admin_action(
        c,
        request,
        lambda f, now: lambda conn: read_models.remove_server_by_id(conn, server_id, now),
        N_("Server removed."),
        "server.remove",
    )


async def _confirm(
    c: Console,
    request: Request,
    title: str,
    text: str,
    subject: str,
    button: str,
    hidden: dict[str, str],
) -> Response:
    """The page that asks before a destructive action, posting its form to the same path."""
    session = await c.signed_in(request, admin=True)
    return c.render(
        request,
        "confirm.html",
        session,
        title=title,
        text=text,
        subject=subject,
        action=request.url.path,
        button=button,
        back="/admin",
        fields=[],
        hidden=hidden,
    )


async def confirm_revoke(c: Console, request: Request) -> Response:
    user, prefix = request.query_params.get("user", ""), request.query_params.get("prefix", "")
    return await _confirm(
        c,
        request,
        N_("Revoke this API token?"),
        N_("Programs using it stop working at once; console sessions started with it end."),
        f"{prefix}… (#{user})",
        N_("Revoke"),
        {"user": user, "prefix": prefix},
    )


async def confirm_signout(c: Console, request: Request) -> Response:
    user = request.query_params.get("user", "")
    return await _confirm(
        c,
        request,
        N_("End every console session of this user?"),
        N_("The user is signed out everywhere; API tokens keep working."),
        f"#{user}",
        N_("End all sessions"),
        {"user": user},
    )


async def confirm_remove(c: Console, request: Request) -> Response:
    server_id = int(request.path_params["server_id"])
    return await _confirm(
        c,
        request,
        N_("Remove this server?"),
        N_("It leaves the market and its orders end now (billed up to now)."),
        f"#{server_id}",
        N_("Remove"),
        {},
    )


ROUTES = [
    Route("/admin", admin_page),
    Route("/admin/revoke", confirm_revoke),
    Route("/admin/signout", confirm_signout),
    Route("/admin/servers/{server_id:int}/remove", confirm_remove),
    Route("/admin/credit", admin_credit, POST),
    Route("/admin/token", admin_token, POST),
    Route("/admin/revoke", admin_revoke, POST),
    Route("/admin/signout", admin_signout, POST),
    Route("/admin/servers/{server_id:int}/hide", admin_hide, POST),
    Route("/admin/servers/{server_id:int}/remove", admin_remove, POST),
]
