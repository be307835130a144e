"""The index's schema (SQLAlchemy Core) and engine set-up for SQLite and PostgreSQL.

The same tables serve both databases; the schema is created and upgraded by Alembic migrations
(``pfx_registry/migrations``, applied by ``pfx-registry migrate`` and at start). SQLite runs in
WAL mode with foreign keys on; PostgreSQL is reached through psycopg 3.

Everything the index says about a concept file (token, superclass, family, fingerprint, dtype,
size, signers) is what the server read from the file itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

__all__ = [
    "WRITE",
    "UTCDateTime",
    "create_index_engine",
    "insert_or_ignore",
    "metadata",
    "upsert",
    "utcnow",
    "writing",
]

metadata = MetaData()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, timezone-aware on every backend: stored in UTC, read back in UTC.

    PostgreSQL keeps ``timestamptz``; SQLite keeps text without an offset, so a value is converted
    to UTC before it is stored and marked as UTC when it is read. Comparing two values (expiry,
    grace periods) is therefore correct on both, whatever offset a client sent. A naive datetime
    is refused: its offset would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime has no offset; give it one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created() -> Column[Any]:
    return Column("created_at", UTCDateTime(), nullable=False, default=utcnow)


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
    Column("expires_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
    # the token that created this one (None when made by an administrator's command): a token
    # never outlives, nor outranks, the token that minted it, and is revoked with it
    Column("parent_id", ForeignKey("tokens.id", ondelete="SET NULL")),
)
Index("tokens_parent", tokens.c.parent_id)

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
    # the file's modelspec.license and modelspec.author (None when absent, and for files
    # indexed before migration 0007)
    Column("license", String(128)),
    Column("author", String(128)),
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
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
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
    Column("yanked_at", UTCDateTime()),
    UniqueConstraint("repository_id", "version"),
)
Index("versions_digest", versions.c.digest)

tags = Table(
    "tags",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
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

# Signed-in browser sessions of the web catalog. The cookie holds a random secret, the index its
# SHA-256; a session acts with the API token it was opened with, so the token's scope, expiry
# and revocation apply to it (revoking the token ends the session).
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("token_id", ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
    # the session's anti-CSRF value, written into its forms (not a credential on its own)
    Column("csrf", String(64), nullable=False),
    _created(),
    Column("expires_at", UTCDateTime(), nullable=False),
)
Index("web_sessions_token", web_sessions.c.token_id)

# OCI manifests pushed through /v2/ (spec/registry-api.md §10), kept byte for byte so that their
# digests hold: concept manifests (``version_id`` set: the version they became) and artifacts that
# refer to another manifest (``subject``: signatures, SBOMs …). A version without a pushed
# manifest is served the canonical one, generated from its facts and never stored.
oci_manifests = Table(
    "oci_manifests",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", String(71), primary_key=True),
    Column("media_type", String(128), nullable=False),
    Column("artifact_type", String(128)),
    Column("content", LargeBinary, nullable=False),
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE")),
    Column("subject", String(71)),
    _created(),
)
Index("oci_manifests_version", oci_manifests.c.version_id)
Index("oci_manifests_subject", oci_manifests.c.repository_id, oci_manifests.c.subject)

# The blobs (config and layers) each stored manifest refers to: what makes them visible to the
# repository's readers, and what gc keeps.
oci_manifest_blobs = Table(
    "oci_manifest_blobs",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("manifest_digest", String(71), primary_key=True),
    Column("digest", ForeignKey("blobs.digest"), primary_key=True),
)
Index("oci_manifest_blobs_digest", oci_manifest_blobs.c.digest)

# Blob uploads in progress through /v2/ (chunked or not): the bytes received so far, in the index
# so that any replica can take the next chunk. Bounded by PFX_MAX_CONCEPT_BYTES.
oci_uploads = Table(
    "oci_uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("namespace_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("repository_name", String(64), nullable=False),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("data", LargeBinary, nullable=False),
    _created(),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
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
#: Seconds a SQLite transaction waits for the database's write lock before answering 503.
SQLITE_BUSY_TIMEOUT = 10
#: Execution option that marks a transaction as one that writes (see :func:`writing`).
WRITE = "pfx_write"


def writing(engine: Engine) -> Engine:
    """``engine`` for transactions that write. On SQLite they begin with ``BEGIN IMMEDIATE``,
    taking the write lock first, so that what they read stays true until they commit (a deferred
    transaction that read and then writes after another commit fails instead of waiting). On
    PostgreSQL nothing changes: writers lock the rows they depend on (see the service package)."""
    return engine.execution_options(**{WRITE: True})


# PostgreSQL timeouts (spec/registry-api.md §7.2, "Timeouts"). However the index fails, a
# request waits at most POSTGRES_POOL_TIMEOUT for a pooled connection, STATEMENT_DEADLINE for its
# pre-ping (TCP_USER_TIMEOUT when packets are dropped) and CONNECT_TIMEOUT for the reconnect after
# it: 2 + 4 + 3 = 9 s before the 503. The libpq ones can be changed in the database URL's query
# string (``?connect_timeout=10``), which takes precedence.

#: Seconds to open a connection (TCP, TLS, authentication): libpq's ``connect_timeout``, which
#: psycopg enforces on the whole handshake with each address of the host.
CONNECT_TIMEOUT = 3
#: Seconds sent data may stay unacknowledged before the kernel gives the connection up (Linux
#: ``TCP_USER_TIMEOUT``): a round trip whose packets a partition drops fails in this time.
TCP_USER_TIMEOUT = 3
#: TCP keepalive probes on an idle connection start after this many idle seconds, one every
#: KEEPALIVES_INTERVAL seconds, and KEEPALIVES_COUNT unanswered ones end the connection (on Linux
#: TCP_USER_TIMEOUT ends it first): a pooled connection cut off is found dead within about 8 s.
KEEPALIVES_IDLE = 5
#: Seconds between keepalive probes.
KEEPALIVES_INTERVAL = 1
#: Unanswered keepalive probes that end a connection.
KEEPALIVES_COUNT = 3
#: Seconds the server lets one statement run (``statement_timeout``) before it cancels it; the
#: connection stays usable and the request answers 503.
STATEMENT_TIMEOUT = 3
#: Seconds a statement waits for a lock (``lock_timeout``): a writer queued behind a transaction
#: whose client vanished gives up before STATEMENT_TIMEOUT.
LOCK_TIMEOUT = 2
#: Client-side limit on one round trip, in seconds. The only bound when the peer accepts and never
#: answers (a proxy or load balancer whose backend is gone, a frozen server): TCP then sees nothing
#: wrong and no server-side timeout reaches the client. Longer than STATEMENT_TIMEOUT, so that the
#: server's own cancellation normally comes first.
STATEMENT_DEADLINE = 4
#: Seconds to wait for a free pooled PostgreSQL connection before answering 503.
POSTGRES_POOL_TIMEOUT = 2

_Result = TypeVar("_Result")


class _DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose round trips (a statement, a fetch, a commit, the pool's pre-ping)
    end within :data:`STATEMENT_DEADLINE` seconds. A round trip cut off — by the deadline, or by
    TCP, after which libpq keeps the connection open — leaves the connection in an unknown state:
    it is closed and :class:`psycopg.errors.ConnectionTimeout` raised, which SQLAlchemy takes for a
    disconnect (the connection is discarded, the pool's older ones re-checked)."""

    def wait(
        self, gen: PQGen[_Result], interval: float = 0.1, timeout: float | None = None
    ) -> _Result:
        if timeout is not None:  # a caller with a deadline of its own (notifies)
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, STATEMENT_DEADLINE)
        except psycopg.OperationalError as error:
            if error.sqlstate is not None or self.closed:
                raise  # the server's answer (statement_timeout), or libpq closed it itself
            self.pgconn.finish()
            raise psycopg.errors.ConnectionTimeout(f"no answer from the server: {error}") from error


