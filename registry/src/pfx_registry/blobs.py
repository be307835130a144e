"""Blob storage: content-addressed, written once, behind one small interface.

Two backends implement :class:`BlobStore`: a local folder (the embedded default) and any
S3-compatible service through boto3 (AWS S3, MinIO, Ceph RGW, R2). Callers verify a blob's digest
*before* :meth:`BlobStore.put`; a put is atomic (a temp file renamed into place, or one S3
PutObject), so a blob is either absent or whole — a crashed upload leaves nothing visible.
A crash or ``kill -9`` in the middle of a folder write does leave its temp file in ``uploads/``;
:meth:`BlobStore.remove_stale_uploads` (run by ``pfx-registry gc``) removes those.

Errors for clients say only :data:`UNAVAILABLE`: what went wrong (an endpoint URL, a bucket, a
path) is for the operator, and is logged as a warning on the ``pfx_registry`` logger.

Folder layout::

    <root>/blobs/sha256/<first two hex>/<64 hex>     committed blobs
    <root>/uploads/<random>                           in-flight writes, renamed into blobs/

S3 layout: ``<prefix>blobs/sha256/<64 hex>`` in one bucket.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

from perfusion_format import check_digest, is_digest, write_atomic

from .errors import BackendUnavailable

__all__ = ["UNAVAILABLE", "BlobStore", "FolderBlobStore", "S3BlobStore"]

#: The message of every :class:`BackendUnavailable` a blob store raises (it reaches anonymous
#: clients as a 503, so it names no endpoint, bucket, key or path).
UNAVAILABLE = "the blob store is unavailable"

logger = logging.getLogger("pfx_registry")

#: Seconds to open a connection to the S3 service.
S3_CONNECT_TIMEOUT = 2
#: Seconds to wait for any answer bytes on an open connection (a peer that accepts and never
#: answers ends here).
S3_READ_TIMEOUT = 3
#: Attempts per S3 call: one. A transient S3 error is a 503 with Retry-After that clients retry
#: (every PUT is idempotent); a retry inside the server would double the time a cut-off store
#: holds a request, which is now a 503 within about connect + read timeout per call.
S3_ATTEMPTS = 1
#: Presigned URLs an S3 store keeps for reuse (all are dropped when it is full).
PRESIGNED_KEPT = 10_000


def _unavailable(cause: str) -> BackendUnavailable:
    """Log ``cause`` (with whatever internal detail it holds) for the operator and return the
    generic error to raise for the client."""
    logger.warning("%s: %s", UNAVAILABLE, cause)
    return BackendUnavailable(UNAVAILABLE)


class BlobStore(Protocol):
    """Where blob bytes live. Every method raises :class:`BackendUnavailable` when the backend
    cannot be reached."""

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it is not stored."""

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` (already verified to hash to ``digest``) atomically; idempotent."""

    def read(self, digest: str) -> bytes:
        """The whole blob (FileNotFoundError when absent)."""

    def delete(self, digest: str) -> None:
        """Remove the blob; absent blobs are fine."""

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest."""

    def stored_at(self, digest: str) -> datetime | None:
        """When the blob was written (UTC), or None when it is not stored."""

    def key(self, digest: str) -> str:
        """Where the blob lives: its path under the folder's root, or its object key in the
        bucket (what a front server that reads the store itself is pointed at)."""

    def presigned_url(self, digest: str, expires: int) -> str | None:
        """A URL a client can download from directly for at least ``expires / 2`` more seconds
        (a signature is reused for half its lifetime), or None (folder backend)."""

    def remove_stale_uploads(self, before: datetime, dry_run: bool = False) -> list[str]:
        """Remove what writes cut off by a crash left behind, when last written before
        ``before`` (a write in progress is never older than a grace period); return the names of
        what was removed (with ``dry_run``, of what would be, leaving it in place)."""

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` unless the store answers."""


class FolderBlobStore:
    """Blobs as files under a local folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        return self.root / self.key(digest)

    def key(self, digest: str) -> str:
        hexdigest = check_digest(digest)
        return f"blobs/sha256/{hexdigest[:2]}/{hexdigest}"

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, digest: str, data: bytes) -> None:
        target = self._path(digest)
        try:
            if target.exists():
                return
            target.parent.mkdir(exist_ok=True)
            write_atomic(target, data, mode=0o600, folder=self._uploads)
        except OSError as error:  # a full or read-only disk, a broken folder: the store is down
            raise _unavailable(f"writing {target}: {error}") from None

    def read(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as error:
            raise _unavailable(f"reading {path}: {error}") from None

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for path in sorted(self._blobs.glob("*/*")):
            if is_digest(f"sha256:{path.name}"):
                yield f"sha256:{path.name}"

    def stored_at(self, digest: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(self._path(digest).stat().st_mtime, UTC)
        except FileNotFoundError:
            return None

    def presigned_url(self, digest: str, expires: int) -> str | None:
        check_digest(digest)
        return None

    def remove_stale_uploads(self, before: datetime, dry_run: bool = False) -> list[str]:
        """Remove temp files in ``uploads/`` last modified before ``before``: writes that a crash
        or ``kill -9`` cut off between creating the file and renaming it into ``blobs/``."""
        removed = []
        for path in sorted(self._uploads.iterdir()):
            try:
                status = path.lstat()
            except FileNotFoundError:  # renamed into place (or removed) since the listing
                continue
            if S_ISREG(status.st_mode) and datetime.fromtimestamp(status.st_mtime, UTC) < before:
                if not dry_run:
                    path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def check(self) -> None:
        if not os.access(self._blobs, os.W_OK):
            raise _unavailable(f"{self._blobs} is not writable")


class S3BlobStore:
    """Blobs as objects in an S3-compatible bucket, through boto3 (credentials from the standard
    AWS chain; ``endpoint_url`` for non-AWS services)."""

    def __init__(
        self, bucket: str, *, endpoint_url: str | None = None, prefix: str = "", client: Any = None
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        #: presigned URLs by (key, lifetime): each reused for half its lifetime (boto3's presign
        #: costs about a millisecond; a dictionary look-up, microseconds)
        self._presigned: dict[tuple[str, int], tuple[str, float]] = {}
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=S3_CONNECT_TIMEOUT,
                read_timeout=S3_READ_TIMEOUT,
                retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
            ),
        )

    def key(self, digest: str) -> str:
        return f"{self.prefix}blobs/sha256/{check_digest(digest)}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            # Only a missing *object* is a missing blob. A missing bucket (NoSuchBucket, or 404 to
            # HeadBucket) is a misconfigured backend. (HeadObject's bodiless 404 cannot tell the
            # two apart; check() catches a missing bucket.)
            code = error.response.get("Error", {}).get("Code")
            if "Key" in kwargs and code in ("404", "NoSuchKey"):
                raise FileNotFoundError(kwargs["Key"]) from error
            raise _unavailable(f"S3 {method} (bucket {self.bucket!r}): {error}") from error
        except BotoCoreError as error:
            raise _unavailable(f"S3 {method} (bucket {self.bucket!r}): {error}") from error

    def size(self, digest: str) -> int | None:
        try:
            return int(self._call("head_object", Key=self.key(digest))["ContentLength"])
        except FileNotFoundError:
            return None

    def put(self, digest: str, data: bytes) -> None:
        self._call("put_object", Key=self.key(digest), Body=data)

    def read(self, digest: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        body = self._call("get_object", Key=self.key(digest))["Body"]
        try:
            return body.read()
        except BotoCoreError as error:  # the connection broke off, or too few bytes came
            raise _unavailable(f"S3 get_object body (bucket {self.bucket!r}): {error}") from error
        finally:
            body.close()

    def delete(self, digest: str) -> None:
        self._call("delete_object", Key=self.key(digest))

    def digests(self) -> Iterator[str]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", Prefix=f"{self.prefix}blobs/sha256/", **extra)
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if is_digest(f"sha256:{name}"):
                    yield f"sha256:{name}"
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def stored_at(self, digest: str) -> datetime | None:
        try:
            modified = self._call("head_object", Key=self.key(digest))["LastModified"]
        except FileNotFoundError:
            return None
        return modified.astimezone(UTC)

    def presigned_url(self, digest: str, expires: int) -> str | None:
        from botocore.exceptions import BotoCoreError

        key = self.key(digest)
        now = time.monotonic()
        kept = self._presigned.get((key, expires))
        if kept is not None and kept[1] > now:
            return kept[0]
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        except BotoCoreError as error:  # e.g. no credentials to sign with
            raise _unavailable(f"S3 presign (bucket {self.bucket!r}): {error}") from error
        if len(self._presigned) >= PRESIGNED_KEPT:
            self._presigned.clear()
        self._presigned[(key, expires)] = (url, now + expires / 2)
        return url

    def remove_stale_uploads(self, before: datetime, dry_run: bool = False) -> list[str]:
        """Nothing to remove: a put is one PutObject, which S3 applies whole or not at all, so a
        cut-off write leaves neither an object nor a multipart upload behind."""
        return []

    def check(self) -> None:
        self._call("head_bucket")
