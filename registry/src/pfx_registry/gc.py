"""Garbage collection: blobs that no version references, once they have been so for a grace
period — what deleted repositories and crashed or abandoned pushes leave behind — and the temp
files of blob writes that a crash or ``kill -9`` cut off.

Index first, store second: a blob row is deleted (only while still unreferenced) before its bytes,
so the index never names a blob that is gone. Bytes with no index row at all (a push that crashed
between storing and indexing) are deleted once older than the grace period, which also protects
an upload in flight. The same grace applies to the temp files in the folder store's ``uploads/``
(:meth:`~pfx_registry.blobs.BlobStore.remove_stale_uploads`), so a write in progress is never
touched; an S3 store has none (a put is one PutObject).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select

from .db import blobs, oci_manifest_blobs, oci_uploads, previews, utcnow, versions
from .state import Registry

__all__ = ["CollectionReport", "collect_garbage"]


@dataclass(frozen=True)
class CollectionReport:
    """What a collection removed (or, in a dry run, would remove)."""

    unreferenced: tuple[str, ...]
    unindexed: tuple[str, ...]
    #: Names of temp files of cut-off writes (in the folder store's ``uploads/``).
    stale_uploads: tuple[str, ...]


def collect_garbage(
    registry: Registry, grace: timedelta = timedelta(hours=24), dry_run: bool = False
) -> CollectionReport:
    """Remove blobs unreferenced, and temp files of writes cut off, longer than ``grace`` ago;
    return what was removed."""
    cutoff = utcnow() - grace
    unreferenced_query = select(blobs.c.digest).where(*_unreferenced(blobs.c.digest))
    with registry.engine.begin() as connection:
        candidates = [
            digest
            for digest, created in connection.execute(
                unreferenced_query.add_columns(blobs.c.created_at)
            ).all()
            if _as_utc(created) < cutoff
        ]
        indexed = set(connection.execute(select(blobs.c.digest)).scalars())
    removed = []
    for digest in candidates:
        if dry_run:
            removed.append(digest)
            continue
        with registry.engine.begin() as connection:
            gone = connection.execute(
                delete(blobs).where(blobs.c.digest == digest, *_unreferenced(digest))
            ).rowcount
        if gone:
            registry.blobs.delete(digest)
            removed.append(digest)
    stray = []
    for digest in registry.blobs.digests():
        if digest in indexed:
            continue
        stored = registry.blobs.stored_at(digest)
        if stored is not None and stored < cutoff:
            if not dry_run:
                registry.blobs.delete(digest)
            stray.append(digest)
    uploads = registry.blobs.remove_stale_uploads(cutoff, dry_run=dry_run)
    if not dry_run:  # OCI uploads left unfinished: their bytes are rows of the index
        with registry.engine.begin() as connection:
            connection.execute(delete(oci_uploads).where(oci_uploads.c.created_at < cutoff))
    return CollectionReport(tuple(removed), tuple(stray), tuple(uploads))


def _unreferenced(digest: Any) -> tuple[Any, ...]:
    """Conditions that hold while nothing refers to the blob ``digest``: no version, preview or
    pushed OCI manifest."""
    return (
        ~exists().where(versions.c.digest == digest),
        ~exists().where(previews.c.digest == digest),
        ~exists().where(oci_manifest_blobs.c.digest == digest),
    )


def _as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
