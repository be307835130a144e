"""HTTP routes of the /v1 API: blobs, concepts (repositories, versions, tags), accounts,
organizations, tokens, signing keys and namespace policy. spec/registry-api.md describes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf

from . import search, service
from .auth import Caller
from .blobs import check_digest
from .bodies import (
    Membership,
    NewKey,
    NewOrganization,
    NewToken,
    NewUser,
    Policy,
    PublishRequest,
    RepositoryUpdate,
    TagRequest,
)
from .errors import BackendUnavailable, Code, RegistryError
from .state import (
    CallerDep,
    ConnectionDep,
    CountedConnectionDep,
    Registry,
    RegistryDep,
    caller_of,
    run_write,
    transaction,
)

router = APIRouter(prefix="/v1")


# -- the hot read paths: resolve and download (first, so that the router matches them first) --


@dataclass(frozen=True)
class Resolved:
    """A resolution as the read cache keeps it: the version object, encoded once."""

    repository_id: int
    digest: str
    body: bytes


async def _resolved(
    registry: Registry, caller: Caller, ns: str, name: str, reference: str
) -> Resolved:
    def load() -> Resolved:
        with transaction(registry) as connection:
            repository = service.readable_repository(connection, caller, ns, name)
            row = service.resolve(connection, repository, reference)
        body = json.dumps(_version_json(ns, name, row), separators=(",", ":")).encode()
        return Resolved(repository.id, row.digest, body)

    key = ("version", caller.user_id, caller.is_admin, ns, name, reference)
    return await registry.reads.get(key, load)


# The hot routes (these two and GET /blobs/{digest}) read the registry and the caller from the
# request themselves: FastAPI's dependency solving would otherwise be about a third of the time
# they take when answered from the read cache (see bench/registry.py).


async def _registry_and_caller(request: Request) -> tuple[Registry, Caller]:
    registry: Registry = request.app.state.registry
    return registry, await caller_of(registry, request.headers.get("authorization"))


@router.get("/concepts/{ns}/{name}/versions/{reference}")
async def get_version(request: Request, ns: str, name: str, reference: str) -> Response:
    """Resolve a tag, version or ``sha256:`` digest to the version it names."""
    registry, caller = await _registry_and_caller(request)
    resolved = await _resolved(registry, caller, ns, name, reference)
    return Response(resolved.body, media_type="application/json")


@router.get("/concepts/{ns}/{name}/versions/{reference}/file")
async def download(request: Request, ns: str, name: str, reference: str) -> Response:
    """The concept file a reference names; counts a download (written to the index within a
    second, off the request path: see downloads.py)."""
    registry, caller = await _registry_and_caller(request)
    resolved = await _resolved(registry, caller, ns, name, reference)
    response = await _send_blob(registry, resolved.digest, pf.MEDIA_TYPE)
    registry.downloads.add(resolved.repository_id)
    return response


# -- blobs -------------------------------------------------------------------------------------


def _digest(digest: str) -> str:
    try:
        check_digest(digest)
    except ValueError:
        raise RegistryError(400, Code.DIGEST_INVALID, f"not a sha256 digest: {digest}") from None
    return digest


@router.head("/blobs/{digest}")
def head_blob(digest: str, connection: ConnectionDep, caller: CallerDep) -> Response:
    """200 with Content-Length when the caller may see the blob, else 404."""
    blob = service.blob_visible(connection, caller, _digest(digest))
    if blob is None:
        return Response(status_code=404)
    return Response(headers={"Content-Length": str(blob.size), "Docker-Content-Digest": digest})


@router.get("/blobs/{digest}")
async def get_blob(request: Request, digest: str) -> Response:
    """The blob's bytes (or a redirect to a presigned URL on S3 when configured)."""
    _digest(digest)
    registry, caller = await _registry_and_caller(request)

    def visible() -> tuple[str, str]:
        with transaction(registry) as connection:
            blob = service.blob_visible(connection, caller, digest)
        if blob is None:
            raise RegistryError(404, Code.BLOB_UNKNOWN, f"blob {digest} not found")
        return blob.digest, blob.media_type

    found, media_type = await registry.reads.get(
        ("blob", caller.user_id, caller.is_admin, digest), visible
    )
    return await _send_blob(registry, found, media_type)


