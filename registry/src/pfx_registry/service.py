"""What the registry does, on one database transaction: namespaces, repositories, immutable
versions, tags, previews, blobs' facts and visibility. Routes translate HTTP to these calls.

Visibility rule, applied everywhere: a private repository that the caller may not read is
answered exactly like one that does not exist (404 NOT_FOUND); so is a blob that is neither
referenced by a version the caller may read nor uploaded by the caller.

Input rule: every name is checked against its grammar before any SQL is sent — a name that cannot
exist is answered as absent (404) by lookups and refused (400 NAME_INVALID) by creations, the
same on every database.

Concurrency rule: a write that depends on a repository's state (publish, tags, yanks, previews,
updates, deletion) first locks the repository's row (``SELECT … FOR UPDATE`` on PostgreSQL; on
SQLite a writing transaction holds the database's write lock from its start), so that writers of
one repository run one after another and every check they make (a version exists, fewer than
:data:`MAX_PREVIEWS` previews, a tag is not protected) stays true until they commit. Rows that
concurrent requests may create alike (repositories, blobs, uploads, memberships, tags, keys) are
inserted with ``ON CONFLICT``, never by catching a failed insert. Each transaction locks at most
one repository row (and, for tokens, the minting token's row), so transactions cannot deadlock
on them; :func:`pfx_registry.state.run_write` retries any other conflict the database reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, or_, select, true, update

import perfusion_format as pf

from . import search
from .auth import ROLES, Caller, at_least, hash_token, new_token, role_in
from .db import (
    accounts,
    audit_log,
    blob_uploads,
    blobs,
    concept_files,
    insert_or_ignore,
    memberships,
    previews,
    repositories,
    signing_keys,
    tags,
    tokens,
    upsert,
    utcnow,
    versions,
)
from .errors import Code, RegistryError, TransactionConflict, not_found

__all__ = [
    "MAX_PREVIEWS",
    "PublishResult",
    "add_key",
    "attach_preview",
    "audit",
    "blob_visible",
    "check_name",
    "create_account",
    "create_organization",
    "create_token",
    "delete_repository",
    "namespace",
    "publish",
    "readable_repository",
    "record_blob",
    "remove_member",
    "remove_preview",
    "resolve",
    "revoke_token",
    "set_member",
    "set_policy",
    "set_tag",
    "set_yanked",
    "update_repository",
    "writable_repository",
]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")

#: Preview images a repository may carry.
MAX_PREVIEWS = 8
#: Signing keys a namespace may register.
MAX_KEYS = 32
#: Tokens a user may hold that are neither revoked nor expired.
MAX_TOKENS = 100
#: Token scopes, narrowest first.
SCOPES = ("read", "write", "admin")


def check_name(kind: str, value: str, pattern: re.Pattern[str] = _NAME) -> str:
    """Refuse a malformed namespace, repository, version or tag name (400 NAME_INVALID)."""
    if not pattern.fullmatch(value):
        raise RegistryError(400, Code.NAME_INVALID, f"invalid {kind} name {value!r}")
    return value


def check_reference(kind: str, value: str) -> str:
    """Refuse a malformed version or tag (400 NAME_INVALID)."""
    return check_name(kind, value, _REFERENCE)


def check_labels(labels: list[str] | None) -> None:
    """Labels are lowercase words (letters, digits, ``.``, ``_``, ``-``; at most 32 characters)."""
    for label in labels or ():
        check_name("label", label, _LABEL)


def audit(connection: Connection, caller: Caller, action: str, target: str, **detail: Any) -> None:
    """Append one entry to the audit log."""
    connection.execute(
        insert(audit_log).values(
            actor=caller.name, action=action, target=target, detail=json.dumps(detail)
        )
    )


def namespace(connection: Connection, name: str) -> Row[Any]:
    """The namespace (user or organization) called ``name`` (404 when there is none)."""
    row = None
    if _NAME.fullmatch(name):
        row = connection.execute(select(accounts).where(accounts.c.name == name)).first()
    if row is None:
        raise not_found(f"namespace {name}")
    return row


def _repository(
    connection: Connection, namespace_id: int, name: str, *, lock: bool = False
) -> Row[Any] | None:
    if not _NAME.fullmatch(name):
        return None
    query = select(repositories).where(
        repositories.c.namespace_id == namespace_id, repositories.c.name == name
    )
    return connection.execute(query.with_for_update() if lock else query).first()


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
    namespace; the repository's row is locked until the transaction ends.

    Nothing about a repository's existence leaks through writes: anonymous callers get 401
    whether it exists or not; callers who may not read the namespace's private repositories get
    404 for a private repository and for an absent one alike; only for a public repository (which
    everyone sees) does a missing role answer 403.
    """
    require_token(caller, f"changing {ns}/{name}")
    owner = namespace(connection, ns)
    repository = _repository(connection, owner.id, name, lock=True)
    role = role_in(connection, caller, owner.id)
    if at_least(role, needed):
        return owner, repository
    if not at_least(role, "reader") and (repository is None or repository.private):
        raise not_found(f"concept {ns}/{name}")
    raise RegistryError(403, Code.FORBIDDEN, f"changing {ns}/{name} needs the {needed} role")


