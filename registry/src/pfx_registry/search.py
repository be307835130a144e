"""Full-text search over concepts: SQLite FTS5 or PostgreSQL full text find the candidates, one
portable score orders them, and a keyset cursor pages through them.

Each repository has one search document, refreshed whenever what it shows changes (publish,
description or labels, visibility, yank, delete), built from the repository and its newest
non-yanked version. Text is normalised in Python the same way for both databases — lowercase,
every run of characters other than letters and digits a single space — so SQLite's ``unicode61``
tokenizer and PostgreSQL's ``simple`` configuration see the same words and return the same
results. Relevance is computed in SQL identically on both: for each query word, 3 when it is a
word of the repository's name, 2 of the token, superclass, title or labels, 1 of the description.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.sql.elements import ColumnElement

import perfusion_format as pf

from .db import accounts, concept_files, metadata, repositories, versions
from .errors import ApiError, Code

__all__ = ["SORTS", "SearchQuery", "normalise", "refresh", "remove", "run"]

SORTS = ("relevance", "downloads", "recent")
#: Longer words are cut to this many characters, in documents and queries alike.
MAX_WORD = 64
#: Words of a query that count (the rest are ignored).
MAX_QUERY_WORDS = 16

documents = Table(
    "search_documents",
    metadata,
    Column("repository_id", ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("version_id", Integer, nullable=False),  # the newest non-yanked version
    Column("name_words", Text, nullable=False),
    Column("key_words", Text, nullable=False),  # token, superclass, title, labels
    Column("text_words", Text, nullable=False),  # description
    Column("body", Text, nullable=False),  # all of the above: what full text indexes
    Column("family", String(16), nullable=False),
    Column("superclass", String(64), nullable=False),
    Column("signers", Text, nullable=False),  # " key1 key2 " (padded for word matching)
)

Index("search_documents_version", documents.c.version_id)

#: Each word of a search document once, with its relevance weight in that document (3 name,
#: 2 key words, 1 description: the highest where it occurs) and the document's version (its
#: recency). A one-word query by relevance or recency reads this table's index in that order and
#: stops after one page, however common the word.
terms = Table(
    "search_terms",
    metadata,
    Column("word", String(MAX_WORD), primary_key=True),
    Column(
        "repository_id",
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("weight", Integer, nullable=False),
    Column("version_id", Integer, nullable=False),
)
Index("search_terms_rank", terms.c.word, terms.c.weight, terms.c.repository_id)
Index("search_terms_recent", terms.c.word, terms.c.version_id, terms.c.repository_id)
Index("search_terms_repository", terms.c.repository_id)  # refresh/remove delete by repository

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def normalise(value: str) -> str:
    """Lowercase words separated by single spaces: the form both engines index."""
    return _NOT_WORD.sub(" ", value.lower()).strip()


def term_weights(name_words: str, key_words: str, text_words: str) -> dict[str, int]:
    """Each word of a document (cut to :data:`MAX_WORD`) and its relevance weight."""
    weights: dict[str, int] = {}
    for words, weight in ((text_words, 1), (key_words, 2), (name_words, 3)):
        for word in words.split():
            weights[word[:MAX_WORD]] = weight  # later (heavier) fields overwrite lighter ones
    return weights


def refresh(connection: Connection, repository_id: int) -> None:
    """Rebuild the search document of one repository (removing it when nothing is visible)."""
    row = connection.execute(
        select(repositories, concept_files, versions.c.id.label("version_id"))
        .join(versions, versions.c.repository_id == repositories.c.id)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .where(repositories.c.id == repository_id, versions.c.yanked_at.is_(None))
        .order_by(versions.c.id.desc())
        .limit(1)
    ).first()
    remove(connection, repository_id)
    if row is None:
        return
    name_words = normalise(row.name)
    key_words = normalise(" ".join([row.token, row.superclass, row.title, row.labels]))
    text_words = normalise(row.description)
    body = " ".join([name_words, key_words, text_words])
    connection.execute(
        insert(documents).values(
            repository_id=repository_id,
            version_id=row.version_id,
            name_words=name_words,
            key_words=key_words,
            text_words=text_words,
            body=body,
            family=row.family,
            superclass=row.superclass,
            signers=f" {row.signers} ",
        )
    )
    weights = term_weights(name_words, key_words, text_words)
    if weights:
        connection.execute(
            insert(terms),
            [
                {
                    "word": word,
                    "repository_id": repository_id,
                    "weight": weight,
                    "version_id": row.version_id,
                }
                for word, weight in weights.items()
            ],
        )
    if connection.dialect.name == "sqlite":
        connection.execute(
            text("INSERT INTO search_fts(rowid, body) VALUES (:id, :body)"),
            {"id": repository_id, "body": body},
        )


def remove(connection: Connection, repository_id: int) -> None:
    """Drop a repository's search document."""
    connection.execute(delete(documents).where(documents.c.repository_id == repository_id))
    connection.execute(delete(terms).where(terms.c.repository_id == repository_id))
    if connection.dialect.name == "sqlite":
        connection.execute(text("DELETE FROM search_fts WHERE rowid = :id"), {"id": repository_id})


