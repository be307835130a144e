"""``pfx.client.Client`` end to end: against the real registry (``pfx-registry serve`` on each
backend, fixture ``registry_server``), and against tiny scripted HTTP servers on loopback sockets
for retries, redirects and answers that break the protocol."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from backends import free_port
from concept_factory import build_concept
from registry_server import Account, RegistryServer, Reply, error_reply, scripted, unique_name

import perfusion_format as pf
import pfx.http
from pfx import __version__
from pfx.client import Client, Policy, UploadedBlob, WhoAmI
from pfx.errors import ClientError, ErrorCode, RegistryError

PNG = b"\x89PNG\r\n\x1a\n" + b"not really an image"


def concept_bytes(key: pf.PrivateKey | None = None, **overrides: object) -> bytes:
    """A valid concept file no other test uploads (a seed of its own), signed by ``key``."""
    concept = build_concept(seed=uuid.uuid4().int % 2**32, **overrides)
    return pf.dumps(pf.sign(concept, key) if key else concept)


@contextmanager
def refused(code: str, status: int) -> Iterator[None]:
    """Expect the block to raise a :class:`RegistryError` with ``code`` and ``status``."""
    with pytest.raises(RegistryError) as caught:
        yield
    assert (caught.value.code, caught.value.status) == (code, status), caught.value
    assert caught.value.message.startswith(f"registry answered {status}: ")
    request_id = caught.value.request_id  # by which the registry's access log finds it
    assert caught.value.message.endswith(f" (request {request_id})") == bool(request_id)


@pytest.fixture
def alice(registry_server: RegistryServer) -> Account:
    """A new user with an admin token: everything is allowed in their own namespace."""
    return registry_server.create_user("alice", scope="admin")


@pytest.fixture
def client(registry_server: RegistryServer, alice: Account) -> Iterator[Client]:
    """Alice's client."""
    with registry_server.client(alice.token) as registry:
        yield registry


def push(client: Client, ns: str, name: str, version: str, data: bytes, **settings: object) -> str:
    """Upload and publish ``data`` as ``ns/name:version``; its digest."""
    digest = client.upload_blob(data).digest
    client.publish(ns, name, version, digest, **settings)  # type: ignore[arg-type]
    return digest


# -- against the real registry ------------------------------------------------------------------


def test_push_pull_round_trip_is_byte_identical(client: Client, alice: Account) -> None:
    data = concept_bytes()
    digest = pf.content_digest(data)
    name = unique_name("teddy")
    assert not client.blob_exists(digest)
    sent: list[tuple[int, int]] = []
    blob = client.upload_blob(data, progress=lambda done, total: sent.append((done, total)))
    assert blob == UploadedBlob(digest, len(data), pf.MEDIA_TYPE)
    assert sent[-1] == (len(data), len(data))
    assert client.blob_exists(digest)
    published = client.publish(alice.name, name, "1.0", digest, tags=["latest", "stable"])
    assert published.created and published.reference == f"{alice.name}/{name}:1.0"
    assert (published.digest, published.size, published.yanked) == (digest, len(data), False)
    assert (published.token, published.family, published.signers) == ("<teddy>", "sd-1", [])
    assert published.created_at.tzinfo is not None
    assert not client.publish(alice.name, name, "1.0", digest).created  # idempotent: 200
    received: list[tuple[int, int]] = []
    for reference in ("latest", "stable", "1.0", digest):
        resolved = client.resolve(alice.name, name, reference)
        assert vars(resolved) | {"created": True} == vars(published), reference
        pulled = client.download(alice.name, name, reference, lambda *done: received.append(done))
        assert pulled == data, reference
    assert received[-1][0] == len(data)
    assert client.download_blob(digest) == data
    repository = client.repository(alice.name, name)
    assert (repository.namespace, repository.name, repository.private) == (alice.name, name, True)
    assert repository.downloads == 4 and repository.tags == {"latest": "1.0", "stable": "1.0"}
    assert [(v.version, v.digest) for v in repository.versions] == [("1.0", digest)]


