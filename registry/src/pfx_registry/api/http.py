"""What the routes of several resources share: the digest path parameter, the hot paths' way of
reading the registry and the caller, and sending a blob's bytes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from perfusion_format import check_digest
from pfx_registry.auth import Caller
from pfx_registry.errors import ApiError, BackendUnavailable, Code
from pfx_registry.state import Registry, caller_of, note_caller

from .responses import ERRORS, errors

__all__ = ["blob_bytes", "digest_param", "registry_and_caller", "resource_router", "send_blob"]


def resource_router(tag: str) -> APIRouter:
    """The router of one /v1 resource: its routes carry the full ``/v1/…`` path (what metrics
    and logs name them by) and declare the errors every /v1 route may answer."""
    return APIRouter(prefix="/v1", tags=[tag], responses=errors(*ERRORS))


def digest_param(digest: str) -> str:
    """``digest`` when it is ``sha256:<64 lowercase hex>``; 400 DIGEST_INVALID otherwise."""
    try:
        check_digest(digest)
    except ValueError:
        raise ApiError(400, Code.DIGEST_INVALID, f"not a sha256 digest: {digest}") from None
    return digest


async def registry_and_caller(request: Request) -> tuple[Registry, Caller]:
    """The registry and the caller of a request, read without FastAPI's dependency solving.

    The hot routes (resolve, download, blob) use this: dependency solving would otherwise be
    about a third of the time they take when answered from the read cache (bench/registry.py).
    """
    registry: Registry = request.app.state.registry
    caller = await caller_of(registry, request.headers.get("authorization"))
    note_caller(request, caller)
    return registry, caller


async def send_blob(registry: Registry, digest: str, media_type: str) -> Response:
    """The blob's bytes, or a redirect to a presigned URL (S3 with ``s3_redirect``).

    Blobs are small (a concept is at most 4 MiB, a preview 1 MiB) and never change: they are sent
    whole, from the blob cache when they are in it, else read on a worker thread (a store failure
    is then a clean 503 rather than a body cut short under a 200) and kept.
    """
    settings = registry.settings
    if settings.s3_redirect:
        url = await run_in_threadpool(
            registry.blobs.presigned_url, digest, settings.presign_seconds
        )
        if url is not None:
            return RedirectResponse(url, status_code=307)
    data = await blob_bytes(registry, digest)
    return Response(data, media_type=media_type, headers={"Docker-Content-Digest": digest})


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
