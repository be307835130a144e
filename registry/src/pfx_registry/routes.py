"""HTTP routes of the /v1 API: blobs, concepts (repositories, versions, tags), accounts,
organizations, tokens, signing keys and namespace policy. spec/registry-api.md describes them."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf

from . import search, service
from .auth import ROLES, Caller, at_least, hash_token, new_token, role_in
from .blobs import check_digest
from .db import (
    accounts,
    concept_files,
    memberships,
    previews,
    repositories,
    signing_keys,
    tags,
    tokens,
    versions,
)
from .errors import BackendUnavailable, Code, RegistryError, not_found
from .state import (
    CallerDep,
    ConnectionDep,
    CountedConnectionDep,
    Registry,
    RegistryDep,
    caller_of,
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

    def index() -> None:
        with registry.engine.begin() as connection:
            service.record_blob(connection, caller, digest, len(data), pf.MEDIA_TYPE, concept)
            service.audit(connection, caller, "blob.upload", digest, size=len(data))

    await run_in_threadpool(index)
    return {"digest": digest, "size": len(data), "media_type": pf.MEDIA_TYPE}


# -- concepts ------------------------------------------------------------------------------------


class PublishRequest(BaseModel):
    """Body of a publish: the digest of an uploaded concept file, and optional settings."""

    digest: str
    tags: list[str] = Field(default_factory=lambda: ["latest"])
    private: bool | None = None
    description: str | None = Field(default=None, max_length=65536)
    labels: list[str] | None = None


_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


def _check_labels(labels: list[str] | None) -> None:
    """Labels are up to 16 lowercase words (letters, digits, ``.``, ``_``, ``-``)."""
    if labels is None:
        return
    if len(labels) > 16:
        raise RegistryError(400, Code.BAD_REQUEST, "at most 16 labels")
    for label in labels:
        service.check_name("label", label, _LABEL)


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
    connection: ConnectionDep,
    caller: CallerDep,
    response: Response,
) -> dict[str, Any]:
    """Publish an uploaded concept as an immutable version (201; 200 when it already was)."""
    _check_labels(body.labels)
    result = service.publish(
        connection,
        caller,
        ns,
        name,
        version,
        _digest(body.digest),
        tag_names=body.tags,
        private=body.private,
        description=body.description,
        labels=body.labels,
    )
    response.status_code = 201 if result.created else 200
    repository = service.readable_repository(connection, caller, ns, name)
    return _version_json(ns, name, service.version(connection, repository, version))


@router.get("/concepts/{ns}/{name}")
def get_repository(
    ns: str, name: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """A repository: visibility, description, labels, downloads, versions and tags."""
    repository = service.readable_repository(connection, caller, ns, name)
    rows = connection.execute(
        select(versions, concept_files)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id)
        .order_by(versions.c.id)
    ).all()
    tag_rows = connection.execute(
        select(tags.c.tag, versions.c.version)
        .join(versions, versions.c.id == tags.c.version_id)
        .where(tags.c.repository_id == repository.id)
        .order_by(tags.c.tag)
    ).all()
    images = connection.execute(
        select(previews.c.digest, previews.c.media_type)
        .where(previews.c.repository_id == repository.id)
        .order_by(previews.c.created_at, previews.c.digest)
    ).all()
    return {
        "namespace": ns,
        "name": name,
        "private": repository.private,
        "previews": [{"digest": d, "media_type": t, "url": f"/v1/blobs/{d}"} for d, t in images],
        "description": repository.description,
        "labels": repository.labels.split(),
        "downloads": repository.downloads,
        "created_at": repository.created_at.isoformat(),
        "tags": {tag: version for tag, version in tag_rows},
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
            for row in rows
        ],
    }


class TagRequest(BaseModel):
    """Body of a tag move: the version the tag should name."""

    version: str


@router.put("/concepts/{ns}/{name}/tags/{tag}")
def put_tag(
    ns: str, name: str, tag: str, body: TagRequest, connection: ConnectionDep, caller: CallerDep
) -> dict[str, str]:
    """Point a tag at a version."""
    owner, repository = service.writable_repository(connection, caller, ns, name)
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    service.move_tag(connection, caller, owner, repository, tag, body.version)
    return {"tag": tag, "version": body.version}


def _set_yanked(
    connection: Connection, caller: Caller, ns: str, name: str, version: str, yanked: bool
) -> dict[str, Any]:
    _, repository = service.writable_repository(connection, caller, ns, name)
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    result = connection.execute(
        update(versions)
        .where(versions.c.repository_id == repository.id, versions.c.version == version)
        .values(yanked_at=service.utcnow() if yanked else None)
    )
    if result.rowcount == 0:
        raise not_found(f"version {version}")
    search.refresh(connection, repository.id)
    service.audit(
        connection, caller, "version.yank" if yanked else "version.unyank", f"{ns}/{name}:{version}"
    )
    return {"version": version, "yanked": yanked}


@router.post("/concepts/{ns}/{name}/versions/{version}/yank")
def yank(
    ns: str, name: str, version: str, connection: ConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """Hide a version from tag/version resolution and search; pulls by digest keep working."""
    return _set_yanked(connection, caller, ns, name, version, True)


@router.delete("/concepts/{ns}/{name}/versions/{version}/yank")
def unyank(
    ns: str, name: str, version: str, connection: ConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """Undo a yank."""
    return _set_yanked(connection, caller, ns, name, version, False)


class RepositoryUpdate(BaseModel):
    """Fields of a repository that can change."""

    private: bool | None = None
    description: str | None = Field(default=None, max_length=65536)
    labels: list[str] | None = None


@router.patch("/concepts/{ns}/{name}")
def update_repository(
    ns: str, name: str, body: RepositoryUpdate, connection: ConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """Change visibility (admin of the namespace), description or labels (writer)."""
    _check_labels(body.labels)
    needed = "admin" if body.private is not None else "writer"
    _, repository = service.writable_repository(connection, caller, ns, name, needed)
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    changes: dict[str, Any] = {"updated_at": service.utcnow()}
    if body.private is not None:
        changes["private"] = body.private
    if body.description is not None:
        changes["description"] = body.description
    if body.labels is not None:
        changes["labels"] = " ".join(body.labels)
    connection.execute(
        update(repositories).where(repositories.c.id == repository.id).values(**changes)
    )
    search.refresh(connection, repository.id)
    service.audit(
        connection,
        caller,
        "repository.update",
        f"{ns}/{name}",
        **{k: str(v) for k, v in changes.items()},
    )
    return get_repository(ns, name, connection, caller)


@router.delete("/concepts/{ns}/{name}", status_code=204)
def delete_repository(ns: str, name: str, connection: ConnectionDep, caller: CallerDep) -> Response:
    """Delete a repository with its versions and tags (admin); blobs are collected by gc."""
    _, repository = service.writable_repository(connection, caller, ns, name, "admin")
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    search.remove(connection, repository.id)
    connection.execute(delete(tags).where(tags.c.repository_id == repository.id))
    connection.execute(delete(versions).where(versions.c.repository_id == repository.id))
    connection.execute(delete(repositories).where(repositories.c.id == repository.id))
    service.audit(connection, caller, "repository.delete", f"{ns}/{name}")
    return Response(status_code=204)


@router.get("/concepts/{ns}")
def list_repositories(
    ns: str, connection: CountedConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """The repositories of a namespace that the caller may read."""
    owner = service.namespace(connection, ns)
    rows = connection.execute(
        select(repositories)
        .where(
            repositories.c.namespace_id == owner.id,
            service.visible_repositories(connection, caller),
        )
        .order_by(repositories.c.name)
    ).all()
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
MAX_PREVIEWS = 8


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
    never from a header) to a repository (writers)."""
    service.require_token(caller, "adding a preview")
    data = await request.body()  # bounded to max_preview_bytes by RequestAccounting (413)
    media_type = image_type(data)
    if media_type is None:
        raise RegistryError(415, Code.UNSUPPORTED_MEDIA, "previews are PNG, JPEG or WebP images")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def attach() -> dict[str, Any]:
        with registry.engine.begin() as connection:
            _, repository = service.writable_repository(connection, caller, ns, name)
            if repository is None:
                raise not_found(f"concept {ns}/{name}")
            attached = set(
                connection.execute(
                    select(previews.c.digest).where(previews.c.repository_id == repository.id)
                ).scalars()
            )
            if digest not in attached and len(attached) >= MAX_PREVIEWS:
                raise RegistryError(409, Code.TOO_MANY, f"at most {MAX_PREVIEWS} previews")
            registry.blobs.put(digest, data)
            service.record_blob(connection, caller, digest, len(data), media_type)
            try:
                with connection.begin_nested():
                    connection.execute(
                        insert(previews).values(
                            repository_id=repository.id, digest=digest, media_type=media_type
                        )
                    )
            except IntegrityError:
                pass  # the same image again
            service.audit(connection, caller, "preview.add", f"{ns}/{name}", digest=digest)
        return {"digest": digest, "media_type": media_type, "size": len(data)}

    return await run_in_threadpool(attach)


