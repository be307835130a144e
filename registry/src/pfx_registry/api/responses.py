"""Response bodies of the /v1 API, declared on the routes so that /openapi.json describes exactly
what is sent: every success body below, and the one error body for every error status.

Timestamps are ISO 8601 strings with their UTC offset; digests are ``sha256:<64 hex>``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = [
    "ERRORS",
    "BlobBody",
    "ErrorBody",
    "ErrorDetail",
    "KeyBody",
    "KeysBody",
    "MemberBody",
    "MembersBody",
    "NamespaceBody",
    "NewTokenBody",
    "OrganizationBody",
    "OrganizationsBody",
    "PolicyBody",
    "PreviewBody",
    "RepositoryBody",
    "SearchBody",
    "TagBody",
    "TokensBody",
    "UserBody",
    "VersionBody",
    "WhoamiBody",
    "YankBody",
    "errors",
]


class ErrorDetail(BaseModel):
    """A stable code (spec/registry-api.md §6) and a one-line message for humans."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


#: What each error status means, as /openapi.json tells it.
_ERROR_MEANINGS = {
    400: "Malformed request (BAD_REQUEST, NAME_INVALID, DIGEST_INVALID, INVALID_CURSOR)",
    401: "A token is needed, or the one sent is unknown, revoked or expired",
    403: "The caller's role or the token's scope is not enough",
    404: "Absent, or not visible to the caller",
    409: "Conflict (VERSION_EXISTS, TAG_PROTECTED, TOO_MANY, NAME_TAKEN)",
    413: "The request body exceeds its limit",
    415: "A preview is not a PNG, JPEG or WebP image",
    422: "A concept file or key refused by the format, or a missing signature",
    429: "Too many requests (Retry-After)",
    503: "The index or the blob store is unavailable (Retry-After)",
}
#: Statuses every /v1 route may answer: malformed input, a bad token, something absent or not
#: visible, an oversized body, the rate limit and a backend outage.
ERRORS = (400, 401, 404, 413, 429, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for these error statuses, each with :class:`ErrorBody`."""
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status]} for status in statuses
    }


class BlobBody(BaseModel):
    """An uploaded blob."""

    digest: str
    size: int
    media_type: str


class VersionBody(BaseModel):
    """A version, with what the server read from its concept file."""

    reference: str
    version: str
    digest: str
    size: int
    media_type: str
    created_at: str
    yanked: bool
    token: str
    superclass: str
    title: str
    family: str
    base_fingerprint: str
    dtype: str
    weights_digest: str
    format_version: str
    signers: list[str]


class PreviewBody(BaseModel):
    """A preview image of a repository."""

    digest: str
    media_type: str
    url: str


class VersionSummary(BaseModel):
    """A version as a repository lists it."""

    version: str
    digest: str
    created_at: str
    yanked: bool
    token: str
    family: str
    signers: list[str]


class RepositoryBody(BaseModel):
    """A repository: visibility, description, labels, downloads, previews, versions and tags."""

    namespace: str
    name: str
    private: bool
    previews: list[PreviewBody]
    description: str
    labels: list[str]
    downloads: int
    created_at: str
    tags: dict[str, str]
    versions: list[VersionSummary]


class RepositorySummary(BaseModel):
    """A repository as its namespace lists it."""

    name: str
    private: bool
    downloads: int


class NamespaceBody(BaseModel):
    """The repositories of a namespace that the caller may read."""

    namespace: str
    concepts: list[RepositorySummary]


class TagBody(BaseModel):
    """A tag and the version it names."""

    tag: str
    version: str


class YankBody(BaseModel):
    """A version's yanked state."""

    version: str
    yanked: bool


class AttachedPreviewBody(BaseModel):
    """An attached preview image."""

    digest: str
    media_type: str
    size: int


class UserBody(BaseModel):
    """A created user."""

    id: int
    name: str
    admin: bool


class WhoamiBody(BaseModel):
    """The caller (all null when anonymous)."""

    name: str | None
    scope: str | None
    admin: bool


class OrganizationBody(BaseModel):
    """A created organization."""

    name: str


class OrganizationRole(BaseModel):
    """An organization and the caller's role in it."""

    name: str
    role: str


class OrganizationsBody(BaseModel):
    """The caller's organizations."""

    orgs: list[OrganizationRole]


class MemberRole(BaseModel):
    """A member and their role."""

    user: str
    role: str


class MembersBody(BaseModel):
    """The members of an organization."""

    org: str
    members: list[MemberRole]


class MemberBody(BaseModel):
    """A membership as it is now."""

    org: str
    user: str
    role: str


class NewTokenBody(BaseModel):
    """A created token; the only answer that holds its secret."""

    id: int
    name: str
    scope: str
    expires_at: str | None
    token: str


class TokenSummary(BaseModel):
    """One of the caller's tokens, without its secret."""

    id: int
    name: str
    scope: str
    created_at: str
    expires_at: str | None
    revoked: bool


class TokensBody(BaseModel):
    """The caller's tokens."""

    tokens: list[TokenSummary]


class KeyBody(BaseModel):
    """A registered signing key."""

    key_id: str
    public_key: str
    name: str


class KeysBody(BaseModel):
    """A namespace's registered signing keys."""

    keys: list[KeyBody]


class PolicyBody(BaseModel):
    """A namespace's policy."""

    require_signatures: bool
    protected_tags: bool


class SearchResult(BaseModel):
    """One concept found by a search."""

    reference: str
    namespace: str
    name: str
    version: str
    digest: str
    token: str
    title: str
    superclass: str
    family: str
    description: str
    labels: list[str]
    downloads: int
    signers: list[str]
    private: bool
    score: int | None


class SearchBody(BaseModel):
    """One page of search results and the cursor of the next (null on the last page)."""

    results: list[SearchResult]
    next_cursor: str | None
