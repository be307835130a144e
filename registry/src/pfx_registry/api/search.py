"""Search: full text over the concepts the caller may read, with filters, sorts and cursors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from pfx_registry import search
from pfx_registry.service import access
from pfx_registry.state import CallerDep, CountedConnectionDep

from .http import resource_router
from .responses import SearchBody

__all__ = ["router"]

router = resource_router("search")


@router.get("/search", response_model=SearchBody)
def search_concepts(
    connection: CountedConnectionDep,
    caller: CallerDep,
    q: Annotated[str, Query(max_length=200)] = "",
    family: Annotated[str | None, Query(max_length=64)] = None,
    namespace: Annotated[str | None, Query(max_length=64)] = None,
    superclass: Annotated[str | None, Query(max_length=64)] = None,
    signer: Annotated[str | None, Query(max_length=64)] = None,
    sort: str = "relevance",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> dict[str, Any]:
    """Concepts the caller may read matching every word of ``q`` in their name, token,
    superclass, title, description or labels; sorted by relevance, downloads or recency; one
    page and the cursor of the next."""
    query = search.SearchQuery(q, family, namespace, superclass, signer, sort, limit, cursor)
    return search.run(connection, query, access.visible_repositories(connection, caller))
