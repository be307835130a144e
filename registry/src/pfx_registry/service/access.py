"""Who may do what to which namespace and repository, and the name grammar — checked before any
SQL is sent, and shared by every service module.

A private repository that the caller may not read is answered exactly like one that does not
exist (404); :func:`writable_repository` locks the repository's row for the transaction.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection, Row, insert, or_, select, true

import perfusion_format as pf
from pfx_registry.auth import Caller, at_least, role_in
from pfx_registry.db import (
    accounts,
    audit_log,
    blob_uploads,
    blobs,
    memberships,
    oci_manifest_blobs,
    previews,
    repositories,
    versions,
)
from pfx_registry.errors import ApiError, Code, not_found

#: Namespaces and repositories, versions and tags (spec/registry-api.md §3), blob digests: the
#: grammars the client uses too.
NAME = pf.NAME
REFERENCE = pf.TAG
DIGEST = pf.DIGEST
#: Repository labels.
LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


def check_name(kind: str, value: str, pattern: re.Pattern[str] = NAME) -> str:
    """Refuse a malformed namespace, repository, version or tag name (400 NAME_INVALID)."""
    if not pattern.fullmatch(value):
        raise ApiError(400, Code.NAME_INVALID, f"invalid {kind} name {value!r}")
    return value


#: Namespace names that would shadow the first path segment of a page or endpoint the registry
#: serves (or will: the web catalog's pages and the OCI API): refused when an account is created.
RESERVED_NAMESPACES = frozenset(
    {
        "v1",
        "v2",
        "healthz",
        "readyz",
        "metrics",
        "docs",
        "redoc",
        "openapi.json",
        "static",
        "favicon.ico",
        "robots.txt",
    }
)


def check_namespace_name(name: str) -> str:
    """Refuse a namespace name that breaks the grammar or is reserved (400 NAME_INVALID)."""
    check_name("namespace", name)
    if name in RESERVED_NAMESPACES:
        raise ApiError(400, Code.NAME_INVALID, f"the namespace name {name!r} is reserved")
    return name


def check_reference(kind: str, value: str) -> str:
    """Refuse a malformed version or tag (400 NAME_INVALID)."""
    return check_name(kind, value, REFERENCE)


def check_labels(labels: list[str] | None) -> None:
    """Labels are lowercase words (letters, digits, ``.``, ``_``, ``-``; at most 32 characters)."""
    for label in labels or ():
        check_name("label", label, LABEL)


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
    if NAME.fullmatch(name):
        row = connection.execute(select(accounts).where(accounts.c.name == name)).first()
    if row is None:
        raise not_found(f"namespace {name}")
    return row


def lock_account(connection: Connection, account_id: int) -> None:
    """Lock a user's or organization's row until the transaction ends, so that a count of what
    it holds (tokens, keys) stays true for the insert that follows (a no-op on SQLite, whose
    writing transactions hold the database's write lock)."""
    connection.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())


def find_repository(
    connection: Connection, namespace_id: int, name: str, *, lock: bool = False
) -> Row[Any] | None:
    if not NAME.fullmatch(name):
        return None
    query = select(repositories).where(
        repositories.c.namespace_id == namespace_id, repositories.c.name == name
    )
    return connection.execute(query.with_for_update() if lock else query).first()


def readable_repository(connection: Connection, caller: Caller, ns: str, name: str) -> Row[Any]:
    """The repository ``ns/name`` if the caller may read it; 404 otherwise (whether it exists
    or not)."""
    owner = namespace(connection, ns)
    repository = find_repository(connection, owner.id, name)
    if repository is None or (
        repository.private and not at_least(role_in(connection, caller, owner.id), "reader")
    ):
        raise not_found(f"concept {ns}/{name}")
    return repository


def require_token(caller: Caller, what: str) -> None:
    """401 (with WWW-Authenticate) for anonymous callers of an endpoint that needs a token."""
    if caller.anonymous:
        raise ApiError(
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
    repository = find_repository(connection, owner.id, name, lock=True)
    role = role_in(connection, caller, owner.id)
    if at_least(role, needed):
        return owner, repository
    if not at_least(role, "reader") and (repository is None or repository.private):
        raise not_found(f"concept {ns}/{name}")
    raise ApiError(403, Code.FORBIDDEN, f"changing {ns}/{name} needs the {needed} role")


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
    them), or referenced by a version, a preview or a pushed OCI manifest of a repository they
    may read."""
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
    by_manifest = select(oci_manifest_blobs.c.repository_id).where(
        oci_manifest_blobs.c.digest == digest
    )
    referencing = connection.execute(
        select(repositories.c.namespace_id, repositories.c.private).where(
            or_(
                repositories.c.id.in_(by_version),
                repositories.c.id.in_(by_preview),
                repositories.c.id.in_(by_manifest),
            )
        )
    ).all()
    for namespace_id, private in referencing:
        if not private or at_least(role_in(connection, caller, namespace_id), "reader"):
            return blob
    return None


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
