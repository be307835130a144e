"""The OCI Distribution API v1.1 at /v2/ (spec/registry-api.md §10): pull, push, tags,
referrers. Repository names are ``NS/NAME``, the pfx repository of the same name; a concept is
an OCI artifact (spec/concept-format.md §9); a manifest pushed here is validated like a pfx push
and becomes a pfx version (service/oci.py has the mapping).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Connection, Row, select
from starlette.concurrency import run_in_threadpool

import perfusion_format as pf
from pfx_registry.api.delivery import Download, blob_bytes, send_blob
from pfx_registry.auth import Caller
from pfx_registry.db import versions
from pfx_registry.errors import ApiError
from pfx_registry.service import access, concepts, oci
from pfx_registry.service.oci import OciError
from pfx_registry.state import Registry, note_caller, run_write, transaction

from .auth import ANONYMOUS_TOKEN, basic_token, challenge, oci_caller, token_caller

__all__ = ["router"]

#: The routes, relative to /v2 (the app mounts them there: see :func:`.mount`).
router = APIRouter(include_in_schema=False)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
#: Largest ``n`` of a tag list page.
MAX_TAGS_PAGE = 1000


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _digest(value: str, code: str = "DIGEST_INVALID") -> str:
    if not pf.is_digest(value):
        raise OciError(400, code, f"not a sha256 digest: {value}")
    return value


def _readable(
    request: Request, connection: Connection, caller: Caller, ns: str, name: str
) -> Row[Any]:
    """The repository, if the caller may read it. Whoever may not: an anonymous caller is asked
    to authenticate (401 with a challenge) and anyone else gets ``NAME_UNKNOWN`` — whether it is
    private or absent."""
    try:
        return access.readable_repository(connection, caller, ns, name)
    except ApiError as error:
        if error.status != 404:
            raise
        if caller.anonymous:
            raise OciError(401, "UNAUTHORIZED", "authentication required") from None
        raise OciError(404, "NAME_UNKNOWN", f"repository {ns}/{name} not found") from None


@router.api_route("/", methods=["GET", "HEAD"])
async def base(request: Request) -> Response:
    """200 for an authenticated caller; 401 with the challenge otherwise (how clients learn
    where to get a token)."""
    caller = await oci_caller(request)
    if caller.anonymous:
        raise OciError(401, "UNAUTHORIZED", "authentication required", challenge(request))
    return JSONResponse({}, headers=API_VERSION)


@router.get("/token")
async def token(request: Request) -> JSONResponse:
    """The token endpoint of the challenge: Basic credentials (any user name, a pfx token as
    the password) give that token back; no credentials give the anonymous token."""
    authorization = request.headers.get("authorization")
    value = ANONYMOUS_TOKEN
    if authorization is not None:
        secret = basic_token(authorization) if authorization.lower().startswith("basic ") else None
        if secret is None:
            raise OciError(401, "UNAUTHORIZED", "send Basic credentials: any user, a pfx token")
        note_caller(request, await token_caller(request, secret))  # 401 unless it is live
        value = secret
    body = {
        "token": value,
        "access_token": value,
        "expires_in": 3600,
        "issued_at": datetime.now(UTC).isoformat(),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


# -- manifests


def _manifest_response(request: Request, served: oci.ServedManifest) -> Response:
    headers = {
        "Docker-Content-Digest": served.digest,
        "ETag": f'"{served.digest}"',
        "Content-Length": str(len(served.content)),
        **API_VERSION,
    }
    body = b"" if request.method == "HEAD" else served.content
    return Response(body, media_type=served.media_type, headers=headers)


@router.api_route("/{ns}/{name}/manifests/{reference}", methods=["GET", "HEAD"])
async def get_manifest(request: Request, ns: str, name: str, reference: str) -> Response:
    """A manifest by tag, version name or digest."""
    caller = await oci_caller(request)
    registry = _registry(request)

    def load() -> oci.ServedManifest:
        with transaction(registry) as connection:
            repository = _readable(request, connection, caller, ns, name)
            return oci.manifest(connection, repository, reference)

    key = ("oci-manifest", caller.user_id, caller.is_admin, ns, name, reference)
    return _manifest_response(request, await registry.reads.get(key, load))


def _read_concept(data: bytes, layer: pf.oci.Descriptor) -> pf.Concept:
    if len(data) != layer.size:
        raise OciError(400, "SIZE_INVALID", f"the layer is {len(data)} bytes, not {layer.size}")
    try:
        return pf.loads(data)
    except pf.FormatError as error:
        raise OciError(
            400,
            "MANIFEST_INVALID",
            f"the layer is not a valid concept file: {error.code}: {error.message}",
        ) from None


@router.put("/{ns}/{name}/manifests/{reference}", status_code=201)
async def put_manifest(request: Request, ns: str, name: str, reference: str) -> Response:
    """Push a manifest: a concept (validated like a pfx push, it becomes a pfx version) or an
    artifact that refers to one (kept for the referrers API)."""
    caller = await oci_caller(request)
    registry = _registry(request)
    content = await request.body()  # bounded to max_json_bytes by RequestAccounting (413)
    try:
        manifest = pf.oci.read_manifest(content, request.headers.get("content-type"))
    except pf.oci.ManifestError as error:
        status = 415 if error.code == "UNSUPPORTED" else 400
        raise OciError(status, error.code, error.message) from None
    if manifest.is_concept:
        layer = manifest.concept_file()

        def visible() -> None:
            with transaction(registry) as connection:
                if access.blob_visible(connection, caller, layer.digest) is None:
                    raise OciError(
                        400, "MANIFEST_BLOB_UNKNOWN", f"blob {layer.digest} has not been uploaded"
                    )

        access.require_token(caller, f"pushing to {ns}/{name}")
        await run_in_threadpool(visible)
        concept = _read_concept(await blob_bytes(registry, layer.digest), layer)
        digest = await run_in_threadpool(
            run_write,
            registry,
            lambda connection: oci.put_concept_manifest(
                connection, caller, ns, name, reference, content, manifest, concept
            ),
        )
    else:
        digest = await run_in_threadpool(
            run_write,
            registry,
            lambda connection: oci.put_referrer(
                connection, caller, ns, name, reference, content, manifest
            ),
        )
    headers = {"Location": f"/v2/{ns}/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if manifest.subject is not None:
        headers["OCI-Subject"] = manifest.subject.digest
    return Response(status_code=201, headers=headers)


@router.delete("/{ns}/{name}/manifests/{reference}", status_code=202)
async def delete_manifest(request: Request, ns: str, name: str, reference: str) -> Response:
    """Delete a tag, or an artifact that refers to a concept (versions are immutable)."""
    caller = await oci_caller(request)
    await run_in_threadpool(
        run_write,
        _registry(request),
        lambda connection: oci.delete_manifest(connection, caller, ns, name, reference),
    )
    return Response(status_code=202)


# -- blobs


@router.api_route("/{ns}/{name}/blobs/{digest}", methods=["GET", "HEAD"])
async def get_blob(request: Request, ns: str, name: str, digest: str) -> Response:
    """A blob the caller may see, through a repository they may read (the empty config blob of
    every concept too). Fetching a concept file of the repository counts a download."""
    _digest(digest)
    caller = await oci_caller(request)
    registry = _registry(request)

    def visible() -> tuple[str, int, int | None, bool]:
        with transaction(registry) as connection:
            repository = _readable(request, connection, caller, ns, name)
            if digest == pf.oci.EMPTY_DIGEST:
                return "application/octet-stream", len(pf.oci.EMPTY_CONFIG), None, True
            blob = access.blob_visible(connection, caller, digest)
            if blob is None:
                raise OciError(404, "BLOB_UNKNOWN", f"blob {digest} not found")
            version_of_repository = connection.execute(
                select(versions.c.id).where(
                    versions.c.repository_id == repository.id, versions.c.digest == digest
                )
            ).first()
            counted = repository.id if version_of_repository is not None else None
            return blob.media_type, blob.size, counted, not repository.private

    key = ("oci-blob", caller.user_id, caller.is_admin, ns, name, digest)
    media_type, size, counted, public = await registry.reads.get(key, visible)
    if request.method == "HEAD":
        headers = {"Content-Length": str(size), "Docker-Content-Digest": digest, **API_VERSION}
        return Response(media_type=media_type, headers=headers)
    if digest == pf.oci.EMPTY_DIGEST:
        return Response(pf.oci.EMPTY_CONFIG, headers={"Docker-Content-Digest": digest})
    response = await send_blob(request, registry, Download(digest, media_type, public))
    if counted is not None and response.status_code != 304:
        registry.downloads.add(counted)
    return response


@router.delete("/{ns}/{name}/blobs/{digest}")
async def delete_blob(request: Request, ns: str, name: str, digest: str) -> Response:
    """Blobs are not deleted one by one: ``pfx-registry gc`` removes unreferenced ones."""
    await oci_caller(request)
    raise OciError(405, "UNSUPPORTED", "blobs are removed by garbage collection, not deleted")


async def _keep_blob(registry: Registry, caller: Caller, data: bytes) -> str:
    """Store uploaded bytes and index them as a blob the caller uploaded (a valid concept file
    with its facts); the digest."""
    digest = pf.content_digest(data)
    try:
        concept: pf.Concept | None = pf.loads(data)
    except pf.FormatError:
        concept = None  # any blob may be uploaded; a manifest decides what it must be
    media_type = pf.MEDIA_TYPE if concept is not None else "application/octet-stream"
    await run_in_threadpool(registry.blobs.put, digest, data)
    await run_in_threadpool(
        run_write,
        registry,
        lambda connection: concepts.record_blob(
            connection, caller, digest, len(data), media_type, concept
        ),
    )
    return digest


def _blob_created(ns: str, name: str, digest: str) -> Response:
    headers = {"Location": f"/v2/{ns}/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
    return Response(status_code=201, headers=headers)


def _upload_state(ns: str, name: str, upload_id: str, size: int, status: int) -> Response:
    headers = {
        "Location": f"/v2/{ns}/{name}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        "Range": f"0-{max(size - 1, 0)}",
    }
    return Response(status_code=status, headers=headers)


def _check_digest(data: bytes, digest: str | None) -> None:
    if digest is None:
        raise OciError(400, "DIGEST_INVALID", "finish an upload with ?digest=sha256:…")
    _digest(digest)
    actual = pf.content_digest(data)
    if actual != digest:
        raise OciError(400, "DIGEST_INVALID", f"the bytes' digest is {actual}, not {digest}")


@router.post("/{ns}/{name}/blobs/uploads/")
async def start_upload(
    request: Request,
    ns: str,
    name: str,
    digest: str | None = None,
    mount: str | None = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
) -> Response:
    """Begin an upload (202 and its location); with ``digest``, upload in one request (201);
    with ``mount``, link a blob the caller already sees (201), else begin an upload."""
    caller = await oci_caller(request)
    access.require_token(caller, f"pushing to {ns}/{name}")
    registry = _registry(request)
    if mount is not None and pf.is_digest(mount):

        def mountable() -> bool:
            with transaction(registry) as connection:
                access.writable_repository(connection, caller, ns, name)
                return access.blob_visible(connection, caller, mount) is not None

        if await run_in_threadpool(mountable):
            return _blob_created(ns, name, mount)
    if digest is not None:
        data = await request.body()  # bounded to max_concept_bytes by RequestAccounting
        _check_digest(data, digest)

        def may_push() -> None:
            with transaction(registry) as connection:
                access.writable_repository(connection, caller, ns, name)

        await run_in_threadpool(may_push)
        return _blob_created(ns, name, await _keep_blob(registry, caller, data))
    upload_id = await run_in_threadpool(
        run_write, registry, lambda connection: oci.start_upload(connection, caller, ns, name)
    )
    return _upload_state(ns, name, upload_id, 0, 202)


def _content_range_start(header: str | None) -> int | None:
    if header is None:
        return None
    start, separator, _end = header.removeprefix("bytes=").partition("-")
    if not separator or not start.isdigit():
        raise OciError(400, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {header!r}")
    return int(start)


@router.patch("/{ns}/{name}/blobs/uploads/{upload_id}")
async def upload_chunk(request: Request, ns: str, name: str, upload_id: str) -> Response:
    """Append a chunk (``Content-Range: <start>-<end>`` must start where the upload ends)."""
    caller = await oci_caller(request)
    registry = _registry(request)
    chunk = await request.body()
    start = _content_range_start(request.headers.get("content-range"))

    def append(connection: Connection) -> int:
        row = oci.find_upload(connection, caller, ns, name, upload_id)
        if start is not None and start != len(row.data):
            raise OciError(
                416, "BLOB_UPLOAD_INVALID", f"the upload has {len(row.data)} bytes; start there"
            )
        data = row.data + chunk
        if len(data) > registry.settings.max_concept_bytes:
            raise OciError(413, "SIZE_INVALID", "the blob is larger than this registry accepts")
        oci.append_upload(connection, upload_id, data)
        return len(data)

    size = await run_in_threadpool(run_write, registry, append)
    return _upload_state(ns, name, upload_id, size, 202)


@router.get("/{ns}/{name}/blobs/uploads/{upload_id}")
async def upload_status(request: Request, ns: str, name: str, upload_id: str) -> Response:
    """How far an upload has come (204 with its ``Range``)."""
    caller = await oci_caller(request)
    registry = _registry(request)

    def size() -> int:
        with transaction(registry) as connection:
            return len(oci.find_upload(connection, caller, ns, name, upload_id).data)

    return _upload_state(ns, name, upload_id, await run_in_threadpool(size), 204)


@router.put("/{ns}/{name}/blobs/uploads/{upload_id}")
async def finish_upload(
    request: Request, ns: str, name: str, upload_id: str, digest: str | None = None
) -> Response:
    """Finish an upload with its last chunk (or none) and the blob's ``digest``."""
    caller = await oci_caller(request)
    registry = _registry(request)
    chunk = await request.body()

    def assembled() -> bytes:
        with transaction(registry) as connection:
            data = bytes(oci.find_upload(connection, caller, ns, name, upload_id).data) + chunk
        if len(data) > registry.settings.max_concept_bytes:
            raise OciError(413, "SIZE_INVALID", "the blob is larger than this registry accepts")
        _check_digest(data, digest)
        return data

    data = await run_in_threadpool(assembled)
    stored = await _keep_blob(registry, caller, data)
    await run_in_threadpool(
        run_write, registry, lambda connection: oci.end_upload(connection, upload_id)
    )
    return _blob_created(ns, name, stored)


