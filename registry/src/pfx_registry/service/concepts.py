"""Concepts: blobs' facts, publishing immutable versions, tags, yanks, repository settings,
previews, deletion and resolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, or_, select, tuple_, update

import perfusion_format as pf
from pfx_registry import search
from pfx_registry.auth import Caller, at_least, role_in
from pfx_registry.db import (
    accounts,
    blob_uploads,
    blobs,
    concept_files,
    insert_or_ignore,
    previews,
    repositories,
    signing_keys,
    tags,
    upsert,
    utcnow,
    versions,
)
from pfx_registry.errors import ApiError, Code, TransactionConflict, not_found

from .access import (
    DIGEST,
    REFERENCE,
    audit,
    blob_visible,
    check_labels,
    check_name,
    check_reference,
    existing_repository,
    find_repository,
    namespace,
    visible_repositories,
    writable_repository,
)

#: Preview images a repository may carry.
MAX_PREVIEWS = 8


def record_blob(
    connection: Connection,
    caller: Caller,
    digest: str,
    size: int,
    media_type: str,
    concept: pf.Concept | None = None,
) -> None:
    """Index a stored blob and, for a concept, what the server read from it, and the caller as
    one of its uploaders (idempotent; concurrent uploads of the same bytes all succeed)."""
    insert_or_ignore(
        connection,
        blobs,
        {"digest": digest, "size": size, "media_type": media_type, "uploaded_by": caller.user_id},
    )
    if concept is not None:
        insert_or_ignore(connection, concept_files, file_facts(digest, concept))
    if caller.user_id is not None:
        insert_or_ignore(connection, blob_uploads, {"digest": digest, "account_id": caller.user_id})


def file_facts(digest: str, concept: pf.Concept) -> dict[str, Any]:
    """The row of ``concept_files`` for a concept file: what the index keeps of it."""
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
        # shown on the concept's page; free text of any length in the file, cut to the column
        "license": _shown(concept.metadata.get(pf.Key.LICENSE)),
        "author": _shown(concept.metadata.get(pf.Key.AUTHOR)),
    }


def _shown(value: str | None, limit: int = 128) -> str | None:
    return value[:limit] if value else None


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
        raise ApiError(
            422,
            Code.SIGNATURE_REQUIRED,
            f"{owner.name} requires a signature by one of its registered keys",
        )


#: Attempts at creating-or-locking a repository that concurrent requests create and delete.
_ENSURE_ATTEMPTS = 5


def _ensure_repository(
    connection: Connection, owner: Row[Any], name: str, values: dict[str, Any]
) -> tuple[Row[Any], bool]:
    """The repository ``name`` of ``owner``, locked, created with ``values`` when absent; and
    whether this call created it. A concurrent creation is waited for (ON CONFLICT), a
    concurrent deletion is followed by a creation."""
    for _ in range(_ENSURE_ATTEMPTS):
        repository = find_repository(connection, owner.id, name, lock=True)
        if repository is not None:
            return repository, False
        row = {"namespace_id": owner.id, "name": name, **values}
        if insert_or_ignore(connection, repositories, row):
            created = find_repository(connection, owner.id, name, lock=True)
            assert created is not None  # inserted by this transaction
            return created, True
    raise TransactionConflict(f"{owner.name}/{name} was created and deleted concurrently")


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
    at it. The same version with the same digest is idempotent (also when sent concurrently);
    with another digest, 409."""
    check_name("repository", name)
    check_reference("version", version)
    for tag in tag_names:
        check_reference("tag", tag)
    check_labels(labels)
    check_name("digest", digest, DIGEST)
    owner, repository = writable_repository(connection, caller, ns, name)
    facts = connection.execute(
        select(concept_files).where(concept_files.c.digest == digest)
    ).first()
    if facts is None or blob_visible(connection, caller, digest) is None:
        raise ApiError(404, Code.BLOB_UNKNOWN, f"no concept blob {digest}: upload it first")
    _check_signature_policy(connection, owner, facts.signers)
    repository, created_repository = _ensure_repository(
        connection,
        owner,
        name,
        {
            "private": True if private is None else private,
            "description": description or "",
            "labels": " ".join(labels or []),
        },
    )
    if created_repository:
        audit(connection, caller, "repository.create", f"{ns}/{name}")
    else:
        if private == repository.private:
            private = None  # no change
        if private is not None and not at_least(role_in(connection, caller, owner.id), "admin"):
            raise ApiError(
                403, Code.FORBIDDEN, f"changing the visibility of {ns}/{name} needs admin"
            )
        _change_repository(connection, repository.id, private, description, labels)
    created = insert_or_ignore(
        connection,
        versions,
        {
            "repository_id": repository.id,
            "version": version,
            "digest": digest,
            "published_by": caller.user_id,
        },
    )
    if created:
        audit(connection, caller, "version.publish", f"{ns}/{name}:{version}", digest=digest)
    else:
        existing = connection.execute(
            select(versions.c.digest).where(
                versions.c.repository_id == repository.id, versions.c.version == version
            )
        ).scalar_one()
        if existing != digest:
            raise ApiError(
                409,
                Code.VERSION_EXISTS,
                f"{ns}/{name}:{version} exists with another digest; versions are immutable",
            )
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
    """Point ``tag`` at ``version`` of a repository whose row the transaction has locked (409
    TAG_PROTECTED when the namespace protects existing tags and the caller is not its admin)."""
    check_reference("tag", tag)
    target = None
    if REFERENCE.fullmatch(version):
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
    if (
        current is not None
        and owner.protected_tags
        and not at_least(role_in(connection, caller, owner.id), "admin")
    ):
        raise ApiError(409, Code.TAG_PROTECTED, f"tag {tag} is protected in {owner.name}")
    now = utcnow()
    upsert(
        connection,
        tags,
        {"repository_id": repository.id, "tag": tag, "version_id": target, "updated_at": now},
        ["repository_id", "tag"],
        {"version_id": target, "updated_at": now},
    )
    audit(connection, caller, "tag.move", f"{owner.name}/{repository.name}:{tag}", version=version)


