"""The registry's long-lived parts (settings, index engine, blob store) and the request
dependencies that hand them to routes: a database transaction and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from .auth import ANONYMOUS, Caller, authenticate
from .blobs import BlobStore, FolderBlobStore, S3BlobStore
from .db import create_index_engine
from .errors import BackendUnavailable
from .settings import Settings

__all__ = [
    "CallerDep",
    "ConnectionDep",
    "Registry",
    "RegistryDep",
    "open_registry",
    "transaction",
]


@dataclass
class Registry:
    """What every request works with."""

    settings: Settings
    engine: Engine
    blobs: BlobStore


def open_registry(settings: Settings) -> Registry:
    """Connect to the index and the blob store named by ``settings`` (nothing is migrated)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.s3_bucket:
        store: BlobStore = S3BlobStore(
            settings.s3_bucket, endpoint_url=settings.s3_endpoint, prefix=settings.s3_prefix
        )
    else:
        store = FolderBlobStore(settings.data_dir)
    return Registry(settings, create_index_engine(settings.index_url), store)


async def _registry(request: Request) -> Registry:
    # async: no I/O here, and a sync dependency would cost a worker-thread hop per request
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(_registry)]


@contextmanager
def transaction(registry: Registry) -> Iterator[Connection]:
    """A transaction on the index; backend failures become :class:`BackendUnavailable`."""
    try:
        with registry.engine.begin() as connection:
            yield connection
    except OperationalError as error:  # connection refused, server gone, database locked …
        raise BackendUnavailable(
            f"the index is unavailable ({type(error.orig).__name__})"
        ) from error
    except PoolTimeout as error:
        raise BackendUnavailable("the index is busy: no connection became free") from error


def _connection(registry: RegistryDep) -> Iterator[Connection]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Routes that stream a body open :func:`transaction` themselves instead, so that no connection
    (or SQLite write lock) is held while the bytes are sent.
    """
    with transaction(registry) as connection:
        yield connection


ConnectionDep = Annotated[Connection, Depends(_connection)]


async def _caller(
    registry: RegistryDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    if authorization is None:
        return ANONYMOUS  # no token, no query, no thread

    def lookup() -> Caller:
        with transaction(registry) as connection:
            return authenticate(connection, authorization)

    return await run_in_threadpool(lookup)


CallerDep = Annotated[Caller, Depends(_caller)]
