"""What the registry does, on one database transaction: namespaces, repositories, immutable
versions, tags, blobs' facts and visibility. Routes translate HTTP to these calls.

Visibility rule, applied everywhere: a private repository that the caller may not read is
answered exactly like one that does not exist (404 NOT_FOUND); so is a blob that is neither
referenced by a version the caller may read nor uploaded by the caller.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

import perfusion_format as pf

from . import search
from .auth import Caller, at_least, role_in
from .db import (
    accounts,
    audit_log,
    blob_uploads,
    blobs,
    concept_files,
    memberships,
    previews,
    repositories,
    signing_keys,
    tags,
    utcnow,
    versions,
)
from .errors import Code, RegistryError, not_found

__all__ = [
    "PublishResult",
    "audit",
    "blob_visible",
    "check_name",
    "namespace",
    "publish",
    "readable_repository",
    "record_blob",
    "resolve",
    "writable_repository",
]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, value: str, pattern: re.Pattern[str] = _NAME) -> str:
    """Refuse a malformed namespace, repository, version or tag name (400 NAME_INVALID)."""
    if not pattern.fullmatch(value):
        raise RegistryError(400, Code.NAME_INVALID, f"invalid {kind} name {value!r}")
    return value


def check_reference(kind: str, value: str) -> str:
    """Refuse a malformed version or tag (400 NAME_INVALID)."""
    return check_name(kind, value, _REFERENCE)


def audit(connection: Connection, caller: Caller, action: str, target: str, **detail: Any) -> None:
    """Append one entry to the audit log."""
    connection.execute(
        insert(audit_log).values(
            actor=caller.name, action=action, target=target, detail=json.dumps(detail)
        )
    )


def namespace(connection: Connection, name: str) -> Row[Any]:
    """The namespace (user or organization) called ``name`` (404 when there is none)."""
    row = connection.execute(select(accounts).where(accounts.c.name == name)).first()
    if row is None:
        raise not_found(f"namespace {name}")
    return row


def _repository(connection: Connection, namespace_id: int, name: str) -> Row[Any] | None:
    return connection.execute(
        select(repositories).where(
            repositories.c.namespace_id == namespace_id, repositories.c.name == name
        )
    ).first()


def readable_repository(connection: Connection, caller: Caller, ns: str, name: str) -> Row[Any]:
    """The repository ``ns/name`` if the caller may read it; 404 otherwise (whether it exists
    or not)."""
    owner = namespace(connection, ns)
    repository = _repository(connection, owner.id, name)
    if repository is None or (
        repository.private and not at_least(role_in(connection, caller, owner.id), "reader")
    ):
        raise not_found(f"concept {ns}/{name}")
    return repository


def require_token(caller: Caller, what: str) -> None:
    """401 (with WWW-Authenticate) for anonymous callers of an endpoint that needs a token."""
    if caller.anonymous:
        raise RegistryError(
            401, Code.UNAUTHORIZED, f"{what} needs a token", {"WWW-Authenticate": "Bearer"}
        )


def writable_repository(
    connection: Connection, caller: Caller, ns: str, name: str, needed: str = "writer"
) -> tuple[Row[Any], Row[Any] | None]:
    """The namespace and (possibly absent) repository, when the caller has ``needed`` in the
    namespace.

    Nothing about a repository's existence leaks through writes: anonymous callers get 401
    whether it exists or not; callers who may not read the namespace's private repositories get
    404 for a private repository and for an absent one alike; only for a public repository (which
    everyone sees) does a missing role answer 403.
    """
    require_token(caller, f"changing {ns}/{name}")
    owner = namespace(connection, ns)
    repository = _repository(connection, owner.id, name)
    role = role_in(connection, caller, owner.id)
    if at_least(role, needed):
        return owner, repository
    if not at_least(role, "reader") and (repository is None or repository.private):
        raise not_found(f"concept {ns}/{name}")
    raise RegistryError(403, Code.FORBIDDEN, f"changing {ns}/{name} needs the {needed} role")


def blob_visible(connection: Connection, caller: Caller, digest: str) -> Row[Any] | None:
    """The blob row if the caller may see it: uploaded by them (having sent the bytes, they have
    them), or referenced by a version or preview of a repository they may read."""
    blob = connection.execute(select(blobs).where(blobs.c.digest == digest)).first()
    if blob is None:
        return None
    if (
        caller.user_id is not None
        and connection.execute(
            select(blob_uploads.c.digest).where(
                blob_uploads.c.digest == digest, blob_uploads.c.account_id == caller.user_id
            )
        ).first()
    ):
        return blob
    by_version = select(versions.c.repository_id).where(versions.c.digest == digest)
    by_preview = select(previews.c.repository_id).where(previews.c.digest == digest)
    referencing = connection.execute(
        select(repositories.c.namespace_id, repositories.c.private).where(
            or_(repositories.c.id.in_(by_version), repositories.c.id.in_(by_preview))
        )
    ).all()
    for namespace_id, private in referencing:
        if not private or at_least(role_in(connection, caller, namespace_id), "reader"):
            return blob
    return None


def record_blob(
    connection: Connection,
    caller: Caller,
    digest: str,
    size: int,
    media_type: str,
    concept: pf.Concept | None = None,
) -> None:
    """Index a stored blob and, for a concept, what the server read from it (idempotent)."""
    present = connection.execute(select(blobs.c.digest).where(blobs.c.digest == digest)).first()
    if present is None:
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(blobs).values(
                        digest=digest, size=size, media_type=media_type, uploaded_by=caller.user_id
                    )
                )
                if concept is not None:
                    connection.execute(insert(concept_files).values(**_facts(digest, concept)))
        except IntegrityError:
            pass  # a concurrent upload of the same bytes won
    if caller.user_id is not None:
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(blob_uploads).values(digest=digest, account_id=caller.user_id)
                )
        except IntegrityError:
            pass  # uploaded by this account before


def _facts(digest: str, concept: pf.Concept) -> dict[str, Any]:
    return {
        "digest": digest,
        "weights_digest": concept.weights_digest,
        "format_version": concept.version,
        "title": concept.name,
        "token": concept.token,
        "superclass": concept.superclass,
        "family": concept.family.name,
        "base_fingerprint": concept.base_fingerprint,
        "dtype": concept.dtype,
        "signers": " ".join(signature.key_id for signature in concept.signatures),
    }


@dataclass(frozen=True)
class PublishResult:
    """The outcome of a publish: whether a new version was created."""

    created: bool
    version: str
    digest: str


def _check_signature_policy(connection: Connection, owner: Row[Any], signers: str) -> None:
    if not owner.require_signatures:
        return
    allowed = set(
        connection.execute(
            select(signing_keys.c.key_id).where(signing_keys.c.account_id == owner.id)
        ).scalars()
    )
    if not allowed & set(signers.split()):
        raise RegistryError(
            422,
            Code.SIGNATURE_REQUIRED,
            f"{owner.name} requires a signature by one of its registered keys",
        )


def publish(
    connection: Connection,
    caller: Caller,
    ns: str,
    name: str,
    version: str,
    digest: str,
    *,
    tag_names: list[str],
    private: bool | None = None,
    description: str | None = None,
    labels: list[str] | None = None,
) -> PublishResult:
    """Publish ``digest`` as the immutable ``version`` of ``ns/name`` and point ``tag_names``
    at it. The same version with the same digest is idempotent; with another digest, 409."""
    check_name("repository", name)
    check_reference("version", version)
    for tag in tag_names:
        check_reference("tag", tag)
    owner, repository = writable_repository(connection, caller, ns, name)
    facts = connection.execute(
        select(concept_files).where(concept_files.c.digest == digest)
    ).first()
    if facts is None or blob_visible(connection, caller, digest) is None:
        raise RegistryError(404, Code.BLOB_UNKNOWN, f"no concept blob {digest}: upload it first")
    _check_signature_policy(connection, owner, facts.signers)
    now = utcnow()
    if repository is None:
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(repositories).values(
                        namespace_id=owner.id,
                        name=name,
                        private=True if private is None else private,
                        description=description or "",
                        labels=" ".join(labels or []),
                    )
                )
        except IntegrityError:
            pass  # created concurrently
        repository = _repository(connection, owner.id, name)
        assert repository is not None
        audit(connection, caller, "repository.create", f"{ns}/{name}")
    else:
        changes: dict[str, Any] = {"updated_at": now}
        if private is not None and private != repository.private:
            if not at_least(role_in(connection, caller, owner.id), "admin"):
                raise RegistryError(
                    403, Code.FORBIDDEN, f"changing the visibility of {ns}/{name} needs admin"
                )
            changes["private"] = private
        if description is not None:
            changes["description"] = description
        if labels is not None:
            changes["labels"] = " ".join(labels)
        connection.execute(
            update(repositories).where(repositories.c.id == repository.id).values(**changes)
        )
    created = True
    try:
        with connection.begin_nested():
            connection.execute(
                insert(versions).values(
                    repository_id=repository.id,
                    version=version,
                    digest=digest,
                    published_by=caller.user_id,
                )
            )
    except IntegrityError:
        existing = connection.execute(
            select(versions.c.digest).where(
                versions.c.repository_id == repository.id, versions.c.version == version
            )
        ).scalar()
        if existing != digest:
            raise RegistryError(
                409,
                Code.VERSION_EXISTS,
                f"{ns}/{name}:{version} exists with another digest; versions are immutable",
            ) from None
        created = False
    if created:
        audit(connection, caller, "version.publish", f"{ns}/{name}:{version}", digest=digest)
    for tag in tag_names:
        move_tag(connection, caller, owner, repository, tag, version)
    search.refresh(connection, repository.id)
    return PublishResult(created, version, digest)


def move_tag(
    connection: Connection,
    caller: Caller,
    owner: Row[Any],
    repository: Row[Any],
    tag: str,
    version: str,
) -> None:
    """Point ``tag`` at ``version`` (409 TAG_PROTECTED when the namespace protects existing
    tags and the caller is not its admin)."""
    check_reference("tag", tag)
    target = connection.execute(
        select(versions.c.id).where(
            versions.c.repository_id == repository.id,
            versions.c.version == version,
            versions.c.yanked_at.is_(None),
        )
    ).scalar()
    if target is None:
        raise not_found(f"version {version}")
    current = connection.execute(
        select(tags.c.version_id).where(tags.c.repository_id == repository.id, tags.c.tag == tag)
    ).scalar()
    if current == target:
        return
    if current is not None:
        if owner.protected_tags and not at_least(role_in(connection, caller, owner.id), "admin"):
            raise RegistryError(409, Code.TAG_PROTECTED, f"tag {tag} is protected in {owner.name}")
        connection.execute(
            update(tags)
            .where(tags.c.repository_id == repository.id, tags.c.tag == tag)
            .values(version_id=target, updated_at=utcnow())
        )
    else:
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(tags).values(repository_id=repository.id, tag=tag, version_id=target)
                )
        except IntegrityError:
            connection.execute(
                update(tags)
                .where(tags.c.repository_id == repository.id, tags.c.tag == tag)
                .values(version_id=target, updated_at=utcnow())
            )
    audit(connection, caller, "tag.move", f"{owner.name}/{repository.name}:{tag}", version=version)


def resolve(connection: Connection, repository: Row[Any], reference: str) -> Row[Any]:
    """The version a reference names: ``sha256:<hex>`` (any version with that digest, yanked
    too), a version name, or a tag. Tags and version names skip yanked versions (404)."""
    query = (
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id)
    )
    if reference.startswith("sha256:"):
        row = connection.execute(
            query.where(versions.c.digest == reference).order_by(versions.c.id)
        ).first()
    else:
        tagged = select(tags.c.version_id).where(
            tags.c.repository_id == repository.id, tags.c.tag == reference
        )
        row = connection.execute(
            query.where(
                versions.c.yanked_at.is_(None),
                or_(versions.c.version == reference, versions.c.id.in_(tagged)),
            ).order_by((versions.c.version == reference).desc())
        ).first()
    if row is None:
        raise not_found(f"{reference} in {repository.name}")
    return row


def version(connection: Connection, repository: Row[Any], name: str) -> Row[Any]:
    """The version called ``name``, yanked or not (404 when there is none)."""
    row = connection.execute(
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id, versions.c.version == name)
    ).first()
    if row is None:
        raise not_found(f"version {name}")
    return row


def visible_repositories(connection: Connection, caller: Caller) -> Any:
    """A SQL condition selecting the repositories the caller may read."""
    if caller.is_admin:
        return true()
    member_of = select(memberships.c.org_id).where(memberships.c.user_id == caller.user_id)
    return or_(
        repositories.c.private.is_(False),
        repositories.c.namespace_id == caller.user_id,
        repositories.c.namespace_id.in_(member_of),
    )
