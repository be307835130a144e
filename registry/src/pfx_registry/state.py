"""The registry's long-lived parts (settings, index engine, blob store) and the request
dependencies that hand them to routes: a database transaction and the authenticated caller."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .auth import ANONYMOUS, Caller, authenticate, hash_token
from .blobs import BlobStore, FolderBlobStore, S3BlobStore
from .caching import BlobCache, ReadCache, watch_writes
from .db import create_index_engine, writing
from .downloads import DownloadCounter
from .errors import BackendUnavailable, TransactionConflict
from .observability import CALLER_NAME
from .settings import Settings

__all__ = [
    "CallerDep",
    "ConnectionDep",
    "CountedConnectionDep",
    "Registry",
    "RegistryDep",
    "caller_of",
    "note_caller",
    "open_registry",
    "run_write",
    "transaction",
]

T = TypeVar("T")

#: SQLSTATEs of a transaction that PostgreSQL aborted so that another could go on: a deadlock and
#: a serialization failure. Running the transaction again is safe and is what the server does.
_RETRYABLE = frozenset({"40P01", "40001"})
#: Attempts of a write transaction before its conflict is answered as 503 (with Retry-After).
WRITE_ATTEMPTS = 5


@dataclass
class Registry:
    """What every request works with."""

    settings: Settings
    engine: Engine
    #: the same engine, for transactions that write (see :func:`pfx_registry.db.writing`)
    writer: Engine
    blobs: BlobStore
    reads: ReadCache
    blob_bytes: BlobCache
    downloads: DownloadCounter


def open_registry(settings: Settings) -> Registry:
    """Connect to the index and the blob store named by ``settings`` (nothing is migrated)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.s3_bucket:
        store: BlobStore = S3BlobStore(
            settings.s3_bucket, endpoint_url=settings.s3_endpoint, prefix=settings.s3_prefix
        )
    else:
        store = FolderBlobStore(settings.data_dir)
    engine = create_index_engine(settings.index_url)
    reads = ReadCache(settings.read_cache_seconds)
    watch_writes(engine, reads)
    return Registry(
        settings,
        engine,
        writing(engine),
        store,
        reads,
        BlobCache(settings.blob_cache_bytes),
        DownloadCounter(),
    )


async def _registry(request: Request) -> Registry:
    # async: no I/O here, and a sync dependency would cost a worker-thread hop per request
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(_registry)]


@contextmanager
def transaction(registry: Registry, *, write: bool = False) -> Iterator[Connection]:
    """A transaction on the index; backend failures become :class:`BackendUnavailable`.

    ``write`` marks a transaction that writes (on SQLite it takes the write lock when it begins).
    """
    try:
        with (registry.writer if write else registry.engine).begin() as connection:
            yield connection
    except (OperationalError, PendingRollbackError) as error:
        # connection refused, server gone, database locked …; PendingRollbackError replaces the
        # error when the server cut the connection inside a savepoint and the rollback fails too
        cause = getattr(error, "orig", error)
        if isinstance(error, DBAPIError) and getattr(cause, "sqlstate", None) in _RETRYABLE:
            raise TransactionConflict(
                f"the index is busy ({type(cause).__name__}); retry"
            ) from error
        raise BackendUnavailable(f"the index is unavailable ({type(cause).__name__})") from error
    except PoolTimeout as error:
        raise BackendUnavailable("the index is busy: no connection became free") from error


def run_write(registry: Registry, work: Callable[[Connection], T]) -> T:
    """``work(connection)`` in one write transaction, committed when it returns and rolled back
    when it raises. A transaction that the database aborted for a deadlock or a serialization
    failure is run again (up to :data:`WRITE_ATTEMPTS` times, after a short random pause), so
    such a conflict never reaches the client; ``work`` must therefore do nothing outside the
    transaction that cannot be done twice."""
    attempt = 1
    while True:
        try:
            with transaction(registry, write=True) as connection:
                return work(connection)
        except TransactionConflict:
            if attempt == WRITE_ATTEMPTS:
                raise
            time.sleep(random.uniform(0, 0.01 * 2**attempt))  # noqa: S311 (jitter, not a secret)
            attempt += 1


def _connection(registry: RegistryDep) -> Iterator[Connection]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Routes that stream a body open :func:`transaction` themselves instead, so that no connection
    (or SQLite write lock) is held while the bytes are sent.
    """
    with transaction(registry) as connection:
        yield connection


ConnectionDep = Annotated[Connection, Depends(_connection, scope="function")]


def _counted_connection(registry: RegistryDep) -> Iterator[Connection]:
    """:data:`ConnectionDep` for answers that report download counts: the counts this process
    holds in memory are written first, so they are included."""
    registry.downloads.flush(registry.engine)
    with transaction(registry) as connection:
        yield connection


CountedConnectionDep = Annotated[Connection, Depends(_counted_connection, scope="function")]


async def caller_of(registry: Registry, authorization: str | None) -> Caller:
    """The caller an ``Authorization`` header names (anonymous without one), cached briefly."""
    if authorization is None:
        return ANONYMOUS  # no token, no query, no thread

    def lookup() -> Caller:
        with transaction(registry) as connection:
            return authenticate(connection, authorization)

    # keyed by the token's hash: the cache never holds a secret
    return await registry.reads.get(("caller", hash_token(authorization)), lookup)


async def _caller(
    request: Request, registry: RegistryDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    caller = await caller_of(registry, authorization)
    note_caller(request, caller)
    return caller


def note_caller(request: Request, caller: Caller) -> None:
    """Leave the caller's user name where the access log finds it (never the token)."""
    request.scope.setdefault("state", {})[CALLER_NAME] = caller.name


CallerDep = Annotated[Caller, Depends(_caller)]
