"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openclore.store.migrate import upgrade
from openclore.store.schema import metadata

from support import Market


def test_migrations_match_the_schema(market: Market) -> None:
    with market.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_upgrade_is_idempotent(market: Market) -> None:
    upgrade(market.db)
    upgrade(market.db)
