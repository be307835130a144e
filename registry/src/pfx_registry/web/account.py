"""Signing in and out of the catalog with an API token, and managing one's tokens from the web.

Every form that changes something carries an anti-forgery value: the sign-in form a random value
that must match the visitor's ``pfx_login_csrf`` cookie, every other form its session's own value.
Tokens created here are made with the session's token, so they never exceed it in scope or
lifetime, and revoking the session's token revokes them (spec/registry-api.md, tokens).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from pfx_registry.api.bodies import MAX_NAME_TEXT, check_text
from pfx_registry.db import utcnow
from pfx_registry.errors import ApiError, Code
from pfx_registry.service import accounts
from pfx_registry.service.sessions import Session, close_session, open_session
from pfx_registry.state import Registry, run_write, transaction

from .rendering import page
from .visitors import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    VisitorDep,
    check_forgery,
    clear_cookie,
    form_fields,
    login_csrf,
    session_form,
    session_secret,
    set_cookie,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Lifetimes offered for a new token, in days (0: no expiry, the session token's at most).
EXPIRY_DAYS = (0, 1, 7, 30, 90, 365)
_NO_STORE = {"Cache-Control": "no-store"}


def _next_path(value: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//host`` or a URL)."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


def _login_form(
    request: Request, next_path: str, status: int = 200, error: str | None = None
) -> HTMLResponse:
    csrf = login_csrf(request)
    response = page(
        request,
        "login.html",
        None,
        status,
        _NO_STORE,
        title="Sign in",
        csrf=csrf,
        next_path=next_path,
        error=error,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
    return response


@router.get("/-/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    """The sign-in form: one field, ``token``, for an API token."""
    return _login_form(request, _next_path(next))


@router.post("/-/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Open a session with the API token sent in the ``token`` field and go back to ``next``."""
    fields = await form_fields(request)
    check_forgery(request, fields.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE))
    next_path = _next_path(fields.get("next"))
    token = fields.get("token", "").strip()
    if not token:
        return _login_form(request, next_path, 400, "Paste an API token.")
    registry: Registry = request.app.state.registry
    lifetime = timedelta(seconds=registry.settings.session_seconds)
    try:
        opened = await run_in_threadpool(
            run_write, registry, lambda connection: open_session(connection, token, lifetime)
        )
    except ApiError as error:
        if error.status != 401:
            raise
        return _login_form(request, next_path, 401, "That token is unknown, revoked or expired.")
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, SESSION_COOKIE, opened.secret, opened.max_age)
    clear_cookie(request, response, LOGIN_CSRF_COOKIE)
    return response


@router.get("/-/logout", response_class=HTMLResponse)
def logout_page(request: Request, visitor: VisitorDep) -> Response:
    """A button that signs out (signing out is a form, so that no link can do it)."""
    if visitor is None:
        return RedirectResponse("/", status_code=303)
    return page(request, "logout.html", visitor, title="Sign out")


@router.post("/-/logout")
async def logout(request: Request, visitor: VisitorDep) -> Response:
    """End the session and forget its cookie."""
    fields = await form_fields(request)
    secret = session_secret(request)
    if visitor is not None and secret is not None:
        check_forgery(request, fields.get("csrf"), visitor.csrf)
        registry: Registry = request.app.state.registry
        await run_in_threadpool(
            run_write, registry, lambda connection: close_session(connection, secret)
        )
    response = RedirectResponse("/", status_code=303)
    clear_cookie(request, response, SESSION_COOKIE)
    return response


def _tokens_page(
    request: Request, visitor: Session, status: int = 200, **context: Any
) -> HTMLResponse:
    registry: Registry = request.app.state.registry
    with transaction(registry) as connection:
        rows = accounts.tokens_of(connection, visitor.caller)
    now = utcnow()
    return page(
        request,
        "tokens.html",
        visitor,
        status,
        _NO_STORE,
        title="Tokens",
        tokens=rows,
        now=now,
        expiry_days=EXPIRY_DAYS,
        scopes=accounts.SCOPES,
        **{"created": None, "created_name": None, "error": None, **context},
    )


@router.get("/-/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, visitor: VisitorDep) -> Response:
    """The visitor's tokens, a form to create one, and a button to revoke each."""
    if visitor is None:
        return RedirectResponse(f"/-/login?next={quote('/-/tokens')}", status_code=303)
    return _tokens_page(request, visitor)


def _new_token_fields(fields: dict[str, str]) -> tuple[str, str, int]:
    name = fields.get("name", "").strip()
    scope = fields.get("scope", "")
    try:
        check_text(name)
        days = int(fields.get("expires_days", "0"))
    except ValueError as error:
        raise ApiError(400, Code.BAD_REQUEST, f"invalid field: {error}") from None
    if not 1 <= len(name) <= MAX_NAME_TEXT:
        raise ApiError(400, Code.BAD_REQUEST, f"a token's name has 1 to {MAX_NAME_TEXT} characters")
    if days not in EXPIRY_DAYS:
        raise ApiError(400, Code.BAD_REQUEST, "choose one of the offered lifetimes")
    return name, scope, days


@router.post("/-/tokens", response_class=HTMLResponse)
async def create_token(request: Request, visitor: VisitorDep) -> Response:
    """Create a token (shown once, on the page this answers with)."""
    fields = await form_fields(request)
    session = session_form(request, fields, visitor)
    registry: Registry = request.app.state.registry
    try:
        name, scope, days = _new_token_fields(fields)
        expires_at = utcnow() + timedelta(days=days) if days else None
        created = await run_in_threadpool(
            run_write,
            registry,
            lambda connection: accounts.create_token(
                connection, session.caller, name, scope, expires_at, None
            ),
        )
    except ApiError as error:
        if error.status not in (400, 403, 409):
            raise
        return await run_in_threadpool(
            _tokens_page, request, session, error.status, error=error.message
        )
    return await run_in_threadpool(
        _tokens_page, request, session, 201, created=created, created_name=name
    )


@router.post("/-/tokens/{token_id}/revoke", response_class=HTMLResponse)
async def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, visitor: VisitorDep
) -> Response:
    """Revoke one of the visitor's tokens (and the tokens made with it)."""
    session = session_form(request, await form_fields(request), visitor)
    registry: Registry = request.app.state.registry
    await run_in_threadpool(
        run_write,
        registry,
        lambda connection: accounts.revoke_token(connection, session.caller, token_id),
    )
    return RedirectResponse("/-/tokens", status_code=303)
