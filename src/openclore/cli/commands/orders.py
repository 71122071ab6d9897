"""Renting: ``openclore rent``, ``orders``, ``cancel``, ``logs``, ``bid`` and ``ssh``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from openclore.cli.commands.common import Ctx, client_command, parse_decimal
from openclore.cli.commands.keeping import parse_duration, parse_volumes, storage_cell
from openclore.cli.output import (
    Column,
    age,
    call,
    emit_json,
    err,
    fail,
    fmt,
    out,
    plain,
    print_table,
    to_plain,
)
from openclore.client import Client, Order
from openclore.client._base import ssh_banner

# ----------------------------------------------------------------------------- rent


def parse_ports(values: list[str]) -> dict[str, str]:
    ports: dict[str, str] = {}
    for item in values:
        port, _, proto = item.partition(":")
        proto = (proto or "tcp").lower()
        if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("tcp", "http"):
            fail(f"--port {item!r}: expected PORT or PORT:tcp or PORT:http")
        ports[str(int(port))] = proto
    return ports


def parse_env(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def order_ready(order: Order, want_ssh: bool) -> bool:
    """Ready means reachable: the container runs, and with an SSH port, an SSH server answers
    on it from here (through the market's gateway, or on the host directly)."""
    if order.running is False:
        return False
    if want_ssh:
        if order.ssh_command() is None or order.state not in (None, "running"):
            return False
        if order.simulated:  # a demo server: nothing listens, the published port is all there is
            return True
        assert order.host is not None and order.ssh_port is not None
        return ssh_banner(order.host, order.ssh_port) is not None
    if order.state is not None:
        return order.state == "running"
    return bool(order.running) or bool(order.tcp_ports) or order.http_port is not None


def describe(order: Order) -> str:
    if order.expired:
        return "ended"
    if order.stopped and order.stop_reason:
        return f"stopped ({order.stop_reason})"
    if order.state:
        return order.state
    if order.running is not None:
        return "running" if order.running else "waiting"
    return "ports published" if order.tcp_ports else "starting"


def waiting_for(order: Order, want_ssh: bool) -> str:
    """What ``--wait`` waits for now, in words."""
    if order.running is False or order.state not in (None, "running"):
        return f"waiting for the host to start it ({describe(order)})"
    if want_ssh and order.ssh_command() is None:
        return "running; waiting for the host to publish its SSH port"
    if want_ssh:
        return f"running; waiting for SSH to answer on {order.host}:{order.ssh_port}"
    return "waiting for it to run"


def wait_for_order(
    client: Client, order: Order, want_ssh: bool, timeout: float, quiet: bool
) -> Order:
    started = time.monotonic()
    current = order
    status = (
        None
        if quiet
        else err.status(plain(f"order {order.id}: {waiting_for(order, want_ssh)}"), spinner="dots")
    )
    if status is not None:
        status.start()
    try:
        while not order_ready(current, want_ssh):
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                fail(
                    f"order {order.id} is not ready after {timeout:.0f} s "
                    f"({waiting_for(current, want_ssh)}); it keeps running: see "
                    f"`openclore orders`"
                )
            time.sleep(1.0)
            found = next(
                (o for o in client.my_orders(return_completed=True) if o.id == order.id), None
            )
            if found is None:
                fail(f"order {order.id} is gone from my_orders")
            current = found
            if current.expired:
                fail(f"order {order.id} ended before it was ready")
            if status is not None:
                waited = time.monotonic() - started
                what = waiting_for(current, want_ssh)
                status.update(plain(f"order {order.id}: {what} ({waited:.0f} s)"))
    except KeyboardInterrupt:
        if status is not None:
            status.stop()
        fail(
            f"stopped waiting; order {order.id} keeps running "
            f"(`openclore orders`, `openclore cancel {order.id}`)",
            130,
        )
    finally:
        if status is not None:
            status.stop()
    return current


def read_key(ssh_key: Path | None) -> str | None:
    if ssh_key is None:
        return None
    try:
        return ssh_key.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"--ssh-key: cannot read {ssh_key}: {exc.strerror or exc}")


