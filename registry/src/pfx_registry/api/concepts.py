"""Concepts: publishing versions, a repository's page, tags, yanks, settings, deletion and a
namespace's listing. Each write is one transaction (``run_write``) whose service call locks the
repository it changes."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from sqlalchemy import Connection

from pfx_registry.auth import Caller
from pfx_registry.service import access, concepts
from pfx_registry.state import CallerDep, CountedConnectionDep, Registry, RegistryDep, run_write

from .bodies import PublishRequest, RepositoryUpdate, TagRequest
from .http import digest_param, resource_router
from .responses import NamespaceBody, RepositoryBody, TagBody, VersionBody, YankBody, errors
from .versions import version_json

__all__ = ["router"]

router = resource_router("concepts")


@router.put(
    "/concepts/{ns}/{name}/versions/{version}",
    response_model=VersionBody,
    responses={201: {"model": VersionBody}, **errors(403, 409, 422)},
)
def publish_version(
    ns: str,
    name: str,
    version: str,
    body: PublishRequest,
    registry: RegistryDep,
    caller: CallerDep,
    response: Response,
) -> dict[str, Any]:
    """Publish an uploaded concept as an immutable version (201; 200 when it already was)."""
    digest_param(body.digest)

    def publish(connection: Connection) -> dict[str, Any]:
        result = concepts.publish(
            connection,
            caller,
            ns,
            name,
            version,
            body.digest,
            tag_names=body.tags,
            private=body.private,
            description=body.description,
            labels=body.labels,
        )
        response.status_code = 201 if result.created else 200
        repository = access.readable_repository(connection, caller, ns, name)
        return version_json(ns, name, concepts.version(connection, repository, version))

    return run_write(registry, publish)


def _repository_json(connection: Connection, caller: Caller, ns: str, name: str) -> dict[str, Any]:
    repository = access.readable_repository(connection, caller, ns, name)
    details = concepts.repository_details(connection, repository)
    return {
        "namespace": ns,
        "name": name,
        "private": repository.private,
        "previews": [
            {"digest": d, "media_type": t, "url": f"/v1/blobs/{d}"} for d, t in details["previews"]
        ],
        "description": repository.description,
        "labels": repository.labels.split(),
        "downloads": repository.downloads,
        "created_at": repository.created_at.isoformat(),
        "tags": details["tags"],
        "versions": [
            {
                "version": row.version,
                "digest": row.digest,
                "created_at": row.created_at.isoformat(),
                "yanked": row.yanked_at is not None,
                "token": row.token,
                "family": row.family,
                "signers": row.signers.split(),
            }
            for row in details["versions"]
        ],
    }


@router.get("/concepts/{ns}/{name}", response_model=RepositoryBody)
def get_repository(
    ns: str, name: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """A repository: visibility, description, labels, downloads, versions and tags."""
    return _repository_json(connection, caller, ns, name)


@router.put("/concepts/{ns}/{name}/tags/{tag}", response_model=TagBody, responses=errors(403, 409))
def put_tag(
    ns: str, name: str, tag: str, body: TagRequest, registry: RegistryDep, caller: CallerDep
) -> dict[str, str]:
    """Point a tag at a version."""
    run_write(
        registry,
        lambda connection: concepts.set_tag(connection, caller, ns, name, tag, body.version),
    )
    return {"tag": tag, "version": body.version}


def _set_yanked(
    registry: Registry, caller: Caller, ns: str, name: str, version: str, yanked: bool
) -> dict[str, Any]:
    run_write(
        registry,
        lambda connection: concepts.set_yanked(connection, caller, ns, name, version, yanked),
    )
    return {"version": version, "yanked": yanked}


@router.post(
    "/concepts/{ns}/{name}/versions/{version}/yank",
    response_model=YankBody,
    responses=errors(403),
)
def yank(
    ns: str, name: str, version: str, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Hide a version from tag/version resolution and search; pulls by digest keep working."""
    return _set_yanked(registry, caller, ns, name, version, True)


@router.delete(
    "/concepts/{ns}/{name}/versions/{version}/yank",
    response_model=YankBody,
    responses=errors(403),
)
def unyank(
    ns: str, name: str, version: str, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Undo a yank."""
    return _set_yanked(registry, caller, ns, name, version, False)


@router.patch("/concepts/{ns}/{name}", response_model=RepositoryBody, responses=errors(403))
def update_repository(
    ns: str, name: str, body: RepositoryUpdate, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Change visibility (admin of the namespace), description or labels (writer)."""

    def update(connection: Connection) -> dict[str, Any]:
        concepts.update_repository(
            connection,
            caller,
            ns,
            name,
            private=body.private,
            description=body.description,
            labels=body.labels,
        )
        return _repository_json(connection, caller, ns, name)

    return run_write(registry, update)


@router.delete(
    "/concepts/{ns}/{name}",
    status_code=204,
    response_class=Response,
    responses=errors(403),
)
def delete_repository(ns: str, name: str, registry: RegistryDep, caller: CallerDep) -> Response:
    """Delete a repository with its versions and tags (admin); blobs are collected by gc."""
    run_write(registry, lambda connection: concepts.delete_repository(connection, caller, ns, name))
    return Response(status_code=204)


@router.get("/concepts/{ns}", response_model=NamespaceBody)
def list_repositories(
    ns: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """The repositories of a namespace that the caller may read."""
    rows = concepts.namespace_repositories(connection, caller, ns)
    return {
        "namespace": ns,
        "concepts": [
            {"name": row.name, "private": row.private, "downloads": row.downloads} for row in rows
        ],
    }
