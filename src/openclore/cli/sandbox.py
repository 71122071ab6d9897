"""``openclore sandbox``: drive a sandbox market's clock and wallets (``serve --demo``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command, parse_decimal
from openclore.cli.output import emit_json, fail, out

sandbox_app = typer.Typer(
    help="A sandbox market (serve --demo, OPENCLORE_SANDBOX=1): travel in time, fund wallets.",
    no_args_is_help=True,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w``, ``1d12h`` → seconds."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or not parts or "".join(n + u for n, u in parts) != compact.replace(" ", ""):
        raise typer.BadParameter(f"{text!r} is not a duration such as 90, 15m, 2h, 1d or 1d12h")
    return sum(int(n) * _UNITS[u or "s"] for n, u in parts)


def _span(seconds: int) -> str:
    """``90061`` → ``1d 1h 1m 1s`` (what was typed, as a person reads it)."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"


@sandbox_app.command()
@client_command
def advance(
    c: Ctx, duration: Annotated[str, typer.Argument(help="how long: 90, 15m, 2h, 1d, 1d12h …")]
) -> None:
    """Move the market's clock forward: billing and expiry happen as if the time had passed."""
    seconds = parse_duration(duration)
    with c.session() as client:
        now = client.sandbox.advance_time(seconds)
    if c.json:
        emit_json({"advanced": seconds, "now": now})
    else:
        when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        out.print(f"advanced {_span(seconds)}; market time is now {when}")


@sandbox_app.command()
@client_command
def deposit(c: Ctx, currency: str, amount: str) -> None:
    """Credit AMOUNT whole coins of CURRENCY to your own wallet."""
    value: Decimal = parse_decimal(amount, "amount")
    if value <= 0:
        fail("the amount must be positive")
    with c.session() as client:
        client.sandbox.deposit(currency, value)
    if c.json:
        emit_json({"currency": currency, "amount": value})
    else:
        out.print(f"deposited {amount} {currency}")


@sandbox_app.command()
@client_command
def reset(c: Ctx) -> None:
    """Throw the sandbox market away and restore the demo world."""
    with c.session() as client:
        client.request("POST", "/sandbox/reset")
    if c.json:
        emit_json({"reset": True})
    else:
        out.print("the demo world is back")
