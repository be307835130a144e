"""What the registry answers, as the client hands it out: frozen dataclasses, one per kind of
answer (spec/registry-api.md §4, §5), and the filters a search takes.

:mod:`pfx.http` builds them from the decoded JSON, checking each field against the type written
here, so a field's annotation is also its contract: an answer whose field has another type is
refused with ``REGISTRY_PROTOCOL``. Members the registry adds later are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

__all__ = [
    "CreatedToken",
    "KeyInfo",
    "Member",
    "Membership",
    "OrgInfo",
    "Policy",
    "PreviewInfo",
    "PublishedVersion",
    "RepositoryInfo",
    "RepositorySummary",
    "SearchFilters",
    "SearchHit",
    "SearchPage",
    "TagInfo",
    "TokenInfo",
    "UploadedBlob",
    "UserInfo",
    "VersionInfo",
    "VersionSummary",
    "WhoAmI",
    "YankState",
]


@dataclass(frozen=True)
class WhoAmI:
    """Who the client's token belongs to (all ``None`` and ``admin=False`` when anonymous)."""

    name: str | None
    scope: str | None
    admin: bool


@dataclass(frozen=True)
class UploadedBlob:
    """A stored blob: a concept file, or a preview image attached to a repository."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class VersionInfo:
    """A published version, with what the registry read from its file (spec §4.2)."""

    reference: str
    version: str
    digest: str
    media_type: str
    size: int
    created_at: datetime
    yanked: bool
    token: str
    superclass: str
    title: str
    family: str
    dtype: str
    format_version: str
    base_fingerprint: str
    weights_digest: str
    signers: list[str]


@dataclass(frozen=True)
class PublishedVersion(VersionInfo):
    """The answer to a publish: the version, and whether this publish created it (``False``
    when the version already named this digest)."""

    created: bool


@dataclass(frozen=True)
class VersionSummary:
    """One version in a repository's listing (yanked ones included)."""

    version: str
    digest: str
    created_at: datetime
    yanked: bool
    token: str
    family: str
    signers: list[str]


@dataclass(frozen=True)
class PreviewInfo:
    """A preview image of a repository; ``url`` is the relative path of its blob."""

    digest: str
    media_type: str
    url: str


@dataclass(frozen=True)
class RepositoryInfo:
    """A repository: settings, downloads, tags (tag → version), versions in publish order and
    previews in attachment order."""

    namespace: str
    name: str
    private: bool
    description: str
    labels: list[str]
    downloads: int
    created_at: datetime
    tags: dict[str, str]
    versions: list[VersionSummary]
    previews: list[PreviewInfo]


@dataclass(frozen=True)
class RepositorySummary:
    """One repository of a namespace listing."""

    name: str
    private: bool
    downloads: int


@dataclass(frozen=True)
class TagInfo:
    """Where a tag points."""

    tag: str
    version: str


@dataclass(frozen=True)
class YankState:
    """Whether a version is yanked."""

    version: str
    yanked: bool


@dataclass(frozen=True)
class SearchHit:
    """One repository found by a search, shown by its newest non-yanked version; ``score`` is
    set for ``sort="relevance"`` with words, else ``None``."""

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


class SearchFilters(TypedDict, total=False):
    """Filters and order of a search (spec §5); ``None`` or absent: no filter."""

    family: str | None
    """The concept's model family (``sd-1``, ``sdxl``, …), exact."""
    namespace: str | None
    """The repository's namespace, exact."""
    signer: str | None
    """A key id that must have signed the repository's newest version."""
    superclass: str | None
    """The concept's superclass word, exact."""
    sort: str | None
    """``relevance`` (the default), ``downloads`` or ``recent``; always descending."""
    limit: int | None
    """Results per page, 1–100 (default 20)."""


@dataclass(frozen=True)
class SearchPage:
    """One page of search results and the cursor of the next (``None`` on the last page)."""

    results: list[SearchHit]
    next_cursor: str | None


@dataclass(frozen=True)
class UserInfo:
    """A user account."""

    id: int
    name: str
    admin: bool


@dataclass(frozen=True)
class Membership:
    """A user's role in an organization."""

    org: str
    user: str
    role: str


@dataclass(frozen=True)
class OrgInfo:
    """An organization the caller belongs to, and their role in it."""

    name: str
    role: str


@dataclass(frozen=True)
class Member:
    """A member of an organization and their role."""

    user: str
    role: str


@dataclass(frozen=True)
class TokenInfo:
    """One of the caller's tokens, without its secret (``expires_at`` ``None``: never)."""

    id: int
    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


@dataclass(frozen=True)
class CreatedToken:
    """A new token; ``token`` is its secret, shown this once."""

    id: int
    name: str
    scope: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class KeyInfo:
    """A signing key registered for a namespace (``public_key``: raw Ed25519 key, base64)."""

    key_id: str
    public_key: str
    name: str


@dataclass(frozen=True)
class Policy:
    """A namespace's policy."""

    require_signatures: bool
    protected_tags: bool
