"""The /v1 API: one router module per resource, included in the app in the order of
:data:`ROUTERS`: the hot read paths (resolve and download) first, so that they are matched first.

Where to add a route: in the module of its resource (or a new module, included below). A route
translates HTTP to service calls (:mod:`pfx_registry.service`) and back: it reads the request
(bodies in :mod:`.bodies`), runs reads on ``ConnectionDep`` and writes through ``run_write`` (one
transaction, retried on a deadlock), and declares what it answers (:mod:`.responses`); SQL lives
in the service layer. Errors are raised as :class:`pfx_registry.errors.ApiError`.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import (
    accounts,
    blobs,
    concepts,
    delivery,
    keys,
    operations,
    previews,
    search,
    tokens,
    versions,
)

__all__ = ["ROUTERS"]

#: The routers in the order they are matched: the hot read paths first, operations last.
ROUTERS: tuple[APIRouter, ...] = tuple(
    module.router
    for module in (
        versions,
        blobs,
        delivery,
        concepts,
        previews,
        search,
        accounts,
        tokens,
        keys,
        operations,
    )
)
