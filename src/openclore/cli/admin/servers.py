"""``openclore admin server …``: hosts' servers, added and taken off the market by the operator."""

from __future__ import annotations

import time

import typer

from openclore.cli.admin.common import admin_actor, console, record
from openclore.cli.database import DatabaseOpt, with_db
from openclore.cli.output import fail

server_app = typer.Typer(help="Hosts' servers.", no_args_is_help=True)


@server_app.command("add")
def server_add(user: str, name: str, database_url: DatabaseOpt = None) -> None:
    """Add a server for USER and print its 48-character init_token."""
    from openclore.domain.errors import CloreError
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.servers import add_server

    settings, db = with_db(database_url)
    try:
        with db.write() as conn:
            owner = find_user(conn, user)
            _, token = add_server(
                conn, owner, name, int(time.time()), settings, actor=admin_actor()
            )
    except UnknownUser as exc:
        fail(str(exc))
    except CloreError as exc:
        fail(exc.message)
    console.print(token, highlight=False)


@server_app.command("remove")
def server_remove(user: str, name: str, database_url: DatabaseOpt = None) -> None:
    """Take USER's server NAME off the market: its orders end now (billed up to now)."""
    from openclore.domain.errors import CloreError
    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.servers import remove_server

    _, db = with_db(database_url)
    try:
        with db.write() as conn:
            owner = find_user(conn, user)
            ended = remove_server(conn, owner, name, int(time.time()))
            detail = {"name": name, "orders_ended": ended}
            record(conn, "server.remove", f"server:{name}", detail, owner)
    except UnknownUser as exc:
        fail(str(exc))
    except CloreError as exc:
        fail(exc.message)
    console.print(f"removed {name}; {ended} order(s) ended", highlight=False)
