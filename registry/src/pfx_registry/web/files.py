"""What pages link to besides pages: the package's static files, preview images and their
card thumbnails, and concept file downloads — each authorized like the page that links to it.

Previews and thumbnails are content-addressed: they carry the digest as ``ETag``, answer
``If-None-Match`` with 304 (after the visitor is authorized), and are cached for a year —
``public`` when some public concept shows the image, ``private`` otherwise.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf
from pfx_registry.api.delivery import FOREVER, blob_bytes, etag_matches
from pfx_registry.api.http import digest_param
from pfx_registry.api.versions import resolved_version
from pfx_registry.errors import ApiError, Code, not_found
from pfx_registry.service import concepts
from pfx_registry.state import Registry, transaction

from . import paths  # noqa: F401 (registers the page_ns path convertor)
from .rendering import static_asset
from .thumbnails import make_thumbnail
from .visitors import VisitorDep, caller_of_visitor

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: The static files and their media types.
STATIC_FILES = {
    "style.css": "text/css; charset=utf-8",
    "catalog.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


@router.get("/-/static/{name}")
def static_file(name: str) -> Response:
    """A static file of the package (pages link to it with its content version: immutable)."""
    if name not in STATIC_FILES:
        raise not_found(f"static file {name}")
    data, version = static_asset(name)
    headers = {
        "Cache-Control": f"public, {FOREVER}",
        "ETag": f'"{version}"',
        "X-Content-Type-Options": "nosniff",
    }
    return Response(data, media_type=STATIC_FILES[name], headers=headers)


async def _visible_preview(request: Request, visitor: VisitorDep, digest: str) -> tuple[str, bool]:
    """The preview's media type and whether it is public; 404 when the visitor may not see it."""
    digest_param(digest)
    registry: Registry = request.app.state.registry
    caller = caller_of_visitor(visitor)

    def load() -> tuple[str, bool]:
        with transaction(registry) as connection:
            found = concepts.preview_access(connection, caller, digest)
        if found is None:
            raise not_found(f"preview {digest}")
        return found

    return await registry.reads.get(("preview", caller.user_id, caller.is_admin, digest), load)


def _cached(request: Request, etag: str, public: bool) -> dict[str, str] | None:
    """The caching headers of a content-addressed answer; None when the browser's copy (its
    ``If-None-Match``) is current, which the caller answers with 304."""
    headers = {
        "ETag": etag,
        "Cache-Control": f"{'public' if public else 'private'}, {FOREVER}",
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request, etag):
        return None
    return headers


@router.get("/-/previews/{digest}")
async def preview(digest: str, request: Request, visitor: VisitorDep) -> Response:
    """A preview image, full size."""
    media_type, public = await _visible_preview(request, visitor, digest)
    etag = f'"{digest}"'
    headers = _cached(request, etag, public)
    if headers is None:
        return Response(status_code=304, headers={"ETag": etag})
    data = await blob_bytes(request.app.state.registry, digest)
    return Response(data, media_type=media_type, headers=headers)


@router.get("/-/previews/{digest}/thumbnail")
async def thumbnail(digest: str, request: Request, visitor: VisitorDep) -> Response:
    """A preview image as a card-sized WebP."""
    _media_type, public = await _visible_preview(request, visitor, digest)
    etag = f'"thumbnail-{digest}"'
    headers = _cached(request, etag, public)
    if headers is None:
        return Response(status_code=304, headers={"ETag": etag})
    registry: Registry = request.app.state.registry
    key = f"thumbnail:{digest}"
    data = registry.blob_bytes.get(key)
    if data is None:
        data = await run_in_threadpool(make_thumbnail, await blob_bytes(registry, digest))
        if data is None:
            raise ApiError(415, Code.UNSUPPORTED_MEDIA, "the preview image cannot be decoded")
        registry.blob_bytes.put(key, data)
    return Response(data, media_type="image/webp", headers=headers)


@router.get("/{ns:page_ns}/{name}/-/versions/{reference}/file")
async def download(
    ns: str, name: str, reference: str, request: Request, visitor: VisitorDep
) -> Response:
    """The concept file a version name, tag or digest names, as an attachment (counted as a
    download, like the API's)."""
    registry: Registry = request.app.state.registry
    caller = caller_of_visitor(visitor)
    resolved = await resolved_version(registry, caller, ns, name, reference)
    data = await blob_bytes(registry, resolved.digest)
    registry.downloads.add(resolved.repository_id)
    headers = {
        "Content-Disposition": f'attachment; filename="{name}.perfusion.safetensors"',
        "Docker-Content-Digest": resolved.digest,
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(data, media_type=pf.MEDIA_TYPE, headers=headers)
