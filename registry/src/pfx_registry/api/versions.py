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

from .delivery import Download, send_blob
from .http import registry_and_caller, resource_router
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
    #: the repository is public (its files may be kept by any cache)
    public: bool


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
        return Resolved(repository.id, row.digest, body, not repository.private)

    key = ("version", caller.user_id, caller.is_admin, ns, name, reference)
    return await registry.reads.get(key, load)


@router.get(
    "/concepts/{ns}/{name}/versions/{reference}",
    response_model=VersionBody,
    responses={200: {"model": VersionBody}},
)
async def get_version(request: Request, ns: str, name: str, reference: str) -> Response:
    """Resolve a tag, version or ``sha256:`` digest to the version it names.

    A public answer carries ``X-Accel-Expires: PFX_EDGE_RESOLVE_SECONDS``: the nginx template
    keeps it that long for requests without credentials, so that anonymous resolves of public
    concepts are answered at the edge (spec/registry-api.md §4.1). Every other answer is
    ``Cache-Control: private, no-cache`` and never stored by a shared cache."""
    registry, caller = await registry_and_caller(request)
    resolved = await resolved_version(registry, caller, ns, name, reference)
    edge_seconds = registry.settings.edge_resolve_seconds
    if resolved.public and edge_seconds:
        headers = {"X-Accel-Expires": str(edge_seconds)}
    else:
        headers = {"Cache-Control": "private, no-cache"}
    return Response(resolved.body, media_type="application/json", headers=headers)


@router.get(
    "/concepts/{ns}/{name}/versions/{reference}/file",
    response_class=Response,
    responses={
        200: {"content": {pf.MEDIA_TYPE: {}}, "description": "The concept file"},
        206: {"description": "The asked byte range (Range)"},
        304: {"description": "The copy named by If-None-Match is current"},
        307: {"description": "Redirect to a signed or presigned URL (spec §4.1)"},
    },
)
async def download(request: Request, ns: str, name: str, reference: str) -> Response:
    """The concept file a reference names (ETag, 304, Range, hand-over: delivery.py); counts a
    download unless answered 304 (written to the index within a second, off the request path:
    see downloads.py)."""
    registry, caller = await registry_and_caller(request)
    resolved = await resolved_version(registry, caller, ns, name, reference)
    download = Download(
        resolved.digest, pf.MEDIA_TYPE, resolved.public, immutable=reference == resolved.digest
    )
    response = await send_blob(request, registry, download)
    if response.status_code != 304:
        registry.downloads.add(resolved.repository_id)
    return response
