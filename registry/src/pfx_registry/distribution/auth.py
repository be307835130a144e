"""Who calls /v2/, as docker, oras and skopeo authenticate (spec/registry-api.md §10.3).

A /v2/ request carries ``Authorization: Bearer <token>`` — a pfx API token, or the anonymous
token that ``GET /v2/token`` hands out without credentials — or ``Basic`` credentials whose
password is a pfx API token (the user name is not checked: the token names its owner). A request
that needs a caller and has none gets 401 with a ``WWW-Authenticate: Bearer`` challenge naming
the token endpoint, which answers Basic credentials with the token itself.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from pfx_registry.auth import ANONYMOUS, Caller
from pfx_registry.errors import ApiError
from pfx_registry.service.oci import OciError
from pfx_registry.state import caller_of, note_caller

__all__ = [
    "ANONYMOUS_TOKEN",
    "SERVICE",
    "basic_token",
    "challenge",
    "oci_caller",
    "token_caller",
]

#: The token ``GET /v2/token`` gives a client without credentials; it stands for no one.
ANONYMOUS_TOKEN = "anonymous"
#: The ``service`` of challenges and token requests.
SERVICE = "pfx-registry"


def challenge(request: Request, scope: str | None = None) -> dict[str, str]:
    """The ``WWW-Authenticate`` header of a 401 under /v2/."""
    realm = str(request.base_url).rstrip("/") + "/v2/token"
    value = f'Bearer realm="{realm}",service="{SERVICE}"'
    if scope:
        value += f',scope="{scope}"'
    return {"WWW-Authenticate": value}


def _unauthorized(request: Request, message: str) -> OciError:
    return OciError(401, "UNAUTHORIZED", message, challenge(request))


def basic_token(authorization: str) -> str | None:
    """The password of ``Basic`` credentials (a pfx token), or None when they are malformed."""
    try:
        decoded = base64.b64decode(authorization.split(" ", 1)[1].strip(), validate=True)
        _user, separator, password = decoded.decode("utf-8").partition(":")
    except (IndexError, binascii.Error, UnicodeDecodeError):
        return None
    return password.strip() if separator and password.strip() else None


async def token_caller(request: Request, token: str) -> Caller:
    """The caller a pfx token names (the anonymous token: no one); 401 with the challenge when
    it is unknown, revoked or expired."""
    if token == ANONYMOUS_TOKEN:
        return ANONYMOUS
    try:
        return await caller_of(request.app.state.registry, f"Bearer {token}")
    except ApiError as error:
        if error.status == 401:  # answered with the /v2/ challenge instead
            raise _unauthorized(request, error.message) from None
        raise


async def oci_caller(request: Request) -> Caller:
    """The caller of a /v2/ request (anonymous without credentials); 401 with a challenge for
    credentials that are malformed, unknown, revoked or expired."""
    authorization = request.headers.get("authorization")
    caller = ANONYMOUS
    if authorization is not None:
        scheme = authorization.split(" ", 1)[0].lower()
        token: str | None = None
        if scheme == "basic":
            token = basic_token(authorization)
        elif scheme == "bearer":
            token = authorization[7:].strip() or None
        if token is None:
            raise _unauthorized(request, "use Basic credentials or a Bearer token")
        caller = await token_caller(request, token)
    note_caller(request, caller)
    return caller
