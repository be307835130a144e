"""The typed Python client of the pfx registry (spec/registry-api.md).

One :class:`Client` holds one ``httpx.Client``, so connections are reused; use it as a context
manager or call :meth:`Client.close`. Every endpoint has one method, and every answer is parsed
into a frozen dataclass of :mod:`pfx.results` (re-exported here)::

    with Client("http://127.0.0.1:8700", token) as registry:
        blob = registry.upload_blob(data)
        registry.publish("alice", "teddy", "1.0", blob.digest)
        data = registry.download("alice", "teddy", "latest")

Retries, bounded answers and how failures surface are those of :mod:`pfx.http`: the registry's
error answers raise :class:`~pfx.errors.RegistryError`, a registry that cannot be reached
``REGISTRY_UNREACHABLE``, an answer that breaks the API ``REGISTRY_PROTOCOL``.

Downloads return the bytes as received: the client never trusts a header for the digest, the
caller checks the content (spec §1).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Unpack

import httpx

import perfusion_format as pf
from pfx.config import effective_registry, effective_token
from pfx.errors import ClientError, ErrorCode
from pfx.http import (
    BaseClient,
    Chunks,
    Progress,
    api_path,
    compact,
    parse_result,
    result_member,
)
from pfx.results import (
    CreatedToken,
    KeyInfo,
    Member,
    Membership,
    OrgInfo,
    Policy,
    PreviewInfo,
    PublishedVersion,
    RepositoryInfo,
    RepositorySummary,
    SearchFilters,
    SearchHit,
    SearchPage,
    TagInfo,
    TokenInfo,
    UploadedBlob,
    UserInfo,
    VersionInfo,
    VersionSummary,
    WhoAmI,
    YankState,
)

__all__ = [
    "Client",
    "CreatedToken",
    "KeyInfo",
    "Member",
    "Membership",
    "OrgInfo",
    "Policy",
    "PreviewInfo",
    "Progress",
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


def _configured_registry() -> str:
    url = effective_registry()
    if not url:
        raise ClientError(
            ErrorCode.USAGE_ERROR,
            "no registry: pass --registry URL, set PFX_REGISTRY or run `pfx login URL`",
        )
    return url


class Client(BaseClient):
    """A client of one pfx registry.

    ``url`` is the registry's root (``http://127.0.0.1:8700``); ``token`` is sent as
    ``Authorization: Bearer`` (anonymous without). Without ``url`` the client uses the user's
    registry and token: ``$PFX_REGISTRY`` / ``$PFX_TOKEN``, else those ``pfx login`` saved
    (USAGE_ERROR when there is none); a ``token`` given still wins. ``timeout``, ``retries``,
    ``backoff`` and ``transport`` are those of :class:`pfx.http.BaseClient`: a request is tried
    at most ``retries + 1`` times, the n-th retry waiting ``Retry-After`` or ``backoff * 2**n``
    seconds with jitter, never more than :data:`pfx.http.MAX_RETRY_WAIT`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if url is None:
            url, token = _configured_registry(), token or effective_token()
        super().__init__(
            url, token, timeout=timeout, retries=retries, backoff=backoff, transport=transport
        )

    # -- identity ---------------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        """Who the token belongs to, its scope, and whether they administer the registry."""
        return parse_result(WhoAmI, self._json("GET", "/v1/whoami"), "whoami")

    # -- blobs ------------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        """Whether a blob is stored and visible to the caller (``HEAD``; upload only if not)."""
        answer = self._exchange("HEAD", api_path("blobs", digest))
        if answer.status in (200, 404):
            return answer.status == 200
        raise self._failure(answer)

    def upload_blob(
        self, data: bytes, digest: str | None = None, progress: Progress | None = None
    ) -> UploadedBlob:
        """Upload a concept file (a ``write`` token); its SHA-256 is computed unless ``digest``
        is given. The body is sent in chunks, reported to ``progress(sent, total)``. Uploading
        stored bytes again is a no-op."""
        digest = digest or pf.content_digest(data)
        body = data if progress is None else Chunks(data, progress)
        answer = self._json(
            "PUT",
            api_path("blobs", digest),
            content=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
            },
        )
        return parse_result(UploadedBlob, answer, "blob")

    def download_blob(self, digest: str, progress: Progress | None = None) -> bytes:
        """A blob's bytes (does not count a download). Check them against ``digest``: nothing
        here trusts what the server says about them."""
        return self._bytes(api_path("blobs", digest), progress)

    # -- concepts ---------------------------------------------------------------------------------

    def publish(
        self,
        ns: str,
        name: str,
        version: str,
        digest: str,
        *,
        tags: list[str] | None = None,
        private: bool | None = None,
        description: str | None = None,
        labels: list[str] | None = None,
    ) -> PublishedVersion:
        """Publish an uploaded concept as ``ns/name:version`` and point ``tags`` at it (the
        registry's default: ``["latest"]``; ``[]`` for none). ``None`` settings keep the
        repository's (a new repository is private, without description or labels). Publishing
        the same digest again succeeds with ``created=False``; another digest is
        ``VERSION_EXISTS``."""
        body = compact(
            digest=digest, tags=tags, private=private, description=description, labels=labels
        )
        answer = self._call("PUT", api_path("concepts", ns, name, "versions", version), json=body)
        return parse_result(
            PublishedVersion, answer.json(), "version", created=answer.status == 201
        )

    def resolve(self, ns: str, name: str, reference: str) -> VersionInfo:
        """The version a tag, version name or ``sha256:`` digest names (yanked versions only by
        digest)."""
        answer = self._json("GET", api_path("concepts", ns, name, "versions", reference))
        return parse_result(VersionInfo, answer, "version")

    def download(
        self, ns: str, name: str, reference: str, progress: Progress | None = None
    ) -> bytes:
        """The concept file ``reference`` names, counting one download of the repository. Check
        the bytes against the digest :meth:`resolve` gave: nothing here trusts the server."""
        path = api_path("concepts", ns, name, "versions", reference, "file")
        return self._bytes(path, progress)

    def repository(self, ns: str, name: str) -> RepositoryInfo:
        """A repository with its tags, versions and previews."""
        return parse_result(
            RepositoryInfo, self._json("GET", api_path("concepts", ns, name)), "repository"
        )

    def list_namespace(self, ns: str) -> list[RepositorySummary]:
        """The repositories of ``ns`` the caller may read, by name."""
        answer = self._json("GET", api_path("concepts", ns))
        return result_member(answer, "concepts", list[RepositorySummary], "namespace")

    def update_repository(
        self,
        ns: str,
        name: str,
        *,
        private: bool | None = None,
        description: str | None = None,
        labels: list[str] | None = None,
    ) -> RepositoryInfo:
        """Change a repository's settings (``None``: unchanged; visibility needs ``admin``)."""
        body = compact(private=private, description=description, labels=labels)
        answer = self._json("PATCH", api_path("concepts", ns, name), json=body)
        return parse_result(RepositoryInfo, answer, "repository")

    def delete_repository(self, ns: str, name: str) -> None:
        """Delete a repository with its versions and tags (``admin``)."""
        self._call("DELETE", api_path("concepts", ns, name))

    def move_tag(self, ns: str, name: str, tag: str, version: str) -> TagInfo:
        """Create or move ``tag`` to the version named ``version``."""
        path = api_path("concepts", ns, name, "tags", tag)
        return parse_result(TagInfo, self._json("PUT", path, json={"version": version}), "tag")

    def yank(self, ns: str, name: str, version: str) -> YankState:
        """Hide a version (by its name) from resolution and search; pulls by digest still work."""
        return self._set_yanked("POST", ns, name, version)

    def unyank(self, ns: str, name: str, version: str) -> YankState:
        """Undo :meth:`yank`."""
        return self._set_yanked("DELETE", ns, name, version)

    def _set_yanked(self, method: str, ns: str, name: str, version: str) -> YankState:
        path = api_path("concepts", ns, name, "versions", version, "yank")
        return parse_result(YankState, self._json(method, path), "yank")

    def attach_preview(self, ns: str, name: str, data: bytes) -> UploadedBlob:
        """Attach a PNG, JPEG or WebP preview image (at most 1 MiB, 8 per repository)."""
        path = api_path("concepts", ns, name, "previews")
        answer = self._json(
            "POST", path, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        return parse_result(UploadedBlob, answer, "preview")

    def detach_preview(self, ns: str, name: str, digest: str) -> None:
        """Detach a preview image."""
        self._call("DELETE", api_path("concepts", ns, name, "previews", digest))

    # -- search -----------------------------------------------------------------------------------

    def search(
        self, query: str = "", *, cursor: str | None = None, **filters: Unpack[SearchFilters]
    ) -> SearchPage:
        """One page of the repositories the caller may read matching every word of ``query``
        and the ``filters`` (:class:`SearchFilters`). Pass ``next_cursor`` back as ``cursor``,
        with the same query and filters, for the next page."""
        params = compact(q=query or None, cursor=cursor, **filters)
        return parse_result(SearchPage, self._json("GET", "/v1/search", params=params), "search")

    def search_all(self, query: str = "", **filters: Unpack[SearchFilters]) -> Iterator[SearchHit]:
        """Every hit of :meth:`search`, page after page (``limit`` is the page size)."""
        cursor = None
        while True:
            page = self.search(query, cursor=cursor, **filters)
            yield from page.results
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- accounts and organizations ---------------------------------------------------------------

    def create_user(self, name: str, *, admin: bool = False) -> UserInfo:
        """Create a user (registry administrators; ``admin`` makes them one too)."""
        answer = self._json("POST", "/v1/users", json={"name": name, "admin": admin})
        return parse_result(UserInfo, answer, "user")

    def create_org(self, name: str) -> None:
        """Create an organization; the caller becomes its ``admin``."""
        self._call("POST", "/v1/orgs", json={"name": name})

    def list_orgs(self) -> list[OrgInfo]:
        """The caller's organizations and their role in each."""
        return result_member(self._json("GET", "/v1/orgs"), "orgs", list[OrgInfo], "orgs")

    def list_members(self, org: str) -> list[Member]:
        """The members of ``org`` (for its members; NOT_FOUND for everyone else)."""
        answer = self._json("GET", api_path("orgs", org, "members"))
        return result_member(answer, "members", list[Member], "members")

    def set_member(self, org: str, user: str, role: str = "reader") -> Membership:
        """Add ``user`` to ``org`` as ``reader``, ``writer`` or ``admin``, or change their role."""
        answer = self._json(
            "PUT", api_path("orgs", org, "members"), json={"user": user, "role": role}
        )
        return parse_result(Membership, answer, "membership")

    def remove_member(self, org: str, user: str) -> None:
        """Remove ``user`` from ``org`` (no error when they were not a member)."""
        self._call("DELETE", api_path("orgs", org, "members", user))

    # -- tokens -----------------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        scope: str = "read",
        expires_at: datetime | None = None,
        user: str | None = None,
    ) -> CreatedToken:
        """Create a token of the caller (or, for registry administrators, of ``user``) with a
        ``scope`` no wider than the caller's; a naive ``expires_at`` is taken as UTC."""
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        body = compact(
            name=name,
            scope=scope,
            expires_at=expires_at.isoformat() if expires_at else None,
            user=user,
        )
        return parse_result(CreatedToken, self._json("POST", "/v1/tokens", json=body), "token")

    def list_tokens(self) -> list[TokenInfo]:
        """The caller's tokens, revoked and expired ones included (never their secrets)."""
        return result_member(self._json("GET", "/v1/tokens"), "tokens", list[TokenInfo], "tokens")

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of the caller's tokens (the one in use included)."""
        self._call("DELETE", api_path("tokens", str(token_id)))

    # -- signing keys and policy ------------------------------------------------------------------

    def add_key(self, ns: str, public_key: str | pf.PublicKey, name: str = "") -> KeyInfo:
        """Register a signing key for ``ns`` (its ``admin``): a :class:`perfusion_format.PublicKey`,
        or its PEM or raw base64 text. Registering a known key again changes nothing."""
        text = public_key.to_base64() if isinstance(public_key, pf.PublicKey) else public_key
        answer = self._json(
            "POST", api_path("namespaces", ns, "keys"), json={"public_key": text, "name": name}
        )
        return parse_result(KeyInfo, answer, "key")

    def list_keys(self, ns: str) -> list[KeyInfo]:
        """The signing keys registered for ``ns``, in registration order."""
        answer = self._json("GET", api_path("namespaces", ns, "keys"))
        return result_member(answer, "keys", list[KeyInfo], "keys")

    def set_policy(
        self, ns: str, require_signatures: bool | None = None, protected_tags: bool | None = None
    ) -> Policy:
        """Change the policy of ``ns`` (its ``admin``; ``None``: unchanged)."""
        body = compact(require_signatures=require_signatures, protected_tags=protected_tags)
        answer = self._json("PUT", api_path("namespaces", ns, "policy"), json=body)
        return parse_result(Policy, answer, "policy")

    def policy(self, ns: str) -> Policy:
        """The policy of ``ns``."""
        return parse_result(
            Policy, self._json("GET", api_path("namespaces", ns, "policy")), "policy"
        )
