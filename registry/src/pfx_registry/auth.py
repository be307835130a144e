"""Who is calling, and what they may do.

API tokens look like ``pfx_<43 url-safe characters>``; the registry stores only their SHA-256.
A token has a scope (read < write < admin) that caps its owner's role in every namespace. Roles in
a namespace: a user is ``admin`` of their own namespace; members of an organization have the role
their membership gives; registry administrators are ``admin`` everywhere.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, select

from .db import accounts, memberships, tokens, utcnow
from .errors import ApiError, Code

__all__ = [
    "ANONYMOUS",
    "ROLES",
    "Caller",
    "authenticate",
    "expired",
    "hash_token",
    "live_caller",
    "new_token",
    "role_in",
    "token_callers",
]

ROLES = ("reader", "writer", "admin")
SCOPE_ROLE = {"read": "reader", "write": "writer", "admin": "admin"}
TOKEN_PREFIX = "pfx_"


@dataclass(frozen=True)
class Caller:
    """The authenticated user (None when anonymous) and the scope of the token they used."""

    user_id: int | None
    name: str | None
    scope: str | None
    is_admin: bool = False
    token_id: int | None = None

    @property
    def anonymous(self) -> bool:
        """True for a request without a token."""
        return self.user_id is None


ANONYMOUS = Caller(user_id=None, name=None, scope=None)


def new_token() -> str:
    """A fresh random API token (shown once; only its hash is stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, Code.UNAUTHORIZED, message, {"WWW-Authenticate": "Bearer"})


def authenticate(connection: Connection, authorization: str | None) -> Caller:
    """The caller named by an ``Authorization: Bearer <token>`` header (anonymous without one).

    A malformed header or a token that is unknown, revoked or expired is 401 — on every endpoint,
    including those anonymous callers may use.
    """
    if authorization is None:
        return ANONYMOUS
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("use Authorization: Bearer <token>")
    row = connection.execute(
        token_callers().where(tokens.c.secret_hash == hash_token(token.strip()))
    ).first()
    caller = live_caller(row)
    if caller is None:
        raise _unauthorized("the token is unknown, revoked or expired")
    return caller


def token_callers() -> Select[Any]:
    """The query of a token's caller, to be narrowed with ``where``; its rows are read by
    :func:`live_caller`."""
    return select(
        tokens.c.id,
        tokens.c.scope,
        tokens.c.expires_at,
        tokens.c.revoked_at,
        accounts.c.id.label("user_id"),
        accounts.c.name,
        accounts.c.is_admin,
    ).join(accounts, accounts.c.id == tokens.c.user_id)


def live_caller(row: Row[Any] | None) -> Caller | None:
    """The caller of a :func:`token_callers` row, or None when there is no row or its token is
    revoked or expired."""
    if row is None or row.revoked_at is not None or expired(row.expires_at):
        return None
    return Caller(row.user_id, row.name, row.scope, row.is_admin, row.id)


def expired(expires_at: datetime | None) -> bool:
    """Whether a moment (None: never) has passed."""
    # timezone-aware on every database (db.UTCDateTime)
    return expires_at is not None and expires_at <= utcnow()


def role_in(connection: Connection, caller: Caller, namespace_id: int) -> str | None:
    """The caller's effective role in a namespace — capped by the token's scope — or None."""
    if caller.anonymous or caller.scope is None:
        return None
    cap = SCOPE_ROLE[caller.scope]
    if caller.is_admin or caller.user_id == namespace_id:
        role: str | None = "admin"
    else:
        role = connection.execute(
            select(memberships.c.role).where(
                memberships.c.org_id == namespace_id, memberships.c.user_id == caller.user_id
            )
        ).scalar()
    if role is None:
        return None
    return ROLES[min(ROLES.index(role), ROLES.index(cap))]


def at_least(role: str | None, needed: str) -> bool:
    """True when ``role`` is ``needed`` or stronger."""
    return role is not None and ROLES.index(role) >= ROLES.index(needed)
