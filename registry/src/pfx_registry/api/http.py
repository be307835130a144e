"""What the routes of several resources share: the digest path parameter and the hot paths' way
of reading the registry and the caller (sending a blob's bytes is :mod:`.delivery`'s)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from perfusion_format import check_digest
from pfx_registry.auth import Caller
from pfx_registry.errors import ApiError, Code
from pfx_registry.state import Registry, caller_of, note_caller

from .responses import ERRORS, errors

__all__ = ["digest_param", "registry_and_caller", "resource_router"]


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
