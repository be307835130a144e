"""Who is browsing: the session cookie, the visitor it names, and the checks every form that
changes something must pass (an anti-forgery value and a same-site origin).

The session cookie is HttpOnly and SameSite=Lax, Secure when the page was reached over HTTPS
(directly or through a proxy that says so in ``X-Forwarded-Proto``); it holds a random secret,
never the API token. The API (/v1) never reads this cookie: it authenticates with
``Authorization`` only, so forged cross-site requests cannot act through it.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request, Response

from pfx_registry.auth import ANONYMOUS, Caller, hash_token
from pfx_registry.errors import ApiError, Code
from pfx_registry.service.sessions import Session, session_of
from pfx_registry.state import Registry, note_caller, transaction

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "VisitorDep",
    "caller_of_visitor",
    "check_forgery",
    "clear_cookie",
    "form_fields",
    "login_csrf",
    "session_form",
    "set_cookie",
    "visitor_of",
]

SESSION_COOKIE = "pfx_session"
#: The sign-in form's anti-forgery value (no session exists yet): the form and this cookie must
#: carry the same random value (a double-submit check).
LOGIN_CSRF_COOKIE = "pfx_login_csrf"
#: Longest cookie value looked up (a session secret is 43 characters).
_MAX_SECRET = 64
#: Fields and bytes a form may carry.
_MAX_FIELDS = 16


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """Set an HttpOnly, SameSite=Lax cookie for the whole site (Secure over HTTPS)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_https(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    """Remove a cookie set by :func:`set_cookie`."""
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=_https(request))


def session_secret(request: Request) -> str | None:
    """The session cookie's value, if it has the shape of one."""
    secret = request.cookies.get(SESSION_COOKIE)
    return secret if secret and len(secret) <= _MAX_SECRET else None


async def visitor_of(request: Request) -> Session | None:
    """The signed-in visitor (None when signed out or the session is no longer valid)."""
    registry: Registry = request.app.state.registry
    secret = session_secret(request)
    session = None
    if secret is not None:

        def lookup() -> Session | None:
            with transaction(registry) as connection:
                return session_of(connection, secret)

        # keyed by the secret's hash, like callers: the cache never holds a secret
        session = await registry.reads.get(("session", hash_token(secret)), lookup)
    note_caller(request, session.caller if session else ANONYMOUS)
    return session


VisitorDep = Annotated[Session | None, Depends(visitor_of)]


def caller_of_visitor(visitor: Session | None) -> Caller:
    """Who a visitor acts as: their session's caller, or anonymous when signed out."""
    return visitor.caller if visitor else ANONYMOUS


def login_csrf(request: Request) -> str:
    """The sign-in form's anti-forgery value: the visitor's cookie when they have one, else a
    new one (the page sets it)."""
    existing = request.cookies.get(LOGIN_CSRF_COOKIE)
    if existing and len(existing) <= _MAX_SECRET:
        return existing
    return secrets.token_urlsafe(32)


def _forbidden(message: str) -> ApiError:
    return ApiError(403, Code.CSRF_FAILED, message)


def check_forgery(request: Request, sent: str | None, expected: str | None) -> None:
    """Refuse a form that another site made the browser send: it must come from this site (when
    the browser says where it comes from) and carry the expected anti-forgery value."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise _forbidden("forms are accepted from this site only")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise _forbidden("the form has expired or was not sent from this site; reload the page")


def session_form(request: Request, fields: dict[str, str], visitor: Session | None) -> Session:
    """The visitor who sent a form that changes something, after :func:`check_forgery`; a form
    whose session has ended is refused like a forged one (403 CSRF_FAILED)."""
    check_forgery(request, fields.get("csrf"), visitor.csrf if visitor else None)
    if visitor is None:
        raise _forbidden("the session has ended; sign in again")
    return visitor


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (400 when it is not one)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise ApiError(415, Code.UNSUPPORTED_MEDIA, "forms are sent as x-www-form-urlencoded")
    body = await request.body()  # bounded by RequestAccounting (413)
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, Code.BAD_REQUEST, "the form's fields cannot be read") from None
    return dict(pairs)
