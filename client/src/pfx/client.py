"""The typed Python client of the pfx registry (spec/registry-api.md).

One :class:`Client` holds one ``httpx.Client``, so connections are reused; use it as a context
manager or call :meth:`Client.close`. Every endpoint has one method, and every answer is parsed
into a frozen dataclass; an answer that is not what the API specifies raises
:class:`~pfx.errors.ClientError` ``REGISTRY_PROTOCOL`` instead of a ``KeyError``::

    with Client("http://127.0.0.1:8700", token) as registry:
        blob = registry.upload_blob(data)
        registry.publish("alice", "teddy", "1.0", blob.digest)
        data = registry.download("alice", "teddy", "latest")

Failures: the registry's error answers raise :class:`~pfx.errors.RegistryError` (its ``code``,
``status`` and message); a registry that cannot be reached raises ``REGISTRY_UNREACHABLE``.
Requests that are safe to repeat (``GET``, ``HEAD``, ``PUT``, ``DELETE``) are retried with
exponential backoff and jitter on ``429``, ``502``, ``503``, ``504`` and transport errors,
honouring ``Retry-After``; a ``POST`` is retried only when the registry provably did nothing
(the connection was never made, or ``429``, which the registry answers before anything else).

Downloads return the bytes as received: the client never trusts a header for the digest, the
caller checks the content (spec §1).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from types import NoneType, UnionType
from typing import Any, TypedDict, TypeVar, Unpack, get_args, get_origin, get_type_hints
from urllib.parse import quote

import httpx

import perfusion_format as pf
from pfx import __version__
from pfx.config import effective_registry, effective_token
from pfx.errors import ClientError, ErrorCode, RegistryError

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

Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes sent or received so far, of ``total`` (0 when unknown)."""

