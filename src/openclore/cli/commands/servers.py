"""Hosting: ``openclore servers``, ``server add`` and ``server set``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openclore.cli.commands.common import Ctx, client_command, parse_decimal
from openclore.cli.output import (
    Column,
    call,
    emit_json,
    fail,
    fmt,
    fmt_any,
    out,
    print_table,
    short_gpu,
)


@client_command
def servers(c: Ctx) -> None:
    """The servers you host."""
    with c.session() as client:
        rows = call("loading your servers…", client.my_servers)
    if c.json:
        emit_json(rows)
        return
    table: list[list[str]] = []
    for s in rows:
        status = "online" if s.online else ("offline" if s.connected else "not connected")
        table.append(
            [
                str(s.id) if s.id is not None else "-",
                s.name,
                status,
                s.visibility,
                "\n".join(f"{fmt(v)} {k}" for k, v in s.pricing.items() if v) or "-",
                "\n".join(f"{fmt(v)} {k}" for k, v in s.min_spot_pricing.items() if v) or "-",
                short_gpu(s.specs.gpu or "-") if s.specs else "-",
            ]
        )
    print_table(
        f"{len(rows)} server(s)",
        [
            Column("id", 0, "right"),
            Column("name", 0, fold=True),
            Column("status", 1),
            Column("visibility", 4),
            Column("on-demand/day", 2),
            Column("spot min/day", 3),
            Column("gpu", 1),
        ],
        table,
    )
    for s in rows:
        if s.init_token:
            out.print(f"{s.name}: not connected yet, init token {s.init_token}")


@client_command
def server_add(c: Ctx, name: Annotated[str, typer.Argument(help="A name for the server.")]) -> None:
    """Add a server to host; prints the init token its agent registers with (openclore)."""
    with c.session() as client:
        added = call(f"adding server {name!r}…", lambda: client.add_server(name))
    if c.json:
        emit_json(added)
        return
    out.print(f"server {added.id} {name!r} added\ninit token {added.init_token}")


@client_command
def server_set(
    c: Ctx,
    name: Annotated[str, typer.Argument(help="Your server's name.")],
    price: Annotated[str | None, typer.Option(help="On-demand price per day.")] = None,
    spot: Annotated[str | None, typer.Option(help="Minimum spot bid per day.")] = None,
    mrl: Annotated[int | None, typer.Option(help="Maximum rental length, hours.")] = None,
    currency: Annotated[
        str | None, typer.Option(help="Currency of --price/--spot (default: the market's).")
    ] = None,
    available: Annotated[
        bool | None,
        typer.Option("--available/--hidden", help="List it for rent, or hide it."),
    ] = None,
    disk: Annotated[
        int | None,
        typer.Option("--disk", min=0, help="GB of disk each rental gets (0: none offered)."),
    ] = None,
    storage_price: Annotated[
        str | None,
        typer.Option(help="What kept disk and volumes pay per GB per day (in --currency)."),
    ] = None,
) -> None:
    """Change your server's prices, maximum rental length, availability and storage."""
    on_demand = parse_decimal(price, "--price") if price is not None else None
    minimum = parse_decimal(spot, "--spot") if spot is not None else None
    storage = parse_decimal(storage_price, "--storage-price") if storage_price else None
    given = (on_demand, minimum, mrl, available, disk, storage)
    if all(v is None for v in given):
        fail(
            "nothing to change: give --price, --spot, --mrl, --available, --hidden, --disk "
            "or --storage-price"
        )
    with c.session() as client:
        call(
            f"updating {name!r}…",
            lambda: client.set_server_settings(
                name,
                availability=available,
                mrl=mrl,
                on_demand=on_demand,
                spot=minimum,
                currency=currency,
                disk_gb=disk,
                storage_price=storage,
            ),
        )
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("on_demand", on_demand),
            ("spot", minimum),
            ("mrl", mrl),
            ("availability", available),
            ("disk_gb", disk),
            ("storage_price", storage),
        )
        if v is not None
    }
    if c.json:
        emit_json({"name": name, "currency": currency, **changes})
        return
    out.print(f"{name}: " + ", ".join(f"{k} = {fmt_any(v)}" for k, v in changes.items()))