@router.delete("/concepts/{ns}/{name}/previews/{digest}", status_code=204)
def remove_preview(
    ns: str, name: str, digest: str, connection: ConnectionDep, caller: CallerDep
) -> Response:
    """Detach a preview image (its blob is collected by gc)."""
    _, repository = service.writable_repository(connection, caller, ns, name)
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    gone = connection.execute(
        delete(previews).where(
            previews.c.repository_id == repository.id, previews.c.digest == _digest(digest)
        )
    ).rowcount
    if not gone:
        raise not_found(f"preview {digest}")
    service.audit(connection, caller, "preview.remove", f"{ns}/{name}", digest=digest)
    return Response(status_code=204)


# -- accounts, organizations, tokens, keys, policy ------------------------------------------------


class NewUser(BaseModel):
    """Body of a user creation (registry administrators only)."""

    name: str
    admin: bool = False


def _create_account(connection: Connection, name: str, kind: str, admin: bool = False) -> int:
    service.check_name("namespace", name)
    try:
        with connection.begin_nested():
            return connection.execute(
                insert(accounts)
                .values(name=name, kind=kind, is_admin=admin)
                .returning(accounts.c.id)
            ).scalar_one()
    except IntegrityError:
        raise RegistryError(409, Code.NAME_TAKEN, f"the name {name} is taken") from None


