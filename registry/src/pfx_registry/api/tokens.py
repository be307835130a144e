"""API tokens: created (with a scope and expiry no wider than the calling token's), listed
without their secrets, revoked with every token they created."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Response

from pfx_registry.service import accounts
from pfx_registry.state import CallerDep, ConnectionDep, RegistryDep, run_write

from .bodies import NewToken
from .http import resource_router
from .responses import NewTokenBody, TokensBody, errors

__all__ = ["router"]

router = resource_router("tokens")


@router.post("/tokens", status_code=201, response_model=NewTokenBody, responses=errors(403, 409))
def create_token(body: NewToken, registry: RegistryDep, caller: CallerDep) -> dict[str, Any]:
    """Create an API token for the caller. The secret is in this response only."""
    created = run_write(
        registry,
        lambda connection: accounts.create_token(
            connection, caller, body.name, body.scope, body.expires_at, body.user
        ),
    )
    return {
        "id": created.id,
        "name": body.name,
        "scope": created.scope,
        "expires_at": created.expires_at.isoformat() if created.expires_at else None,
        "token": created.secret,
    }


@router.get("/tokens", response_model=TokensBody)
def list_tokens(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's tokens (never their secrets)."""
    return {
        "tokens": [
            {
                "id": row.id,
                "name": row.name,
                "scope": row.scope,
                "created_at": row.created_at.isoformat(),
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                "revoked": row.revoked_at is not None,
            }
            for row in accounts.tokens_of(connection, caller)
        ]
    }


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    registry: RegistryDep,
    caller: CallerDep,
) -> Response:
    """Revoke one of the caller's tokens, and every token it created."""
    run_write(registry, lambda connection: accounts.revoke_token(connection, caller, token_id))
    return Response(status_code=204)
