"""Schema migrations (Alembic), applied by ``pfx-registry migrate`` and when the server starts.

Several replicas may start at once on one database: on PostgreSQL the migration runs under a
transaction-level advisory lock (:data:`LOCK_KEY`), so the first replica migrates while the others
wait for it, then find the schema current and change nothing — migrations run exactly once. (SQLite
serializes writers by itself; its transactional DDL leaves a second migrator nothing to do.)
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

__all__ = ["LOCK_KEY", "alembic_config", "current_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
#: The PostgreSQL advisory lock key every pfx registry takes while it migrates ("pfxmigr").
LOCK_KEY = 0x7066786D69677200 >> 8


def alembic_config() -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def current_revision(connection: Connection) -> str | None:
    """The schema revision of the index (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Bring the index at ``engine`` to ``revision`` (default: the newest schema); whether this
    call changed the schema (False when another process had already done it)."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        before = current_revision(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return current_revision(connection) != before