def test_registry_errors_carry_code_and_status(client: Client, alice: Account) -> None:
    name = unique_name("c")
    push(client, alice.name, name, "1", concept_bytes())
    other = client.upload_blob(concept_bytes()).digest
    with refused("VERSION_EXISTS", 409):
        client.publish(alice.name, name, "1", other)
    with refused("NAME_INVALID", 400):
        client.publish(alice.name, name, "-bad", other)
    with refused("DIGEST_INVALID", 400):
        client.blob_exists("sha256:ABC")
    with refused("BLOB_UNKNOWN", 404):
        client.download_blob("sha256:" + "0" * 64)
    with refused("NOT_FOUND", 404):
        client.resolve(alice.name, name, "..")  # a path segment, not a path step


def test_private_repositories_are_not_found_by_outsiders(
    registry_server: RegistryServer, client: Client, alice: Account
) -> None:
    name = unique_name("secret")
    push(client, alice.name, name, "1", concept_bytes())
    bob = registry_server.create_user("bob")
    with registry_server.client(bob.token) as outsider, registry_server.client() as anonymous:
        for stranger in (outsider, anonymous):
            with refused("NOT_FOUND", 404):
                stranger.resolve(alice.name, name, "latest")
            with refused("NOT_FOUND", 404):
                stranger.download(alice.name, name, "1")
            with refused("NOT_FOUND", 404):
                stranger.repository(alice.name, name)
            assert stranger.list_namespace(alice.name) == []
        with refused("NOT_FOUND", 404):
            outsider.yank(alice.name, name, "1")
        assert anonymous.whoami() == WhoAmI(None, None, False)
        assert not client.update_repository(alice.name, name, private=False).private
        assert anonymous.download(alice.name, name, "1") == client.download(alice.name, name, "1")
        assert [r.name for r in outsider.list_namespace(alice.name)] == [name]


def test_search_finds_published_concepts_with_filters(client: Client, alice: Account) -> None:
    word = "w" + uuid.uuid4().hex[:10]
    names = [unique_name("found"), unique_name("found")]
    for name in names:
        push(client, alice.name, name, "1", concept_bytes(), description=f"about {word}")
    page = client.search(word, family="sd-1", namespace=alice.name, superclass="teddy")
    assert sorted(hit.name for hit in page.results) == sorted(names) and page.next_cursor is None
    hit = page.results[0]
    assert hit.reference == f"{alice.name}/{hit.name}:1" and hit.private and hit.score == 1
    assert client.search(word, family="sdxl").results == []
    first = client.search(word, sort="recent", limit=1)
    assert [h.name for h in first.results] == [names[1]] and first.next_cursor is not None
    walk = client.search_all(word, sort="recent", limit=1)
    assert [h.name for h in walk] == names[::-1]


def test_tokens_are_created_listed_and_revoked(
    registry_server: RegistryServer, client: Client, alice: Account
) -> None:
    created = client.create_token("laptop", scope="read")
    assert created.token.startswith("pfx_") and created.token not in repr(created)
    listed = {token.id: token for token in client.list_tokens()}
    assert listed[created.id].scope == "read" and not listed[created.id].revoked
    with registry_server.client(created.token) as reader:
        assert reader.whoami() == WhoAmI(alice.name, "read", False)
        with refused("FORBIDDEN", 403):
            reader.upload_blob(concept_bytes())
        with refused("FORBIDDEN", 403):
            reader.create_token("wider", scope="write")
        client.revoke_token(created.id)
        assert {t.id: t for t in client.list_tokens()}[created.id].revoked
        with refused("UNAUTHORIZED", 401):
            reader.whoami()
        with refused("UNAUTHORIZED", 401):
            reader.blob_exists("sha256:" + "0" * 64)  # HEAD: the code without a body
    with refused("NOT_FOUND", 404):
        client.revoke_token(created.id)


def test_keys_and_policy_require_signatures(
    client: Client, alice: Account, signing_key: pf.PrivateKey
) -> None:
    key = client.add_key(alice.name, signing_key.public_key, name="laptop")
    assert key.key_id == signing_key.public_key.key_id
    pem = signing_key.public_key.to_pem().decode()
    assert client.add_key(alice.name, pem).key_id == key.key_id  # already registered
    assert client.list_keys(alice.name) == [key]
    with refused("KEY_INVALID", 422):
        client.add_key(alice.name, "not a key")
    assert client.set_policy(alice.name, require_signatures=True) == Policy(True, False)
    assert client.policy(alice.name) == Policy(True, False)
    name = unique_name("signed")
    unsigned = client.upload_blob(concept_bytes()).digest
    with refused("SIGNATURE_REQUIRED", 422):
        client.publish(alice.name, name, "1", unsigned)
    signed = client.upload_blob(concept_bytes(signing_key)).digest
    assert client.publish(alice.name, name, "1", signed).signers == [key.key_id]
    hits = client.search(signer=key.key_id, namespace=alice.name).results
    assert [hit.name for hit in hits] == [name]


