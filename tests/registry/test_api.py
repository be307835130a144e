"""The registry API, run against every combination of real backends: blobs in a folder or in S3
(moto's server over HTTP), the index in SQLite or PostgreSQL 15."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from backends import fresh_postgres_database
from concept_factory import VECTORS, build_concept
from fastapi.testclient import TestClient

import perfusion_format as pf
from pfx_registry.app import create_app
from pfx_registry.auth import hash_token, new_token
from pfx_registry.db import accounts, tokens
from pfx_registry.migrate import upgrade
from pfx_registry.settings import Settings


@dataclass
class World:
    """A running registry app and ways to act in it."""

    client: TestClient
    settings: Settings
    admin: str

    def user(self, name: str, scope: str = "admin", **token: Any) -> str:
        """Create user ``name`` (if needed) and return a new token of theirs."""
        self.client.post("/v1/users", json={"name": name}, headers=self.auth(self.admin))
        body = {"name": f"{name}-{uuid.uuid4().hex[:6]}", "scope": scope, "user": name, **token}
        response = self.client.post("/v1/tokens", json=body, headers=self.auth(self.admin))
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def expire(self, token: str) -> None:
        """Let ``token``'s expiry pass: it expired a minute ago (no token can be created already
        expired)."""
        engine = self.client.app.state.registry.engine  # type: ignore[attr-defined]
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.update(tokens)
                .where(tokens.c.secret_hash == hash_token(token))
                .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
            )

    @staticmethod
    def auth(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def upload(self, data: bytes, token: str) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = self.client.put(f"/v1/blobs/{digest}", content=data, headers=self.auth(token))
        assert response.status_code == 201, response.text
        return digest

    def push(self, token: str, ref: str, data: bytes, **body: Any) -> sqlalchemy.engine.Row | Any:
        digest = self.upload(data, token)
        name, version = ref.split(":")
        return self.client.put(
            f"/v1/concepts/{name}/versions/{version}",
            json={"digest": digest, **body},
            headers=self.auth(token),
        )


def migrate_and_add_administrator(engine: sqlalchemy.Engine) -> str:
    """Bring the index up to date, add the registry administrator ``root``; its admin token."""
    upgrade(engine)
    admin = new_token()
    with engine.begin() as connection:
        admin_id = connection.execute(
            sqlalchemy.insert(accounts)
            .values(name="root", kind="user", is_admin=True)
            .returning(accounts.c.id)
        ).scalar_one()
        connection.execute(
            sqlalchemy.insert(tokens).values(
                user_id=admin_id, name="root", secret_hash=hash_token(admin), scope="admin"
            )
        )
    return admin


@pytest.fixture(params=["folder+sqlite", "s3+postgres", "folder+postgres", "s3+sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with open_world(request, tmp_path, request.param) as opened:
        yield opened


@contextmanager
def open_world(request: pytest.FixtureRequest, tmp_path: Path, backends: str) -> Iterator[World]:
    """A registry app on ``backends`` (``"folder+sqlite"``, ``"s3+postgres"`` …) with its
    administrator; the backends' fixtures are taken from ``request``."""
    blobs, index = backends.split("+")
    # Rate limits are off here (test_operations.py tests them): the suite sends bursts.
    settings = Settings(data_dir=tmp_path / "data", rate_limit_token=0, rate_limit_address=0)
    if blobs == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = "b" + uuid.uuid4().hex[:12]
        server.create_bucket(bucket)
        settings = settings.model_copy(update={"s3_bucket": bucket, "s3_endpoint": server.endpoint})
    if index == "postgres":
        url = fresh_postgres_database(request.getfixturevalue("postgres_url"))
        settings = settings.model_copy(update={"database_url": url})
    app = create_app(settings)
    engine = app.state.registry.engine
    admin = migrate_and_add_administrator(engine)
    with TestClient(app) as client:
        yield World(client, settings, admin)
    engine.dispose()


