"""The OCI Distribution API (v1.1) at /v2/: concepts as OCI artifacts that docker-compatible
tools (oras, skopeo, crane, regclient) push and pull (spec/registry-api.md §10).

- :mod:`.routes` — the endpoints; :mod:`.auth` — credentials, challenges and the token endpoint;
- :mod:`.errors` — errors in the OCI shape ``{"errors": [{"code", "message", "detail"}]}``.

The index work (manifests, the tag mapping, referrers, uploads) is in
:mod:`pfx_registry.service.oci`; the manifest format in :mod:`perfusion_format.oci`.
"""

from __future__ import annotations

from .errors import is_distribution_path, oci_error_response
from .routes import router

__all__ = ["is_distribution_path", "oci_error_response", "router"]
