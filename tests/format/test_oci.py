"""A concept as an OCI artifact (spec/concept-format.md §9): the canonical manifest, and which
manifests are read as concepts."""

from __future__ import annotations

import hashlib
import json

import pytest
from concept_factory import VECTORS

import perfusion_format as pf
from perfusion_format import oci

VECTOR = VECTORS / "sd1-fp16.perfusion.safetensors"


def vector_manifest() -> bytes:
    data = VECTOR.read_bytes()
    concept = pf.loads(data)
    layer = oci.concept_layer(concept, pf.content_digest(data), len(data), VECTOR.name)
    return oci.concept_manifest(layer)


def test_the_manifest_of_the_signed_vector_has_every_field_of_the_spec() -> None:
    data = VECTOR.read_bytes()
    raw = vector_manifest()
    document = json.loads(raw)
    public_key = pf.load_public_key(VECTORS / "test-key.pem.pub")
    assert document == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.perfusion.concept.v1+safetensors",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
            "size": 2,
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": "application/vnd.perfusion.concept.v1+safetensors",
                "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": VECTOR.name},
            }
        ],
        "annotations": {
            "io.perfusion.concept.token": "<teddy>",
            "io.perfusion.concept.superclass": "teddy",
            "io.perfusion.concept.family": "sd-1",
            "io.perfusion.concept.signers": public_key.key_id,
        },
    }
    # canonical: sorted keys, no whitespace — the same bytes every time
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert raw == vector_manifest()


def test_a_concept_manifest_reads_back_with_its_file() -> None:
    manifest = oci.read_manifest(vector_manifest(), oci.MANIFEST_MEDIA_TYPE)
    assert manifest.is_concept and manifest.subject is None
    assert manifest.concept_file().digest == pf.content_digest(VECTOR.read_bytes())


def base_manifest(**changes: object) -> dict[str, object]:
    document: dict[str, object] = json.loads(vector_manifest())
    document.update(changes)
    return document


def test_manifests_of_other_tools_are_concepts_when_their_types_say_so() -> None:
    # ORAS-style: no artifactType, the concept media type on the config instead
    config = {"mediaType": pf.MEDIA_TYPE, "digest": oci.EMPTY_DIGEST, "size": 2}
    document = base_manifest(config=config, annotations={"org.example": "x"})
    del document["artifactType"]
    assert oci.read_manifest(json.dumps(document).encode()).is_concept
    # an image, or an artifact of another type, is not
    other = base_manifest(artifactType="application/vnd.example+json")
    assert not oci.read_manifest(json.dumps(other).encode()).is_concept
    with pytest.raises(oci.ManifestError) as refused:
        oci.read_manifest(json.dumps(other).encode()).concept_file()
    assert refused.value.code == "MANIFEST_INVALID"
    layers = json.loads(vector_manifest())["layers"]
    two_layers = base_manifest(layers=layers * 2)
    assert not oci.read_manifest(json.dumps(two_layers).encode()).is_concept


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        (b"not json", None, "MANIFEST_INVALID"),
        (b"[]", None, "MANIFEST_INVALID"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', None, "MANIFEST_INVALID"),
        (json.dumps(base_manifest(schemaVersion=1)).encode(), None, "MANIFEST_INVALID"),
        (json.dumps(base_manifest(layers="x")).encode(), None, "MANIFEST_INVALID"),
        (
            json.dumps(
                base_manifest(config={"mediaType": "a", "digest": "sha256:0", "size": 2})
            ).encode(),
            None,
            "MANIFEST_INVALID",
        ),
        (
            json.dumps(
                base_manifest(config={"mediaType": "a", "digest": oci.EMPTY_DIGEST, "size": True})
            ).encode(),
            None,
            "MANIFEST_INVALID",
        ),
        (json.dumps(base_manifest(annotations={"a": 1})).encode(), None, "MANIFEST_INVALID"),
        (json.dumps(base_manifest(mediaType=oci.INDEX_MEDIA_TYPE)).encode(), None, "UNSUPPORTED"),
        (vector_manifest(), "application/vnd.docker.distribution.manifest.v2+json", "UNSUPPORTED"),
        (b" " * (oci.MAX_MANIFEST_SIZE + 1), None, "MANIFEST_INVALID"),
    ],
)
def test_what_is_not_a_manifest_is_refused_with_its_oci_code(
    data: bytes, content_type: str | None, code: str
) -> None:
    with pytest.raises(oci.ManifestError) as refused:
        oci.read_manifest(data, content_type)
    assert refused.value.code == code