def concept_bytes(seed: int, key: pf.PrivateKey | None = None) -> bytes:
    concept = build_concept(seed=seed)
    return pf.dumps(pf.sign(concept, key) if key else concept)


def test_push_pull_round_trip_is_byte_identical(world: World) -> None:
    alice = world.user("alice")
    data = (VECTORS / "sd1-fp16.perfusion.safetensors").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert world.client.head(f"/v1/blobs/{digest}", headers=world.auth(alice)).status_code == 404
    response = world.push(alice, "alice/teddy:1.0", data, tags=["latest", "stable"])
    assert response.status_code == 201
    body = response.json()
    assert body["digest"] == digest and body["token"] == "<teddy>" and body["family"] == "sd-1"
    assert body["signers"] == [pf.load_public_key(VECTORS / "test-key.pem.pub").key_id]
    head = world.client.head(f"/v1/blobs/{digest}", headers=world.auth(alice))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    for reference in ("latest", "stable", "1.0", digest):
        got = world.client.get(
            f"/v1/concepts/alice/teddy/versions/{reference}/file", headers=world.auth(alice)
        )
        assert got.status_code == 200 and got.content == data, reference
    blob = world.client.get(f"/v1/blobs/{digest}", headers=world.auth(alice))
    assert blob.content == data
    repository = world.client.get("/v1/concepts/alice/teddy", headers=world.auth(alice)).json()
    assert repository["downloads"] == 4 and repository["private"] is True
    assert repository["tags"] == {"latest": "1.0", "stable": "1.0"}


def test_versions_are_immutable_and_publishing_is_idempotent(world: World) -> None:
    alice = world.user("alice")
    first, second = concept_bytes(1), concept_bytes(2)
    assert world.push(alice, "alice/c:1", first).status_code == 201
    assert world.push(alice, "alice/c:1", first).status_code == 200
    conflict = world.push(alice, "alice/c:1", second)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "VERSION_EXISTS"
    got = world.client.get("/v1/concepts/alice/c/versions/1/file", headers=world.auth(alice))
    assert got.content == first


