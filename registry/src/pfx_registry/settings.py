"""The registry's configuration: one class, read once from the environment (``PFX_*``) or given
in code.

Embedded defaults need no setup: blobs in ``<data>/blobs``, the index in ``<data>/index.db``
(SQLite). ``PFX_S3_BUCKET`` (+ ``PFX_S3_ENDPOINT`` and the standard AWS credential chain) moves
blobs to an S3-compatible service; ``PFX_DATABASE_URL`` moves the index to PostgreSQL. Values are
parsed as pydantic parses them (booleans: ``1``/``true``/``yes``/``on`` and their opposites, any
case); an invalid value stops the server at start with one line naming the variable
(:func:`settings_error`). An empty variable counts as unset. spec/registry-api.md §7 lists every
variable; a test holds that list to this class.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

import perfusion_format as pf

__all__ = ["ENV_PREFIX", "Settings", "settings_error"]

ENV_PREFIX = "PFX_"


class Settings(BaseSettings):
    """Where the registry keeps things and the limits it enforces (``PFX_<FIELD NAME>``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    #: Folder of the embedded stores: blobs in ``<dir>/blobs``, the SQLite index ``<dir>/index.db``.
    data_dir: Path = Path("data")
    #: The index in PostgreSQL (``postgresql+psycopg://…``) instead of SQLite.
    database_url: str | None = None
    #: Blobs in this S3-compatible bucket instead of the data folder.
    s3_bucket: str | None = None
    #: The S3 service's endpoint (MinIO, Ceph RGW, R2); AWS when unset.
    s3_endpoint: str | None = None
    #: Prefix of every key in the bucket.
    s3_prefix: str = ""
    #: Answer S3 downloads with a 307 to a presigned URL (instead of streaming them).
    s3_redirect: bool = False
    #: Seconds a presigned download URL stays valid.
    presign_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    #: Secret shared with the front server (nginx ``secure_link_md5``): downloads that are not
    #: public answer ``307`` to a signed URL under ``/v1/signed/`` that the front server checks and
    #: serves by itself (signing.py). Unset: no signed URLs.
    signed_url_secret: str | None = Field(default=None, min_length=16)
    #: Seconds a signed download URL stays valid.
    signed_url_seconds: int = Field(default=60, ge=1, le=24 * 3600)
    #: Path prefix of the front server's internal location onto the blob store (nginx
    #: ``X-Accel-Redirect``, e.g. ``/_pfx/store/``): authorized downloads answer with an empty
    #: body and ``X-Accel-Redirect: <prefix><store key>``, and nginx sends the bytes. Unset: off.
    accel_redirect: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_./-]*/$")
    #: Seconds a front server's cache may keep a public blob (``X-Accel-Expires``); browsers and
    #: clients may keep it for a year (it never changes), the front server re-asks this often so
    #: that a concept made private stops being served from its cache within this bound.
    edge_cache_seconds: int = Field(default=300, ge=0, le=365 * 24 * 3600)
    #: Seconds a front server's cache may keep a public resolve answered to a caller without
    #: credentials (``X-Accel-Expires``); a tag moved, a version yanked or a concept made private
    #: is seen through it within this bound plus ``read_cache_seconds``. 0: never kept.
    edge_resolve_seconds: int = Field(default=1, ge=0, le=3600)
    #: Largest concept file accepted (bytes).
    max_concept_bytes: int = Field(default=pf.MAX_FILE_SIZE, ge=1, le=pf.MAX_FILE_SIZE)
    #: Largest preview image accepted (bytes).
    max_preview_bytes: int = Field(default=1024 * 1024, ge=1)
    #: Largest body of any other request (bytes).
    max_json_bytes: int = Field(default=256 * 1024, ge=1)
    #: Requests per second (bursts of 4×) allowed per API token; 0 turns the limit off.
    rate_limit_token: float = Field(default=100.0, ge=0)
    #: Requests per second (bursts of 4×) allowed per client address; 0 turns the limit off.
    rate_limit_address: float = Field(default=50.0, ge=0)
    #: Seconds an answer to a read (a resolution, a caller's token) may be reused by this
    #: process; writes made here drop them at once, writes elsewhere are seen within this bound.
    #: 0 turns the read cache off.
    read_cache_seconds: float = Field(default=1.0, ge=0)
    #: Bytes of blob content kept in memory for downloads (blobs never change); 0 keeps none.
    blob_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: Seconds a web catalog session lasts after signing in (never longer than its token).
    session_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=365 * 24 * 3600)

    @property
    def index_url(self) -> str:
        """The SQLAlchemy URL of the index."""
        return self.database_url or f"sqlite:///{self.data_dir / 'index.db'}"

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None) -> Settings:
        """Settings from ``PFX_*`` environment variables; ``data_dir`` overrides PFX_DATA_DIR.
        Raises pydantic's ValidationError for an invalid value (see :func:`settings_error`)."""
        return cls(data_dir=Path(data_dir)) if data_dir is not None else cls()

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each environment variable and the field it sets."""
        return {ENV_PREFIX + name.upper(): name for name in cls.model_fields}


def settings_error(error: ValidationError) -> str:
    """One line naming the first invalid variable and why: ``PFX_RATE_LIMIT_TOKEN: Input should
    be a valid number, unable to parse string as a number (got 'ten')``."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "settings"
    value = first.get("input")
    got = f" (got {value!r})" if isinstance(value, str) else ""
    return f"{ENV_PREFIX}{field.upper()}: {first.get('msg', 'invalid')}{got}"
