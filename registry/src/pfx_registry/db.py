"""The index's schema (SQLAlchemy Core) and engine set-up for SQLite and PostgreSQL.

The same tables serve both databases; the schema is created and upgraded by Alembic migrations
(``pfx_registry/migrations``, applied by ``pfx-registry migrate`` and at start). SQLite runs in
WAL mode with foreign keys on; PostgreSQL is reached through psycopg 3.

Everything the index says about a concept file (token, superclass, family, fingerprint, dtype,
size, signers) is what the server read from the file itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)

__all__ = ["create_index_engine", "metadata", "utcnow"]

metadata = MetaData()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _created() -> Column[Any]:
    return Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow)


accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # "user" | "org"
    Column("is_admin", Boolean, nullable=False, default=False),  # registry administrator
    Column("require_signatures", Boolean, nullable=False, default=False),
    Column("protected_tags", Boolean, nullable=False, default=False),
    _created(),
)

memberships = Table(
    "memberships",
    metadata,
    Column("org_id", ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(8), nullable=False),  # "reader" | "writer" | "admin"
    _created(),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("scope", String(8), nullable=False),  # "read" | "write" | "admin"
    _created(),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("public_key", String(44), nullable=False),  # raw Ed25519 key, base64
    Column("name", String(128), nullable=False, default=""),
    _created(),
    UniqueConstraint("account_id", "key_id"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(71), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("media_type", String(80), nullable=False),
    Column("uploaded_by", ForeignKey("accounts.id", ondelete="SET NULL")),
    _created(),
)

# Who uploaded which bytes: each of them may publish the blob and see it.
blob_uploads = Table(
    "blob_uploads",
    metadata,
    Column("digest", ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    _created(),
)

# What the server read from a concept file (one row per concept blob).
concept_files = Table(
    "concept_files",
    metadata,
    Column("digest", ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True),
    Column("weights_digest", String(71), nullable=False),
    Column("format_version", String(16), nullable=False),
    Column("title", String(128), nullable=False),
    Column("token", String(64), nullable=False),
    Column("superclass", String(64), nullable=False),
    Column("family", String(16), nullable=False),
    Column("base_fingerprint", String(71), nullable=False),
    Column("dtype", String(8), nullable=False),
    Column("signers", Text, nullable=False, default=""),  # space-separated key ids
)

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("namespace_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("private", Boolean, nullable=False, default=True),
    Column("description", Text, nullable=False, default=""),
    Column("labels", Text, nullable=False, default=""),  # space-separated
    Column("downloads", BigInteger, nullable=False, default=0),
    _created(),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow),
    UniqueConstraint("namespace_id", "name"),
)

Index("repositories_downloads", repositories.c.downloads)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("version", String(128), nullable=False),
    Column("digest", ForeignKey("blobs.digest"), nullable=False),
    Column("published_by", ForeignKey("accounts.id", ondelete="SET NULL")),
    _created(),
    Column("yanked_at", DateTime(timezone=True)),
    UniqueConstraint("repository_id", "version"),
)
Index("versions_digest", versions.c.digest)

tags = Table(
    "tags",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow),
)

previews = Table(
    "previews",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", ForeignKey("blobs.digest"), primary_key=True),
    Column("media_type", String(32), nullable=False),
    _created(),
)
Index("previews_digest", previews.c.digest)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, default=utcnow),
    Column("actor", String(64)),
    Column("action", String(32), nullable=False),
    Column("target", String(256), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)


#: Connections per process. A request holds its connection across the worker threads its
#: dependencies and route run on, so the pool must be at least as large as the server's thread
#: pool (anyio's default of 40): with fewer, threads waiting for a connection can occupy every
#: thread that a connection holder needs to finish, and the process stalls until the timeout.
POOL_CONNECTIONS = 48
#: Seconds to wait for a pooled connection before answering 503.
POOL_TIMEOUT = 10


def create_index_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    SQLite gets WAL journaling, foreign keys and a busy timeout on every connection.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=POOL_CONNECTIONS,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=POOL_CONNECTIONS - 10,
        pool_timeout=POOL_TIMEOUT,
    )
