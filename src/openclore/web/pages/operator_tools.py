"""The operator's account and money tools, as ``openclore admin`` has them: add a user (its
first API token shown once), set a password, set a role; refund or adjust a wallet with a
reason; store or clear an exchange rate. Each is audited in its own transaction
(:func:`openclore.web.pages.operator.admin_action`; a password is never recorded)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import MarketError
from openclore.domain.money import AmountError, to_units
from openclore.domain.usd import RateError, rate_units
from openclore.market import accounts, rates
from openclore.market import wallets as wallet_service
from openclore.web.common import id_input
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.pages.operator import admin_action
from openclore.web.routing import POST, Route


def _password(raw: str) -> str:
    if len(raw) < accounts.MIN_PASSWORD:
        raise MarketError("password_too_short")
    return raw


async def user_add(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        name = f.get("name", "").strip()
        secret = _password(f["password"]) if f.get("password") else None

        def run(conn: Connection) -> str:
            if not name or len(name) > 64 or name.isdigit():
                raise MarketError("invalid_user_name")
            try:
                accounts.find_user(conn, name)
            except accounts.UnknownUser:
                pass
            else:
                raise MarketError("user_name_taken")
            user_id = accounts.create_user(conn, name, now, c.settings)
            if secret is not None:
                accounts.set_password(conn, user_id, secret)
            if f.get("admin") == "on":
                accounts.set_role(conn, user_id, "admin")
            return accounts.issue_token(conn, user_id, now)

        return run

    return await admin_action(c, request, fn, N_("User added."), "user.add")


async def user_password(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        secret = _password(f.get("password", ""))
        return lambda conn: accounts.set_password(
            conn, accounts.find_user(conn, f.get("user", "")), secret
        )

    return await admin_action(c, request, fn, N_("Password set."), "user.password")


async def user_role(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        role = f.get("role", "")
        if role not in accounts.ROLES:
            raise MarketError("invalid_role")
        return lambda conn: accounts.set_role(
            conn, accounts.find_user(conn, f.get("user", "")), role
        )

    return await admin_action(c, request, fn, N_("Role set."), "user.role")


def _signed_units(raw: str) -> int:
    try:
        return to_units(raw.strip())
    except (AmountError, ArithmeticError, ValueError):
        raise MarketError("invalid_amount") from None


async def adjust(c: Console, request: Request) -> Response:
    """A refund (always a credit) or a signed adjustment, with the reason the user reads."""
    session_name = (await c.signed_in(request, admin=True)).name

    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        units = _signed_units(f.get("amount", ""))
        order_id = id_input(f.get("order", ""), "order")
        return lambda conn: wallet_service.adjust(
            conn,
            accounts.find_user(conn, f.get("user", "")),
            f.get("currency", ""),
            units,
            c.settings,
            now,
            reason=f.get("reason", ""),
            actor=f"admin:{session_name}",
            refund=f.get("refund") == "on",
            order_id=order_id,
        )

    return await admin_action(c, request, fn, N_("Wallet adjusted."), "adjust")


async def rate_set(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        currency = f.get("currency", "")
        if currency not in c.settings.currencies:
            raise MarketError("currency-not-allowed")
        try:
            rate = rate_units(f.get("usd", ""))
        except RateError:
            raise MarketError("invalid_rate") from None
        return lambda conn: rates.set_rates(conn, {currency: rate}, c.settings, now)

    return await admin_action(c, request, fn, N_("Exchange rate stored."), "rates.set")


async def rate_clear(c: Console, request: Request) -> Response:
    def fn(f: dict[str, str], now: int) -> Callable[[Connection], Any]:
        currency = f.get("currency", "")

        def run(conn: Connection) -> None:
            if not rates.clear_rate(conn, currency, c.settings, now):
                raise MarketError("no_stored_rate")

        return run

    return await admin_action(c, request, fn, N_("Exchange rate cleared."), "rates.clear")


ROUTES = [
    Route("/admin/users/add", user_add, POST),
    Route("/admin/users/password", user_password, POST),
    Route("/admin/users/role", user_role, POST),
    Route("/admin/adjust", adjust, POST),
    Route("/admin/rates", rate_set, POST),
    Route("/admin/rates/clear", rate_clear, POST),
]
