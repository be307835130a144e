"""Browser sessions of the web catalog: opened with an API token, held by a cookie.

The cookie carries a random secret; the index keeps only its SHA-256 (like a token's). A session
acts with the token it was opened with: its caller is that token's caller, so the token's scope,
expiry and revocation apply to the session too, and a session never outlives its token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, delete, insert, select

from pfx_registry.auth import Caller, authenticate, hash_token, live_caller, token_callers
from pfx_registry.db import tokens, utcnow, web_sessions

__all__ = ["OpenedSession", "Session", "close_session", "open_session", "session_of"]


@dataclass(frozen=True)
class Session:
    """A live session: who acts through it, and the anti-CSRF value of its forms."""

    caller: Caller
    csrf: str


@dataclass(frozen=True)
class OpenedSession:
    """A session just opened: the cookie's secret (never stored) and its lifetime."""

    secret: str
    max_age: int


def open_session(connection: Connection, token: str, lifetime: timedelta) -> OpenedSession:
    """Open a session for the holder of API ``token`` (401 when it is unknown, revoked or
    expired). It lasts ``lifetime``, or until the token expires when that comes first."""
    caller = authenticate(connection, f"Bearer {token}")
    token_expiry = connection.execute(
        select(tokens.c.expires_at).where(tokens.c.id == caller.token_id)
    ).scalar()
    now = utcnow()
    expires_at = min(now + lifetime, token_expiry) if token_expiry else now + lifetime
    secret = secrets.token_urlsafe(32)
    connection.execute(
        insert(web_sessions).values(
            secret_hash=hash_token(secret),
            token_id=caller.token_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=expires_at,
        )
    )
    return OpenedSession(secret, max(1, int((expires_at - now).total_seconds())))


def session_of(connection: Connection, secret: str) -> Session | None:
    """The live session a cookie's secret names, or None (unknown, ended, expired, or its token
    revoked or expired)."""
    row = connection.execute(
        token_callers()
        .add_columns(web_sessions.c.csrf, web_sessions.c.expires_at.label("session_expires_at"))
        .join(web_sessions, web_sessions.c.token_id == tokens.c.id)
        .where(
            web_sessions.c.secret_hash == hash_token(secret), web_sessions.c.expires_at > utcnow()
        )
    ).first()
    caller = live_caller(row)
    if row is None or caller is None:
        return None
    return Session(caller, row.csrf)


def close_session(connection: Connection, secret: str) -> None:
    """End the session a cookie's secret names; expired sessions of anyone are removed too."""
    connection.execute(delete(web_sessions).where(web_sessions.c.secret_hash == hash_token(secret)))
    connection.execute(delete(web_sessions).where(web_sessions.c.expires_at <= utcnow()))