def set_tag(
    connection: Connection, caller: Caller, ns: str, name: str, tag: str, version: str
) -> None:
    """Point ``ns/name:tag`` at ``version`` (writers)."""
    owner, repository = existing_repository(connection, caller, ns, name)
    move_tag(connection, caller, owner, repository, tag, version)


def set_yanked(
    connection: Connection, caller: Caller, ns: str, name: str, version: str, yanked: bool
) -> None:
    """Yank a version (hidden from tag and version resolution and from search; pulls by digest
    keep working) or undo it (writers)."""
    _, repository = existing_repository(connection, caller, ns, name)
    changed = 0
    if REFERENCE.fullmatch(version):
        changed = connection.execute(
            update(versions)
            .where(versions.c.repository_id == repository.id, versions.c.version == version)
            .values(yanked_at=utcnow() if yanked else None)
        ).rowcount
    if not changed:
        raise not_found(f"version {version}")
    search.refresh(connection, repository.id)
    action = "version.yank" if yanked else "version.unyank"
    audit(connection, caller, action, f"{ns}/{name}:{version}")


def update_repository(
    connection: Connection,
    caller: Caller,
    ns: str,
    name: str,
    *,
    private: bool | None = None,
    description: str | None = None,
    labels: list[str] | None = None,
) -> None:
    """Change visibility (admins of the namespace), description or labels (writers)."""
    check_labels(labels)
    needed = "admin" if private is not None else "writer"
    _, repository = existing_repository(connection, caller, ns, name, needed)
    changes = _change_repository(connection, repository.id, private, description, labels)
    search.refresh(connection, repository.id)
    detail = {key: str(value) for key, value in changes.items()}
    audit(connection, caller, "repository.update", f"{ns}/{name}", **detail)


def _change_repository(
    connection: Connection,
    repository_id: int,
    private: bool | None,
    description: str | None,
    labels: list[str] | None,
) -> dict[str, Any]:
    """Set the settings that are not None (and ``updated_at``); the changes made."""
    changes: dict[str, Any] = {"updated_at": utcnow()}
    for column, value in (
        ("private", private),
        ("description", description),
        ("labels", None if labels is None else " ".join(labels)),
    ):
        if value is not None:
            changes[column] = value
    connection.execute(
        update(repositories).where(repositories.c.id == repository_id).values(**changes)
    )
    return changes


def delete_repository(connection: Connection, caller: Caller, ns: str, name: str) -> None:
    """Delete a repository with its versions, tags and previews (admins); blobs are collected
    by gc."""
    _, repository = existing_repository(connection, caller, ns, name, "admin")
    search.remove(connection, repository.id)
    for table in (tags, previews, versions):
        connection.execute(delete(table).where(table.c.repository_id == repository.id))
    connection.execute(delete(repositories).where(repositories.c.id == repository.id))
    audit(connection, caller, "repository.delete", f"{ns}/{name}")


