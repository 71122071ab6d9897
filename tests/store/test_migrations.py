"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from openclore.store.migrate import alembic_config, upgrade
from openclore.store.schema import metadata

from support import Market


def test_migrations_match_the_schema(market: Market) -> None:
    with market.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_upgrade_is_idempotent(market: Market) -> None:
    """Upgrading a database that is up to date changes nothing: same revision, data kept."""
    token = market.user(bitcoin="0.5")
    upgrade(market.db)
    upgrade(market.db)
    with market.db.engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    head = ScriptDirectory.from_config(alembic_config(market.db)).get_current_head()
    assert revision == head and diff == []
    wallets = market.client(token).get("/v1/wallets").json()["wallets"]
    assert [w["balance"] for w in wallets if w["name"] == "bitcoin"] == [0.5]
