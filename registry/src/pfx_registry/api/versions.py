"""Resolving and downloading versions: the hot read paths, matched first by the API's router."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

import perfusion_format as pf
from pfx_registry.auth import Caller
from pfx_registry.service import access, concepts
from pfx_registry.state import Registry, transaction

from .http import registry_and_caller, resource_router, send_blob
from .responses import VersionBody

__all__ = ["Resolved", "resolved_version", "router", "version_json"]

router = resource_router("versions")


def version_json(ns: str, name: str, row: Any) -> dict[str, Any]:
    """A version row (joined with its file's facts and size) as the API answers it."""
    return {
        "reference": f"{ns}/{name}:{row.version}",
        "version": row.version,
        "digest": row.digest,
        "size": row.size,
        "media_type": pf.MEDIA_TYPE,
        "created_at": row.created_at.isoformat(),
        "yanked": row.yanked_at is not None,
        "token": row.token,
        "superclass": row.superclass,
        "title": row.title,
        "family": row.family,
        "base_fingerprint": row.base_fingerprint,
        "dtype": row.dtype,
        "weights_digest": row.weights_digest,
        "format_version": row.format_version,
        "signers": row.signers.split(),
    }


@dataclass(frozen=True)
class Resolved:
    """A resolution as the read cache keeps it: the version object, encoded once."""

    repository_id: int
    digest: str
    body: bytes


async def resolved_version(
    registry: Registry, caller: Caller, ns: str, name: str, reference: str
) -> Resolved:
    """What ``reference`` in ``ns/name`` resolves to for ``caller`` (404 when it resolves to
    nothing the caller may read), from the read cache when fresh."""

    def load() -> Resolved:
        with transaction(registry) as connection:
            repository = access.readable_repository(connection, caller, ns, name)
            row = concepts.resolve(connection, repository, reference)
        body = json.dumps(version_json(ns, name, row), separators=(",", ":")).encode()
        return Resolved(repository.id, row.digest, body)

    key = ("version", caller.user_id, caller.is_admin, ns, name, reference)
    return await registry.reads.get(key, load)


@router.get(
    "/concepts/{ns}/{name}/versions/{reference}",
    response_model=VersionBody,
    responses={200: {"model": VersionBody}},
)
async def get_version(request: Request, ns: str, name: str, reference: str) -> Response:
    """Resolve a tag, version or ``sha256:`` digest to the version it names."""
    registry, caller = await registry_and_caller(request)
    resolved = await resolved_version(registry, caller, ns, name, reference)
    return Response(resolved.body, media_type="application/json")


@router.get(
    "/concepts/{ns}/{name}/versions/{reference}/file",
    response_class=Response,
    responses={
        200: {"content": {pf.MEDIA_TYPE: {}}, "description": "The concept file"},
        307: {"description": "Redirect to a presigned URL (S3 with PFX_S3_REDIRECT)"},
    },
)
async def download(request: Request, ns: str, name: str, reference: str) -> Response:
    """The concept file a reference names; counts a download (written to the index within a
    second, off the request path: see downloads.py)."""
    registry, caller = await registry_and_caller(request)
    resolved = await resolved_version(registry, caller, ns, name, reference)
    response = await send_blob(registry, resolved.digest, pf.MEDIA_TYPE)
    registry.downloads.add(resolved.repository_id)
    return response
