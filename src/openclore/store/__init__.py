"""Persistence: schema, migrations and the engine factory for SQLite and PostgreSQL."""