@dataclass(frozen=True)
class SearchQuery:
    """A search: words, filters, order and page."""

    q: str = ""
    family: str | None = None
    namespace: str | None = None
    superclass: str | None = None
    signer: str | None = None
    sort: str = "relevance"
    limit: int = 20
    cursor: str | None = None


def _padded(column: Any) -> Any:
    return literal(" ") + column + literal(" ")


def _score(words: list[str]) -> ColumnElement[Any]:
    if not words:
        return literal(0)
    terms = [
        case(
            (_padded(documents.c.name_words).contains(f" {word} ", autoescape=True), 3),
            (_padded(documents.c.key_words).contains(f" {word} ", autoescape=True), 2),
            (_padded(documents.c.text_words).contains(f" {word} ", autoescape=True), 1),
            else_=0,
        )
        for word in words
    ]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _full_text(connection: Connection, words: list[str]) -> ColumnElement[bool]:
    if connection.dialect.name == "sqlite":
        match = " ".join(f'"{word}"' for word in words)
        candidates = text("SELECT rowid FROM search_fts WHERE search_fts MATCH :match").bindparams(
            match=match
        )
        return documents.c.repository_id.in_(candidates.columns(rowid=Integer))
    simple = literal_column("'simple'::regconfig")  # must match the index's expression
    vector = func.to_tsvector(simple, documents.c.body)
    return vector.op("@@")(func.plainto_tsquery(simple, " ".join(words)))


#: A cursor's keys are 63-bit integers (the index's BIGINT keys); anything else is not a cursor.
_MAX_KEY = 2**63 - 1
#: The grammar of each filter but the superclass (a word or words of the file's metadata, checked
#: as printable text): a family, a namespace name, a signer's key id.
_FILTERS = {
    "family": re.compile(r"[a-z0-9][a-z0-9._-]{0,15}"),
    "namespace": pf.NAME,
    "signer": re.compile(r"ed25519:[0-9a-f]{32}"),
}