#: The longest a retry waits, whatever ``Retry-After`` says.
MAX_RETRY_WAIT = 30.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: Transport errors raised before any byte of the request left: safe to retry for every method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_CHUNK = 64 * 1024
_MAX_DETAIL = 500
#: The most bytes read from one answer: a concept file is at most 4 MiB and the largest JSON
#: answer (a 100-result search page) well under this; a server sending more is refused.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: The codes of body-less error answers to ``HEAD /v1/blobs/{digest}`` (spec §4.1, §6).
_HEAD_CODES = {
    400: "DIGEST_INVALID",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    413: "TOO_LARGE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


# -- results -------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
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


# -- parsing answers -----------------------------------------------------------------------------

_Result = TypeVar("_Result")


def _protocol_error(message: str) -> ClientError:
    return ClientError(ErrorCode.REGISTRY_PROTOCOL, message)


@cache
def _hints(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)


def _parse(kind: type[_Result], value: object, where: str, **known: Any) -> _Result:
    """``value`` (decoded JSON) as the dataclass ``kind``; fields in ``known`` are not read.
    Unknown members are ignored; a missing or mistyped one raises REGISTRY_PROTOCOL."""
    if not isinstance(value, dict):
        raise _protocol_error(f"the registry's answer is malformed: {where} is not an object")
    arguments = dict(known)
    for item in fields(kind):  # type: ignore[arg-type]
        if item.name not in known:
            hint = _hints(kind)[item.name]
            arguments[item.name] = _convert(hint, value.get(item.name), f"{where}.{item.name}")
    return kind(**arguments)


def _convert(hint: Any, value: object, where: str) -> Any:
    """``value`` checked against (and converted to) the type ``hint`` of a result field."""
    origin = get_origin(hint)
    if origin is UnionType:  # ``X | None``
        if value is None:
            return None
        (inner,) = (argument for argument in get_args(hint) if argument is not NoneType)
        return _convert(inner, value, where)
    if origin is list and isinstance(value, list):
        (item,) = get_args(hint)
        return [_convert(item, element, f"{where}[{i}]") for i, element in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(hint)
        return {key: _convert(item, element, f"{where}.{key}") for key, element in value.items()}
    if is_dataclass(hint):
        return _parse(hint, value, where)  # type: ignore[arg-type]
    if hint is datetime and isinstance(value, str):
        return _timestamp(value, where)
    if origin is None and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    shown = "missing" if value is None else f"a JSON {type(value).__name__}"
    raise _protocol_error(f"the registry's answer is malformed: {where} is {shown}")


def _timestamp(value: str, where: str) -> datetime:
    """An ISO 8601 timestamp; one without an offset is UTC (spec §9)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _protocol_error(f"the registry's answer is malformed: {where} is no time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _member(body: object, name: str, hint: Any, where: str) -> Any:
    """The member ``name`` of the answer object ``body``, checked against ``hint``."""
    if not isinstance(body, dict):
        raise _protocol_error(f"the registry's answer is malformed: {where} is not an object")
    return _convert(hint, body.get(name), f"{where}.{name}")


# -- transport -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """A response read whole."""

    method: str
    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL

    def json(self) -> Any:
        """The body as JSON; REGISTRY_PROTOCOL when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            kind = self.headers.get("content-type", "no content type")
            raise _protocol_error(
                f"registry answered {self.status} to {self.method} {self.url.path} with a body "
                f"that is not JSON ({kind})"
            ) from None


class _Chunks:
    """An upload body sent in chunks, reporting progress; iterable again for a retry."""

    def __init__(self, data: bytes, progress: Progress) -> None:
        self.data = data
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            yield bytes(chunk)
            self.progress(start + len(chunk), len(view))


def _segment(value: str) -> str:
    """One URL path segment, percent-encoded; never empty, ``.`` or ``..``."""
    if not value:
        raise ValueError("a name or reference in a registry URL cannot be empty")
    encoded = quote(value, safe=":@")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def _path(*segments: str) -> str:
    """``/v1/<segment>/…`` with each segment encoded by :func:`_segment`."""
    return "/v1/" + "/".join(_segment(segment) for segment in segments)


def _retry_after(answer: _Answer) -> float | None:
    """``Retry-After`` in seconds, when the answer carries a number there."""
    try:
        seconds = float(answer.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: use the backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _compact(**values: Any) -> dict[str, Any]:
    """The arguments that are not ``None``: a request body or query without omitted fields."""
    return {name: value for name, value in values.items() if value is not None}


# -- the client ----------------------------------------------------------------------------------


def _configured_registry() -> str:
    url = effective_registry()
    if not url:
        raise ClientError(
            ErrorCode.USAGE_ERROR,
            "no registry: pass --registry URL, set PFX_REGISTRY or run `pfx login URL`",
        )
    return url


class Client:
    """A client of one pfx registry.

    ``url`` is the registry's root (``http://127.0.0.1:8700``); ``token`` is sent as
    ``Authorization: Bearer`` (anonymous without). Without ``url`` the client uses the user's
    registry and token: ``$PFX_REGISTRY`` / ``$PFX_TOKEN``, else those ``pfx login`` saved
    (USAGE_ERROR when there is none); a ``token`` given still wins. ``timeout`` applies to
    connecting and to each read or write. A request is tried at most ``retries + 1`` times; the
    n-th retry waits ``Retry-After`` when the answer has one, else ``backoff * 2**n`` seconds
    with jitter, never more than :data:`MAX_RETRY_WAIT`. ``transport`` replaces httpx's (for
    tests and proxies).
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
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff cannot be negative")
        if url is None:
            url, token = _configured_registry(), token or effective_token()
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._authorization = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers={"User-Agent": f"pfx/{__version__}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- requests ---------------------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        authorized: bool = True,
        progress: Progress | None = None,
        **request: Any,
    ) -> _Answer:
        """Send one request, retrying as the class documents; the answer read whole (reporting
        a 200's body to ``progress``). REGISTRY_UNREACHABLE when no answer came."""
        headers = {**request.pop("headers", {}), **(self._authorization if authorized else {})}
        attempt = 0
        while True:
            sent = self._http.build_request(method, url, headers=headers, **request)
            try:
                answer = self._attempt(sent, progress)
            except httpx.TransportError as error:
                repeatable = method in _IDEMPOTENT or isinstance(error, _NOT_SENT)
                if repeatable and attempt < self.retries:
                    self._wait(attempt, None)
                    attempt += 1
                    continue
                reason = str(error) or type(error).__name__
                raise ClientError(
                    ErrorCode.REGISTRY_UNREACHABLE,
                    f"no answer from {sent.url} after {attempt + 1} attempts: {reason}",
                ) from error
            repeatable = method in _IDEMPOTENT or answer.status == 429
            if answer.status in _RETRY_STATUSES and repeatable and attempt < self.retries:
                self._wait(attempt, _retry_after(answer))
                attempt += 1
                continue
            return answer

    def _attempt(self, request: httpx.Request, progress: Progress | None) -> _Answer:
        """Send ``request`` once and read the answer whole."""
        response = self._http.send(request, stream=True)
        try:
            total = int(response.headers.get("content-length", "0") or 0)
            received = bytearray()
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise _protocol_error(
                        f"{request.method} {request.url.path}: the answer exceeds "
                        f"{MAX_ANSWER_BYTES} bytes"
                    )
                if progress is not None and response.status_code == 200:
                    progress(len(received), total)
            body = bytes(received)
        finally:
            response.close()
        return _Answer(request.method, response.status_code, response.headers, body, request.url)

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is None:
            retry_after = self.backoff * 2**attempt * random.uniform(0.5, 1.0)  # noqa: S311
        time.sleep(min(retry_after, MAX_RETRY_WAIT))

    def _call(self, method: str, path: str, **request: Any) -> _Answer:
        """A request whose answer must be a success (2xx); RegistryError otherwise."""
        answer = self._exchange(method, path, **request)
        if answer.status < 300:
            return answer
        raise self._failure(answer)

    def _json(self, method: str, path: str, **request: Any) -> Any:
        """A request answered with JSON: the decoded body."""
        return self._call(method, path, **request).json()

    def _failure(self, answer: _Answer) -> ClientError:
        """The error an unsuccessful answer stands for."""
        if 300 <= answer.status < 400:
            return _protocol_error(
                f"registry answered {answer.status} to {answer.method} {answer.url.path}, "
                "a redirect this endpoint does not make"
            )
        if answer.method == "HEAD" and not answer.body and answer.status in _HEAD_CODES:
            detail = "an answer to HEAD carries no message"
            return RegistryError(_HEAD_CODES[answer.status], answer.status, detail)
        error = _member(answer.json(), "error", dict, "error answer")
        code = _member(error, "code", str, "error answer.error")
        detail = _member(error, "message", str, "error answer.error")
        return RegistryError(code, answer.status, detail[:_MAX_DETAIL])

    def _bytes(self, path: str, progress: Progress | None) -> bytes:
        """A blob's bytes from ``path``, following a 307 to a presigned URL without sending the
        token there (the URL itself is the credential, spec §7)."""
        answer = self._exchange("GET", path, progress=progress)
        if answer.status == 307 and "location" in answer.headers:
            target = str(answer.url.join(answer.headers["location"]))
            answer = self._exchange("GET", target, authorized=False, progress=progress)
        if answer.status == 200:
            return answer.body
        raise self._failure(answer)

    # -- identity ---------------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        """Who the token belongs to, its scope, and whether they administer the registry."""
        return _parse(WhoAmI, self._json("GET", "/v1/whoami"), "whoami")

    # -- blobs ------------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        """Whether a blob is stored and visible to the caller (``HEAD``; upload only if not)."""
        answer = self._exchange("HEAD", _path("blobs", digest))
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
        body = data if progress is None else _Chunks(data, progress)
        answer = self._json(
            "PUT",
            _path("blobs", digest),
            content=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
            },
        )
        return _parse(UploadedBlob, answer, "blob")

    def download_blob(self, digest: str, progress: Progress | None = None) -> bytes:
        """A blob's bytes (does not count a download). Check them against ``digest``: nothing
        here trusts what the server says about them."""
        return self._bytes(_path("blobs", digest), progress)

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
        body = _compact(
            digest=digest, tags=tags, private=private, description=description, labels=labels
        )
        answer = self._call("PUT", _path("concepts", ns, name, "versions", version), json=body)
        return _parse(PublishedVersion, answer.json(), "version", created=answer.status == 201)

    def resolve(self, ns: str, name: str, reference: str) -> VersionInfo:
        """The version a tag, version name or ``sha256:`` digest names (yanked versions only by
        digest)."""
        answer = self._json("GET", _path("concepts", ns, name, "versions", reference))
        return _parse(VersionInfo, answer, "version")

    def download(
        self, ns: str, name: str, reference: str, progress: Progress | None = None
    ) -> bytes:
        """The concept file ``reference`` names, counting one download of the repository. Check
        the bytes against the digest :meth:`resolve` gave: nothing here trusts the server."""
        path = _path("concepts", ns, name, "versions", reference, "file")
        return self._bytes(path, progress)

    def repository(self, ns: str, name: str) -> RepositoryInfo:
        """A repository with its tags, versions and previews."""
        return _parse(RepositoryInfo, self._json("GET", _path("concepts", ns, name)), "repository")

    def list_namespace(self, ns: str) -> list[RepositorySummary]:
        """The repositories of ``ns`` the caller may read, by name."""
        answer = self._json("GET", _path("concepts", ns))
        return _member(answer, "concepts", list[RepositorySummary], "namespace")

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
        body = _compact(private=private, description=description, labels=labels)
        answer = self._json("PATCH", _path("concepts", ns, name), json=body)
        return _parse(RepositoryInfo, answer, "repository")

    def delete_repository(self, ns: str, name: str) -> None:
        """Delete a repository with its versions and tags (``admin``)."""
        self._call("DELETE", _path("concepts", ns, name))

    def move_tag(self, ns: str, name: str, tag: str, version: str) -> TagInfo:
        """Create or move ``tag`` to the version named ``version``."""
        path = _path("concepts", ns, name, "tags", tag)
        return _parse(TagInfo, self._json("PUT", path, json={"version": version}), "tag")

    def yank(self, ns: str, name: str, version: str) -> YankState:
        """Hide a version (by its name) from resolution and search; pulls by digest still work."""
        return self._set_yanked("POST", ns, name, version)

    def unyank(self, ns: str, name: str, version: str) -> YankState:
        """Undo :meth:`yank`."""
        return self._set_yanked("DELETE", ns, name, version)

    def _set_yanked(self, method: str, ns: str, name: str, version: str) -> YankState:
        path = _path("concepts", ns, name, "versions", version, "yank")
        return _parse(YankState, self._json(method, path), "yank")

    def attach_preview(self, ns: str, name: str, data: bytes) -> UploadedBlob:
        """Attach a PNG, JPEG or WebP preview image (at most 1 MiB, 8 per repository)."""
        path = _path("concepts", ns, name, "previews")
        answer = self._json(
            "POST", path, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        return _parse(UploadedBlob, answer, "preview")

    def detach_preview(self, ns: str, name: str, digest: str) -> None:
        """Detach a preview image."""
        self._call("DELETE", _path("concepts", ns, name, "previews", digest))

    # -- search -----------------------------------------------------------------------------------

    def search(
        self, query: str = "", *, cursor: str | None = None, **filters: Unpack[SearchFilters]
    ) -> SearchPage:
        """One page of the repositories the caller may read matching every word of ``query``
        and the ``filters`` (:class:`SearchFilters`). Pass ``next_cursor`` back as ``cursor``,
        with the same query and filters, for the next page."""
        params = _compact(q=query or None, cursor=cursor, **filters)
        return _parse(SearchPage, self._json("GET", "/v1/search", params=params), "search")

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
        return _parse(UserInfo, answer, "user")

    def create_org(self, name: str) -> None:
        """Create an organization; the caller becomes its ``admin``."""
        self._call("POST", "/v1/orgs", json={"name": name})

    def list_orgs(self) -> list[OrgInfo]:
        """The caller's organizations and their role in each."""
        return _member(self._json("GET", "/v1/orgs"), "orgs", list[OrgInfo], "orgs")

    def list_members(self, org: str) -> list[Member]:
        """The members of ``org`` (for its members; NOT_FOUND for everyone else)."""
        answer = self._json("GET", _path("orgs", org, "members"))
        return _member(answer, "members", list[Member], "members")

    def set_member(self, org: str, user: str, role: str = "reader") -> Membership:
        """Add ``user`` to ``org`` as ``reader``, ``writer`` or ``admin``, or change their role."""
        answer = self._json("PUT", _path("orgs", org, "members"), json={"user": user, "role": role})
        return _parse(Membership, answer, "membership")

    def remove_member(self, org: str, user: str) -> None:
        """Remove ``user`` from ``org`` (no error when they were not a member)."""
        self._call("DELETE", _path("orgs", org, "members", user))

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
        body = _compact(
            name=name,
            scope=scope,
            expires_at=expires_at.isoformat() if expires_at else None,
            user=user,
        )
        return _parse(CreatedToken, self._json("POST", "/v1/tokens", json=body), "token")

    def list_tokens(self) -> list[TokenInfo]:
        """The caller's tokens, revoked and expired ones included (never their secrets)."""
        return _member(self._json("GET", "/v1/tokens"), "tokens", list[TokenInfo], "tokens")

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of the caller's tokens (the one in use included)."""
        self._call("DELETE", _path("tokens", str(token_id)))

    # -- signing keys and policy ------------------------------------------------------------------

    def add_key(self, ns: str, public_key: str | pf.PublicKey, name: str = "") -> KeyInfo:
        """Register a signing key for ``ns`` (its ``admin``): a :class:`perfusion_format.PublicKey`,
        or its PEM or raw base64 text. Registering a known key again changes nothing."""
        text = public_key.to_base64() if isinstance(public_key, pf.PublicKey) else public_key
        answer = self._json(
            "POST", _path("namespaces", ns, "keys"), json={"public_key": text, "name": name}
        )
        return _parse(KeyInfo, answer, "key")

    def list_keys(self, ns: str) -> list[KeyInfo]:
        """The signing keys registered for ``ns``, in registration order."""
        answer = self._json("GET", _path("namespaces", ns, "keys"))
        return _member(answer, "keys", list[KeyInfo], "keys")

    def set_policy(
        self, ns: str, require_signatures: bool | None = None, protected_tags: bool | None = None
    ) -> Policy:
        """Change the policy of ``ns`` (its ``admin``; ``None``: unchanged)."""
        body = _compact(require_signatures=require_signatures, protected_tags=protected_tags)
        answer = self._json("PUT", _path("namespaces", ns, "policy"), json=body)
        return _parse(Policy, answer, "policy")

    def policy(self, ns: str) -> Policy:
        """The policy of ``ns``."""
        return _parse(Policy, self._json("GET", _path("namespaces", ns, "policy")), "policy")