@router.delete("/{ns}/{name}/blobs/uploads/{upload_id}", status_code=204)
async def cancel_upload(request: Request, ns: str, name: str, upload_id: str) -> Response:
    """Abandon an upload."""
    caller = await oci_caller(request)

    def cancel(connection: Connection) -> None:
        oci.find_upload(connection, caller, ns, name, upload_id)
        oci.end_upload(connection, upload_id)

    await run_in_threadpool(run_write, _registry(request), cancel)
    return Response(status_code=204)


# -- tags and referrers


@router.get("/{ns}/{name}/tags/list")
async def tag_list(
    request: Request,
    ns: str,
    name: str,
    n: Annotated[int | None, Query(ge=0, le=MAX_TAGS_PAGE)] = None,
    last: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """The repository's tags (version names and tags), sorted, ``n`` at a time after ``last``."""
    caller = await oci_caller(request)
    registry = _registry(request)

    def load() -> list[str]:
        with transaction(registry) as connection:
            repository = _readable(request, connection, caller, ns, name)
            return oci.tag_list(connection, repository)

    names = await run_in_threadpool(load)
    if last is not None:
        names = [tag for tag in names if tag > last]
    headers: dict[str, str] = {}
    if n is not None and len(names) > n:
        names = names[:n]
        if names:
            headers["Link"] = f'</v2/{ns}/{name}/tags/list?n={n}&last={names[-1]}>; rel="next"'
    return JSONResponse({"name": f"{ns}/{name}", "tags": names}, headers=headers)


@router.get("/{ns}/{name}/referrers/{digest}")
async def referrers(
    request: Request,
    ns: str,
    name: str,
    digest: str,
    artifact_type: Annotated[str | None, Query(alias="artifactType", max_length=128)] = None,
) -> Response:
    """An image index of the artifacts whose subject is ``digest`` (of one type when asked)."""
    _digest(digest)
    caller = await oci_caller(request)
    registry = _registry(request)

    def load() -> list[Row[Any]]:
        with transaction(registry) as connection:
            repository = _readable(request, connection, caller, ns, name)
            return oci.referrers(connection, repository, digest, artifact_type)

    rows = await run_in_threadpool(load)
    manifests = []
    for row in rows:
        document = json.loads(row.content)
        entry: dict[str, Any] = {
            "mediaType": row.media_type,
            "digest": row.digest,
            "size": len(row.content),
            "artifactType": row.artifact_type,
        }
        if document.get("annotations"):
            entry["annotations"] = document["annotations"]
        manifests.append(entry)
    index = {"schemaVersion": 2, "mediaType": pf.oci.INDEX_MEDIA_TYPE, "manifests": manifests}
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    return JSONResponse(index, media_type=pf.oci.INDEX_MEDIA_TYPE, headers=headers)


@router.api_route("/{path:path}", methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
async def unknown(request: Request, path: str) -> Response:
    """Repository names of pfx have two components (``NS/NAME``): anything else is unknown."""
    await oci_caller(request)
    raise OciError(404, "NAME_UNKNOWN", f"no repository or endpoint at /v2/{path}")
