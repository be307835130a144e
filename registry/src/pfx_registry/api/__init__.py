"""The /v1 API: one router module per resource, included in :data:`router` with the hot read
paths (resolve and download) first, so that they are matched first.

Where to add a route: in the module of its resource (or a new module, included below). A route
translates HTTP to service calls (:mod:`pfx_registry.service`) and back: it reads the request
(bodies in :mod:`.bodies`), runs reads on ``ConnectionDep`` and writes through ``run_write`` (one
transaction, retried on a deadlock), and declares what it answers (:mod:`.responses`); SQL lives
in the service layer. Errors are raised as :class:`pfx_registry.errors.ApiError`.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import accounts, blobs, concepts, keys, previews, search, tokens, versions
from .responses import ERRORS, errors

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=errors(*ERRORS))
for _module in (versions, blobs, concepts, previews, search, accounts, tokens, keys):
    router.include_router(_module.router)