def existing_repository(
    connection: Connection, caller: Caller, ns: str, name: str, needed: str = "writer"
) -> tuple[Row[Any], Row[Any]]:
    """:func:`writable_repository` for changes to a repository that must exist (404 if not)."""
    owner, repository = writable_repository(connection, caller, ns, name, needed)
    if repository is None:
        raise not_found(f"concept {ns}/{name}")
    return owner, repository


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
    """Index a stored blob and, for a concept, what the server read from it, and the caller as
    one of its uploaders (idempotent; concurrent uploads of the same bytes all succeed)."""
    insert_or_ignore(
        connection,
        blobs,
        {"digest": digest, "size": size, "media_type": media_type, "uploaded_by": caller.user_id},
    )
    if concept is not None:
        insert_or_ignore(connection, concept_files, _facts(digest, concept))
    if caller.user_id is not None:
        insert_or_ignore(connection, blob_uploads, {"digest": digest, "account_id": caller.user_id})


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


#: Attempts at creating-or-locking a repository that concurrent requests create and delete.
_ENSURE_ATTEMPTS = 5


def _ensure_repository(
    connection: Connection, owner: Row[Any], name: str, values: dict[str, Any]
) -> tuple[Row[Any], bool]:
    """The repository ``name`` of ``owner``, locked, created with ``values`` when absent; and
    whether this call created it. A concurrent creation is waited for (ON CONFLICT), a
    concurrent deletion is followed by a creation."""
    for _ in range(_ENSURE_ATTEMPTS):
        repository = _repository(connection, owner.id, name, lock=True)
        if repository is not None:
            return repository, False
        row = {"namespace_id": owner.id, "name": name, **values}
        if insert_or_ignore(connection, repositories, row):
            created = _repository(connection, owner.id, name, lock=True)
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
    check_name("digest", digest, _DIGEST)
    owner, repository = writable_repository(connection, caller, ns, name)
    facts = connection.execute(
        select(concept_files).where(concept_files.c.digest == digest)
    ).first()
    if facts is None or blob_visible(connection, caller, digest) is None:
        raise RegistryError(404, Code.BLOB_UNKNOWN, f"no concept blob {digest}: upload it first")
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
            raise RegistryError(
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
            raise RegistryError(
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
    if _REFERENCE.fullmatch(version):
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
        raise RegistryError(409, Code.TAG_PROTECTED, f"tag {tag} is protected in {owner.name}")
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
    if _REFERENCE.fullmatch(version):
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


def may_attach_preview(connection: Connection, caller: Caller, ns: str, name: str) -> None:
    """Raise unless the caller may add a preview to ``ns/name`` (checked before the bytes are
    stored, and again by :func:`attach_preview`)."""
    existing_repository(connection, caller, ns, name)


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
        raise RegistryError(409, Code.TOO_MANY, f"at most {MAX_PREVIEWS} previews")
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


# -- accounts, organizations, members, tokens, keys, policy --------------------------------------


def create_account(connection: Connection, name: str, kind: str, admin: bool = False) -> int:
    """Create a user or organization called ``name``; its id (409 NAME_TAKEN when it exists)."""
    check_name("namespace", name)
    if not insert_or_ignore(connection, accounts, {"name": name, "kind": kind, "is_admin": admin}):
        raise RegistryError(409, Code.NAME_TAKEN, f"the name {name} is taken")
    return namespace(connection, name).id


def create_organization(connection: Connection, caller: Caller, name: str) -> None:
    """Create an organization called ``name`` with the caller as its admin."""
    org_id = create_account(connection, name, "org")
    connection.execute(
        insert(memberships).values(org_id=org_id, user_id=caller.user_id, role="admin")
    )
    audit(connection, caller, "org.create", name)


def organization_for_admin(connection: Connection, caller: Caller, org: str) -> Row[Any]:
    """The organization ``org`` when the caller is one of its admins (404 when it is no
    organization, 403 for its non-admins)."""
    require_token(caller, f"managing {org}")
    owner = namespace(connection, org)
    if owner.kind != "org":
        raise not_found(f"organization {org}")
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {org} manage it")
    return owner


def set_member(connection: Connection, caller: Caller, org: str, user: str, role: str) -> None:
    """Add ``user`` to ``org`` or change their role (organization admins)."""
    if role not in ROLES:
        raise RegistryError(400, Code.BAD_REQUEST, f"role must be one of {', '.join(ROLES)}")
    owner = organization_for_admin(connection, caller, org)
    member = namespace(connection, user)
    if member.kind != "user":
        raise not_found(f"user {user}")
    upsert(
        connection,
        memberships,
        {"org_id": owner.id, "user_id": member.id, "role": role},
        ["org_id", "user_id"],
        {"role": role},
    )
    audit(connection, caller, "member.set", f"{org}/{user}", role=role)


def remove_member(connection: Connection, caller: Caller, org: str, user: str) -> None:
    """Remove ``user`` from ``org`` (organization admins)."""
    owner = organization_for_admin(connection, caller, org)
    member = namespace(connection, user)
    connection.execute(
        delete(memberships).where(
            memberships.c.org_id == owner.id, memberships.c.user_id == member.id
        )
    )
    audit(connection, caller, "member.remove", f"{org}/{user}")


@dataclass(frozen=True)
class NewTokenResult:
    """A created token: its id, owner, scope, expiry and the secret (shown once)."""

    id: int
    owner: str
    scope: str
    expires_at: datetime | None
    secret: str


def create_token(
    connection: Connection,
    caller: Caller,
    name: str,
    scope: str,
    expires_at: datetime | None,
    user: str | None,
) -> NewTokenResult:
    """Create a token for the caller (or, for registry administrators, for ``user``).

    A token made with a token never exceeds it: its scope is at most the calling token's, its
    expiry at most the calling token's (inherited when none is given), and revoking the calling
    token revokes it too (:func:`revoke_token`). The calling token's row is locked, so a token
    revoked concurrently mints nothing.
    """
    if caller.anonymous or caller.scope is None or caller.token_id is None:
        raise RegistryError(
            401, Code.UNAUTHORIZED, "creating a token needs a token", {"WWW-Authenticate": "Bearer"}
        )
    if scope not in SCOPES:
        raise RegistryError(400, Code.BAD_REQUEST, "scope must be read, write or admin")
    if SCOPES.index(scope) > SCOPES.index(caller.scope):
        raise RegistryError(
            403, Code.FORBIDDEN, f"a {caller.scope} token cannot create a {scope} token"
        )
    parent = connection.execute(
        select(tokens.c.expires_at, tokens.c.revoked_at)
        .where(tokens.c.id == caller.token_id)
        .with_for_update()
    ).one()
    now = utcnow()
    if parent.revoked_at is not None or (
        parent.expires_at is not None and parent.expires_at <= now
    ):
        raise RegistryError(
            401,
            Code.UNAUTHORIZED,
            "the token is unknown, revoked or expired",
            {"WWW-Authenticate": "Bearer"},
        )
    if expires_at is not None and expires_at <= now:
        raise RegistryError(400, Code.BAD_REQUEST, "expires_at is in the past")
    if parent.expires_at is not None:
        if expires_at is None:
            expires_at = parent.expires_at
        elif expires_at > parent.expires_at:
            raise RegistryError(
                400,
                Code.BAD_REQUEST,
                "a token cannot outlive the token that creates it "
                f"(which expires at {parent.expires_at.isoformat()})",
            )
    owner_id, owner_name = caller.user_id, caller.name
    if user is not None and user != caller.name:
        if not (caller.is_admin and caller.scope == "admin"):
            raise RegistryError(403, Code.FORBIDDEN, "only administrators create others' tokens")
        account = namespace(connection, user)
        if account.kind != "user":
            raise not_found(f"user {user}")
        owner_id, owner_name = account.id, account.name
    active = connection.execute(
        select(func.count())
        .select_from(tokens)
        .where(
            tokens.c.user_id == owner_id,
            tokens.c.revoked_at.is_(None),
            or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
        )
    ).scalar_one()
    if active >= MAX_TOKENS:
        raise RegistryError(409, Code.TOO_MANY, f"at most {MAX_TOKENS} active tokens per user")
    secret = new_token()
    token_id = connection.execute(
        insert(tokens)
        .values(
            user_id=owner_id,
            name=name,
            secret_hash=hash_token(secret),
            scope=scope,
            expires_at=expires_at,
            parent_id=caller.token_id,
        )
        .returning(tokens.c.id)
    ).scalar_one()
    audit(connection, caller, "token.create", f"{owner_name}/{name}", scope=scope)
    return NewTokenResult(token_id, str(owner_name), scope, expires_at, secret)


def revoke_token(connection: Connection, caller: Caller, token_id: int) -> None:
    """Revoke one of the caller's tokens and every token minted with it, transitively."""
    require_token(caller, "revoking")
    revoked = connection.execute(
        update(tokens)
        .where(
            tokens.c.id == token_id,
            tokens.c.user_id == caller.user_id,
            tokens.c.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    ).rowcount
    if not revoked:
        raise not_found(f"token {token_id}")
    frontier = [token_id]
    while frontier:
        frontier = list(
            connection.execute(
                update(tokens)
                .where(tokens.c.parent_id.in_(frontier), tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(tokens.c.id)
            ).scalars()
        )
    audit(connection, caller, "token.revoke", f"{caller.name}/{token_id}")


def add_key(connection: Connection, caller: Caller, ns: str, key: pf.PublicKey, name: str) -> str:
    """Register a signing key for a namespace (its admins); the key's stored name (the first
    registration's name wins)."""
    require_token(caller, f"registering a key for {ns}")
    owner = namespace(connection, ns)
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {ns} register keys")
    registered = connection.execute(
        select(func.count()).select_from(signing_keys).where(signing_keys.c.account_id == owner.id)
    ).scalar_one()
    row = {
        "account_id": owner.id,
        "key_id": key.key_id,
        "public_key": key.to_base64(),
        "name": name,
    }
    if registered >= MAX_KEYS and not _key_registered(connection, owner.id, key.key_id):
        raise RegistryError(409, Code.TOO_MANY, f"at most {MAX_KEYS} keys per namespace")
    insert_or_ignore(connection, signing_keys, row)
    audit(connection, caller, "key.add", ns, key_id=key.key_id)
    return connection.execute(
        select(signing_keys.c.name).where(
            signing_keys.c.account_id == owner.id, signing_keys.c.key_id == key.key_id
        )
    ).scalar_one()


def _key_registered(connection: Connection, account_id: int, key_id: str) -> bool:
    return (
        connection.execute(
            select(signing_keys.c.id).where(
                signing_keys.c.account_id == account_id, signing_keys.c.key_id == key_id
            )
        ).first()
        is not None
    )


def set_policy(
    connection: Connection, caller: Caller, ns: str, changes: dict[str, bool]
) -> Row[Any]:
    """Change a namespace's policy (its admins); the namespace as it is now."""
    require_token(caller, f"setting the policy of {ns}")
    owner = namespace(connection, ns)
    if not at_least(role_in(connection, caller, owner.id), "admin"):
        raise RegistryError(403, Code.FORBIDDEN, f"only admins of {ns} set its policy")
    if changes:
        connection.execute(update(accounts).where(accounts.c.id == owner.id).values(**changes))
        audit(connection, caller, "policy.set", ns, **changes)
    return namespace(connection, ns)


def resolve(connection: Connection, repository: Row[Any], reference: str) -> Row[Any]:
    """The version a reference names: ``sha256:<hex>`` (any version with that digest, yanked
    too), a version name, or a tag. Tags and version names skip yanked versions (404)."""
    query = (
        select(versions, concept_files, blobs.c.size)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .join(blobs, blobs.c.digest == versions.c.digest)
        .where(versions.c.repository_id == repository.id)
    )
    if _DIGEST.fullmatch(reference):
        row = connection.execute(
            query.where(versions.c.digest == reference).order_by(versions.c.id)
        ).first()
    elif not _REFERENCE.fullmatch(reference):
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
    if not _REFERENCE.fullmatch(name):
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


# -- reads ----------------------------------------------------------------------------------------


def repository_details(connection: Connection, repository: Row[Any]) -> dict[str, Any]:
    """A readable repository's versions (oldest first), tags and previews."""
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


def organizations_of(connection: Connection, caller: Caller) -> list[Row[Any]]:
    """The organizations the caller belongs to, with their role in each, by name."""
    require_token(caller, "listing your organizations")
    org = accounts.alias("org")
    return list(
        connection.execute(
            select(org.c.name, memberships.c.role)
            .join(memberships, memberships.c.org_id == org.c.id)
            .where(memberships.c.user_id == caller.user_id)
            .order_by(org.c.name)
        ).all()
    )


def members_of(connection: Connection, caller: Caller, org: str) -> list[Row[Any]]:
    """The members of an organization and their roles (for its members; 404 for others)."""
    require_token(caller, f"listing the members of {org}")
    owner = namespace(connection, org)
    if owner.kind != "org" or not at_least(role_in(connection, caller, owner.id), "reader"):
        raise not_found(f"organization {org}")
    return list(
        connection.execute(
            select(accounts.c.name, memberships.c.role)
            .join(memberships, memberships.c.user_id == accounts.c.id)
            .where(memberships.c.org_id == owner.id)
            .order_by(accounts.c.name)
        ).all()
    )


def tokens_of(connection: Connection, caller: Caller) -> list[Row[Any]]:
    """The caller's tokens, oldest first."""
    require_token(caller, "listing tokens")
    return list(
        connection.execute(
            select(tokens).where(tokens.c.user_id == caller.user_id).order_by(tokens.c.id)
        ).all()
    )


def keys_of(connection: Connection, ns: str) -> list[Row[Any]]:
    """A namespace's registered signing keys, oldest first."""
    owner = namespace(connection, ns)
    return list(
        connection.execute(
            select(signing_keys)
            .where(signing_keys.c.account_id == owner.id)
            .order_by(signing_keys.c.id)
        ).all()
    )
