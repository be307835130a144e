"""Blobs: content-addressed concept files (and preview images), uploaded once, read by digest."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf
from pfx_registry.auth import ANONYMOUS
from pfx_registry.errors import ApiError, Code
from pfx_registry.service import access, concepts
from pfx_registry.state import CallerDep, ConnectionDep, RegistryDep, run_write, transaction

from .delivery import Download, send_blob
from .http import digest_param, registry_and_caller, resource_router
from .responses import BlobBody, errors

__all__ = ["router"]

router = resource_router("blobs")


@router.head("/blobs/{digest}", responses={200: {"description": "The blob is visible"}})
def head_blob(digest: str, connection: ConnectionDep, caller: CallerDep) -> Response:
    """200 with Content-Length when the caller may see the blob, else 404."""
    blob = access.blob_visible(connection, caller, digest_param(digest))
    if blob is None:
        return Response(status_code=404)
    return Response(headers={"Content-Length": str(blob.size), "Docker-Content-Digest": digest})


@router.get(
    "/blobs/{digest}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The blob's bytes"},
        206: {"description": "The asked byte range (Range)"},
        304: {"description": "The copy named by If-None-Match is current"},
        307: {"description": "Redirect to a signed or presigned URL (spec §4.1)"},
    },
)
async def get_blob(request: Request, digest: str) -> Response:
    """The blob's bytes, with its digest as ETag (304, Range), or a hand-over to the storage
    layer (delivery.py)."""
    digest_param(digest)
    registry, caller = await registry_and_caller(request)

    def visible() -> Download:
        with transaction(registry) as connection:
            blob = access.blob_visible(connection, caller, digest)
            if blob is None:
                raise ApiError(404, Code.BLOB_UNKNOWN, f"blob {digest} not found")
            public = caller.anonymous or access.blob_visible(connection, ANONYMOUS, digest)
        return Download(blob.digest, blob.media_type, public=bool(public))

    download = await registry.reads.get(("blob", caller.user_id, caller.is_admin, digest), visible)
    return await send_blob(request, registry, download)


@router.put(
    "/blobs/{digest}",
    status_code=201,
    response_model=BlobBody,
    responses=errors(403, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {pf.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_blob(
    digest: str, request: Request, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Upload a concept file. The server computes the sha256 itself, validates the file with
    perfusion_format, stores it, and only then indexes it; a refused upload leaves nothing."""
    digest_param(digest)
    access.require_token(caller, "uploading")
    if caller.scope == "read":
        raise ApiError(403, Code.FORBIDDEN, "uploading needs a token with write scope")
    data = await request.body()  # bounded to max_concept_bytes by RequestAccounting (413)
    actual = pf.content_digest(data)
    if actual != digest:
        raise ApiError(400, Code.DIGEST_INVALID, f"the body's digest is {actual}, not {digest}")
    concept = pf.loads(data)  # FormatError → 422 with the format's code
    await run_in_threadpool(registry.blobs.put, digest, data)

    def index(connection: Connection) -> None:
        concepts.record_blob(connection, caller, digest, len(data), pf.MEDIA_TYPE, concept)
        access.audit(connection, caller, "blob.upload", digest, size=len(data))

    await run_in_threadpool(run_write, registry, index)
    return {"digest": digest, "size": len(data), "media_type": pf.MEDIA_TYPE}