def test_repositories_tags_yanks_and_previews(client: Client, alice: Account) -> None:
    name = unique_name("repo")
    first = push(client, alice.name, name, "1", concept_bytes())
    push(client, alice.name, name, "2", concept_bytes())
    assert client.move_tag(alice.name, name, "latest", "1").version == "1"
    assert client.resolve(alice.name, name, "latest").digest == first
    assert client.yank(alice.name, name, "1").yanked
    with refused("NOT_FOUND", 404):
        client.resolve(alice.name, name, "1")
    assert client.resolve(alice.name, name, first).yanked  # by digest: still there
    assert not client.unyank(alice.name, name, "1").yanked
    preview = client.attach_preview(alice.name, name, PNG)
    assert preview == UploadedBlob(pf.content_digest(PNG), len(PNG), "image/png")
    assert client.download_blob(preview.digest) == PNG
    with refused("UNSUPPORTED_MEDIA", 415):
        client.attach_preview(alice.name, name, b"GIF89a")
    updated = client.update_repository(alice.name, name, description="hi", labels=["toy"])
    assert (updated.description, updated.labels) == ("hi", ["toy"])
    assert [p.url for p in updated.previews] == [f"/v1/blobs/{preview.digest}"]
    client.detach_preview(alice.name, name, preview.digest)
    assert client.repository(alice.name, name).previews == []
    client.delete_repository(alice.name, name)
    with refused("NOT_FOUND", 404):
        client.repository(alice.name, name)


def test_organizations_and_members(
    registry_server: RegistryServer, client: Client, alice: Account
) -> None:
    org = registry_server.create_org(alice)
    bob = registry_server.create_user("bob")
    assert client.set_member(org, bob.name, "writer").role == "writer"
    with refused("BAD_REQUEST", 400):
        client.set_member(org, bob.name, "owner")
    name = unique_name("shared")
    with registry_server.client(bob.token) as member:
        push(member, org, name, "1", concept_bytes())
        client.remove_member(org, bob.name)
        with refused("NOT_FOUND", 404):
            member.resolve(org, name, "1")
        with refused("FORBIDDEN", 403):
            member.set_member(org, bob.name, "admin")
    with registry_server.client(registry_server.admin_token) as admin:
        with refused("NAME_TAKEN", 409):
            admin.create_user(bob.name)
        assert admin.whoami().admin


# -- against scripted servers -------------------------------------------------------------------


WHOAMI = Reply(200, b'{"name": "alice", "scope": "read", "admin": false}')


def test_rate_limited_requests_are_retried_after_retry_after() -> None:
    limited = error_reply(429, "RATE_LIMITED", **{"Retry-After": "0"})
    with scripted(limited, limited, WHOAMI) as server, Client(server.url, "t0ken") as client:
        assert client.whoami() == WhoAmI("alice", "read", False)
    assert len(server.seen) == 3
    for request in server.seen:
        assert request.headers["Authorization"] == "Bearer t0ken"
        assert request.headers["User-Agent"] == f"pfx/{__version__}"


def test_unavailable_registry_fails_after_the_retries() -> None:
    unavailable = error_reply(503, "UNAVAILABLE")
    with scripted(unavailable) as server, Client(server.url, retries=3, backoff=0.001) as client:
        with refused("UNAVAILABLE", 503):
            client.resolve("alice", "teddy", "latest")
        assert len(server.seen) == 4
        with refused("UNAVAILABLE", 503):
            client.create_org("acme")  # POST: never repeated once sent
        assert len(server.seen) == 5