def _query_binding(query: SearchQuery, words: list[str]) -> str:
    """What a cursor is bound to: the words, filters and order of the search that made it (a
    short digest, so a cursor stays short however long the query)."""
    parts = [query.sort, " ".join(words), query.family, query.namespace, query.superclass]
    raw = json.dumps([*parts, query.signer], separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _invalid_cursor() -> ApiError:
    return ApiError(400, Code.INVALID_CURSOR, "invalid cursor for this search")


def _decode_cursor(cursor: str, binding: str) -> tuple[int, int]:
    """The (sort key, repository id) a cursor carries, when it was made by this very search;
    400 INVALID_CURSOR for anything else (bad base64 or JSON, other types, out of range, made by
    another search)."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii") + b"=="))
    except (ValueError, UnicodeError):
        raise _invalid_cursor() from None
    if not (isinstance(value, list) and len(value) == 3 and value[0] == binding):
        raise _invalid_cursor()
    key, last_id = value[1], value[2]
    for number in (key, last_id):
        # bool is an int in Python, and JSON's true would compare as 1: refuse it
        if type(number) is not int or not 0 <= number <= _MAX_KEY:
            raise _invalid_cursor()
    return key, last_id


def _encode_cursor(binding: str, key: int, last_id: int) -> str:
    raw = json.dumps([binding, key, last_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _check_filters(query: SearchQuery) -> None:
    """Refuse a filter that no concept can match (400 BAD_REQUEST) before any SQL is sent."""
    for name, value in (
        ("family", query.family),
        ("namespace", query.namespace),
        ("signer", query.signer),
    ):
        if value and not _FILTERS[name].fullmatch(value):
            raise ApiError(400, Code.BAD_REQUEST, f"invalid {name} filter {value!r}")
    if query.superclass and any(
        unicodedata.category(char) in ("Cc", "Cs") for char in query.superclass
    ):
        raise ApiError(400, Code.BAD_REQUEST, "invalid superclass filter")


def run(connection: Connection, query: SearchQuery, visible: Any) -> dict[str, Any]:
    """Search the repositories ``visible`` (a SQL condition) for ``query``; one page of results
    and the cursor of the next page (None at the end)."""
    if query.sort not in SORTS:
        raise ApiError(400, Code.BAD_REQUEST, f"sort must be one of {', '.join(SORTS)}")
    _check_filters(query)
    words = list(dict.fromkeys(normalise(query.q).split()))[:MAX_QUERY_WORDS]
    binding = _query_binding(query, words)
    one_word_keys = {"relevance": terms.c.weight, "recent": terms.c.version_id}
    if query.sort in one_word_keys and len(words) == 1 and len(words[0]) <= MAX_WORD:
        # one word: its postings, read in score or recency order from an index (see ``terms``)
        key, ident = one_word_keys[query.sort], terms.c.repository_id
        ranked = (
            select(ident, key.label("sort_key"))
            .select_from(terms)
            .join(documents, documents.c.repository_id == ident)
            .join(repositories, repositories.c.id == ident)
            .where(terms.c.word == words[0], visible)
        )
    else:
        keys = {
            # without words every score is 0 and relevance order is newest first: order by the
            # indexed key itself, so the database reads 20 rows instead of sorting all of them
            "relevance": _score(words) if words else documents.c.repository_id,
            "downloads": repositories.c.downloads,
            "recent": documents.c.version_id,
        }
        key, ident = keys[query.sort], documents.c.repository_id
        # Rank on the documents (and the repositories, for visibility and downloads) alone, cut
        # the page, and only then join the details of its rows: a common word matches tens of
        # thousands of documents, and joining all of them before the cut is what made it slow.
        ranked = (
            select(ident, key.label("sort_key"))
            .join(repositories, repositories.c.id == ident)
            .where(visible)
        )
        if words:
            ranked = ranked.where(_full_text(connection, words))
    if query.namespace:
        owner = select(accounts.c.id).where(accounts.c.name == query.namespace)
        ranked = ranked.where(repositories.c.namespace_id.in_(owner.scalar_subquery()))
    for column, value in (
        (documents.c.family, query.family),
        (documents.c.superclass, query.superclass),
    ):
        if value:
            ranked = ranked.where(column == value)
    if query.signer:
        ranked = ranked.where(documents.c.signers.contains(f" {query.signer} ", autoescape=True))
    if query.cursor:
        last_key, last_id = _decode_cursor(query.cursor, binding)
        ranked = ranked.where(tuple_(key, ident) < tuple_(last_key, last_id))
    page_ids = ranked.order_by(key.desc(), ident.desc()).limit(query.limit + 1).subquery()
    rows = connection.execute(
        select(
            documents,
            repositories.c.name,
            repositories.c.private,
            repositories.c.description,
            repositories.c.labels,
            repositories.c.downloads,
            accounts.c.name.label("namespace"),
            concept_files.c.token,
            concept_files.c.title,
            concept_files.c.signers.label("file_signers"),
            versions.c.version,
            versions.c.digest,
            page_ids.c.sort_key,
        )
        .join(page_ids, page_ids.c.repository_id == documents.c.repository_id)
        .join(repositories, repositories.c.id == documents.c.repository_id)
        .join(accounts, accounts.c.id == repositories.c.namespace_id)
        .join(versions, versions.c.id == documents.c.version_id)
        .join(concept_files, concept_files.c.digest == versions.c.digest)
        .order_by(page_ids.c.sort_key.desc(), documents.c.repository_id.desc())
    ).all()
    page = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]
        next_cursor = _encode_cursor(binding, int(last.sort_key), last.repository_id)
    return {
        "results": [
            {
                "reference": f"{row.namespace}/{row.name}:{row.version}",
                "namespace": row.namespace,
                "name": row.name,
                "version": row.version,
                "digest": row.digest,
                "token": row.token,
                "title": row.title,
                "superclass": row.superclass,
                "family": row.family,
                "description": row.description,
                "labels": row.labels.split(),
                "downloads": row.downloads,
                "signers": row.file_signers.split(),
                "private": row.private,
                "score": int(row.sort_key) if query.sort == "relevance" and words else None,
            }
            for row in page
        ],
        "next_cursor": next_cursor,
    }