@router.post("/users", status_code=201)
def create_user(body: NewUser, connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """Create a user (registry administrators only)."""
    service.require_token(caller, "creating a user")
    if not (caller.is_admin and caller.scope == "admin"):
        raise RegistryError(403, Code.FORBIDDEN, "only registry administrators create users")
    user_id = _create_account(connection, body.name, "user", body.admin)
    service.audit(connection, caller, "user.create", body.name)
    return {"id": user_id, "name": body.name, "admin": body.admin}


@router.get("/whoami")
def whoami(caller: CallerDep) -> dict[str, Any]:
    """Who the token belongs to, and its scope."""
    return {"name": caller.name, "scope": caller.scope, "admin": caller.is_admin}


class NewOrganization(BaseModel):
    """Body of an organization creation."""

    name: str


@router.post("/orgs", status_code=201)
def create_organization(
    body: NewOrganization, connection: ConnectionDep, caller: CallerDep
) -> dict[str, Any]:
    """Create an organization; its creator becomes its admin."""
    service.require_token(caller, "creating an organization")
    if caller.scope not in ("write", "admin"):
        raise RegistryError(403, Code.FORBIDDEN, "creating an organization needs a write token")
    org_id = _create_account(connection, body.name, "org")
    connection.execute(
        insert(memberships).values(org_id=org_id, user_id=caller.user_id, role="admin")
    )
    service.audit(connection, caller, "org.create", body.name)
    return {"name": body.name}


@router.get("/orgs")
def list_organizations(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The organizations the caller belongs to, with their role in each, by name."""
    service.require_token(caller, "listing your organizations")
    org = accounts.alias("org")
    rows = connection.execute(
        select(org.c.name, memberships.c.role)
        .join(memberships, memberships.c.org_id == org.c.id)
        .where(memberships.c.user_id == caller.user_id)
        .order_by(org.c.name)
    ).all()
    return {"orgs": [{"name": name, "role": role} for name, role in rows]}


@router.get("/orgs/{org}/members")
def list_members(org: str, connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The members of an organization and their roles (for its members; 404 for others)."""
    service.require_token(caller, f"listing the members of {org}")
    owner = service.namespace(connection, org)
    if owner.kind != "org" or not at_least(role_in(connection, caller, owner.id), "reader"):
        raise not_found(f"organization {org}")
    rows = connection.execute(
        select(accounts.c.name, memberships.c.role)
        .join(memberships, memberships.c.user_id == accounts.c.id)
        .where(memberships.c.org_id == owner.id)
        .order_by(accounts.c.name)
    ).all()
    return {"org": org, "members": [{"user": user, "role": role} for user, role in rows]}


class Membership(BaseModel):
    """Body of a membership change."""

    user: str
    role: str = "reader"


def _org_for_admin(connection: Connection, caller: Caller, org: str) -> Any:
    service.require_token(caller, f"managing {org}")
    owner = service.namespace(connection, org)
    if owner.kind != "org":
        raise not_found(f"organization {org}")
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {org} manage it")
    return owner


@router.put("/orgs/{org}/members")
def set_member(
    org: str, body: Membership, connection: ConnectionDep, caller: CallerDep
) -> dict[str, str]:
    """Add a member or change their role (organization admins)."""
    if body.role not in ROLES:
        raise RegistryError(400, Code.BAD_REQUEST, f"role must be one of {', '.join(ROLES)}")
    owner = _org_for_admin(connection, caller, org)
    user = service.namespace(connection, body.user)
    if user.kind != "user":
        raise not_found(f"user {body.user}")
    connection.execute(
        delete(memberships).where(
            memberships.c.org_id == owner.id, memberships.c.user_id == user.id
        )
    )
    connection.execute(insert(memberships).values(org_id=owner.id, user_id=user.id, role=body.role))
    service.audit(connection, caller, "member.set", f"{org}/{body.user}", role=body.role)
    return {"org": org, "user": body.user, "role": body.role}


@router.delete("/orgs/{org}/members/{user}", status_code=204)
def remove_member(org: str, user: str, connection: ConnectionDep, caller: CallerDep) -> Response:
    """Remove a member (organization admins)."""
    owner = _org_for_admin(connection, caller, org)
    member = service.namespace(connection, user)
    connection.execute(
        delete(memberships).where(
            memberships.c.org_id == owner.id, memberships.c.user_id == member.id
        )
    )
    service.audit(connection, caller, "member.remove", f"{org}/{user}")
    return Response(status_code=204)


class NewToken(BaseModel):
    """Body of a token creation: a name, a scope no wider than the caller's, an optional expiry."""

    name: str = Field(min_length=1, max_length=128)
    scope: str = "read"
    expires_at: datetime | None = None
    user: str | None = None  # registry administrators may create tokens for other users


@router.post("/tokens", status_code=201)
def create_token(body: NewToken, connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """Create an API token for the caller. The secret is in this response only."""
    if caller.anonymous or caller.scope is None:
        raise RegistryError(
            401, Code.UNAUTHORIZED, "creating a token needs a token", {"WWW-Authenticate": "Bearer"}
        )
    order = ("read", "write", "admin")
    if body.scope not in order:
        raise RegistryError(400, Code.BAD_REQUEST, "scope must be read, write or admin")
    if order.index(body.scope) > order.index(caller.scope):
        raise RegistryError(
            403, Code.FORBIDDEN, f"a {caller.scope} token cannot create a {body.scope} token"
        )
    owner_id, owner_name = caller.user_id, caller.name
    if body.user is not None and body.user != caller.name:
        if not (caller.is_admin and caller.scope == "admin"):
            raise RegistryError(403, Code.FORBIDDEN, "only administrators create others' tokens")
        user = service.namespace(connection, body.user)
        if user.kind != "user":
            raise not_found(f"user {body.user}")
        owner_id, owner_name = user.id, user.name
    secret = new_token()
    token_id = connection.execute(
        insert(tokens)
        .values(
            user_id=owner_id,
            name=body.name,
            secret_hash=hash_token(secret),
            scope=body.scope,
            expires_at=body.expires_at,
        )
        .returning(tokens.c.id)
    ).scalar_one()
    service.audit(connection, caller, "token.create", f"{owner_name}/{body.name}", scope=body.scope)
    return {"id": token_id, "name": body.name, "scope": body.scope, "token": secret}


@router.get("/tokens")
def list_tokens(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's tokens (never their secrets)."""
    if caller.anonymous:
        raise RegistryError(
            401, Code.UNAUTHORIZED, "listing tokens needs a token", {"WWW-Authenticate": "Bearer"}
        )
    rows = connection.execute(
        select(tokens).where(tokens.c.user_id == caller.user_id).order_by(tokens.c.id)
    ).all()
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
            for row in rows
        ]
    }


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    connection: ConnectionDep,
    caller: CallerDep,
) -> Response:
    """Revoke one of the caller's tokens."""
    if caller.anonymous:
        raise RegistryError(
            401, Code.UNAUTHORIZED, "revoking needs a token", {"WWW-Authenticate": "Bearer"}
        )
    result = connection.execute(
        update(tokens)
        .where(
            tokens.c.id == token_id,
            tokens.c.user_id == caller.user_id,
            tokens.c.revoked_at.is_(None),
        )
        .values(revoked_at=service.utcnow())
    )
    if result.rowcount == 0:
        raise not_found(f"token {token_id}")
    service.audit(connection, caller, "token.revoke", f"{caller.name}/{token_id}")
    return Response(status_code=204)


class NewKey(BaseModel):
    """Body of a key registration: the raw Ed25519 public key in base64, or its PEM."""

    public_key: str = Field(max_length=4096)
    name: str = Field(default="", max_length=128)


@router.post("/namespaces/{ns}/keys", status_code=201)
def add_key(ns: str, body: NewKey, connection: ConnectionDep, caller: CallerDep) -> dict[str, str]:
    """Register a signing key for a namespace (its admins)."""
    service.require_token(caller, f"registering a key for {ns}")
    owner = service.namespace(connection, ns)
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {ns} register keys")
    try:
        text = body.public_key.strip()
        key = (
            pf.PublicKey.from_pem(text.encode())
            if text.startswith("-----")
            else pf.PublicKey.from_base64(text)
        )
    except pf.KeyFileError as error:
        raise RegistryError(422, Code.KEY_INVALID, error.message) from None
    try:
        with connection.begin_nested():
            connection.execute(
                insert(signing_keys).values(
                    account_id=owner.id,
                    key_id=key.key_id,
                    public_key=key.to_base64(),
                    name=body.name,
                )
            )
    except IntegrityError:
        pass  # already registered: the stored name stays
    name = connection.execute(
        select(signing_keys.c.name).where(
            signing_keys.c.account_id == owner.id, signing_keys.c.key_id == key.key_id
        )
    ).scalar_one()
    service.audit(connection, caller, "key.add", ns, key_id=key.key_id)
    return {"key_id": key.key_id, "public_key": key.to_base64(), "name": name}


@router.get("/namespaces/{ns}/keys")
def list_keys(ns: str, connection: ConnectionDep, _caller: CallerDep) -> dict[str, Any]:
    """A namespace's registered signing keys (public)."""
    owner = service.namespace(connection, ns)
    rows = connection.execute(
        select(signing_keys)
        .where(signing_keys.c.account_id == owner.id)
        .order_by(signing_keys.c.id)
    ).all()
    return {
        "keys": [{"key_id": r.key_id, "public_key": r.public_key, "name": r.name} for r in rows]
    }


class Policy(BaseModel):
    """A namespace's policy."""

    require_signatures: bool | None = None
    protected_tags: bool | None = None


@router.put("/namespaces/{ns}/policy")
def set_policy(
    ns: str, body: Policy, connection: ConnectionDep, caller: CallerDep
) -> dict[str, bool]:
    """Require signatures by the namespace's keys on every publish; protect tags from moves."""
    service.require_token(caller, f"setting the policy of {ns}")
    owner = service.namespace(connection, ns)
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {ns} set its policy")
    changes = body.model_dump(exclude_none=True)
    if changes:
        connection.execute(update(accounts).where(accounts.c.id == owner.id).values(**changes))
        service.audit(connection, caller, "policy.set", ns, **changes)
    owner = service.namespace(connection, ns)
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
    family: str | None = None,
    namespace: str | None = None,
    superclass: str | None = None,
    signer: str | None = None,
    sort: str = "relevance",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Concepts the caller may read matching every word of ``q`` in their name, token,
    superclass, title, description or labels; sorted by relevance, downloads or recency; one
    page and the cursor of the next."""
    query = search.SearchQuery(q, family, namespace, superclass, signer, sort, limit, cursor)
    return search.run(connection, query, service.visible_repositories(connection, caller))