def test_unreachable_registry() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0)
    with client, pytest.raises(ClientError) as caught:
        client.whoami()
    assert caught.value.code == ErrorCode.REGISTRY_UNREACHABLE
    assert "after 2 attempts" in caught.value.message


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        (Reply(200, b"<html>hello</html>", {"Content-Type": "text/html"}), "not JSON (text/html)"),
        (Reply(502, b"<html>bad gateway</html>"), "registry answered 502"),
        (Reply(200, b'{"name": 1, "scope": null, "admin": false}'), "whoami.name is a JSON int"),
        (Reply(200, b'{"name": "a", "scope": null}'), "whoami.admin is missing"),
        (Reply(200, b"[]"), "whoami is not an object"),
        (Reply(404, b'{"error": "gone"}'), "error answer.error is a JSON str"),
        (Reply(302, headers={"Location": "/elsewhere"}), "a redirect this endpoint does not make"),
    ],
)
def test_answers_that_break_the_protocol(reply: Reply, complaint: str) -> None:
    with (
        scripted(reply) as server,
        Client(server.url, retries=0) as client,
        pytest.raises(ClientError) as caught,
    ):
        client.whoami()
    assert caught.value.code == ErrorCode.REGISTRY_PROTOCOL
    assert complaint in caught.value.message


def test_an_oversized_answer_is_refused_before_it_fills_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pfx.http, "MAX_ANSWER_BYTES", 1 << 20)
    huge = Reply(200, b"x" * ((1 << 20) + 1), {"Content-Type": "application/octet-stream"})
    fits = Reply(200, b"y" * (1 << 20), {"Content-Type": "application/octet-stream"})
    with scripted(fits, huge) as server, Client(server.url, retries=0) as client:
        assert client.download_blob("sha256:" + "0" * 64) == b"y" * (1 << 20)
        with pytest.raises(ClientError) as caught:
            client.download_blob("sha256:" + "0" * 64)
    assert caught.value.code == ErrorCode.REGISTRY_PROTOCOL
    assert "exceeds 1048576 bytes" in caught.value.message


def test_timestamps_and_nested_results_are_parsed() -> None:
    version = {"version": "1", "digest": "sha256:x", "created_at": "2026-11-25T15:02:52.114695"}
    version |= {"yanked": False, "token": "<t>", "family": "sd-1", "signers": []}
    body = {"namespace": "a", "name": "b", "private": True, "description": "", "labels": []}
    body |= {"downloads": 0, "created_at": "2026-11-25T15:02:52+00:00", "tags": {"latest": "1"}}
    body |= {"versions": [version], "previews": [], "added_later": "ignored"}
    with scripted(Reply(200, json.dumps(body).encode())) as server, Client(server.url) as client:
        repository = client.repository("a", "b")
    assert repository.created_at == repository.versions[0].created_at.replace(microsecond=0)
    assert repository.versions[0].created_at.utcoffset() is not None
    broken = body | {"versions": [version | {"yanked": "no"}]}
    with (
        scripted(Reply(200, json.dumps(broken).encode())) as server,
        Client(server.url) as client,
        pytest.raises(ClientError, match=r"repository\.versions\[0\]\.yanked is a JSON str"),
    ):
        client.repository("a", "b")


def test_redirected_downloads_do_not_send_the_token_elsewhere() -> None:
    with scripted(Reply(200, b"concept bytes")) as store:
        location = f"{store.url}/bucket/blob?X-Amz-Signature=abc"
        redirect = Reply(307, headers={"Location": location})
        with scripted(redirect) as registry, Client(registry.url, "s3cret") as client:
            assert client.download_blob("sha256:" + "0" * 64) == b"concept bytes"
    assert registry.seen[0].headers["Authorization"] == "Bearer s3cret"
    assert registry.seen[0].path == f"/v1/blobs/sha256:{'0' * 64}"
    assert store.seen[0].path == "/bucket/blob?X-Amz-Signature=abc"
    assert "Authorization" not in store.seen[0].headers


def test_registry_errors_name_the_request(registry_server: RegistryServer, alice: Account) -> None:
    """A refusal by the real registry carries its X-Request-ID into the error message."""
    with (
        Client(registry_server.url, alice.token, retries=0) as client,
        pytest.raises(RegistryError) as caught,
    ):
        client.resolve("alice", "nothing-here", "1")
    assert caught.value.code == "NOT_FOUND"
    request_id = caught.value.request_id
    assert request_id and caught.value.message.endswith(f" (request {request_id})")
