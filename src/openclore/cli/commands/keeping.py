"""Keeping work (openclore, SPEC §8): ``openclore stop``, ``start``, ``restart``, ``reset``,
``extend`` and ``volume create|list|delete``; what ``rent`` takes for it (``--disk``,
``--volume``, ``--stop-after``, ``--terminate-after``) is parsed here too."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command
from openclore.cli.output import (
    Column,
    age,
    call,
    emit_json,
    fail,
    fmt,
    iso,
    out,
    print_table,
)
from openclore.client import Order, Volume

OrderId = Annotated[int, typer.Argument(metavar="ID", help="Your order id.")]

# ----------------------------------------------------------------------------- rent's options

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> int:
    """``90`` (seconds), ``45m``, ``12h`` or ``7d`` as seconds."""
    match = _DURATION.match(text.lower())
    if match is None or int(match.group(1)) <= 0:
        fail(f"{what} {text!r}: expected a duration such as 3600, 90m, 12h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_volumes(values: list[str]) -> dict[str, str]:
    """``--volume ID:/path`` (repeatable) as create_order's ``volumes``."""
    mounts: dict[str, str] = {}
    for item in values:
        vid, sep, path = item.partition(":")
        if not sep or not vid.strip().isdigit() or not path.startswith("/"):
            fail(f"--volume {item!r}: expected VOLUME_ID:/path, e.g. 12:/data")
        mounts[str(int(vid))] = path
    return mounts


def storage_cell(order: Order) -> str:
    """The orders table's storage column: the disk it keeps, what stopped costs a day, what
    storage has cost so far."""
    if order.disk_gb is None:
        return "-"
    lines = [f"{order.disk_gb} GB"]
    if order.stopped and order.storage_per_day is not None:
        lines.append(f"{fmt(order.storage_per_day)}/day")
    if order.storage_spend:
        lines.append(f"paid {fmt(order.storage_spend)}")
    if order.volumes:
        lines.append("+ vol " + ", ".join(str(v.id) for v in order.volumes))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- orders


def _order_line(order: Order) -> str:
    state = order.state or ("running" if order.running else "waiting")
    if order.stopped:
        reason = f" ({order.stop_reason})" if order.stop_reason else ""
        storage = (
            f", storage {fmt(order.storage_per_day)} {order.currency}/day"
            if order.storage_per_day is not None
            else ""
        )
        return f"order {order.id} is stopped{reason}{storage}"
    return f"order {order.id} is {state}"


@client_command
def stop(c: Ctx, order_id: OrderId) -> None:
    """Stop an order: its GPUs go back to the market, its container and disk stay, and it pays
    only for storage until you start it again (openclore)."""
    with c.session() as client:
        order = call(f"stopping order {order_id}…", lambda: client.stop_order(order_id))
    if c.json:
        emit_json(order)
    else:
        out.print(_order_line(order))


@client_command
def start(c: Ctx, order_id: OrderId) -> None:
    """Start a stopped order again, in the same container on the same server; refused (it
    stays stopped) when its GPUs are rented by someone else (openclore)."""
    with c.session() as client:
        order = call(f"starting order {order_id}…", lambda: client.start_order(order_id))
    if c.json:
        emit_json(order)
    else:
        out.print(_order_line(order))


@client_command
def restart(c: Ctx, order_id: OrderId) -> None:
    """Restart a running order's container; its files stay (openclore)."""
    with c.session() as client:
        number = call(f"restarting order {order_id}…", lambda: client.restart_order(order_id))
    if c.json:
        emit_json({"id": order_id, "restart": number})
    else:
        out.print(f"order {order_id}: restart {number} asked of its host")


