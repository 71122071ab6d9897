"""The ``openclore`` command: serve the market and administer it.

``serve``, ``gateway`` and ``db`` live here; ``admin`` in :mod:`openclore.cli.admin`, the
commands over the API in :mod:`openclore.cli.commands`, ``agent`` in :mod:`openclore.agent.cli`,
``mcp`` (the MCP server for AI agents) in :mod:`openclore.cli.mcp_command`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from openclore.agent.cli import agent as agent_command
from openclore.cli.admin import admin_app
from openclore.cli.commands import client_app
from openclore.cli.database import DEMO_DATABASE, DatabaseOpt, database_problem, safe_url
from openclore.cli.database import load_settings as _settings
from openclore.cli.database import open_database as _open_database
from openclore.cli.mcp_command import mcp as mcp_command
from openclore.cli.output import fail, terminal
from openclore.cli.sandbox import sandbox_app
from openclore.config import Settings

app = typer.Typer(
    help="openclore: a self-hostable GPU-rental marketplace speaking the Clore.ai API v1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")
app.command("agent")(agent_command)
app.add_typer(client_app)
app.add_typer(sandbox_app, name="sandbox")
app.command("mcp")(mcp_command)

console = terminal()
err = terminal(stderr=True)


def _settings_help() -> str:
    lines = ["Settings (environment variables; every one also reads from the environment):\n"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)  # a factory's value, not its marker
        shown = json.dumps(default, default=str) if default is not None else "none"
        lines.append(f"OPENCLORE_{name.upper()}: {field.description} (default {shown})")
    return "\n\n".join(lines)


@app.command(epilog=_settings_help())
def serve(
    host: Annotated[str | None, typer.Option(envvar="OPENCLORE_HOST", help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(envvar="OPENCLORE_PORT", help="Port")] = None,
    workers: Annotated[
        int | None, typer.Option(envvar="OPENCLORE_WORKERS", help="Worker processes")
    ] = None,
    database_url: DatabaseOpt = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help=f"Serve the demo world: a fresh ./{DEMO_DATABASE} every start, unless "
            "--database-url points at an existing database (seeded on first use).",
        ),
    ] = False,
) -> None:
    """Run the API server (migrates the database first)."""
    import uvicorn

    from openclore.api.request_ids import log_config
    from openclore.api.transport import server_options
    from openclore.market.demo import is_demo_world, is_seeded, seed

    if demo and not database_url:
        for suffix in ("", "-wal", "-shm"):
            Path(DEMO_DATABASE + suffix).unlink(missing_ok=True)
        database_url = f"sqlite:///{DEMO_DATABASE}"
    settings = _settings(database_url, host=host, port=port, workers=workers, demo=demo or None)
    problem = settings.address_secret_problem()
    if problem is not None:
        fail(problem)
    db = _open_database(settings)
    if settings.demo:
        with db.write() as conn:
            if not is_demo_world(conn):
                fail(
                    f"{safe_url(settings.database_url)} holds a market, not a demo world: "
                    "--demo would let any user replace it with the demo's (whose tokens are "
                    "public). Leave --database-url out for a fresh demo database, or name an "
                    "empty one; to serve this market, start without --demo."
                )
            world = None if is_seeded(conn) else seed(conn, settings, int(time.time()))
        base = f"http://{settings.host}:{settings.port}"
        if world is not None:
            table = Table(title="openclore demo world", show_lines=False)
            table.add_column("user")
            table.add_column("API token (header 'auth')")
            for who, token in world.tokens.items():
                table.add_row(who, token)
            console.print(table)
        console.print(
            f"Try: curl -H 'auth: b8qwqRAL5W7YDyDJeB4XANVvKndbrrPk' {base}/v1/wallets\n"
            f"Web console: {base}/ (a token above, or jan / renter with the password "
            "openclore-demo; jan is the operator)\n"
            f"API docs: {base}/docs",
            highlight=False,
        )
    if settings.gateway:
        template = settings.gateway_url_template or "-"
        console.print(
            f"Gateway {settings.gateway_name}: agents tunnel to {settings.gateway_address}, "
            f"tcp ports {settings.gateway_port_range} on {settings.gateway_bind}, http ports at "
            f"{template.format(order='<order>', port='<port>')}",
            highlight=False,
        )
    db.dispose()
    # Workers rebuild the settings from the environment.
    os.environ["OPENCLORE_DATABASE_URL"] = settings.database_url
    os.environ["OPENCLORE_DEMO"] = "1" if settings.demo else "0"
    _metrics_dir(settings.workers)
    uvicorn.run(
        "openclore.serve:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_format, settings.log_level),
        **server_options(settings),
    )


def _metrics_dir(workers: int) -> None:
    """Several workers share their Prometheus metrics through files in PROMETHEUS_MULTIPROC_DIR:
    a fresh private folder, or the operator's own one emptied of a previous run's files. Set
    before any worker imports prometheus-client (the workers inherit the environment)."""
    import shutil
    import tempfile

    from openclore.api.metrics import MULTIPROC_ENV

    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    elif workers > 1:
        made = tempfile.mkdtemp(prefix="openclore-metrics-")
        os.environ[MULTIPROC_ENV] = made
        import atexit

        atexit.register(shutil.rmtree, made, True)


@app.command(epilog=_settings_help())
def gateway(
    name: Annotated[
        str | None, typer.Option(envvar="OPENCLORE_GATEWAY_NAME", help="Public name")
    ] = None,
    bind: Annotated[
        str | None, typer.Option(envvar="OPENCLORE_GATEWAY_BIND", help="Address to listen on")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Run an access gateway on its own (``serve`` embeds one unless OPENCLORE_GATEWAY=0):
    agents tunnel to it, renters reach their rentals' ports through it. Of several processes
    started for one name, one serves it and the others stand by."""
    import logging

    from openclore.serve import run_gateway

    settings = _settings(database_url, gateway_name=name, gateway_bind=bind)
    db = _open_database(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console.print(
        f"gateway {settings.gateway_name}: agents on {settings.gateway_address}, tcp ports "
        f"{settings.gateway_port_range}, http port {settings.gateway_http_port or '-'}",
        highlight=False,
    )

    try:
        run_gateway(db, settings)
    finally:
        db.dispose()


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply all migrations."""
    settings = _settings(database_url)
    _open_database(settings)
    console.print("database is up to date")


def main() -> None:
    """The ``openclore`` command: a database that fails mid-command is one line, not a trace."""
    from sqlalchemy.exc import DBAPIError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except DBAPIError as exc:
        url = os.environ.get("OPENCLORE_DATABASE_URL", "")
        err.print(f"error: {database_problem(url, exc)}", markup=False, highlight=False)
        sys.exit(1)
