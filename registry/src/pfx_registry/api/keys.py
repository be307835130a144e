"""A namespace's signing keys and policy (signatures required, tags protected)."""

from __future__ import annotations

from typing import Any

import perfusion_format as pf
from pfx_registry.errors import ApiError, Code
from pfx_registry.service import access, accounts
from pfx_registry.state import CallerDep, ConnectionDep, RegistryDep, run_write

from .bodies import NewKey, Policy
from .http import resource_router
from .responses import KeyBody, KeysBody, PolicyBody, errors

__all__ = ["router"]

router = resource_router("keys and policy")


@router.post(
    "/namespaces/{ns}/keys",
    status_code=201,
    response_model=KeyBody,
    responses=errors(403, 409, 422),
)
def add_key(ns: str, body: NewKey, registry: RegistryDep, caller: CallerDep) -> dict[str, str]:
    """Register a signing key for a namespace (its admins)."""
    try:
        text = body.public_key.strip()
        key = (
            pf.PublicKey.from_pem(text.encode())
            if text.startswith("-----")
            else pf.PublicKey.from_base64(text)
        )
    except pf.KeyFileError as error:
        raise ApiError(422, Code.KEY_INVALID, error.message) from None
    name = run_write(
        registry, lambda connection: accounts.add_key(connection, caller, ns, key, body.name)
    )
    return {"key_id": key.key_id, "public_key": key.to_base64(), "name": name}


@router.get("/namespaces/{ns}/keys", response_model=KeysBody)
def list_keys(ns: str, connection: ConnectionDep, _caller: CallerDep) -> dict[str, Any]:
    """A namespace's registered signing keys (public)."""
    rows = accounts.keys_of(connection, ns)
    return {
        "keys": [{"key_id": r.key_id, "public_key": r.public_key, "name": r.name} for r in rows]
    }


@router.put("/namespaces/{ns}/policy", response_model=PolicyBody, responses=errors(403))
def set_policy(ns: str, body: Policy, registry: RegistryDep, caller: CallerDep) -> dict[str, bool]:
    """Require signatures by the namespace's keys on every publish; protect tags from moves."""
    changes = body.model_dump(exclude_none=True)
    owner = run_write(
        registry, lambda connection: accounts.set_policy(connection, caller, ns, changes)
    )
    return {"require_signatures": owner.require_signatures, "protected_tags": owner.protected_tags}


@router.get("/namespaces/{ns}/policy", response_model=PolicyBody)
def get_policy(ns: str, connection: ConnectionDep, _caller: CallerDep) -> dict[str, bool]:
    """A namespace's policy (public)."""
    owner = access.namespace(connection, ns)
    return {"require_signatures": owner.require_signatures, "protected_tags": owner.protected_tags}
