"""The market's database as the commands that open it directly (``serve``, ``gateway``, ``db``,
``admin``) name, open and describe it: one readable line when it cannot be used, never its
password."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from openclore.cli.output import fail, terminal
from openclore.config import Settings

err = terminal(stderr=True)
DEMO_DATABASE = "openclore-demo.sqlite"

DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", envvar="OPENCLORE_DATABASE_URL", help="SQLAlchemy database URL"),
]


def safe_url(url: str) -> str:
    """A database URL as it may be printed: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the configured database URL>"


def database_problem(url: str, exc: BaseException) -> str:
    """One readable line about a database that cannot be used (never its password)."""
    from sqlalchemy.engine import make_url

    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    line = lines[0] if lines else type(cause).__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        line = line.replace(str(password), "***")
    return f"cannot use database {safe_url(url)}: {line}"


def open_database(settings: Settings) -> Any:
    """The market's database, migrated; a clean error (no traceback) when it is unusable."""
    from openclore.store.db import Database

    try:
        db = Database(settings.database_url, direct_url=settings.database_direct_url)
        db.create_all()
    except Exception as exc:
        fail(database_problem(settings.database_url, exc))
    return db


def load_settings(database_url: str | None = None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        values["database_url"] = database_url
    try:
        return Settings(**values)
    except ValueError as exc:
        fail(f"invalid settings: {exc}")
        raise


def with_db(database_url: str | None) -> tuple[Settings, Any]:
    """The settings and the open database of an ``admin`` command (saying which database that is
    when none was named), with the market's system accounts in place."""
    from openclore.ledger import ensure_system_accounts

    settings = load_settings(database_url)
    default = Settings.model_fields["database_url"].default
    if settings.database_url == default:  # no database named: say which one this is
        here, demo = Path("openclore.sqlite"), Path(DEMO_DATABASE)
        if not here.exists() and demo.exists():
            settings = load_settings(f"sqlite:///{DEMO_DATABASE}")
            err.print(
                f"using the demo's database ./{DEMO_DATABASE} (OPENCLORE_DATABASE_URL or "
                "--database-url names another)"
            )
        elif not here.exists():
            err.print(
                "no database named: a new, empty ./openclore.sqlite is created "
                "(OPENCLORE_DATABASE_URL or --database-url names the market's)"
            )
    db = open_database(settings)
    with db.write() as conn:
        ensure_system_accounts(conn, settings.currencies)
    return settings, db