@client_command
def reset(
    c: Ctx,
    order_id: OrderId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Recreate a running order's container from its image: the files in it are lost, its
    volumes and ports stay (openclore). Asks first unless --yes."""
    if not yes and not typer.confirm(
        f"Reset order {order_id}? The files in its container are lost (volumes stay).",
        err=True,
    ):
        fail(f"not reset: order {order_id} keeps its files")
    with c.session() as client:
        generation = call(f"resetting order {order_id}…", lambda: client.reset_order(order_id))
    if c.json:
        emit_json({"id": order_id, "generation": generation})
    else:
        out.print(f"order {order_id}: reset {generation} asked of its host")


@client_command
def extend(
    c: Ctx,
    order_id: OrderId,
    hours: Annotated[int, typer.Option("--hours", min=1, help="How many hours more.")],
) -> None:
    """Give an order more time before it ends, within the host's longest rental (openclore)."""
    with c.session() as client:
        mrl = call(f"extending order {order_id}…", lambda: client.extend_order(order_id, hours))
        found = next((o for o in client.my_orders() if o.id == order_id), None)
    ends = None if found is None or found.ct is None else found.ct + mrl
    if c.json:
        emit_json({"id": order_id, "mrl": mrl, "ends_at": ends})
        return
    until = f", it ends {iso(ends)} UTC" if ends is not None else ""
    out.print(f"order {order_id}: {hours} h more (mrl {mrl // 3600} h){until}")


# ----------------------------------------------------------------------------- volumes

VOLUME_COLUMNS = [
    Column("id", 0, "right"),
    Column("name", 0),
    Column("server", 3, "right"),
    Column("size", 1, "right"),
    Column("state", 0),
    Column("price/day", 2, "right"),
    Column("spent", 4, "right"),
    Column("mounted by", 5),
    Column("age", 6),
]


def _volume_row(v: Volume, now: int) -> list[str]:
    return [
        str(v.id),
        v.name,
        str(v.server_id),
        f"{v.size_gb} GB",
        v.state + (f" ({v.error})" if v.error else ""),
        f"{fmt(v.price_per_day)} {v.currency}",
        fmt(v.spend),
        ", ".join(str(o) for o in v.mounted_by) or "-",
        age(v.created_at, now),
    ]


@client_command
def volume_create(
    c: Ctx,
    server: Annotated[int, typer.Argument(help="The server it lives on.")],
    size: Annotated[int, typer.Option("--size", min=1, help="Size in GB.")],
    name: Annotated[str, typer.Option("--name", help="Letters, digits and _.- (64 at most).")],
    currency: Annotated[
        str | None, typer.Option(help="Pay in this currency (default: the market's).")
    ] = None,
) -> None:
    """Create a volume on SERVER: storage billed from now until you delete it, which orders on
    that server mount with `rent --volume ID:/path`."""
    with c.session() as client:
        volume = call(
            f"creating volume {name!r} on server {server}…",
            lambda: client.create_volume(server, size, name, currency),
        )
    if c.json:
        emit_json(volume)
        return
    out.print(
        f"volume {volume.id} {volume.name!r}: {volume.size_gb} GB on server {volume.server_id}, "
        f"{fmt(volume.price_per_day)} {volume.currency}/day, {volume.state}"
    )


@client_command
def volume_list(
    c: Ctx,
    all: Annotated[bool, typer.Option("--all", help="Include deleted and ended ones.")] = False,
) -> None:
    """Your volumes."""
    with c.session() as client:
        rows = call("loading volumes…", lambda: client.volumes(include_ended=all))
    if c.json:
        emit_json(rows)
        return
    now = c.now()
    title = f"{len(rows)} volume(s)" + (" including ended" if all else "")
    print_table(title, VOLUME_COLUMNS, [_volume_row(v, now) for v in rows])


@client_command
def volume_delete(
    c: Ctx, volume_id: Annotated[int, typer.Argument(metavar="ID", help="Your volume id.")]
) -> None:
    """Delete a volume and its files (billed up to now); refused while a live order mounts it."""
    with c.session() as client:
        call(f"deleting volume {volume_id}…", lambda: client.delete_volume(volume_id))
    if c.json:
        emit_json({"id": volume_id, "deleted": True})
    else:
        out.print(f"volume {volume_id} deleted")
