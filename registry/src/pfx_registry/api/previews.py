"""Preview images of a repository: attached by writers, at most eight, served as blobs."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf
from pfx_registry.errors import ApiError, Code
from pfx_registry.service import access, concepts
from pfx_registry.state import CallerDep, RegistryDep, run_write, transaction

from .http import digest_param, resource_router
from .responses import AttachedPreviewBody, errors

__all__ = ["image_type", "router"]

router = resource_router("previews")

_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def image_type(data: bytes) -> str | None:
    """The media type the bytes themselves show (PNG, JPEG or WebP), or None."""
    for magic, media_type in _IMAGE_TYPES:
        if data.startswith(magic):
            return media_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@router.post(
    "/concepts/{ns}/{name}/previews",
    status_code=201,
    response_model=AttachedPreviewBody,
    responses=errors(403, 409, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in ("image/png", "image/jpeg", "image/webp")
            },
        }
    },
)
async def add_preview(
    ns: str, name: str, request: Request, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Attach a preview image (PNG, JPEG or WebP, at most 1 MB; its type is read from the bytes,
    never from a header) to a repository (writers; at most 8 per repository)."""
    access.require_token(caller, "adding a preview")
    data = await request.body()  # bounded to max_preview_bytes by RequestAccounting (413)
    media_type = image_type(data)
    if media_type is None:
        raise ApiError(415, Code.UNSUPPORTED_MEDIA, "previews are PNG, JPEG or WebP images")
    digest = pf.content_digest(data)

    def may_attach() -> None:
        with transaction(registry) as connection:
            access.existing_repository(connection, caller, ns, name)

    await run_in_threadpool(may_attach)  # no bytes are stored for a caller who may not attach
    await run_in_threadpool(registry.blobs.put, digest, data)
    await run_in_threadpool(
        run_write,
        registry,
        lambda connection: concepts.attach_preview(
            connection, caller, ns, name, digest, media_type, len(data)
        ),
    )
    return {"digest": digest, "media_type": media_type, "size": len(data)}


@router.delete(
    "/concepts/{ns}/{name}/previews/{digest}",
    status_code=204,
    response_class=Response,
    responses=errors(403),
)
def remove_preview(
    ns: str, name: str, digest: str, registry: RegistryDep, caller: CallerDep
) -> Response:
    """Detach a preview image (its blob is collected by gc)."""
    digest_param(digest)
    run_write(
        registry,
        lambda connection: concepts.remove_preview(connection, caller, ns, name, digest),
    )
    return Response(status_code=204)
