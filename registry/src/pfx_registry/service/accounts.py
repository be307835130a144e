"""Accounts: users, organizations and their members, API tokens, signing keys and policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, or_, select, update

import perfusion_format as pf
from pfx_registry.auth import ROLES, Caller, at_least, hash_token, new_token, role_in
from pfx_registry.db import (
    accounts,
    insert_or_ignore,
    memberships,
    signing_keys,
    tokens,
    upsert,
    utcnow,
)
from pfx_registry.errors import ApiError, Code, not_found

from .access import audit, check_namespace_name, lock_account, namespace, require_token

#: Signing keys a namespace may register.
MAX_KEYS = 32
#: Tokens a user may hold that are neither revoked nor expired.
MAX_TOKENS = 100
#: Token scopes, narrowest first.
SCOPES = ("read", "write", "admin")


def create_account(connection: Connection, name: str, kind: str, admin: bool = False) -> int:
    """Create a user or organization called ``name``; its id (409 NAME_TAKEN when it exists)."""
    check_namespace_name(name)
    if not insert_or_ignore(connection, accounts, {"name": name, "kind": kind, "is_admin": admin}):
        raise ApiError(409, Code.NAME_TAKEN, f"the name {name} is taken")
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
        raise ApiError(403, Code.FORBIDDEN, f"only admins of {org} manage it")
    return owner


def set_member(connection: Connection, caller: Caller, org: str, user: str, role: str) -> None:
    """Add ``user`` to ``org`` or change their role (organization admins)."""
    if role not in ROLES:
        raise ApiError(400, Code.BAD_REQUEST, f"role must be one of {', '.join(ROLES)}")
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
        raise ApiError(
            401, Code.UNAUTHORIZED, "creating a token needs a token", {"WWW-Authenticate": "Bearer"}
        )
    if scope not in SCOPES:
        raise ApiError(400, Code.BAD_REQUEST, "scope must be read, write or admin")
    if SCOPES.index(scope) > SCOPES.index(caller.scope):
        raise ApiError(403, Code.FORBIDDEN, f"a {caller.scope} token cannot create a {scope} token")
    parent = connection.execute(
        select(tokens.c.expires_at, tokens.c.revoked_at)
        .where(tokens.c.id == caller.token_id)
        .with_for_update()
    ).one()
    now = utcnow()
    if parent.revoked_at is not None or (
        parent.expires_at is not None and parent.expires_at <= now
    ):
        raise ApiError(
            401,
            Code.UNAUTHORIZED,
            "the token is unknown, revoked or expired",
            {"WWW-Authenticate": "Bearer"},
        )
    if expires_at is not None and expires_at <= now:
        raise ApiError(400, Code.BAD_REQUEST, "expires_at is in the past")
    if parent.expires_at is not None:
        if expires_at is None:
            expires_at = parent.expires_at
        elif expires_at > parent.expires_at:
            raise ApiError(
                400,
                Code.BAD_REQUEST,
                "a token cannot outlive the token that creates it "
                f"(which expires at {parent.expires_at.isoformat()})",
            )
    owner_id, owner_name = caller.user_id, caller.name
    if user is not None and user != caller.name:
        if not (caller.is_admin and caller.scope == "admin"):
            raise ApiError(403, Code.FORBIDDEN, "only administrators create others' tokens")
        account = namespace(connection, user)
        if account.kind != "user":
            raise not_found(f"user {user}")
        owner_id, owner_name = account.id, account.name
    lock_account(connection, owner_id)  # the count below holds until this transaction ends
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
        raise ApiError(409, Code.TOO_MANY, f"at most {MAX_TOKENS} active tokens per user")
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
        raise ApiError(403, Code.FORBIDDEN, f"only admins of {ns} register keys")
    lock_account(connection, owner.id)  # the count below holds until this transaction ends
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
        raise ApiError(409, Code.TOO_MANY, f"at most {MAX_KEYS} keys per namespace")
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
        raise ApiError(403, Code.FORBIDDEN, f"only admins of {ns} set its policy")
    if changes:
        connection.execute(update(accounts).where(accounts.c.id == owner.id).values(**changes))
        audit(connection, caller, "policy.set", ns, **changes)
    return namespace(connection, ns)


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