def attach_preview(
    connection: Connection,
    caller: Caller,
    ns: str,
    name: str,
    digest: str,
    media_type: str,
    size: int,
) -> None:
    """Attach a stored preview image to a repository (writers; at most :data:`MAX_PREVIEWS`,
    counted under the repository's lock; the same image again is a no-op)."""
    _, repository = existing_repository(connection, caller, ns, name)
    attached = set(
        connection.execute(
            select(previews.c.digest).where(previews.c.repository_id == repository.id)
        ).scalars()
    )
    if digest in attached:
        return
    if len(attached) >= MAX_PREVIEWS:
        raise ApiError(409, Code.TOO_MANY, f"at most {MAX_PREVIEWS} previews")
    record_blob(connection, caller, digest, size, media_type)
    connection.execute(
        insert(previews).values(repository_id=repository.id, digest=digest, media_type=media_type)
    )
    audit(connection, caller, "preview.add", f"{ns}/{name}", digest=digest)


def remove_preview(connection: Connection, caller: Caller, ns: str, name: str, digest: str) -> None:
    """Detach a preview image (writers; its blob is collected by gc)."""
    _, repository = existing_repository(connection, caller, ns, name)
    gone = connection.execute(
        delete(previews).where(
            previews.c.repository_id == repository.id, previews.c.digest == digest
        )
    ).rowcount
    if not gone:
        raise not_found(f"preview {digest}")
    audit(connection, caller, "preview.remove", f"{ns}/{name}", digest=digest)


def resolve(connection: Connection, repository: Row[Any], reference: str) -> Row[Any]:
    """The version a reference names: ``sha256:<hex>`` (any version with that digest, yanked
    too), a version name, or a tag. Tags and version names skip yanked versions (404)."""
    query = (
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id)
    )
    if DIGEST.fullmatch(reference):
        row = connection.execute(
            query.where(versions.c.digest == reference).order_by(versions.c.id)
        ).first()
    elif not REFERENCE.fullmatch(reference):
        row = None
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
    if not REFERENCE.fullmatch(name):
        raise not_found(f"version {name}")
    row = connection.execute(
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id, versions.c.version == name)
    ).first()
    if row is None:
        raise not_found(f"version {name}")
    return row


def repository_details(connection: Connection, repository: Row[Any]) -> dict[str, Any]:
    """A readable repository's versions (oldest first), tags and previews."""
    rows = connection.execute(
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
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
    return {"versions": rows, "tags": dict(tag_rows), "previews": images}


def namespace_repositories(connection: Connection, caller: Caller, ns: str) -> list[Row[Any]]:
    """The repositories of a namespace that the caller may read, by name."""
    owner = namespace(connection, ns)
    return list(
        connection.execute(
            select(repositories)
            .where(
                repositories.c.namespace_id == owner.id, visible_repositories(connection, caller)
            )
            .order_by(repositories.c.name)
        ).all()
    )


def first_previews(
    connection: Connection, references: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The digest of the first preview of each ``(namespace, name)`` that has one (the caller
    has already been shown these repositories)."""
    if not references:
        return {}
    rows = connection.execute(
        select(accounts.c.name.label("namespace"), repositories.c.name, previews.c.digest)
        .join(repositories, repositories.c.id == previews.c.repository_id)
        .join(accounts, accounts.c.id == repositories.c.namespace_id)
        .where(
            # the single-column conditions let the database start from the names' unique
            # indexes (SQLite cannot use one for the pair alone: it would scan every preview)
            accounts.c.name.in_({namespace for namespace, _ in references}),
            repositories.c.name.in_({name for _, name in references}),
            tuple_(accounts.c.name, repositories.c.name).in_(references),
        )
        .order_by(previews.c.created_at.desc(), previews.c.digest.desc())
    ).all()
    # ordered newest first, so the oldest (the first attached) is written last and kept
    return {(row.namespace, row.name): row.digest for row in rows}


def preview_access(connection: Connection, caller: Caller, digest: str) -> tuple[str, bool] | None:
    """A preview's media type and whether it is public (attached to a public repository), if
    the caller may see it (attached to a repository they may read); None otherwise."""
    rows = connection.execute(
        select(previews.c.media_type, repositories.c.private)
        .join(repositories, repositories.c.id == previews.c.repository_id)
        .where(previews.c.digest == digest, visible_repositories(connection, caller))
    ).all()
    if not rows:
        return None
    return rows[0].media_type, any(not row.private for row in rows)