def create_index_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    SQLite gets WAL journaling, foreign keys and a busy timeout on every connection, and real
    transactions: the driver's own transaction handling (which commits a SAVEPOINT opened outside
    a transaction on its own, and begins transactions only before a write) is turned off and every
    transaction begins with an explicit ``BEGIN`` — SQLAlchemy's documented recipe for pysqlite —
    so a request is atomic whatever it does and wherever it stops. PostgreSQL gets the timeouts
    above: every request that needs an unreachable index answers within about 9 s.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
            pool_size=POOL_CONNECTIONS,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            connection.isolation_level = None  # the driver begins nothing by itself
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get(WRITE, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    timeouts = {
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE,
        "keepalives_interval": KEEPALIVES_INTERVAL,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT * 1000,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT}s -c lock_timeout={LOCK_TIMEOUT}s",
    }
    given = make_url(url).query
    engine = create_engine(
        url,
        connect_args={name: value for name, value in timeouts.items() if name not in given},
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=POOL_CONNECTIONS - 10,
        pool_timeout=POSTGRES_POOL_TIMEOUT,
    )

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> _DeadlineConnection:
        return _DeadlineConnection.connect(*cargs, **cparams)

    return engine


def insert_or_ignore(connection: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert one row unless it would violate a unique constraint (``ON CONFLICT DO NOTHING``);
    True when it was inserted. Unlike catching IntegrityError, a concurrent insert of the same key
    is waited for instead of failing, and nothing needs a savepoint."""
    statement = (
        _dialect_insert(connection)(table)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*table.primary_key.columns)  # rowcount is not reliable with RETURNING
    )
    return connection.execute(statement).first() is not None


def upsert(
    connection: Connection,
    table: Table,
    values: dict[str, Any],
    keys: list[str],
    changes: dict[str, Any],
) -> None:
    """Insert one row or, when a row with the same ``keys`` exists, apply ``changes`` to it
    (``ON CONFLICT (keys) DO UPDATE``), atomically on both databases."""
    statement = _dialect_insert(connection)(table).values(**values)
    connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))


def _dialect_insert(connection: Connection) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert
