"""``openclore watch``: the market's events as they happen."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command
from openclore.cli.output import fmt_any, out, to_plain
from openclore.client import Event, json_dumps


@client_command
def watch(
    c: Ctx,
    after: Annotated[
        int | None,
        typer.Option("--after", help="Start after this event id (default: from now on)."),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only this event type (repeatable), e.g. order.ended."),
    ] = None,
) -> None:
    """Print your market events as they happen (orders, servers, balance, deposits) until
    Ctrl-C; a dropped connection resumes where it stopped (openclore servers)."""
    with c.session() as client:
        try:
            for event in client.events(after, types=types):
                if c.json:
                    sys.stdout.write(json_dumps(to_plain(event)) + "\n")
                    sys.stdout.flush()
                else:
                    out.print(describe_event(event), markup=False)
        except KeyboardInterrupt:
            return


def describe_event(event: Event) -> str:
    """``2026-11-27 05:40:01  #17 order.ended  order 12 on server 3: cancelled``"""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.time))
    data = event.data
    parts = []
    if data.get("order_id") is not None:
        parts.append(f"order {data['order_id']}")
    if data.get("withdrawal_id") is not None:
        parts.append(f"withdrawal {data['withdrawal_id']}")
    if "server_id" in data:
        parts.append(("on " if parts else "") + f"server {data['server_id']}")
    if "name" in data:
        parts.append(f"({data['name']})")
    subject = " ".join(parts)
    details = [
        fmt_any(data[key]) if key in ("reason", "error") else f"{key} {fmt_any(data[key])}"
        for key in (
            "reason",
            "error",
            "amount",
            "currency",
            "runway_seconds",
            "spend",
            "fee",
            "txid",
            "webhook_id",
        )
        if data.get(key) is not None
    ]
    text = subject + (": " if subject and details else "") + ", ".join(details)
    return f"{when}  #{event.id} {event.type}  {text}".rstrip()
