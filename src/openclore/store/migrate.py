"""Alembic migrations, run programmatically (``openclore db upgrade`` and on server start)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text


class Database(Protocol):
    """What migrating needs of :class:`openclore.store.db.Database` (whose ``create_all``
    migrates, so this module does not import it)."""

    url: str
    engine: Engine
    direct_engine: Engine  # the database itself, not a pooler in front: the lock is a session's
    is_postgres: bool


MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Several API processes or replicas may start at once: one migrates, the others wait for it.
PG_MIGRATION_LOCK = 0x0C10E


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = alembic_config(db)
    with db.direct_engine.connect() as conn:
        if db.is_postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if db.is_postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                conn.commit()


def head_revision() -> str | None:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(db: Database) -> str | None:
    """The migration the database is at (None: not migrated). Raises when unreachable."""
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
