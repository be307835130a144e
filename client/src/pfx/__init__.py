"""pfx — the command line and Python client for Perfusion concepts.

The one-line embedding::

    import pfx
    path = pfx.pull("acme/teddy:1.0")   # verified against its digest and your trust policy
    path = pfx.pull("oci://ghcr.io/acme/teddy:1.0")   # from any OCI registry, the same way

:class:`Client` speaks the registry API; :func:`push` and :func:`pull` are the whole operations
the ``pfx`` command runs. Importing pfx is cheap: the names below load their modules on first use
(httpx only when a registry is contacted), and torch is never imported.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pfx.client import Client
    from pfx.errors import ClientError, RegistryError
    from pfx.transfer import PullResult, PushResult, push
    from pfx.transfer import pull as pull_concept

__all__ = [
    "Client",
    "ClientError",
    "PullResult",
    "PushResult",
    "RegistryError",
    "__version__",
    "pull",
    "pull_concept",
    "push",
]

#: Public name → (module, attribute), imported when first used.
_LAZY = {
    "Client": ("pfx.client", "Client"),
    "ClientError": ("pfx.errors", "ClientError"),
    "RegistryError": ("pfx.errors", "RegistryError"),
    "PullResult": ("pfx.transfer", "PullResult"),
    "PushResult": ("pfx.transfer", "PushResult"),
    "push": ("pfx.transfer", "push"),
    "pull_concept": ("pfx.transfer", "pull"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pfx' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def pull(reference: str, **options: Any) -> Path:
    """Pull ``reference`` (``NS/NAME[:TAG]`` or ``NS/NAME@sha256:…`` from the pfx registry,
    ``oci://HOST[:PORT]/REPO[:TAG|@sha256:…]`` from any OCI registry) and return the path of its
    verified bytes in the cache; ``options`` are those of :func:`pfx.transfer.pull`, or of
    :func:`pfx.oci.pull` for an OCI reference (``plain_http=True`` for a loopback registry)."""
    from pfx.oci_reference import is_oci_reference

    if is_oci_reference(reference):
        from pfx.oci import pull as pull_oci

        return pull_oci(reference, **options).path
    from pfx.transfer import pull as pull_concept

    return pull_concept(reference, **options).path
