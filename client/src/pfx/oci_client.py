"""A client of the OCI Distribution API v1.1 — any OCI registry (distribution, Harbor, GHCR, zot,
the pfx registry's /v2/) — on :class:`pfx.http.BaseClient`: retries, bounded answers and
redirects followed without credentials are that class's.

**Authentication**, as docker and oras do it: a request goes out anonymously, or with what an
earlier answer asked for. A ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…``
gets a token from the realm (``GET realm?service=…&scope=repository:REPO:pull[,push]``, with the
user's Basic credentials when there are some — :mod:`pfx.oci_auth`), reads ``token`` or
``access_token``, and the request is sent again once with ``Authorization: Bearer``; a ``401``
with ``Basic realm=…`` is sent again with Basic credentials. Tokens are kept per scope for the
client's life (one command). Credentials go only to the registry's own origin (scheme, host and
port) and to its token realm — over plain http only when the realm is on the registry's own
host — never to an upload location or a redirect elsewhere.

Failures: the registry's OCI error answers (``{"errors": [{"code": …, "message": …}]}``) raise
:class:`~pfx.errors.RegistryError` with the spec's code (``MANIFEST_UNKNOWN``, ``DENIED``, …); a
``401`` that credentials did not cure raises ``UNAUTHORIZED`` saying where credentials came from
(never what they are) or how to give some.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

import perfusion_format as pf
from pfx.errors import ClientError, ErrorCode, RegistryError
from pfx.http import REDIRECT_STATUSES, Answer, BaseClient, Chunks, Progress, is_tls_failure
from pfx.oci_auth import (
    Challenge,
    Credentials,
    docker_config_file,
    find_credentials,
    parse_challenge,
)

__all__ = ["ACCEPTED_MANIFESTS", "OciClient"]

#: What a manifest GET accepts: the OCI manifest, and the kinds an image may be stored as, so that
#: a registry answers with what it has and the caller can say what it is instead of "not found".
ACCEPTED_MANIFESTS = (
    pf.oci.MANIFEST_MEDIA_TYPE,
    pf.oci.INDEX_MEDIA_TYPE,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Codes for error answers without an OCI error body (a HEAD, a proxy's page).
_STATUS_CODES = {
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
}
_MAX_DETAIL = 500


def _protocol_error(message: str) -> ClientError:
    return ClientError(ErrorCode.REGISTRY_PROTOCOL, message)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _oci_error(answer: Answer) -> tuple[str, str] | None:
    """The first ``(code, message)`` of an OCI error body, or None."""
    try:
        errors = json.loads(answer.body).get("errors")
        first = errors[0]
        code, message = first["code"], first.get("message") or ""
    except (ValueError, UnicodeDecodeError, AttributeError, LookupError, TypeError):
        return None
    if not isinstance(code, str) or not code or not isinstance(message, str):
        return None
    return code, message


class OciClient(BaseClient):
    """A client of the OCI registry at ``host`` (``HOST[:PORT]``), over https (``plain_http``:
    http, for loopback test registries — an https registry with a certificate the system does
    not trust is not supported).

    ``push`` asks tokens for ``pull,push`` instead of ``pull``. ``credentials`` are those to use;
    None looks them up (:func:`pfx.oci_auth.find_credentials`) when a registry first asks.
    ``timeout``, ``retries``, ``backoff`` and ``transport`` are those of
    :class:`pfx.http.BaseClient`.
    """

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        push: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        scheme = "http" if plain_http else "https"
        super().__init__(
            f"{scheme}://{host}",
            None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            transport=transport,
        )
        self.host = host
        self.actions = "pull,push" if push else "pull"
        self.used_credentials = False
        """Whether the registry asked for the credentials and they were sent."""
        self._origin = _origin(httpx.URL(self.url))
        self._given = credentials
        self._found: tuple[Credentials | None, str | None] | None = None
        self._tokens: dict[str, str] = {}
        self._basic = False

    # -- the API -----------------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: the registry speaks the API and takes the credentials it asks for."""
        self._call("GET", "/v2/")

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Whether the repository has the blob ``digest`` (``HEAD``; a redirect to storage
        counts as yes)."""
        answer = self._request("HEAD", self._path(repository, "blobs", digest), repository)
        if answer.status == 200 or answer.status in REDIRECT_STATUSES:
            return True
        if answer.status == 404:
            return False
        raise self._failure(answer)

    def upload_blob(
        self, repository: str, digest: str, data: bytes, progress: Progress | None = None
    ) -> None:
        """Upload ``data`` as the blob ``digest``: ``POST …/blobs/uploads/``, then one ``PUT`` of
        the whole body to the location it answers (relative or absolute, its query kept) with
        ``?digest=``. The registry checks the digest."""
        started = self._call(
            "POST",
            self._path(repository, "blobs", "uploads", ""),
            repository=repository,
            headers={"Content-Length": "0"},
        )
        location = started.headers.get("location")
        if started.status != 202 or not location:
            raise _protocol_error(
                f"{self.host} answered {started.status} to starting an upload, without the "
                "202 and Location the distribution spec asks for"
            )
        target = started.url.join(location).copy_merge_params({"digest": digest})
        self._call(
            "PUT",
            str(target),
            repository=repository,
            own_origin=_origin(target) == self._origin,
            content=data if progress is None else Chunks(data, progress),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> str:
        """Store the OCI image manifest ``manifest`` as ``tag``; its digest, the SHA-256 of the
        bytes sent. DIGEST_MISMATCH when the registry says it stored other bytes
        (``Docker-Content-Digest``)."""
        answer = self._call(
            "PUT",
            self._path(repository, "manifests", tag),
            repository=repository,
            content=manifest,
            headers={"Content-Type": pf.oci.MANIFEST_MEDIA_TYPE},
        )
        sent = pf.content_digest(manifest)
        stated = answer.headers.get("docker-content-digest")
        if stated is not None and stated != sent:
            raise ClientError(
                ErrorCode.DIGEST_MISMATCH,
                f"{self.host} says it stored the manifest of {repository}:{tag} as {stated}, "
                f"but the bytes sent are {sent}",
            )
        return sent

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str | None]:
        """The manifest a tag or digest names, as received, and its ``Content-Type``."""
        answer = self._call(
            "GET",
            self._path(repository, "manifests", reference),
            repository=repository,
            headers={"Accept": ", ".join(ACCEPTED_MANIFESTS)},
        )
        return answer.body, answer.headers.get("content-type")

    def blob(self, repository: str, digest: str, progress: Progress | None = None) -> bytes:
        """A blob's bytes as received (check them against ``digest``: nothing here does),
        following redirects to storage without credentials."""
        path = self._path(repository, "blobs", digest)
        answer = self._follow(self._request("GET", path, repository, progress=progress), progress)
        if answer.status == 200:
            return answer.body
        raise self._failure(answer)

    # -- requests and authentication -----------------------------------------------------------

    @staticmethod
    def _path(repository: str, *parts: str) -> str:
        """``/v2/<repository>/<parts…>`` (names, tags and digests are URL-safe once parsed)."""
        return "/".join(("/v2", repository, *parts))

    def _call(
        self, method: str, path: str, *, repository: str | None = None, **request: Any
    ) -> Answer:
        """A request whose answer must be a success (2xx); the error it stands for otherwise."""
        answer = self._request(method, path, repository, **request)
        if answer.status < 300:
            return answer
        raise self._failure(answer)

    def _scope(self, repository: str | None) -> str | None:
        return f"repository:{repository}:{self.actions}" if repository else None

    def _request(
        self,
        method: str,
        url: str,
        repository: str | None,
        *,
        own_origin: bool = True,
        **request: Any,
    ) -> Answer:
        """Send a request with the authorization known for its scope (none to another origin);
        on a 401, authenticate as the challenge asks and send it once more. UNAUTHORIZED when
        the registry still says 401."""
        scope = self._scope(repository)
        headers = request.pop("headers", {})
        for attempt in (1, 2):
            authorization = self._authorization_for(scope) if own_origin else {}
            answer = self._exchange(
                method, url, authorized=False, headers={**headers, **authorization}, **request
            )
            if answer.status != 401 or attempt == 2 or not own_origin:
                break
            challenge = parse_challenge(answer.headers.get("www-authenticate"))
            if challenge is None or not self._authenticate(challenge, scope):
                break
        if answer.status == 401:
            raise self._unauthorized(answer)
        return answer

    def _credentials(self) -> tuple[Credentials | None, str | None]:
        if self._given is not None:
            return self._given, None
        if self._found is None:
            self._found = find_credentials(self.host)
        return self._found

    def _authorization_for(self, scope: str | None) -> dict[str, str]:
        token = self._tokens.get(scope or "")
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        credentials, _ = self._credentials() if self._basic else (None, None)
        return {"Authorization": credentials.basic()} if credentials else {}

    def _authenticate(self, challenge: Challenge, scope: str | None) -> bool:
        """Act on a 401's challenge; False when there is nothing new to send."""
        if challenge.scheme == "bearer":
            self._tokens[scope or ""] = self._token(challenge, scope)
            return True
        if challenge.scheme == "basic" and not self._basic:
            credentials, _ = self._credentials()
            self._basic = credentials is not None
            self.used_credentials = self._basic
            return self._basic
        return False

    def _token(self, challenge: Challenge, scope: str | None) -> str:
        """A bearer token from the challenge's realm for ``scope`` (and the challenge's own)."""
        realm = challenge.parameters.get("realm", "")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = httpx.URL()
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise _protocol_error(f"{self.host} names no usable token realm: {realm[:200]!r}")
        service = challenge.parameters.get("service")
        parameters = [("service", service)] if service else []
        for asked in dict.fromkeys((scope, challenge.parameters.get("scope"))):
            if asked:
                parameters.append(("scope", asked))
        credentials, _ = self._credentials()
        safe = url.scheme == "https" or url.host == httpx.URL(self.url).host
        headers = {"Authorization": credentials.basic()} if credentials and safe else {}
        self.used_credentials = self.used_credentials or bool(headers)
        answer = self._exchange(
            "GET", str(url), authorized=False, headers=headers, params=parameters
        )
        if answer.status in (401, 403):
            raise self._unauthorized(answer)
        if answer.status != 200:
            raise self._failure(answer)
        body = answer.json()
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise _protocol_error(f"the token service of {self.host} answered without a token")
        return token

    # -- failures ------------------------------------------------------------------------------

    def _unreachable_hint(self, error: httpx.TransportError) -> str:
        if self._origin[0] == "https" and is_tls_failure(error):
            return " (a registry that speaks plain http, on loopback? pass --plain-http)"
        return ""

    def _unauthorized(self, answer: Answer) -> RegistryError:
        """UNAUTHORIZED (or the registry's own code): credentials missing or refused."""
        credentials, hint = self._credentials()
        if credentials is not None and self.used_credentials:
            detail = f"{self.host} refused the credentials {credentials.source}"
        else:
            detail = (
                f"{self.host} asks for credentials: run `pfx login oci://{self.host} "
                f"--username USER`, or add them to {docker_config_file()}"
            )
            detail += f" ({hint})" if hint else ""
        code, _ = _oci_error(answer) or ("UNAUTHORIZED", "")
        return RegistryError(code, answer.status, detail)

    def _failure(self, answer: Answer) -> ClientError:
        """The error an unsuccessful answer stands for (OCI error bodies)."""
        if 300 <= answer.status < 400:
            return super()._failure(answer)
        where = f"{answer.method} {answer.url.path}"
        found = _oci_error(answer)
        if found is not None:
            code, message = found
            detail = f"{message or code} ({where})"
            return RegistryError(code, answer.status, detail[:_MAX_DETAIL])
        if answer.status in _STATUS_CODES:
            code = _STATUS_CODES[answer.status]
            return RegistryError(code, answer.status, f"{code.lower().replace('_', ' ')} ({where})")
        return _protocol_error(
            f"{self.host} answered {answer.status} to {where} without an OCI error body"
        )
