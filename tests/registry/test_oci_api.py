"""The OCI Distribution API at /v2/ over HTTP, on folder+SQLite and S3+PostgreSQL: versions as
OCI artifacts, pushes through /v2/ becoming versions (the tag mapping of spec/registry-api.md
§11), refusals that store nothing, authentication as docker clients do it, visibility, uploads and
referrers. tests/registry/test_oci_interop.py runs real OCI clients against a real server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from concept_factory import build_concept
from test_api import World, open_world

import perfusion_format as pf
from pfx_registry.db import oci_manifests

MANIFEST = pf.oci.MANIFEST_MEDIA_TYPE


@pytest.fixture(params=["folder+sqlite", "s3+postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with open_world(request, tmp_path, request.param) as opened:
        yield opened


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def concept_file(seed: int, key: pf.PrivateKey | None = None) -> bytes:
    concept = build_concept(seed=seed)
    return pf.dumps(pf.sign(concept, key) if key else concept)


def manifest_of(data: bytes, file_name: str, **extra: Any) -> bytes:
    """A concept manifest built by hand from the spec (not by the code under test)."""
    concept = pf.loads(data)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": pf.MEDIA_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": pf.MEDIA_TYPE,
                "digest": sha256(data),
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": file_name},
            }
        ],
        "annotations": {
            "io.perfusion.concept.token": concept.token,
            "io.perfusion.concept.superclass": concept.superclass,
            "io.perfusion.concept.family": concept.family.name,
            "io.perfusion.concept.signers": ",".join(s.key_id for s in concept.signatures),
        },
    }
    document.update(extra)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(site: World, token: str, repository: str, data: bytes, chunk: int = 0) -> Any:
    """Upload a blob: monolithically (``chunk`` 0) or in chunks of ``chunk`` bytes."""
    if not chunk:
        return site.client.post(
            f"/v2/{repository}/blobs/uploads/?digest={sha256(data)}",
            content=data,
            headers=bearer(token),
        )
    started = site.client.post(f"/v2/{repository}/blobs/uploads/", headers=bearer(token))
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        sent = site.client.patch(
            location,
            content=piece,
            headers={**bearer(token), "Content-Range": f"{start}-{start + len(piece) - 1}"},
        )
        assert sent.status_code == 202 and sent.headers["range"] == f"0-{start + len(piece) - 1}"
    return site.client.put(f"{location}?digest={sha256(data)}", headers=bearer(token))


def put_manifest(site: World, token: str, repository: str, reference: str, body: bytes) -> Any:
    return site.client.put(
        f"/v2/{repository}/manifests/{reference}",
        content=body,
        headers={**bearer(token), "Content-Type": MANIFEST},
    )


def oci_code(response: Any) -> str:
    return str(response.json()["errors"][0]["code"])


def test_a_version_pushed_with_pfx_is_an_oci_artifact(site: World) -> None:
    alice = site.user("alice")
    data = concept_file(1)
    assert site.push(alice, "alice/teddy:1.0", data, tags=["stable"], private=False).status_code
    expected = manifest_of(data, "teddy.perfusion.safetensors")
    for reference in ("1.0", "stable", sha256(expected)):
        got = site.client.get(f"/v2/alice/teddy/manifests/{reference}", headers=bearer(alice))
        assert got.status_code == 200 and got.content == expected, reference
        assert got.headers["docker-content-digest"] == sha256(expected)
        assert got.headers["content-type"] == MANIFEST
    head = site.client.head("/v2/alice/teddy/manifests/1.0", headers=bearer(alice))
    assert head.headers["content-length"] == str(len(expected)) and head.content == b""
    # anonymous pulls of a public concept, as clients make them (with the anonymous token too)
    for headers in ({}, bearer("anonymous")):
        blob = site.client.get(f"/v2/alice/teddy/blobs/{sha256(data)}", headers=headers)
        assert blob.status_code == 200 and blob.content == data
    config = site.client.get(f"/v2/alice/teddy/blobs/{sha256(b'{}')}")
    assert config.content == b"{}"
    tags = site.client.get("/v2/alice/teddy/tags/list").json()
    assert tags == {"name": "alice/teddy", "tags": ["1.0", "stable"]}
    repository = site.client.get("/v1/concepts/alice/teddy", headers=bearer(alice)).json()
    assert repository["downloads"] == 2  # the two layer downloads above


def test_pushes_through_v2_become_versions_and_tags(site: World) -> None:
    alice = site.user("alice")
    first, second, third = concept_file(1), concept_file(2), concept_file(3)
    assert upload(site, alice, "alice/teddy", first, chunk=10_000).status_code == 201
    assert upload(site, alice, "alice/teddy", second).status_code == 201
    # a manifest of another tool: extra annotations, kept byte for byte
    pushed = manifest_of(first, "mine.safetensors", annotations={"org.example": "kept"})
    created = put_manifest(site, alice, "alice/teddy", "2.0", pushed)
    assert created.status_code == 201 and created.headers["docker-content-digest"] == sha256(pushed)
    version = site.client.get("/v1/concepts/alice/teddy/versions/2.0", headers=bearer(alice))
    assert version.status_code == 200 and version.json()["digest"] == sha256(first)
    got = site.client.get("/v2/alice/teddy/manifests/2.0", headers=bearer(alice))
    assert got.content == pushed
    # versions are immutable: another file under 2.0 is denied, the same one is idempotent
    other = put_manifest(site, alice, "alice/teddy", "2.0", manifest_of(second, "x"))
    assert other.status_code == 403 and oci_code(other) == "DENIED"
    assert put_manifest(site, alice, "alice/teddy", "2.0", pushed).status_code == 201
    # latest is a movable tag: a new file gets an automatic version name
    moved = put_manifest(site, alice, "alice/teddy", "latest", manifest_of(second, "y"))
    assert moved.status_code == 201
    automatic = "oci-" + hashlib.sha256(second).hexdigest()[:12]
    latest = site.client.get("/v1/concepts/alice/teddy/versions/latest", headers=bearer(alice))
    assert latest.json()["version"] == automatic
    # an existing tag moves to the version already holding the file
    put_manifest(site, alice, "alice/teddy", "latest", pushed)
    latest = site.client.get("/v1/concepts/alice/teddy/versions/latest", headers=bearer(alice))
    assert latest.json()["version"] == "2.0"
    # by digest: a version (new or existing), no tag
    assert upload(site, alice, "alice/teddy", third, chunk=0).status_code == 201
    by_digest = manifest_of(third, "z")
    assert put_manifest(site, alice, "alice/teddy", sha256(by_digest), by_digest).status_code == 201
    listed = site.client.get("/v2/alice/teddy/tags/list", headers=bearer(alice)).json()["tags"]
    third_version = "oci-" + hashlib.sha256(third).hexdigest()[:12]
    assert listed == sorted(["2.0", automatic, third_version, "latest"])
    page = site.client.get("/v2/alice/teddy/tags/list?n=2", headers=bearer(alice))
    assert page.json()["tags"] == sorted(listed)[:2]
    assert page.headers["link"] == f'</v2/alice/teddy/tags/list?n=2&last={listed[1]}>; rel="next"'
    rest = site.client.get(f"/v2/alice/teddy/tags/list?n=2&last={listed[1]}", headers=bearer(alice))
    assert rest.json()["tags"] == listed[2:] and "link" not in rest.headers
    # deleting a tag works; a version is immutable
    assert (
        site.client.delete("/v2/alice/teddy/manifests/latest", headers=bearer(alice)).status_code
        == 202
    )
    kept = site.client.delete("/v2/alice/teddy/manifests/2.0", headers=bearer(alice))
    assert kept.status_code == 405 and oci_code(kept) == "UNSUPPORTED"
    assert "latest" not in site.client.get("/v2/alice/teddy/tags/list", headers=bearer(alice)).text


def stored_manifests(site: World) -> int:
    engine = site.client.app.state.registry.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return len(connection.execute(sqlalchemy.select(oci_manifests.c.digest)).all())


def test_what_is_not_a_concept_is_refused_and_nothing_is_stored(site: World) -> None:
    alice = site.user("alice")
    data = concept_file(1)
    garbage = os.urandom(3000)
    upload(site, alice, "alice/teddy", data)
    upload(site, alice, "alice/teddy", garbage)
    image = json.loads(manifest_of(data, "t"))
    image["artifactType"] = "application/vnd.example.thing"
    not_a_concept = put_manifest(site, alice, "alice/teddy", "1", json.dumps(image).encode())
    assert not_a_concept.status_code == 400 and oci_code(not_a_concept) == "MANIFEST_INVALID"
    docker = site.client.put(
        "/v2/alice/teddy/manifests/1",
        content=manifest_of(data, "t"),
        headers={
            **bearer(alice),
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json",
        },
    )
    assert docker.status_code == 415 and oci_code(docker) == "UNSUPPORTED"
    fake = json.loads(manifest_of(data, "t"))
    fake["layers"][0].update(digest=sha256(garbage), size=len(garbage))
    refused = put_manifest(site, alice, "alice/teddy", "1", json.dumps(fake).encode())
    assert refused.status_code == 400 and oci_code(refused) == "MANIFEST_INVALID"
    assert "not a valid concept file" in refused.json()["errors"][0]["message"]
    missing = json.loads(manifest_of(concept_file(9), "t"))
    absent = put_manifest(site, alice, "alice/teddy", "1", json.dumps(missing).encode())
    assert absent.status_code == 400 and oci_code(absent) == "MANIFEST_BLOB_UNKNOWN"
    wrong_size = json.loads(manifest_of(data, "t"))
    wrong_size["layers"][0]["size"] = len(data) + 1
    sized = put_manifest(site, alice, "alice/teddy", "1", json.dumps(wrong_size).encode())
    assert sized.status_code == 400 and oci_code(sized) == "SIZE_INVALID"
    for body in (b"{", b"[]", b'{"schemaVersion": 1}'):
        assert oci_code(put_manifest(site, alice, "alice/teddy", "1", body)) == "MANIFEST_INVALID"
    assert site.client.get("/v1/concepts/alice/teddy", headers=bearer(alice)).status_code == 404
    assert stored_manifests(site) == 0


def test_policies_and_limits_hold_for_v2_pushes(site: World) -> None:
    alice = site.user("alice")
    policy = site.client.put(
        "/v1/namespaces/alice/policy", json={"require_signatures": True}, headers=bearer(alice)
    )
    assert policy.status_code == 200
    data = concept_file(1)
    upload(site, alice, "alice/teddy", data)
    unsigned = put_manifest(site, alice, "alice/teddy", "1", manifest_of(data, "t"))
    assert unsigned.status_code == 403 and oci_code(unsigned) == "DENIED"
    assert unsigned.json()["errors"][0]["detail"] == {"pfx_code": "SIGNATURE_REQUIRED"}
    limit = site.settings.max_concept_bytes
    too_big = b"\0" * (limit + 1)
    refused = site.client.post(
        f"/v2/alice/teddy/blobs/uploads/?digest={sha256(too_big)}",
        content=too_big,
        headers=bearer(alice),
    )
    assert refused.status_code == 413
    assert stored_manifests(site) == 0


def basic(user: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def test_clients_authenticate_as_docker_clients_do(site: World) -> None:
    alice = site.user("alice")
    site.push(alice, "alice/secret:1", concept_file(1))
    challenge = site.client.get("/v2/")
    assert challenge.status_code == 401 and oci_code(challenge) == "UNAUTHORIZED"
    assert challenge.headers["www-authenticate"] == (
        'Bearer realm="http://testserver/v2/token",service="pfx-registry"'
    )
    anonymous = site.client.get("/v2/token?service=pfx-registry&scope=repository:a/b:pull")
    assert anonymous.json()["token"] == "anonymous"
    issued = site.client.get("/v2/token", headers=basic("alice", alice)).json()
    assert issued["token"] == issued["access_token"] == alice
    bad = site.client.get("/v2/token", headers=basic("alice", "pfx_" + "x" * 43))
    assert bad.status_code == 401
    for headers in (bearer(alice), basic("anyone", alice)):
        assert site.client.get("/v2/", headers=headers).status_code == 200
        got = site.client.get("/v2/alice/secret/manifests/1", headers=headers)
        assert got.status_code == 200
    # a private repository is asked for credentials, exactly like a missing one, when anonymous
    hidden = site.client.get("/v2/alice/secret/manifests/1")
    missing = site.client.get("/v2/alice/absent/manifests/1")
    assert hidden.status_code == missing.status_code == 401
    assert hidden.headers["www-authenticate"].endswith('scope="repository:alice/secret:pull"')
    # and is unknown to an authenticated outsider, exactly like a missing one
    bob = site.user("bob")
    for path in ("manifests/1", f"blobs/{sha256(concept_file(1))}", "tags/list"):
        seen = site.client.get(f"/v2/alice/secret/{path}", headers=bearer(bob))
        absent = site.client.get(f"/v2/alice/absent/{path}", headers=bearer(bob))
        assert seen.status_code == absent.status_code == 404, path
        assert oci_code(seen) == oci_code(absent) == "NAME_UNKNOWN"
    # pushing needs credentials and the writer role
    assert site.client.post("/v2/alice/secret/blobs/uploads/").status_code == 401
    site.client.post("/v1/orgs", json={"name": "acme"}, headers=bearer(alice))
    site.client.put(
        "/v1/orgs/acme/members", json={"user": "bob", "role": "reader"}, headers=bearer(alice)
    )
    site.push(alice, "acme/teddy:1", concept_file(2))
    assert site.client.get("/v2/acme/teddy/manifests/1", headers=bearer(bob)).status_code == 200
    denied = site.client.post("/v2/acme/teddy/blobs/uploads/", headers=bearer(bob))
    assert denied.status_code == 403 and oci_code(denied) == "DENIED"


def test_referrers_are_kept_listed_and_filtered(site: World) -> None:
    alice = site.user("alice")
    data = concept_file(1)
    site.push(alice, "alice/teddy:1", data)
    subject = site.client.get("/v2/alice/teddy/manifests/1", headers=bearer(alice))
    sbom = b'{"sbom": true}'
    assert upload(site, alice, "alice/teddy", sbom).status_code == 201
    artifact = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
        },
        "layers": [{"mediaType": "application/json", "digest": sha256(sbom), "size": len(sbom)}],
        "subject": {
            "mediaType": MANIFEST,
            "digest": subject.headers["docker-content-digest"],
            "size": len(subject.content),
        },
        "annotations": {"org.example.kind": "sbom"},
    }
    body = json.dumps(artifact).encode()
    tagged = put_manifest(site, alice, "alice/teddy", "sbom", body)
    assert tagged.status_code == 400  # artifacts are pushed by digest
    stored = put_manifest(site, alice, "alice/teddy", sha256(body), body)
    assert stored.status_code == 201
    assert stored.headers["oci-subject"] == subject.headers["docker-content-digest"]
    listing = f"/v2/alice/teddy/referrers/{subject.headers['docker-content-digest']}"
    index = site.client.get(listing, headers=bearer(alice))
    assert index.headers["content-type"] == pf.oci.INDEX_MEDIA_TYPE
    assert index.json()["manifests"] == [
        {
            "mediaType": MANIFEST,
            "digest": sha256(body),
            "size": len(body),
            "artifactType": "application/vnd.example.sbom",
            "annotations": {"org.example.kind": "sbom"},
        }
    ]
    filtered = site.client.get(
        f"{listing}?artifactType=application/vnd.example.sbom", headers=bearer(alice)
    )
    assert len(filtered.json()["manifests"]) == 1
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    other = site.client.get(f"{listing}?artifactType=application/other", headers=bearer(alice))
    assert other.json()["manifests"] == []
    got = site.client.get(f"/v2/alice/teddy/manifests/{sha256(body)}", headers=bearer(alice))
    assert got.content == body
    # the artifact's blob is visible through the repository to its readers only
    bob = site.user("bob")
    assert (
        site.client.get(f"/v2/alice/teddy/blobs/{sha256(sbom)}", headers=bearer(alice)).content
        == sbom
    )
    assert (
        site.client.get(f"/v2/alice/teddy/blobs/{sha256(sbom)}", headers=bearer(bob)).status_code
        == 404
    )
    deleted = site.client.delete(f"/v2/alice/teddy/manifests/{sha256(body)}", headers=bearer(alice))
    assert deleted.status_code == 202
    assert site.client.get(listing, headers=bearer(alice)).json()["manifests"] == []
    assert (
        site.client.get(
            f"/v2/alice/teddy/referrers/sha256:{'0' * 64}", headers=bearer(alice)
        ).json()["manifests"]
        == []
    )


def test_uploads_check_order_digest_owner_and_mounts(site: World) -> None:
    alice, bob = site.user("alice"), site.user("bob")
    data = concept_file(1)
    started = site.client.post("/v2/alice/teddy/blobs/uploads/", headers=bearer(alice))
    location = started.headers["location"]
    gap = site.client.patch(
        location, content=data[:10], headers={**bearer(alice), "Content-Range": "5-14"}
    )
    assert gap.status_code == 416 and oci_code(gap) == "BLOB_UPLOAD_INVALID"
    site.client.patch(location, content=data, headers=bearer(alice))
    status = site.client.get(location, headers=bearer(alice))
    assert status.status_code == 204 and status.headers["range"] == f"0-{len(data) - 1}"
    wrong = site.client.put(f"{location}?digest={sha256(b'other')}", headers=bearer(alice))
    assert wrong.status_code == 400 and oci_code(wrong) == "DIGEST_INVALID"
    stolen = site.client.put(f"{location}?digest={sha256(data)}", headers=bearer(bob))
    assert stolen.status_code == 404 and oci_code(stolen) == "BLOB_UPLOAD_UNKNOWN"
    finished = site.client.put(f"{location}?digest={sha256(data)}", headers=bearer(alice))
    assert finished.status_code == 201
    assert (
        site.client.put(f"{location}?digest={sha256(data)}", headers=bearer(alice)).status_code
        == 404
    )
    # a blob the caller sees is mounted; one they do not see starts an upload instead
    mounted = site.client.post(
        f"/v2/alice/other/blobs/uploads/?mount={sha256(data)}&from=alice/teddy",
        headers=bearer(alice),
    )
    assert mounted.status_code == 201 and mounted.headers["docker-content-digest"] == sha256(data)
    not_theirs = site.client.post(
        f"/v2/bob/stolen/blobs/uploads/?mount={sha256(data)}&from=alice/teddy", headers=bearer(bob)
    )
    assert not_theirs.status_code == 202
    cancelled = site.client.delete(not_theirs.headers["location"], headers=bearer(bob))
    assert cancelled.status_code == 204


def test_errors_take_the_oci_shape(site: World) -> None:
    alice = site.user("alice")
    site.push(alice, "alice/teddy:1", concept_file(1))
    for method, path, status, code in (
        ("GET", "/v2/a/b/c/manifests/x", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/alice/teddy/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/v2/alice/teddy/manifests/sha256:{'0' * 64}", 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/v2/alice/teddy/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/alice/teddy/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("DELETE", f"/v2/alice/teddy/blobs/{sha256(b'x')}", 405, "UNSUPPORTED"),
        ("GET", "/v2/Alice/teddy/tags/list", 404, "NAME_UNKNOWN"),
    ):
        answer = site.client.request(method, path, headers=bearer(alice))
        assert answer.status_code == status and oci_code(answer) == code, path
        assert set(answer.json()["errors"][0]) == {"code", "message", "detail"}
    # /v2/ is one mount: its routes are still labelled in full in the metrics
    metrics = site.client.get("/metrics").text
    assert 'route="/v2/{ns}/{name}/manifests/{reference}"' in metrics
