"""Standing orders (openclore, SPEC §8): ``openclore standing place|list|cancel``. The market
rents matching servers for you as soon as they appear, earlier standing orders first, instead
of a loop that polls the marketplace and races other bots to ``create_order``."""

from __future__ import annotations

from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command
from openclore.cli.commands.orders import parse_env, parse_ports
from openclore.cli.output import Column, age, call, emit_json, fail, out, print_table
from openclore.client import StandingOrder

COLUMNS = [
    Column("id", 0, "right"),
    Column("state", 0),
    Column("query", 2),
    Column("max/day", 1, "right"),
    Column("type", 3),
    Column("filled", 0, "right"),
    Column("orders", 2),
    Column("error", 3),
    Column("age", 4),
]


def parse_query(values: list[str]) -> dict[str, str]:
    """``--where gpu=3090 --where country=DE`` → the marketplace filters."""
    query: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--where {item!r}: expected FILTER=VALUE (gpu=3090, min_gpus=2…)")
        query[name.strip()] = value.strip()
    return query


@client_command
def standing_place(
    c: Ctx,
    max_price: Annotated[
        str, typer.Argument(metavar="MAX_PRICE", help="The most you pay per day (per order).")
    ],
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="FILTER=VALUE, repeatable: the marketplace filters (gpu, min_gpus, min_vram, "
            "country, min_reliability…).",
        ),
    ] = None,
    image: Annotated[str | None, typer.Option(help="Docker image of each order.")] = None,
    template: Annotated[
        int | None, typer.Option("--template", help="Start each order from this template.")
    ] = None,
    currency: Annotated[str, typer.Option(help="Pay in this currency.")] = "bitcoin",
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=1, help="Rent this many GPUs of a server.")
    ] = None,
    spot: Annotated[
        bool, typer.Option("--spot", help="Bid on the spot market (at the server's minimum).")
    ] = False,
    count: Annotated[int, typer.Option(min=1, max=100, help="How many servers.")] = 1,
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", min=1, help="Give up after this many seconds.")
    ] = None,
    port: Annotated[
        list[str] | None, typer.Option("--port", help="PORT[:tcp|http], repeatable.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE, repeatable.")] = None,
    command: Annotated[str | None, typer.Option(help="Command run when an order starts.")] = None,
) -> None:
    """Rent matching servers as soon as they appear, before anyone who asks later."""
    query = parse_query(where or [])
    ports = parse_ports(port) if port else None
    variables = parse_env(env or []) or None
    if image is None and template is None:
        fail("standing place needs --image or --template")
    with c.session() as client:
        expires_at = None
        if expires_in is not None:  # in the market's time (a sandbox's may travel)
            call("reading the market's clock…", client.standing_orders)
            expires_at = c.now() + expires_in
        placed = call(
            "placing the standing order…",
            lambda: client.create_standing_order(
                max_price,
                image,
                query=query,
                currency=currency,
                gpu_count=gpus,
                type="spot" if spot else "on-demand",
                count=count,
                expires_at=expires_at,
                template_id=template,
                ports=ports,
                env=variables,
                command=command,
            ),
        )
    if c.json:
        emit_json(placed)
        return
    made = ", ".join(str(i) for i in placed.order_ids)
    line = f"standing order {placed.id}: {placed.state}, {placed.filled} of {placed.count} filled"
    out.print(line + (f" (orders {made})" if made else ""))


def _row(s: StandingOrder, now: int) -> list[str]:
    query = " ".join(f"{k}={v}" for k, v in s.query.items()) or "-"
    gpus = f" {s.gpu_count} GPU" if s.gpu_count else ""
    return [
        str(s.id),
        s.state,
        query,
        f"{s.max_price_per_day} {s.currency}",
        s.type + gpus,
        f"{s.filled}/{s.count}",
        ", ".join(str(i) for i in s.order_ids) or "-",
        s.last_error or "",
        age(s.created_at, now),
    ]


@client_command
def standing_list(c: Ctx) -> None:
    """Your standing orders and the orders they made."""
    with c.session() as client:
        found = call("loading standing orders…", client.standing_orders)
    if c.json:
        emit_json(found)
        return
    now = c.now()
    print_table(f"{len(found)} standing order(s)", COLUMNS, [_row(s, now) for s in found])


@client_command
def standing_cancel(c: Ctx, standing_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Cancel an open standing order (the orders it made stay)."""
    with c.session() as client:
        done = call(
            f"cancelling standing order {standing_id}…",
            lambda: client.cancel_standing_order(standing_id),
        )
    if c.json:
        emit_json(done)
    else:
        out.print(f"standing order {standing_id} cancelled ({done.filled} filled)")
