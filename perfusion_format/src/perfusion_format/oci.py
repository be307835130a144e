"""A concept as an OCI artifact (spec/concept-format.md §9): the one manifest every pfx tool makes
for a concept file, and the check that a manifest someone else made carries one.

A concept is an OCI image manifest (v1.1 artifact form) with ``artifactType`` set to the concept
media type, the empty config descriptor, and exactly one layer: the concept file itself, named by
its ``org.opencontainers.image.title`` annotation. :func:`concept_manifest` writes it from the
file's facts alone — canonical JSON (sorted keys, no whitespace) — so the same file and file name
always give the same manifest bytes and digest, whichever tool pushes it where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .concept import MEDIA_TYPE, Concept
from .digest import content_digest, is_digest
from .strict_json import StrictJSONError, loads_strict

__all__ = [
    "ANNOTATION_FAMILY",
    "ANNOTATION_SIGNERS",
    "ANNOTATION_SUPERCLASS",
    "ANNOTATION_TITLE",
    "ANNOTATION_TOKEN",
    "EMPTY_CONFIG",
    "EMPTY_DIGEST",
    "EMPTY_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MAX_MANIFEST_SIZE",
    "ConceptLayer",
    "Descriptor",
    "Manifest",
    "ManifestError",
    "concept_layer",
    "concept_manifest",
    "read_manifest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
#: The empty config blob (``{}``) and its digest, as the OCI image spec defines them.
EMPTY_CONFIG = b"{}"
EMPTY_DIGEST = content_digest(EMPTY_CONFIG)
#: Largest manifest read (the distribution spec lets registries refuse larger ones).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_TOKEN = "io.perfusion.concept.token"
ANNOTATION_SUPERCLASS = "io.perfusion.concept.superclass"
ANNOTATION_FAMILY = "io.perfusion.concept.family"
#: Key ids of the file's signatures, comma-separated, in file order ("" when unsigned).
ANNOTATION_SIGNERS = "io.perfusion.concept.signers"


class ManifestError(ValueError):
    """A manifest that cannot be used: ``code`` is the OCI error code a registry answers with —
    ``MANIFEST_INVALID`` (malformed, or not a concept) or ``UNSUPPORTED`` (another media type)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ConceptLayer:
    """What a concept's manifest says: the file's digest, size and name, and its facts."""

    digest: str
    size: int
    file_name: str
    token: str
    superclass: str
    family: str
    signers: tuple[str, ...]


def concept_layer(concept: Concept, digest: str, size: int, file_name: str) -> ConceptLayer:
    """The manifest facts of ``concept``, whose file (``file_name``) is ``size`` bytes with
    content digest ``digest``."""
    return ConceptLayer(
        digest,
        size,
        file_name,
        concept.token,
        concept.superclass,
        concept.family.name,
        tuple(signature.key_id for signature in concept.signatures),
    )


def concept_manifest(layer: ConceptLayer) -> bytes:
    """The canonical manifest of a concept file (the same bytes for the same facts)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": MEDIA_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": EMPTY_DIGEST,
            "size": len(EMPTY_CONFIG),
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": MEDIA_TYPE,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": {ANNOTATION_TITLE: layer.file_name},
            }
        ],
        "annotations": {
            ANNOTATION_TOKEN: layer.token,
            ANNOTATION_SUPERCLASS: layer.superclass,
            ANNOTATION_FAMILY: layer.family,
            ANNOTATION_SIGNERS: ",".join(layer.signers),
        },
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest points at."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest, read and checked (:func:`read_manifest`)."""

    media_type: str
    artifact_type: str | None
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None
    annotations: dict[str, str]

    @property
    def is_concept(self) -> bool:
        """Whether this manifest carries a concept: its artifact type (or, for a manifest
        without one, its config's media type) is the concept's and its one layer is the file."""
        kind = self.artifact_type or self.config.media_type
        return (
            kind == MEDIA_TYPE and len(self.layers) == 1 and self.layers[0].media_type == MEDIA_TYPE
        )

    def concept_file(self) -> Descriptor:
        """The concept file's descriptor (ManifestError ``MANIFEST_INVALID`` when this manifest
        is not a concept)."""
        if not self.is_concept:
            raise ManifestError(
                "MANIFEST_INVALID",
                f"not a concept: a concept's manifest has artifactType {MEDIA_TYPE} and one "
                "layer of that media type",
            )
        return self.layers[0]


def _invalid(message: str) -> ManifestError:
    return ManifestError("MANIFEST_INVALID", message)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str) or not is_digest(digest):
        raise _invalid(f"{where}.digest is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
        raise _invalid(f"{where}.size is not a byte count")
    return Descriptor(media_type, digest, size, _annotations(value.get("annotations"), where))


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _invalid(f"{where}.annotations is not an object of strings")
    return dict(value)


def read_manifest(data: bytes, content_type: str | None = None) -> Manifest:
    """Read an OCI image manifest (ManifestError when it is not one). ``content_type`` is the
    media type it was sent with; when given it must be the manifest's own."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise _invalid(f"a manifest is at most {MAX_MANIFEST_SIZE} bytes")
    if content_type is not None and content_type.split(";")[0].strip() != MANIFEST_MEDIA_TYPE:
        raise ManifestError(
            "UNSUPPORTED", f"only {MANIFEST_MEDIA_TYPE} manifests are accepted, not {content_type}"
        )
    try:
        document = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, StrictJSONError, ValueError) as error:
        raise _invalid(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise _invalid("a manifest is a JSON object")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    media_type = document.get("mediaType", MANIFEST_MEDIA_TYPE)
    if media_type != MANIFEST_MEDIA_TYPE:
        raise ManifestError("UNSUPPORTED", f"manifest media type {media_type!r}")
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise _invalid("layers is not a list")
    subject = document.get("subject")
    return Manifest(
        media_type,
        artifact_type,
        _descriptor(document.get("config"), "config"),
        tuple(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)),
        None if subject is None else _descriptor(subject, "subject"),
        _annotations(document.get("annotations"), "manifest"),
    )
