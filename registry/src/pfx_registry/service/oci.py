"""What the OCI distribution API (/v2/, spec/registry-api.md §10) does to the index: manifests
of versions (pushed ones kept byte for byte, canonical ones generated), the OCI tag list,
referrers, and blob uploads in progress.

Mapping (§10.2): an OCI tag resolves like a pfx reference (a version name, else a tag). Pushing a
concept manifest to ``T`` publishes the file as version ``T`` when no version or tag has that
name (immutable from then on); to an existing tag, or to ``latest``, it moves that tag to the
version holding the file (created as ``oci-<12 hex of the file digest>`` when there is none); to
an existing version it must carry that version's file. Pushing by digest creates or finds the
version the same way and moves no tag.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

import perfusion_format as pf
from pfx_registry.auth import Caller, at_least, role_in
from pfx_registry.db import (
    blobs,
    concept_files,
    insert_or_ignore,
    oci_manifest_blobs,
    oci_manifests,
    oci_uploads,
    tags,
    versions,
)
from pfx_registry.errors import ApiError, Code

from . import concepts
from .access import (
    DIGEST,
    REFERENCE,
    audit,
    blob_visible,
    existing_repository,
    find_repository,
    namespace,
    writable_repository,
)

__all__ = [
    "OciError",
    "ServedManifest",
    "append_upload",
    "canonical_manifest",
    "delete_manifest",
    "end_upload",
    "find_upload",
    "manifest",
    "put_concept_manifest",
    "put_referrer",
    "referrers",
    "start_upload",
    "tag_list",
]

#: Version names given to files pushed without one (to a movable tag, or by digest).
AUTO_VERSION_PREFIX = "oci-"


class OciError(ApiError):
    """An error whose code is one of the OCI distribution spec's (answered in its shape)."""


@dataclass(frozen=True)
class ServedManifest:
    """A manifest as /v2/ answers it."""

    content: bytes
    media_type: str
    digest: str


def canonical_manifest(name: str, row: Row[Any]) -> bytes:
    """The generated manifest of a version (a row with its file's facts and size): the same
    bytes ``pfx push oci://…/NS/NAME`` writes for that file."""
    return pf.oci.concept_manifest(
        pf.oci.ConceptLayer(
            row.digest,
            row.size,
            f"{name}{pf.FILE_SUFFIX}",
            row.token,
            row.superclass,
            row.family,
            tuple(row.signers.split()),
        )
    )


def _version_rows(connection: Connection, repository: Row[Any]) -> list[Row[Any]]:
    return list(
        connection.execute(
            select(versions, concept_files, blobs.c.size)
            .join(concept_files, concept_files.c.digest == versions.c.digest)
            .join(blobs, blobs.c.digest == versions.c.digest)
            .where(versions.c.repository_id == repository.id)
            .order_by(versions.c.id)
        ).all()
    )


def _served(content: bytes, media_type: str = pf.oci.MANIFEST_MEDIA_TYPE) -> ServedManifest:
    return ServedManifest(content, media_type, pf.content_digest(content))


def _manifest_unknown(reference: str) -> OciError:
    return OciError(404, "MANIFEST_UNKNOWN", f"manifest {reference} not found")


def manifest(connection: Connection, repository: Row[Any], reference: str) -> ServedManifest:
    """The manifest ``reference`` (a tag, version name or manifest digest) names in a readable
    repository: a pushed one when there is one for that version (the latest pushed), else the
    version's canonical manifest."""
    if DIGEST.fullmatch(reference):
        pushed = connection.execute(
            select(oci_manifests.c.content, oci_manifests.c.media_type).where(
                oci_manifests.c.repository_id == repository.id,
                oci_manifests.c.digest == reference,
            )
        ).first()
        if pushed is not None:
            return _served(pushed.content, pushed.media_type)
        for row in _version_rows(connection, repository):
            generated = _served(canonical_manifest(repository.name, row))
            if generated.digest == reference:
                return generated
        raise _manifest_unknown(reference)
    try:
        version = concepts.resolve(connection, repository, reference)
    except ApiError as error:
        if error.status == 404:
            raise _manifest_unknown(reference) from None
        raise
    pushed = connection.execute(
        select(oci_manifests.c.content, oci_manifests.c.media_type)
        .where(oci_manifests.c.version_id == version.id)
        .order_by(oci_manifests.c.created_at.desc(), oci_manifests.c.digest)
    ).first()
    if pushed is not None:
        return _served(pushed.content, pushed.media_type)
    return _served(canonical_manifest(repository.name, version))


def tag_list(connection: Connection, repository: Row[Any]) -> list[str]:
    """Every OCI tag of a repository, sorted: its version names (yanked ones excepted) and its
    tags."""
    names = set(
        connection.execute(
            select(versions.c.version).where(
                versions.c.repository_id == repository.id, versions.c.yanked_at.is_(None)
            )
        ).scalars()
    )
    names.update(
        connection.execute(select(tags.c.tag).where(tags.c.repository_id == repository.id))
        .scalars()
        .all()
    )
    return sorted(names)