async def _send_blob(registry: Registry, digest: str, media_type: str) -> Response:
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
    data = registry.blob_bytes.get(digest)
    if data is None:
        try:
            data = await run_in_threadpool(registry.blobs.read, digest)
        except FileNotFoundError:
            raise BackendUnavailable(
                f"the bytes of {digest} are missing from the blob store"
            ) from None
        registry.blob_bytes.put(digest, data)
    return Response(data, media_type=media_type, headers={"Docker-Content-Digest": digest})


@router.put("/blobs/{digest}", status_code=201)
async def put_blob(
    digest: str, request: Request, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Upload a concept file. The server computes the sha256 itself, validates the file with
    perfusion_format, stores it, and only then indexes it; a refused upload leaves nothing."""
    _digest(digest)
    service.require_token(caller, "uploading")
    if caller.scope == "read":
        raise RegistryError(403, Code.FORBIDDEN, "uploading needs a token with write scope")
    data = await request.body()  # bounded to max_concept_bytes by RequestAccounting (413)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise RegistryError(
            400, Code.DIGEST_INVALID, f"the body's digest is {actual}, not {digest}"
        )
    concept = pf.loads(data)  # FormatError → 422 with the format's code
    await run_in_threadpool(registry.blobs.put, digest, data)

    def index(connection: Connection) -> None:
        service.record_blob(connection, caller, digest, len(data), pf.MEDIA_TYPE, concept)
        service.audit(connection, caller, "blob.upload", digest, size=len(data))

    await run_in_threadpool(run_write, registry, index)
    return {"digest": digest, "size": len(data), "media_type": pf.MEDIA_TYPE}


# -- concepts ------------------------------------------------------------------------------------


def _version_json(ns: str, name: str, row: Any) -> dict[str, Any]:
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


@router.put("/concepts/{ns}/{name}/versions/{version}")
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
    _digest(body.digest)

    def publish(connection: Connection) -> dict[str, Any]:
        result = service.publish(
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
        repository = service.readable_repository(connection, caller, ns, name)
        return _version_json(ns, name, service.version(connection, repository, version))

    return run_write(registry, publish)


def _repository_json(connection: Connection, caller: Caller, ns: str, name: str) -> dict[str, Any]:
    repository = service.readable_repository(connection, caller, ns, name)
    details = service.repository_details(connection, repository)
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


@router.get("/concepts/{ns}/{name}")
def get_repository(
    ns: str, name: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """A repository: visibility, description, labels, downloads, versions and tags."""
    return _repository_json(connection, caller, ns, name)


@router.put("/concepts/{ns}/{name}/tags/{tag}")
def put_tag(
    ns: str, name: str, tag: str, body: TagRequest, registry: RegistryDep, caller: CallerDep
) -> dict[str, str]:
    """Point a tag at a version."""
    run_write(
        registry,
        lambda connection: service.set_tag(connection, caller, ns, name, tag, body.version),
    )
    return {"tag": tag, "version": body.version}


@router.post("/concepts/{ns}/{name}/versions/{version}/yank")
def yank(
    ns: str, name: str, version: str, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Hide a version from tag/version resolution and search; pulls by digest keep working."""
    run_write(
        registry,
        lambda connection: service.set_yanked(connection, caller, ns, name, version, True),
    )
    return {"version": version, "yanked": True}


@router.delete("/concepts/{ns}/{name}/versions/{version}/yank")
def unyank(
    ns: str, name: str, version: str, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Undo a yank."""
    run_write(
        registry,
        lambda connection: service.set_yanked(connection, caller, ns, name, version, False),
    )
    return {"version": version, "yanked": False}


@router.patch("/concepts/{ns}/{name}")
def update_repository(
    ns: str, name: str, body: RepositoryUpdate, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Change visibility (admin of the namespace), description or labels (writer)."""

    def update(connection: Connection) -> dict[str, Any]:
        service.update_repository(
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


@router.delete("/concepts/{ns}/{name}", status_code=204)
def delete_repository(ns: str, name: str, registry: RegistryDep, caller: CallerDep) -> Response:
    """Delete a repository with its versions and tags (admin); blobs are collected by gc."""
    run_write(registry, lambda connection: service.delete_repository(connection, caller, ns, name))
    return Response(status_code=204)


@router.get("/concepts/{ns}")
def list_repositories(
    ns: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """The repositories of a namespace that the caller may read."""
    rows = service.namespace_repositories(connection, caller, ns)
    return {
        "namespace": ns,
        "concepts": [
            {"name": row.name, "private": row.private, "downloads": row.downloads} for row in rows
        ],
    }


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


@router.post("/concepts/{ns}/{name}/previews", status_code=201)
async def add_preview(
    ns: str, name: str, request: Request, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Attach a preview image (PNG, JPEG or WebP, at most 1 MB; its type is read from the bytes,
    never from a header) to a repository (writers; at most 8 per repository)."""
    service.require_token(caller, "adding a preview")
    data = await request.body()  # bounded to max_preview_bytes by RequestAccounting (413)
    media_type = image_type(data)
    if media_type is None:
        raise RegistryError(415, Code.UNSUPPORTED_MEDIA, "previews are PNG, JPEG or WebP images")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def may_attach() -> None:
        with transaction(registry) as connection:
            service.existing_repository(connection, caller, ns, name)

    await run_in_threadpool(may_attach)  # no bytes are stored for a caller who may not attach
    await run_in_threadpool(registry.blobs.put, digest, data)
    await run_in_threadpool(
        run_write,
        registry,
        lambda connection: service.attach_preview(
            connection, caller, ns, name, digest, media_type, len(data)
        ),
    )
    return {"digest": digest, "media_type": media_type, "size": len(data)}


@router.delete("/concepts/{ns}/{name}/previews/{digest}", status_code=204)
def remove_preview(
    ns: str, name: str, digest: str, registry: RegistryDep, caller: CallerDep
) -> Response:
    """Detach a preview image (its blob is collected by gc)."""
    _digest(digest)
    run_write(
        registry,
        lambda connection: service.remove_preview(connection, caller, ns, name, digest),
    )
    return Response(status_code=204)


# -- accounts, organizations, tokens, keys, policy ------------------------------------------------


@router.post("/users", status_code=201)
def create_user(body: NewUser, registry: RegistryDep, caller: CallerDep) -> dict[str, Any]:
    """Create a user (registry administrators only)."""
    service.require_token(caller, "creating a user")
    if not (caller.is_admin and caller.scope == "admin"):
        raise RegistryError(403, Code.FORBIDDEN, "only registry administrators create users")

    def create(connection: Connection) -> int:
        user_id = service.create_account(connection, body.name, "user", body.admin)
        service.audit(connection, caller, "user.create", body.name)
        return user_id

    return {"id": run_write(registry, create), "name": body.name, "admin": body.admin}


@router.get("/whoami")
def whoami(caller: CallerDep) -> dict[str, Any]:
    """Who the token belongs to, and its scope."""
    return {"name": caller.name, "scope": caller.scope, "admin": caller.is_admin}


@router.post("/orgs", status_code=201)
def create_organization(
    body: NewOrganization, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Create an organization; its creator becomes its admin."""
    service.require_token(caller, "creating an organization")
    if caller.scope not in ("write", "admin"):
        raise RegistryError(403, Code.FORBIDDEN, "creating an organization needs a write token")

    run_write(
        registry, lambda connection: service.create_organization(connection, caller, body.name)
    )
    return {"name": body.name}


@router.get("/orgs")
def list_organizations(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The organizations the caller belongs to, with their role in each, by name."""
    rows = service.organizations_of(connection, caller)
    return {"orgs": [{"name": name, "role": role} for name, role in rows]}


@router.get("/orgs/{org}/members")
def list_members(org: str, connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The members of an organization and their roles (for its members; 404 for others)."""
    rows = service.members_of(connection, caller, org)
    return {"org": org, "members": [{"user": user, "role": role} for user, role in rows]}


@router.put("/orgs/{org}/members")
def set_member(
    org: str, body: Membership, registry: RegistryDep, caller: CallerDep
) -> dict[str, str]:
    """Add a member or change their role (organization admins)."""
    run_write(
        registry,
        lambda connection: service.set_member(connection, caller, org, body.user, body.role),
    )
    return {"org": org, "user": body.user, "role": body.role}


@router.delete("/orgs/{org}/members/{user}", status_code=204)
def remove_member(org: str, user: str, registry: RegistryDep, caller: CallerDep) -> Response:
    """Remove a member (organization admins)."""
    run_write(registry, lambda connection: service.remove_member(connection, caller, org, user))
    return Response(status_code=204)


@router.post("/tokens", status_code=201)
def create_token(body: NewToken, registry: RegistryDep, caller: CallerDep) -> dict[str, Any]:
    """Create an API token for the caller. The secret is in this response only."""
    created = run_write(
        registry,
        lambda connection: service.create_token(
            connection, caller, body.name, body.scope, body.expires_at, body.user
        ),
    )
    return {
        "id": created.id,
        "name": body.name,
        "scope": created.scope,
        "expires_at": created.expires_at.isoformat() if created.expires_at else None,
        "token": created.secret,
    }


@router.get("/tokens")
def list_tokens(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's tokens (never their secrets)."""
    return {
        "tokens": [
            {
                "id": row.id,
                "name": row.name,
                "scope": row.scope,
                "created_at": row.created_at.isoformat(),
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                "revoked": row.revoked_at is not None,
            }
            for row in service.tokens_of(connection, caller)
        ]
    }


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    registry: RegistryDep,
    caller: CallerDep,
) -> Response:
    """Revoke one of the caller's tokens, and every token it created."""
    run_write(registry, lambda connection: service.revoke_token(connection, caller, token_id))
    return Response(status_code=204)


@router.post("/namespaces/{ns}/keys", status_code=201)
def add_key(ns: str, body: NewKey, registry: RegistryDep, caller: CallerDep) -> dict[str, str]:
    """Register a signing key for a namespace (its admins)."""
    try:
        text = body.public_key.strip()
        key = (
            pf.PublicKey.from_pem(text.encode())
            if text.startswith("-----")
            else pf.PublicKey.from_base64(text)
        )
    except pf.KeyFileError as error:
        raise RegistryError(422, Code.KEY_INVALID, error.message) from None
    name = run_write(
        registry, lambda connection: service.add_key(connection, caller, ns, key, body.name)
    )
    return {"key_id": key.key_id, "public_key": key.to_base64(), "name": name}


@router.get("/namespaces/{ns}/keys")
def list_keys(ns: str, connection: ConnectionDep, _caller: CallerDep) -> dict[str, Any]:
    """A namespace's registered signing keys (public)."""
    rows = service.keys_of(connection, ns)
    return {
        "keys": [{"key_id": r.key_id, "public_key": r.public_key, "name": r.name} for r in rows]
    }


@router.put("/namespaces/{ns}/policy")
def set_policy(ns: str, body: Policy, registry: RegistryDep, caller: CallerDep) -> dict[str, bool]:
    """Require signatures by the namespace's keys on every publish; protect tags from moves."""
    changes = body.model_dump(exclude_none=True)
    owner = run_write(
        registry, lambda connection: service.set_policy(connection, caller, ns, changes)
    )
    return {"require_signatures": owner.require_signatures, "protected_tags": owner.protected_tags}


@router.get("/namespaces/{ns}/policy")
def get_policy(ns: str, connection: ConnectionDep, _caller: CallerDep) -> dict[str, bool]:
    """A namespace's policy (public)."""
    owner = service.namespace(connection, ns)
    return {"require_signatures": owner.require_signatures, "protected_tags": owner.protected_tags}


# -- search ---------------------------------------------------------------------------------------


@router.get("/search")
def search_concepts(
    connection: CountedConnectionDep,
    caller: CallerDep,
    q: Annotated[str, Query(max_length=200)] = "",
    family: Annotated[str | None, Query(max_length=64)] = None,
    namespace: Annotated[str | None, Query(max_length=64)] = None,
    superclass: Annotated[str | None, Query(max_length=64)] = None,
    signer: Annotated[str | None, Query(max_length=64)] = None,
    sort: str = "relevance",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> dict[str, Any]:
    """Concepts the caller may read matching every word of ``q`` in their name, token,
    superclass, title, description or labels; sorted by relevance, downloads or recency; one
    page and the cursor of the next."""
    query = search.SearchQuery(q, family, namespace, superclass, signer, sort, limit, cursor)
    return search.run(connection, query, service.visible_repositories(connection, caller))