def payment_coin(client: Client, server: int) -> str:
    """Bitcoin, unless SERVER does not take it: then the first coin it takes."""
    listing = call("loading the marketplace…", client.marketplace)
    found = next((s for s in listing.servers if s.id == server), None)
    if found is not None and found.allowed_coins and "bitcoin" not in found.allowed_coins:
        return found.allowed_coins[0]
    return "bitcoin"


TEMPLATE_HELP = (
    "Start from this template: its id, or its name as a slug "
    "('PyTorch + Jupyter': pytorch-jupyter)."
)


@client_command
def rent(
    c: Ctx,
    server: Annotated[int, typer.Argument(help="Server id (see `openclore market`).")],
    image: Annotated[
        str | None, typer.Option(help="Docker image, e.g. cloreai/ubuntu20.04-jupyter.")
    ] = None,
    template: Annotated[str | None, typer.Option("--template", help=TEMPLATE_HELP)] = None,
    spot: Annotated[
        str | None, typer.Option(help="Bid this price per day on the spot market.")
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="Pay in this currency (default: bitcoin if the server takes it)."),
    ] = None,
    port: Annotated[
        list[str] | None,
        typer.Option("--port", help="PORT[:tcp|http], repeatable (default: 22:tcp)."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME=VALUE, repeatable.")] = None,
    ssh_key: Annotated[
        Path | None, typer.Option("--ssh-key", help="File with an SSH public key to install.")
    ] = None,
    ssh_password: Annotated[str | None, typer.Option(help="SSH password for root.")] = None,
    jupyter_token: Annotated[str | None, typer.Option(help="Jupyter token.")] = None,
    command: Annotated[str | None, typer.Option(help="Command run when the order starts.")] = None,
    required_price: Annotated[
        str | None, typer.Option(help="Refuse if the on-demand price per day is not this.")
    ] = None,
    registry_login: Annotated[
        str | None,
        typer.Option(
            envvar="OPENCLORE_REGISTRY_LOGIN",
            help="USER:TOKEN for a private image (dockerhub_auth; used for this pull only).",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            min=1,
            help="Rent this many of the server's GPUs (where its host rents per GPU);"
            " with --spot, the bid is for these GPUs. Default: the whole server.",
        ),
    ] = None,
    disk: Annotated[
        int | None,
        typer.Option(
            "--disk", min=1, help="GB of disk it keeps when stopped (default: all the host offers)."
        ),
    ] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option("--volume", help="VOLUME_ID:/path, a volume of yours to mount, repeatable."),
    ] = None,
    stop_after: Annotated[
        str | None,
        typer.Option(help="Stop it after this long (3600, 90m, 12h, 7d); it keeps its disk."),
    ] = None,
    terminate_after: Annotated[
        str | None, typer.Option(help="End it after this long (3600, 90m, 12h, 7d).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until it runs, then print the SSH command.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600.0,
) -> None:
    """Rent SERVER: on-demand, or a spot bid with --spot PRICE; --image, or --template ID
    (its image and settings; the options given here override them)."""
    if image is None and template is None:
        fail("rent needs --image or --template")
    ports = parse_ports(port or ([] if template is not None else ["22:tcp"]))
    mounts = parse_volumes(volume or [])
    stop_in = parse_duration(stop_after, "--stop-after") if stop_after else None
    end_in = parse_duration(terminate_after, "--terminate-after") if terminate_after else None
    variables = parse_env(env or [])
    bid = parse_decimal(spot, "--spot") if spot is not None else None
    required = parse_decimal(required_price, "--required-price") if required_price else None
    key_text = read_key(ssh_key)
    with c.session() as client:
        template_id = resolve_template(client, template)
        coin = currency if currency is not None else payment_coin(client, server)
        order = call(
            f"renting server {server}…",
            lambda: client.create_order(
                server,
                image,
                template_id=template_id,
                type="spot" if bid is not None else "on-demand",
                currency=coin or "bitcoin",
                spot_price=bid,
                ports=ports or None,
                env=variables or None,
                jupyter_token=jupyter_token,
                ssh_key=key_text,
                ssh_password=ssh_password,
                command=command,
                required_price=required,
                dockerhub_auth=registry_login,
                gpu_count=gpus,
                disk_gb=disk,
                volumes=mounts or None,
                stop_after=stop_in,
                terminate_after=end_in,
            ),
        )
        if not c.json:
            print_rented(order, gpus is not None)
        if wait:
            want_ssh = "22" in (ports or template_ports(client, template_id))
            order = wait_for_order(client, order, want_ssh, timeout, quiet=c.json)
    if c.json:
        data = to_plain(order)
        if order.ssh_command():
            data["ssh_command"] = order.ssh_command()
        emit_json(data)
        return
    if wait:
        out.print(f"order {order.id} is {describe(order)}")
        print_endpoints(order)


def slug(name: str) -> str:
    """A template's name as one word of lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def resolve_template(client: Client, given: str | None) -> int | None:
    """``--template``: an id, or the slug or name of one of the templates you can use."""
    if given is None:
        return None
    if given.isdigit():
        return int(given)
    found = call("loading templates…", client.templates)
    wanted = slug(given)
    matches = [t for t in found if slug(t.name) == wanted]
    mine = [t for t in matches if t.mine]
    if len(mine or matches) == 1:
        return (mine or matches)[0].id
    if not matches:
        known = ", ".join(sorted({slug(t.name) for t in found})) or "none"
        fail(f"--template {given!r}: no template of that name (yours and public ones: {known})")
    ids = ", ".join(str(t.id) for t in matches)
    fail(f"--template {given!r}: several templates have that name; give its id ({ids})")


def template_ports(client: Client, template_id: int | None) -> dict[str, str]:
    """The ports of a template the order started from (no --port given)."""
    if template_id is None:
        return {}
    found = call("loading templates…", client.templates)
    return next((dict(t.ports or {}) for t in found if t.id == template_id), {})


def print_rented(order: Order, per_gpu: bool) -> None:
    kind = f"spot bid {fmt(order.price)}" if order.spot else f"on-demand {fmt(order.price)}"
    share = f" ({order.gpu_count} GPUs)" if per_gpu else ""
    out.print(
        f"order {order.id}: {kind} {order.currency}/day on server {order.si}{share}, "
        f"image {order.image}"
    )
    if order.disk_gb is not None:
        out.print(
            f"disk {order.disk_gb} GB, kept when stopped for "
            f"{fmt(order.storage_per_day)} {order.currency}/day"
        )


def print_endpoints(order: Order) -> None:
    ssh = order.ssh_command()
    if ssh:
        out.print(ssh)
    for container, public in sorted(order.ports.items()):
        if container != 22 and order.host:
            out.print(f"tcp {container} → {order.host}:{public}")
    if order.http_pub:
        out.print(f"http {order.http_port} → {order.http_pub}")
    elif order.http_port:
        out.print(f"http {order.http_port} → through the HTTP proxy (cluster {order.p})")


# ----------------------------------------------------------------------------- orders


def connect_cell(order: Order) -> str:
    """How to connect to an order, as its row in ``orders`` shows it: the SSH command, else its
    published ports; "(simulated)" under it for a demo server's order, where nothing answers on
    them (a line of its own: the command stays whole and the column no wider)."""
    if order.expired:
        return "-"
    cell = order.ssh_command() or ", ".join(order.tcp_ports) or "-"
    return f"{cell}\n(simulated)" if order.simulated else cell


ORDER_COLUMNS = [
    Column("id", 0, "right"),
    Column("server", 6, "right"),
    Column("type", 5),
    Column("price/day", 1, "right"),
    Column("spent", 7, "right"),
    Column("state", 2),
    Column("storage", 4),
    Column("age", 3),
    Column("connect", 0, fold=True),
]


@client_command
def orders(
    c: Ctx, all: Annotated[bool, typer.Option("--all", help="Include ended orders.")] = False
) -> None:
    """Your orders and spot bids (--json for every field, the image and ports included)."""
    with c.session() as client:
        rows = call("loading orders…", lambda: client.my_orders(return_completed=all))
    if c.json:
        emit_json(rows)
        return
    now = c.now()
    print_table(
        f"{len(rows)} order(s)" + (" including ended" if all else ""),
        ORDER_COLUMNS,
        [
            [
                str(o.id),
                str(o.si) if o.si is not None else "-",
                o.type,
                f"{fmt(o.price)} {o.currency or ''}".rstrip(),
                fmt(o.spend),
                describe(o),
                storage_cell(o),
                age(o.ct, now),
                connect_cell(o),
            ]
            for o in rows
        ],
    )


@client_command
def cancel(
    c: Ctx,
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Order or spot offer id.")],
    issue: Annotated[
        str | None, typer.Option(help="Report a problem with the server (≤ 2048 characters).")
    ] = None,
    rating: Annotated[
        int | None,
        typer.Option(
            min=1, max=5, help="Score the server 1-5 (once per order; also for an ended order)."
        ),
    ] = None,
) -> None:
    """End an order or spot offer (and rate the server with --rating)."""
    with c.session() as client:
        call(
            f"cancelling order {order_id}…",
            lambda: client.cancel_order(order_id, issue, rating),
        )
    if c.json:
        emit_json({"id": order_id, "cancelled": True})
    else:
        out.print(f"order {order_id} cancelled" + (f", rated {rating}" if rating else ""))


@client_command
def logs(
    c: Ctx,
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Your order id.")],
    tail: Annotated[int, typer.Option(help="Lines from the end (at most 1000).")] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between fetches with --follow.")] = 2.0,
) -> None:
    """Your order's container output, fetched from its host (--follow keeps printing)."""
    with c.session() as client:
        lines = call(
            f"fetching logs of order {order_id}…", lambda: client.order_logs(order_id, tail)
        )
        if c.json and not follow:
            emit_json({"id": order_id, "logs": lines})
            return
        for line in lines:
            print(line)
        try:
            while follow:
                time.sleep(interval)
                fresh = client.order_logs(order_id, 1000)
                for line in fresh[overlap(lines, fresh) :]:
                    print(line, flush=True)
                lines = fresh
        except KeyboardInterrupt:
            return


def overlap(before: list[str], after: list[str]) -> int:
    """How many lines at the start of ``after`` are the last lines of ``before``."""
    for size in range(min(len(before), len(after)), 0, -1):
        if before[-size:] == after[:size]:
            return size
    return 0


@client_command
def bid(
    c: Ctx,
    order_id: Annotated[int, typer.Argument(metavar="ID", help="Your spot order id.")],
    price: Annotated[str, typer.Argument(help="New bid per day.")],
) -> None:
    """Change your spot bid. Raise any time; lower once per 600 s, by one step at most."""
    value = parse_decimal(price, "PRICE")
    with c.session() as client:
        call(
            f"setting the bid of order {order_id}…", lambda: client.set_spot_price(order_id, value)
        )
    if c.json:
        emit_json({"id": order_id, "bid": value})
    else:
        out.print(f"order {order_id}: bid is now {fmt(value)} per day")


@client_command
def ssh(
    c: Ctx,
    order_id: Annotated[int, typer.Argument(metavar="ORDER", help="Order id.")],
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the ssh command instead of running it.")
    ] = False,
    user: Annotated[str, typer.Option(help="Login name.")] = "root",
) -> None:
    """SSH into ORDER through its published port 22."""
    with c.session() as client:
        rows = call("loading orders…", client.my_orders)
    order = next((o for o in rows if o.id == order_id), None)
    if order is None:
        fail(f"no active order {order_id} (see `openclore orders`)")
    command = order.ssh_command(user)
    if command is None:
        fail(
            f"order {order_id} publishes no SSH port yet (tcp_ports: "
            f"{', '.join(order.tcp_ports) or 'none'}; rent with --port 22:tcp)"
        )
    argv = shlex.split(command)
    if c.json:
        emit_json({"id": order_id, "command": command, "argv": argv})
        return
    if print_only:
        out.print(command)
        return
    binary = shutil.which("ssh")
    if binary is None:
        fail(f"ssh is not installed; the command is: {command}")
    sys.stdout.flush()
    os.execv(binary, argv)
