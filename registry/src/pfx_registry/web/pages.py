"""The catalog's reading pages: home, search, a namespace, a concept and one of its versions.

Every page shows only what its visitor may read — the same rules and the same service calls as
the API — and a private concept is the same 404 page as a missing one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, Row

import perfusion_format as pf
from pfx_registry import search
from pfx_registry.auth import Caller
from pfx_registry.errors import ApiError, not_found
from pfx_registry.service import access, accounts, concepts
from pfx_registry.service.sessions import Session
from pfx_registry.state import CountedConnectionDep

from . import paths  # noqa: F401 (registers the page_ns path convertor)
from .rendering import page
from .visitors import VisitorDep, caller_of_visitor

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Cards on the home page per list, and on a search or namespace page.
HOME_CARDS = 8
PAGE_CARDS = 24
#: The tags a concept page prefers for its snippets, in order (else any tag, else the version).
PREFERRED_TAGS = ("latest", "stable")


def _cards(connection: Connection, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Search results with the digest of each one's first preview (``preview``, or None)."""
    firsts = concepts.first_previews(
        connection, [(result["namespace"], result["name"]) for result in results]
    )
    return [
        {**result, "preview": firsts.get((result["namespace"], result["name"]))}
        for result in results
    ]


def _search(connection: Connection, caller: Caller, query: search.SearchQuery) -> dict[str, Any]:
    found = search.run(connection, query, access.visible_repositories(connection, caller))
    return {"cards": _cards(connection, found["results"]), "next_cursor": found["next_cursor"]}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, visitor: VisitorDep, connection: CountedConnectionDep) -> HTMLResponse:
    """A search box, and the most downloaded and the newest concepts the visitor may see."""
    caller = caller_of_visitor(visitor)
    visible = access.visible_repositories(connection, caller)
    popular, newest = (
        search.run(connection, search.SearchQuery(sort=sort, limit=HOME_CARDS), visible)["results"]
        for sort in ("downloads", "recent")
    )
    cards = _cards(connection, popular + newest)  # one preview lookup for both lists
    return page(
        request,
        "home.html",
        visitor,
        title="Concepts",
        popular=cards[: len(popular)],
        newest=cards[len(popular) :],
    )


@router.get("/-/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    visitor: VisitorDep,
    connection: CountedConnectionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    family: Annotated[str, Query(max_length=64)] = "",
    superclass: Annotated[str, Query(max_length=64)] = "",
    ns: Annotated[str, Query(max_length=64)] = "",
    signer: Annotated[str, Query(max_length=64)] = "",
    sort: Annotated[str, Query(max_length=16)] = "relevance",
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> HTMLResponse:
    """Search results as cards, the filters as a form, and a link to the next page."""
    query = search.SearchQuery(
        q, family or None, ns or None, superclass or None, signer or None, sort, PAGE_CARDS, cursor
    )
    found = _search(connection, caller_of_visitor(visitor), query)
    filters = {
        "q": q,
        "family": family,
        "superclass": superclass,
        "ns": ns,
        "signer": signer,
        "sort": sort,
    }
    return page(
        request,
        "search.html",
        visitor,
        title=f"Search: {q}" if q else "Search",
        filters=filters,
        families=tuple(pf.FAMILIES),
        sorts=search.SORTS,
        cards=found["cards"],
        next_cursor=found["next_cursor"],
        first_page=cursor is not None,
    )


@router.get("/{ns:page_ns}", response_class=HTMLResponse)
def namespace_page(
    ns: str,
    request: Request,
    visitor: VisitorDep,
    connection: CountedConnectionDep,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> HTMLResponse:
    """A user's or organization's concepts (newest first); an organization's members for its
    members."""
    caller = caller_of_visitor(visitor)
    owner = access.namespace(connection, ns)
    query = search.SearchQuery(namespace=ns, sort="recent", limit=PAGE_CARDS, cursor=cursor)
    found = _search(connection, caller, query)
    members: list[Row[Any]] | None = None
    if owner.kind == "org" and not caller.anonymous:
        try:
            members = accounts.members_of(connection, caller, ns)
        except ApiError as error:
            if error.status != 404:  # not a member: no members shown
                raise
    return page(
        request,
        "namespace.html",
        visitor,
        title=ns,
        owner=owner,
        cards=found["cards"],
        next_cursor=found["next_cursor"],
        first_page=cursor is not None,
        members=members,
    )


def _selected_version(rows: list[Row[Any]], tags: dict[str, str], wanted: str | None) -> Row[Any]:
    """The version a concept page shows: ``wanted``; else the one a preferred tag names; else
    the newest one not yanked; else the newest."""
    by_name = {row.version: row for row in rows}
    if wanted is not None:
        if wanted not in by_name:
            raise not_found(f"version {wanted}")
        return by_name[wanted]
    for tag in PREFERRED_TAGS:
        row = by_name.get(tags.get(tag, ""))
        if row is not None and row.yanked_at is None:
            return row
    live = [row for row in rows if row.yanked_at is None]
    return (live or rows)[-1]


def _reference(ns: str, name: str, row: Row[Any], tags_of_version: list[str]) -> str:
    """How the snippets name the shown version: a tag of it (preferred ones first), its version
    name, or — for a yanked version, which tags and names no longer resolve to — its digest."""
    if row.yanked_at is not None:
        return f"{ns}/{name}@{row.digest}"
    for tag in (*PREFERRED_TAGS, *tags_of_version):
        if tag in tags_of_version:
            return f"{ns}/{name}:{tag}"
    return f"{ns}/{name}:{row.version}"


def _concept(
    request: Request,
    visitor: Session | None,
    connection: Connection,
    ns: str,
    name: str,
    wanted: str | None,
) -> HTMLResponse:
    caller = caller_of_visitor(visitor)
    repository = access.readable_repository(connection, caller, ns, name)
    details = concepts.repository_details(connection, repository)
    rows: list[Row[Any]] = details["versions"]
    tags: dict[str, str] = details["tags"]
    shown = _selected_version(rows, tags, wanted)
    tags_by_version: dict[str, list[str]] = {}
    for tag, version in tags.items():
        tags_by_version.setdefault(version, []).append(tag)
    registered = {row.key_id for row in accounts.keys_of(connection, ns)}
    signers = [(key_id, key_id in registered) for key_id in shown.signers.split()]
    base_url = str(request.base_url).rstrip("/")
    return page(
        request,
        "concept.html",
        visitor,
        title=f"{shown.title} — {ns}/{name}",
        ns=ns,
        name=name,
        repository=repository,
        versions=list(reversed(rows)),  # newest first
        tags_by_version=tags_by_version,
        shown=shown,
        signers=signers,
        previews=details["previews"],
        labels=repository.labels.split(),
        reference=_reference(ns, name, shown, tags_by_version.get(shown.version, [])),
        base_url=base_url,
    )


@router.get("/{ns:page_ns}/{name}", response_class=HTMLResponse)
def concept_page(
    ns: str, name: str, request: Request, visitor: VisitorDep, connection: CountedConnectionDep
) -> HTMLResponse:
    """The concept's page: what it is, its previews, versions, tags, signers, and how to use it."""
    return _concept(request, visitor, connection, ns, name, None)


@router.get("/{ns:page_ns}/{name}/-/versions/{version}", response_class=HTMLResponse)
def version_page(
    ns: str,
    name: str,
    version: str,
    request: Request,
    visitor: VisitorDep,
    connection: CountedConnectionDep,
) -> HTMLResponse:
    """The concept's page showing one of its versions (yanked ones too)."""
    return _concept(request, visitor, connection, ns, name, version)