def referrers(
    connection: Connection, repository: Row[Any], subject: str, artifact_type: str | None
) -> list[Row[Any]]:
    """The pushed manifests of a repository whose subject is ``subject`` (of one artifact type
    when given), oldest first."""
    query = select(oci_manifests).where(
        oci_manifests.c.repository_id == repository.id, oci_manifests.c.subject == subject
    )
    if artifact_type is not None:
        query = query.where(oci_manifests.c.artifact_type == artifact_type)
    return list(connection.execute(query.order_by(oci_manifests.c.created_at)).all())


def _require_blobs(connection: Connection, caller: Caller, manifest: pf.oci.Manifest) -> None:
    for descriptor in (manifest.config, *manifest.layers):
        if descriptor.digest == pf.oci.EMPTY_DIGEST:
            continue
        blob = blob_visible(connection, caller, descriptor.digest)
        if blob is None:
            raise OciError(
                400, "MANIFEST_BLOB_UNKNOWN", f"blob {descriptor.digest} has not been uploaded"
            )
        if blob.size != descriptor.size:
            raise OciError(
                400,
                "SIZE_INVALID",
                f"blob {descriptor.digest} is {blob.size} bytes, not {descriptor.size}",
            )


def _store(
    connection: Connection,
    repository_id: int,
    content: bytes,
    manifest: pf.oci.Manifest,
    version_id: int | None,
) -> str:
    digest = pf.content_digest(content)
    insert_or_ignore(
        connection,
        oci_manifests,
        {
            "repository_id": repository_id,
            "digest": digest,
            "media_type": manifest.media_type,
            "artifact_type": manifest.artifact_type or manifest.config.media_type,
            "content": content,
            "version_id": version_id,
            "subject": manifest.subject.digest if manifest.subject else None,
        },
    )
    for descriptor in (manifest.config, *manifest.layers):
        if descriptor.digest != pf.oci.EMPTY_DIGEST:
            insert_or_ignore(
                connection,
                oci_manifest_blobs,
                {
                    "repository_id": repository_id,
                    "manifest_digest": digest,
                    "digest": descriptor.digest,
                },
            )
    return digest


def put_concept_manifest(
    connection: Connection,
    caller: Caller,
    ns: str,
    name: str,
    reference: str,
    content: bytes,
    manifest: pf.oci.Manifest,
    concept: pf.Concept,
) -> str:
    """Publish the concept a manifest carries (§10.2's mapping) and keep the manifest; its
    digest. ``concept`` is the layer's file, already read and validated by the caller."""
    layer = manifest.concept_file()
    _require_blobs(connection, caller, manifest)
    insert_or_ignore(connection, concept_files, concepts.file_facts(layer.digest, concept))
    owner, repository = writable_repository(connection, caller, ns, name)
    existing = (
        _kinds_named(connection, repository.id, reference) if repository is not None else set()
    )
    by_digest = DIGEST.fullmatch(reference) is not None
    if by_digest and reference != pf.content_digest(content):
        raise OciError(400, "DIGEST_INVALID", "the manifest's digest is not the one in the path")
    if not by_digest and not REFERENCE.fullmatch(reference):
        raise OciError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    if "version" in existing:
        version = reference  # an existing version: publish checks that it holds this file
        tag_names: list[str] = []
    elif by_digest or "tag" in existing or reference == "latest":
        version = _version_holding(connection, repository, layer.digest)
        tag_names = [] if by_digest else [reference]
    else:
        version, tag_names = reference, []
    try:
        concepts.publish(connection, caller, ns, name, version, layer.digest, tag_names=tag_names)
    except ApiError as error:
        if error.code == Code.VERSION_EXISTS:
            raise OciError(403, "DENIED", error.message) from None
        raise
    repository = find_repository(connection, owner.id, name)
    assert repository is not None  # published just now, in this transaction
    version_id = connection.execute(
        select(versions.c.id).where(
            versions.c.repository_id == repository.id, versions.c.version == version
        )
    ).scalar_one()
    digest = _store(connection, repository.id, content, manifest, version_id)
    audit(connection, caller, "manifest.push", f"{ns}/{name}@{digest}", reference=reference)
    return digest


def _kinds_named(connection: Connection, repository_id: int, name: str) -> set[str]:
    """Which kinds of reference ``name`` already is in a repository: ``version``, ``tag``."""
    kinds: set[str] = set()
    if not REFERENCE.fullmatch(name):
        return kinds
    if connection.execute(
        select(versions.c.id).where(
            versions.c.repository_id == repository_id, versions.c.version == name
        )
    ).first():
        kinds.add("version")
    if connection.execute(
        select(tags.c.tag).where(tags.c.repository_id == repository_id, tags.c.tag == name)
    ).first():
        kinds.add("tag")
    return kinds


