"""The registry's configuration, read once from the environment (``PFX_*``) or given in code.

Embedded defaults need no setup: blobs in ``<data>/blobs``, the index in ``<data>/index.db``
(SQLite). ``PFX_S3_BUCKET`` (+ ``PFX_S3_ENDPOINT`` and the standard AWS credential chain) moves
blobs to an S3-compatible service; ``PFX_DATABASE_URL`` moves the index to PostgreSQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import perfusion_format as pf

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Where the registry keeps things and the limits it enforces."""

    data_dir: Path = field(default_factory=lambda: Path("data"))
    database_url: str | None = None
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_prefix: str = ""
    #: Answer S3 downloads with a redirect to a presigned URL (instead of streaming them).
    s3_redirect: bool = False
    presign_seconds: int = 300
    max_concept_bytes: int = pf.MAX_FILE_SIZE
    max_preview_bytes: int = 1024 * 1024
    max_json_bytes: int = 256 * 1024
    #: Requests per second (bursts of 4×) allowed per API token and per anonymous client
    #: address; 0 turns a limit off.
    rate_limit_token: float = 100.0
    rate_limit_address: float = 50.0
    #: Seconds an answer to a read (a resolution, a caller's token) may be reused by this
    #: process; writes made here drop them at once, writes elsewhere are seen within this bound.
    #: 0 turns the read cache off.
    read_cache_seconds: float = 1.0
    #: Bytes of blob content kept in memory for downloads (blobs never change); 0 keeps none.
    blob_cache_bytes: int = 64 * 1024 * 1024

    @property
    def index_url(self) -> str:
        """The SQLAlchemy URL of the index."""
        return self.database_url or f"sqlite:///{self.data_dir / 'index.db'}"

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None) -> Settings:
        """Settings from ``PFX_*`` environment variables; ``data_dir`` overrides PFX_DATA_DIR."""
        env = os.environ
        return cls(
            data_dir=Path(data_dir or env.get("PFX_DATA_DIR", "data")),
            database_url=env.get("PFX_DATABASE_URL") or None,
            s3_bucket=env.get("PFX_S3_BUCKET") or None,
            s3_endpoint=env.get("PFX_S3_ENDPOINT") or None,
            s3_prefix=env.get("PFX_S3_PREFIX", ""),
            s3_redirect=env.get("PFX_S3_REDIRECT", "") in ("1", "true", "yes"),
            rate_limit_token=float(env.get("PFX_RATE_LIMIT_TOKEN", cls.rate_limit_token)),
            rate_limit_address=float(env.get("PFX_RATE_LIMIT_ADDRESS", cls.rate_limit_address)),
            read_cache_seconds=float(env.get("PFX_READ_CACHE_SECONDS", cls.read_cache_seconds)),
            blob_cache_bytes=int(env.get("PFX_BLOB_CACHE_BYTES", cls.blob_cache_bytes)),
        )
