"""The OCI Distribution API (v1.1) at /v2/: concepts as OCI artifacts that docker-compatible
tools (oras, skopeo, crane, regclient) push and pull (spec/registry-api.md §10).

- :mod:`.routes` — the endpoints; :mod:`.auth` — credentials, challenges and the token endpoint;
- :mod:`.errors` — errors in the OCI shape ``{"errors": [{"code", "message", "detail"}]}``.

The index work (manifests, the tag mapping, referrers, uploads) is in
:mod:`pfx_registry.service.oci`; the manifest format in :mod:`perfusion_format.oci`.
"""

from __future__ import annotations

from starlette.routing import Match, Mount
from starlette.types import Scope

from pfx_registry.observability import ROUTE_PREFIX

from .errors import is_distribution_path, oci_error_response
from .routes import router

__all__ = [
    "PREFIX",
    "V2Mount",
    "is_distribution_path",
    "oci_error_response",
    "router",
]

PREFIX = "/v2"


class V2Mount(Mount):
    """/v2/ as one mount, matched first: a request elsewhere pays one prefix test instead of a
    test per /v2/ route, and a /v2/ request tests no /v1/ route (FastAPI tests an included
    router's routes one by one: bench/README.md measures what that cost)."""

    def __init__(self) -> None:
        super().__init__(PREFIX, app=router, name="v2")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.FULL:
            child_scope[ROUTE_PREFIX] = PREFIX
        return match, child_scope
