"""Accounts: users (created by registry administrators), the caller, organizations and their
members."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from sqlalchemy import Connection

from pfx_registry.errors import ApiError, Code
from pfx_registry.service import access, accounts
from pfx_registry.state import CallerDep, ConnectionDep, RegistryDep, run_write

from .bodies import Membership, NewOrganization, NewUser
from .http import resource_router
from .responses import (
    MemberBody,
    MembersBody,
    OrganizationBody,
    OrganizationsBody,
    UserBody,
    WhoamiBody,
    errors,
)

__all__ = ["router"]

router = resource_router("accounts")


@router.post("/users", status_code=201, response_model=UserBody, responses=errors(403, 409))
def create_user(body: NewUser, registry: RegistryDep, caller: CallerDep) -> dict[str, Any]:
    """Create a user (registry administrators only)."""
    access.require_token(caller, "creating a user")
    if not (caller.is_admin and caller.scope == "admin"):
        raise ApiError(403, Code.FORBIDDEN, "only registry administrators create users")

    def create(connection: Connection) -> int:
        user_id = accounts.create_account(connection, body.name, "user", body.admin)
        access.audit(connection, caller, "user.create", body.name)
        return user_id

    return {"id": run_write(registry, create), "name": body.name, "admin": body.admin}


@router.get("/whoami", response_model=WhoamiBody)
def whoami(caller: CallerDep) -> dict[str, Any]:
    """Who the token belongs to, and its scope."""
    return {"name": caller.name, "scope": caller.scope, "admin": caller.is_admin}


@router.post("/orgs", status_code=201, response_model=OrganizationBody, responses=errors(403, 409))
def create_organization(
    body: NewOrganization, registry: RegistryDep, caller: CallerDep
) -> dict[str, Any]:
    """Create an organization; its creator becomes its admin."""
    access.require_token(caller, "creating an organization")
    if caller.scope not in ("write", "admin"):
        raise ApiError(403, Code.FORBIDDEN, "creating an organization needs a write token")
    run_write(
        registry, lambda connection: accounts.create_organization(connection, caller, body.name)
    )
    return {"name": body.name}


@router.get("/orgs", response_model=OrganizationsBody)
def list_organizations(connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The organizations the caller belongs to, with their role in each, by name."""
    rows = accounts.organizations_of(connection, caller)
    return {"orgs": [{"name": name, "role": role} for name, role in rows]}


@router.get("/orgs/{org}/members", response_model=MembersBody)
def list_members(org: str, connection: ConnectionDep, caller: CallerDep) -> dict[str, Any]:
    """The members of an organization and their roles (for its members; 404 for others)."""
    rows = accounts.members_of(connection, caller, org)
    return {"org": org, "members": [{"user": user, "role": role} for user, role in rows]}


@router.put("/orgs/{org}/members", response_model=MemberBody, responses=errors(403))
def set_member(
    org: str, body: Membership, registry: RegistryDep, caller: CallerDep
) -> dict[str, str]:
    """Add a member or change their role (organization admins)."""
    run_write(
        registry,
        lambda connection: accounts.set_member(connection, caller, org, body.user, body.role),
    )
    return {"org": org, "user": body.user, "role": body.role}


@router.delete(
    "/orgs/{org}/members/{user}", status_code=204, response_class=Response, responses=errors(403)
)
def remove_member(org: str, user: str, registry: RegistryDep, caller: CallerDep) -> Response:
    """Remove a member (organization admins)."""
    run_write(registry, lambda connection: accounts.remove_member(connection, caller, org, user))
    return Response(status_code=204)
