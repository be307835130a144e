"""Alembic environment: runs the registry's migrations on the connection it is given."""

from __future__ import annotations

from alembic import context

from pfx_registry.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through pfx_registry.migrate.upgrade()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