def _version_holding(connection: Connection, repository: Row[Any] | None, digest: str) -> str:
    """The oldest live version of a repository holding the file ``digest``, or the name a new
    one gets: ``oci-`` and the first 12 hex digits of the file's digest."""
    if repository is not None:
        held = connection.execute(
            select(versions.c.version)
            .where(
                versions.c.repository_id == repository.id,
                versions.c.digest == digest,
                versions.c.yanked_at.is_(None),
            )
            .order_by(versions.c.id)
        ).scalar()
        if held is not None:
            return str(held)
    return AUTO_VERSION_PREFIX + digest.removeprefix("sha256:")[:12]


def put_referrer(
    connection: Connection,
    caller: Caller,
    ns: str,
    name: str,
    reference: str,
    content: bytes,
    manifest: pf.oci.Manifest,
) -> str:
    """Keep an artifact that refers to another manifest of the repository (a signature, an
    SBOM …); its digest. Such artifacts are pushed by digest; only concepts are tagged."""
    if manifest.subject is None:
        raise OciError(
            400,
            "MANIFEST_INVALID",
            f"not a concept (artifactType {pf.MEDIA_TYPE}, one layer of that type), and no "
            "subject: this registry keeps concepts and artifacts that refer to them",
        )
    digest = pf.content_digest(content)
    if reference != digest:
        raise OciError(400, "TAG_INVALID", "an artifact with a subject is pushed by its digest")
    _, repository = existing_repository(connection, caller, ns, name)
    _require_blobs(connection, caller, manifest)
    _store(connection, repository.id, content, manifest, None)
    audit(connection, caller, "referrer.push", f"{ns}/{name}@{digest}")
    return digest


def delete_manifest(
    connection: Connection, caller: Caller, ns: str, name: str, reference: str
) -> None:
    """Delete a tag (writers; a protected one needs the namespace's admin) or a pushed artifact
    that refers to another manifest. Versions are immutable: refused (``UNSUPPORTED``)."""
    owner, repository = existing_repository(connection, caller, ns, name)
    if DIGEST.fullmatch(reference):
        gone = connection.execute(
            delete(oci_manifests).where(
                oci_manifests.c.repository_id == repository.id,
                oci_manifests.c.digest == reference,
                oci_manifests.c.version_id.is_(None),
            )
        ).rowcount
        if not gone:
            raise OciError(
                405, "UNSUPPORTED", "a version's manifest is not deleted: versions are immutable"
            )
        connection.execute(
            delete(oci_manifest_blobs).where(
                oci_manifest_blobs.c.repository_id == repository.id,
                oci_manifest_blobs.c.manifest_digest == reference,
            )
        )
        audit(connection, caller, "referrer.delete", f"{ns}/{name}@{reference}")
        return
    if owner.protected_tags and not at_least(role_in(connection, caller, owner.id), "admin"):
        raise OciError(403, "DENIED", f"tags are protected in {owner.name}")
    gone = connection.execute(
        delete(tags).where(tags.c.repository_id == repository.id, tags.c.tag == reference)
    ).rowcount
    if not gone:
        raise OciError(405, "UNSUPPORTED", f"{reference} is not a tag (versions are immutable)")
    audit(connection, caller, "tag.delete", f"{ns}/{name}:{reference}")


def start_upload(connection: Connection, caller: Caller, ns: str, name: str) -> str:
    """Begin a blob upload into ``ns/name`` (writers; the repository need not exist yet)."""
    owner, _ = writable_repository(connection, caller, ns, name)
    upload_id = str(uuid.uuid4())
    connection.execute(
        insert(oci_uploads).values(
            id=upload_id,
            namespace_id=owner.id,
            repository_name=name,
            account_id=caller.user_id,
            data=b"",
        )
    )
    return upload_id


def find_upload(
    connection: Connection, caller: Caller, ns: str, name: str, upload_id: str
) -> Row[Any]:
    """An upload the caller began in ``ns/name``, locked (``BLOB_UPLOAD_UNKNOWN`` otherwise)."""
    owner = namespace(connection, ns)
    row = None
    if caller.user_id is not None:
        row = connection.execute(
            select(oci_uploads)
            .where(
                oci_uploads.c.id == upload_id,
                oci_uploads.c.namespace_id == owner.id,
                oci_uploads.c.repository_name == name,
                oci_uploads.c.account_id == caller.user_id,
            )
            .with_for_update()
        ).first()
    if row is None:
        raise OciError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} not found")
    return row


def append_upload(connection: Connection, upload_id: str, data: bytes) -> None:
    """Replace an upload's bytes with ``data`` (the bytes so far and the new chunk)."""
    connection.execute(update(oci_uploads).where(oci_uploads.c.id == upload_id).values(data=data))


def end_upload(connection: Connection, upload_id: str) -> None:
    """Forget an upload (finished or cancelled)."""
    connection.execute(delete(oci_uploads).where(oci_uploads.c.id == upload_id))
