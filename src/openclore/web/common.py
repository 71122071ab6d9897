"""What every console page shares that needs no state: the refusal, the text check, the one
return-URL check, form parsing and the audit actor."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import date
from decimal import Decimal, InvalidOperation

import segno
from markupsafe import Markup
from starlette.requests import Request

from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import AmountError, to_units
from openclore.domain.text import check_pairs
from openclore.market import audit, sessions
from openclore.web.messages import N_

SESSION_COOKIE = "oc_session"
PRE_CSRF_COOKIE = "oc_csrf"  # double-submit token of the sign-in form (no session yet)


class Refused(Exception):
    """A request the console refuses outright (CSRF, not signed in, not an operator)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


BAD_TEXT = "bad text"
BAD_TEXT_MESSAGE = N_("It held characters that are not allowed (NUL or invalid text).")


def check_text(pairs: Iterable[tuple[str, str]]) -> None:
    """Refuse a NUL or a lone surrogate in a path, query or form (400, never a database
    error): :mod:`openclore.domain.text`."""
    try:
        check_pairs(pairs, "request")
    except InvalidInput:
        raise Refused(400, BAD_TEXT) from None


def safe_next(raw: str, default: str) -> str:
    """Where to go after a form or a link (``next``): a path of this site, else ``default``
    (never another site's URL, nor a scheme-relative ``//host``)."""
    if not raw.startswith("/") or raw.startswith("//"):
        return default
    return raw


def secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def price_input(raw: str) -> Decimal:
    """A price typed into a form: a non-negative number of coins the ledger can hold."""
    try:
        value = Decimal(raw.strip())
        if value.is_finite() and value >= 0:
            to_units(value)  # in range
            return value
    except (InvalidOperation, AmountError):
        pass
    raise MarketError("invalid_price")


def date_input(raw: str, what: str) -> int | None:
    """A date typed into a filter (``YYYY-MM-DD``, UTC) as the unix second it starts; empty:
    None."""
    text = raw.strip()
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{what}: a date such as 2026-11-01") from None
    return calendar.timegm(day.timetuple())


def id_input(raw: str, what: str) -> int | None:
    """A whole number typed into a filter (an order id); empty: None."""
    text = raw.strip().lstrip("#")
    if not text:
        return None
    if not text.isdigit() or len(text) > 15:
        raise InvalidInput(f"{what}: a whole number")
    return int(text)


def kv_lines(raw: str, sep: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(sep)
        out[key.strip()] = value.strip()
    return out


def web_source(request: Request) -> str:
    return "web@" + (request.client.host if request.client else "unknown")


def actor(request: Request, session: sessions.Session) -> audit.Actor:
    """The signed-in person, as the use cases record them in the audit log."""
    return audit.Actor.user(session.user_id, web_source(request), "session")


def qr_svg(text: str) -> Markup:
    svg = segno.make(text, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return Markup(svg)