def test_refused_uploads_leave_nothing(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(3)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    response = world.client.put(f"/v1/blobs/{wrong}", content=data, headers=world.auth(alice))
    assert response.status_code == 400 and response.json()["error"]["code"] == "DIGEST_INVALID"
    store = world.client.app.state.registry.blobs
    assert store.size(wrong) is None
    assert store.size("sha256:" + hashlib.sha256(data).hexdigest()) is None
    tampered = (VECTORS / "invalid" / "tampered-tensor.perfusion.safetensors").read_bytes()
    digest = "sha256:" + hashlib.sha256(tampered).hexdigest()
    response = world.client.put(f"/v1/blobs/{digest}", content=tampered, headers=world.auth(alice))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "SIGNATURE_INVALID"
    assert store.size(digest) is None and list(store.digests()) == []
    too_big = world.client.put(
        f"/v1/blobs/{digest}", content=bytes(pf.MAX_FILE_SIZE + 1), headers=world.auth(alice)
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "TOO_LARGE"
    unknown = world.client.put(
        "/v1/concepts/alice/c/versions/1", json={"digest": digest}, headers=world.auth(alice)
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "BLOB_UNKNOWN"


def test_private_repositories_answer_404_to_outsiders(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    data = concept_bytes(4)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    world.push(alice, "alice/secret:1", data, description="hidden teapot")
    world.push(alice, "alice/open:1", concept_bytes(5), private=False)
    for token in (None, bob):
        headers = world.auth(token)
        for url in (
            "/v1/concepts/alice/secret",
            "/v1/concepts/alice/secret/versions/1",
            "/v1/concepts/alice/secret/versions/1/file",
            f"/v1/blobs/{digest}",
        ):
            response = world.client.get(url, headers=headers)
            assert response.status_code == 404, (url, token)
        for name in ("secret", "nothing-here"):  # private and absent answer alike
            response = world.client.get(f"/v1/concepts/alice/{name}", headers=headers)
            assert response.json() == {
                "error": {"code": "NOT_FOUND", "message": f"concept alice/{name} not found"}
            }
        assert world.client.head(f"/v1/blobs/{digest}", headers=headers).status_code == 404
        listed = world.client.get("/v1/concepts/alice", headers=headers).json()["concepts"]
        assert [c["name"] for c in listed] == ["open"]
        found = world.client.get("/v1/search", params={"q": "teapot"}, headers=headers).json()
        assert all(r["name"] != "secret" for r in found["results"])
        # writes: anonymous callers get 401 and outsiders 404, for private and absent alike
        for name in ("secret", "nothing-here"):
            write = world.client.put(
                f"/v1/concepts/alice/{name}/versions/2", json={"digest": digest}, headers=headers
            )
            assert write.status_code == (401 if token is None else 404), (name, token)
    assert world.client.get("/v1/concepts/alice/open/versions/1/file").status_code == 200


def test_organization_roles(world: World) -> None:
    owner, reader, writer = world.user("olga"), world.user("rita"), world.user("walt")
    assert (
        world.client.post("/v1/orgs", json={"name": "acme"}, headers=world.auth(owner)).status_code
        == 201
    )
    for user, role in (("rita", "reader"), ("walt", "writer")):
        response = world.client.put(
            "/v1/orgs/acme/members", json={"user": user, "role": role}, headers=world.auth(owner)
        )
        assert response.status_code == 200
    assert world.push(writer, "acme/teddy:1", concept_bytes(6)).status_code == 201
    denied = world.push(reader, "acme/teddy:2", concept_bytes(7))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "FORBIDDEN"
    assert (
        world.client.get("/v1/concepts/acme/teddy", headers=world.auth(reader)).status_code == 200
    )
    assert world.client.get("/v1/concepts/acme/teddy").status_code == 404
    # a writer cannot change visibility; the org admin can
    patch = world.client.patch(
        "/v1/concepts/acme/teddy", json={"private": False}, headers=world.auth(writer)
    )
    assert patch.status_code == 403
    patch = world.client.patch(
        "/v1/concepts/acme/teddy", json={"private": False}, headers=world.auth(owner)
    )
    assert patch.status_code == 200 and patch.json()["private"] is False
    assert world.client.get("/v1/concepts/acme/teddy").status_code == 200
    world.client.delete("/v1/orgs/acme/members/rita", headers=world.auth(owner))
    world.client.patch("/v1/concepts/acme/teddy", json={"private": True}, headers=world.auth(owner))
    assert (
        world.client.get("/v1/concepts/acme/teddy", headers=world.auth(reader)).status_code == 404
    )


def test_tokens_revoked_expired_and_scoped(world: World) -> None:
    alice = world.user("alice")
    world.push(alice, "alice/open:1", concept_bytes(8), private=False)
    reader_token = world.user("alice", scope="read")
    data = concept_bytes(9)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = world.client.put(f"/v1/blobs/{digest}", content=data, headers=world.auth(reader_token))
    assert upload.status_code == 403
    expired = world.user("alice", expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    world.expire(expired)
    listed = world.client.get("/v1/tokens", headers=world.auth(alice)).json()["tokens"]
    revocable = next(t for t in listed if t["scope"] == "read")
    assert (
        world.client.delete(f"/v1/tokens/{revocable['id']}", headers=world.auth(alice)).status_code
        == 204
    )
    for token in (reader_token, expired, "pfx_unknown"):
        for method, url in (
            ("GET", "/v1/concepts/alice/open"),
            ("GET", "/v1/search"),
            ("GET", "/v1/whoami"),
        ):
            response = world.client.request(method, url, headers=world.auth(token))
            assert response.status_code == 401, (token, url)
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
    assert world.client.get("/v1/concepts/alice/open").status_code == 200


def test_yank_hides_tags_but_keeps_digest_pulls(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(10)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    world.push(alice, "alice/c:1", data, private=False, labels=["plush"])
    assert (
        world.client.post(
            "/v1/concepts/alice/c/versions/1/yank", headers=world.auth(alice)
        ).status_code
        == 200
    )
    assert world.client.get("/v1/concepts/alice/c/versions/latest").status_code == 404
    assert world.client.get("/v1/concepts/alice/c/versions/1").status_code == 404
    pinned = world.client.get(f"/v1/concepts/alice/c/versions/{digest}/file")
    assert pinned.status_code == 200 and pinned.content == data
    assert world.client.get("/v1/search", params={"q": "plush"}).json()["results"] == []
    world.client.delete("/v1/concepts/alice/c/versions/1/yank", headers=world.auth(alice))
    assert [
        r["name"] for r in world.client.get("/v1/search", params={"q": "plush"}).json()["results"]
    ] == ["c"]


def test_signature_policy_and_protected_tags(world: World) -> None:
    alice = world.user("alice")
    key = pf.PrivateKey.generate()
    policy = world.client.put(
        "/v1/namespaces/alice/policy",
        json={"require_signatures": True, "protected_tags": True},
        headers=world.auth(alice),
    )
    assert policy.json() == {"require_signatures": True, "protected_tags": True}
    unsigned = world.push(alice, "alice/c:1", concept_bytes(11))
    assert unsigned.status_code == 422 and unsigned.json()["error"]["code"] == "SIGNATURE_REQUIRED"
    signed = concept_bytes(11, key)
    assert world.push(alice, "alice/c:1", signed).status_code == 422  # key not registered yet
    registered = world.client.post(
        "/v1/namespaces/alice/keys",
        json={"public_key": key.public_key.to_pem().decode(), "name": "laptop"},
        headers=world.auth(alice),
    )
    assert registered.json()["key_id"] == key.public_key.key_id
    again = world.client.post(  # registering again keeps the stored name
        "/v1/namespaces/alice/keys",
        json={"public_key": key.public_key.to_base64(), "name": "other"},
        headers=world.auth(alice),
    )
    assert again.status_code == 201 and again.json()["name"] == "laptop"
    assert world.push(alice, "alice/c:1", signed).status_code == 201
    assert world.push(alice, "alice/c:2", concept_bytes(12, key), tags=[]).status_code == 201
    # alice is admin of her namespace: she may move the protected tag; a writer of an org may not
    assert (
        world.client.put(
            "/v1/concepts/alice/c/tags/latest", json={"version": "2"}, headers=world.auth(alice)
        ).status_code
        == 200
    )


def test_concurrent_publishes_of_one_version_one_wins(world: World) -> None:
    alice = world.user("alice")
    digests = [world.upload(concept_bytes(20 + n), alice) for n in range(2)]

    def publish(digest: str) -> int:
        return world.client.put(
            "/v1/concepts/alice/race/versions/1", json={"digest": digest}, headers=world.auth(alice)
        ).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(publish, digests))
    assert statuses == [201, 409]
    winner = world.client.get(
        "/v1/concepts/alice/race/versions/1", headers=world.auth(alice)
    ).json()
    assert winner["digest"] in digests


def test_errors_have_one_shape(world: World) -> None:
    for method, url, status, code in (
        ("GET", "/v1/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("GET", "/v1/concepts/nobody/x", 404, "NOT_FOUND"),
        ("GET", "/v1/search?limit=1000", 400, "BAD_REQUEST"),
        ("PUT", f"/v1/blobs/sha256:{'0' * 64}", 401, "UNAUTHORIZED"),
        ("GET", "/v1/no-such-endpoint", 404, "NOT_FOUND"),
    ):
        response = world.client.request(method, url)
        assert response.status_code == status, url
        assert set(response.json()) == {"error"} and response.json()["error"]["code"] == code


@pytest.mark.parametrize("world", ["s3+sqlite"], indirect=True)
def test_s3_downloads_can_redirect_to_a_presigned_url(world: World) -> None:
    import httpx

    alice = world.user("alice")
    data = concept_bytes(40)
    world.push(alice, "alice/c:1", data)
    registry = world.client.app.state.registry
    registry.settings = registry.settings.model_copy(update={"s3_redirect": True})
    response = world.client.get(
        "/v1/concepts/alice/c/versions/1/file", headers=world.auth(alice), follow_redirects=False
    )
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith(world.settings.s3_endpoint) and "Expires=" in location
    assert httpx.get(location).content == data
    assert world.client.get("/v1/concepts/alice/c").status_code == 404  # still private
    counted = world.client.get("/v1/concepts/alice/c", headers=world.auth(alice)).json()
    assert counted["downloads"] == 1


PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(32)


def test_previews(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    world.push(alice, "alice/c:1", concept_bytes(41))
    url = "/v1/concepts/alice/c/previews"
    added = world.client.post(
        url, content=PNG, headers={**world.auth(alice), "content-type": "image/jpeg"}
    )
    assert added.status_code == 201 and added.json()["media_type"] == "image/png"  # read from bytes
    assert (
        world.client.post(url, content=WEBP, headers=world.auth(alice)).json()["media_type"]
        == "image/webp"
    )
    text = world.client.post(url, content=b"<svg/>", headers=world.auth(alice))
    assert text.status_code == 415 and text.json()["error"]["code"] == "UNSUPPORTED_MEDIA"
    big = world.client.post(url, content=PNG + bytes(1024 * 1024), headers=world.auth(alice))
    assert big.status_code == 413
    assert (
        world.client.post(url, content=PNG, headers=world.auth(bob)).status_code == 404
    )  # private
    listed = world.client.get("/v1/concepts/alice/c", headers=world.auth(alice)).json()["previews"]
    assert [p["media_type"] for p in listed] == ["image/png", "image/webp"]
    image = world.client.get(listed[0]["url"], headers=world.auth(alice))
    assert image.content == PNG
    assert world.client.get(listed[0]["url"], headers=world.auth(bob)).status_code == 404
    digest = listed[0]["digest"]
    assert world.client.delete(f"{url}/{digest}", headers=world.auth(alice)).status_code == 204
    assert (
        len(world.client.get("/v1/concepts/alice/c", headers=world.auth(alice)).json()["previews"])
        == 1
    )


def test_organizations_and_members_are_listed_to_members_only(world: World) -> None:
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    for org in ("acme", "zeta"):
        assert (
            world.client.post("/v1/orgs", json={"name": org}, headers=world.auth(alice)).status_code
            == 201
        )
    added = world.client.put(
        "/v1/orgs/acme/members", json={"user": "bob", "role": "writer"}, headers=world.auth(alice)
    )
    assert added.status_code == 200
    assert world.client.get("/v1/orgs", headers=world.auth(alice)).json() == {
        "orgs": [{"name": "acme", "role": "admin"}, {"name": "zeta", "role": "admin"}]
    }
    assert world.client.get("/v1/orgs", headers=world.auth(bob)).json() == {
        "orgs": [{"name": "acme", "role": "writer"}]
    }
    assert world.client.get("/v1/orgs", headers=world.auth(carol)).json() == {"orgs": []}
    assert world.client.get("/v1/orgs").status_code == 401
    members = world.client.get("/v1/orgs/acme/members", headers=world.auth(bob)).json()
    assert members == {
        "org": "acme",
        "members": [{"user": "alice", "role": "admin"}, {"user": "bob", "role": "writer"}],
    }
    # outsiders, a user namespace and an absent org all answer the same 404
    for org, token in (("acme", carol), ("alice", alice), ("nope", alice)):
        response = world.client.get(f"/v1/orgs/{org}/members", headers=world.auth(token))
        assert response.status_code == 404, (org, response.text)
    assert (
        world.client.get("/v1/orgs/acme/members", headers=world.auth(world.admin)).status_code
        == 200
    )
