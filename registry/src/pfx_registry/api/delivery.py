"""How an authorized download's bytes reach the client: validators, caching headers, ranges,
and handing the bytes to the storage layer so that they need not pass through Python.

Every blob and concept file answer carries ``ETag: "<digest>"``, ``Cache-Control`` (``public,
max-age=31536000, immutable`` for a public concept named by digest, ``private`` otherwise; a tag
may move, so a file named by tag is ``no-cache``: reused after a 304), ``Accept-Ranges: bytes``,
and answers ``If-None-Match`` with 304 and a single ``Range`` with 206 — after the caller has been
authorized, never before. Then, in this order (spec/registry-api.md §4.1):

1. with S3 and ``PFX_S3_REDIRECT`` (CDN setups): ``307`` to a presigned URL (one signature
   reused for half its lifetime);
2. a public blob named by digest is sent whole, with ``X-Accel-Expires`` so that a front server's
   cache (the nginx template's ``proxy_cache``) keeps it for ``PFX_EDGE_CACHE_SECONDS``;
3. with ``PFX_SIGNED_URL_SECRET``: ``307`` to a signed URL the front server checks by itself
   (:mod:`pfx_registry.signing`);
4. with ``PFX_ACCEL_REDIRECT``: an empty answer with ``X-Accel-Redirect`` to the front server's
   internal location onto the store (for S3, with a reused presigned query);
5. otherwise the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from perfusion_format import is_digest
from pfx_registry import signing
from pfx_registry.errors import ApiError, BackendUnavailable, Code
from pfx_registry.state import Registry

__all__ = [
    "FOREVER",
    "Download",
    "blob_bytes",
    "byte_range",
    "etag_matches",
    "router",
    "send_blob",
]

#: The lifetime part of ``Cache-Control`` for content that never changes.
FOREVER = "max-age=31536000, immutable"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Download:
    """An authorized download: which blob, and what caches may do with it."""

    digest: str
    media_type: str
    #: some public concept holds the blob: any cache may keep it
    public: bool
    #: the URL always names these bytes (a digest, not a tag that may move)
    immutable: bool = True
    #: the name offered to a browser that saves the file (``Content-Disposition``)
    filename: str | None = None


def etag_matches(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` names ``etag`` (or is ``*``)."""
    sent = request.headers.get("if-none-match")
    if sent is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in sent.split(",")}
    return etag in tags or "*" in tags


def byte_range(request: Request, etag: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range of a single-range ``Range: bytes=…`` request, or None to send
    everything (no Range, several ranges, another unit, or an ``If-Range`` naming other bytes).
    A range that starts past the end is 416 RANGE_NOT_SATISFIABLE."""
    header = request.headers.get("range")
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    if not (first.isdigit() or last.isdigit()) or not all(p.isdigit() for p in (first, last) if p):
        return None  # malformed: ignored, as RFC 9110 allows
    if not first:  # the last N bytes
        if int(last) == 0:
            raise _unsatisfiable(size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec: ignored (RFC 9110 §14.1.1)
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        Code.RANGE_NOT_SATISFIABLE,
        f"the range starts past the end of the {size}-byte blob",
        {"Content-Range": f"bytes */{size}"},
    )


def _headers(download: Download) -> dict[str, str]:
    if download.public and download.immutable:
        cache_control = f"public, {FOREVER}"
    elif download.immutable:
        cache_control = f"private, {FOREVER}"
    else:
        cache_control = f"{'public' if download.public else 'private'}, no-cache"
    headers = {
        "ETag": f'"{download.digest}"',
        "Cache-Control": cache_control,
        "Docker-Content-Digest": download.digest,
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }
    if download.filename is not None:
        headers["Content-Disposition"] = f'attachment; filename="{download.filename}"'
    return headers


async def send_blob(request: Request, registry: Registry, download: Download) -> Response:
    """The answer to an authorized download of ``download`` (the module docstring's order)."""
    headers = _headers(download)
    etag = headers["ETag"]
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    settings = registry.settings
    if settings.s3_redirect:
        url = await run_in_threadpool(
            registry.blobs.presigned_url, download.digest, settings.presign_seconds
        )
        if url is not None:
            return RedirectResponse(url, status_code=307)
    if download.public and download.immutable:
        headers["X-Accel-Expires"] = str(settings.edge_cache_seconds)
        return await _bytes_answer(request, registry, download, headers)
    key = registry.blobs.key(download.digest)
    if settings.signed_url_secret:
        url = signing.signed_url(key, settings.signed_url_secret, settings.signed_url_seconds)
        query = await _presigned_query(registry, download.digest)
        redirect = {
            "Location": f"{url}&{query}" if query else url,
            "Cache-Control": "private, no-store",
            "ETag": etag,
        }
        return Response(status_code=307, headers=redirect)
    if settings.accel_redirect:
        query = await _presigned_query(registry, download.digest)
        headers["X-Accel-Redirect"] = settings.accel_redirect + key + (f"?{query}" if query else "")
        del headers["Accept-Ranges"]  # the front server says it (it answers the ranges)
        return Response(media_type=download.media_type, headers=headers)
    return await _bytes_answer(request, registry, download, headers)


async def _presigned_query(registry: Registry, digest: str) -> str | None:
    """The query of a presigned URL for ``digest`` (S3; reused for half its lifetime), which
    the front server passes on to S3 so that it needs no credentials of its own; None for the
    folder store."""
    url = await run_in_threadpool(
        registry.blobs.presigned_url, digest, registry.settings.presign_seconds
    )
    return urlsplit(url).query if url is not None else None


async def _bytes_answer(
    request: Request, registry: Registry, download: Download, headers: dict[str, str]
) -> Response:
    """The bytes (or the asked range of them) from the blob cache or the store."""
    data = await blob_bytes(registry, download.digest)
    span = byte_range(request, headers["ETag"], len(data))
    if span is None:
        return Response(data, media_type=download.media_type, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Response(
        data[start : end + 1], status_code=206, media_type=download.media_type, headers=headers
    )


async def blob_bytes(registry: Registry, digest: str) -> bytes:
    """The bytes of a stored blob: from the blob cache, else read on a worker thread and kept
    (a store failure, or bytes missing from the store, is a 503)."""
    data = registry.blob_bytes.get(digest)
    if data is None:
        try:
            data = await run_in_threadpool(registry.blobs.read, digest)
        except FileNotFoundError:
            raise BackendUnavailable(
                f"the bytes of {digest} are missing from the blob store"
            ) from None
        registry.blob_bytes.put(digest, data)
    return data


@router.get(signing.SIGNED_PREFIX + "{key:path}")
async def signed_download(key: str, request: Request, expires: str = "", md5: str = "") -> Response:
    """A signed URL answered by the registry itself (a front server normally answers it without
    asking): 403 when the signature is wrong, 410 URL_EXPIRED when its time has passed."""
    registry: Registry = request.app.state.registry
    secret = registry.settings.signed_url_secret
    digest = "sha256:" + key.rsplit("/", 1)[-1]
    verdict = "invalid"
    if secret and is_digest(digest) and registry.blobs.key(digest) == key:
        verdict = signing.check(signing.SIGNED_PREFIX + key, expires, md5, secret)
    if verdict == "invalid":
        raise ApiError(403, Code.FORBIDDEN, "the signed URL is not valid")
    if verdict == "expired":
        raise ApiError(410, Code.URL_EXPIRED, "the signed URL has expired; ask the registry again")
    download = Download(digest, "application/octet-stream", public=False)
    headers = _headers(download)
    if etag_matches(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return await _bytes_answer(request, registry, download, headers)
