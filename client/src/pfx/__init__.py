"""pfx — the command line and Python client for Perfusion concepts.

The one-line embedding::

    import pfx
    path = pfx.pull("acme/teddy:1.0")   # verified against its digest and your trust policy

:class:`Client` speaks the registry API; :func:`push` and :func:`pull` are the whole operations
the ``pfx`` command runs. Importing pfx never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: pfx.client reads it

from pathlib import Path
from typing import Any

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


def pull(reference: str, **options: Any) -> Path:
    """Pull ``reference`` (``NS/NAME[:TAG]`` or ``NS/NAME@sha256:…``) and return the path of
    its verified bytes in the cache; ``options`` are those of :func:`pfx.transfer.pull`."""
    return pull_concept(reference, **options).path
