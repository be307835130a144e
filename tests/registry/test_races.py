"""Concurrent writes to one registry, through a real ``pfx-registry serve`` over HTTP.

Each case releases a burst of 10–22 requests at once (threads held at a barrier, then sent
together) at the session's registry server (``registry_server`` of tests/client/registry_server.py:
folder+SQLite and S3+PostgreSQL, one uvicorn process whose worker threads answer the requests in
parallel). It then checks two things:

- every answer is one the API documents for that race (spec/registry-api.md): the expected
  success, or the one documented refusal the race allows — never a 5xx, never a 503 from a
  deadlock or a locked database, never a 409 ``VERSION_EXISTS`` for a version that did not exist;
- the state read back through the API is what the answers said: one repository for parallel
  first publishes, one version for identical publishes, as many previews as were acknowledged
  (at most 8), one membership row and one tag target that some request sent, and no repository
  left without versions by publishes racing its deletion.

Why: the registry checks a condition and then writes (a repository to create, a version to add,
eight previews at most, a membership to replace, a repository to delete). Between the check and
the write another request can change what was checked; these tests make that happen on purpose.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

import httpx
import pytest
from registry_server import Account, RegistryServer
from test_api import concept_bytes

import perfusion_format as pf
from pfx.client import Client

#: Seconds a racing request may take before it counts as unanswered (a lock that never frees).
ANSWER_TIMEOUT = 60.0
#: Seconds the threads of a burst wait for each other at the barrier.
GATHER_TIMEOUT = 30.0
#: Previews a repository may have (spec §7).
MAX_PREVIEWS = 8
#: Signing keys a namespace may register (spec §7).
MAX_KEYS = 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: A method, a path below the server's URL, and the keyword arguments of ``httpx.request``.
Call = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Answer:
    """What the server answered one racing request (status 0: no answer at all)."""

    request: str
    status: int
    code: str | None
    message: str
    body: Any

    @classmethod
    def of(cls, request: str, response: httpx.Response) -> Answer:
        """The answer a response carries: its status and, for an error, its code and message."""
        try:
            body = response.json()
        except ValueError:
            body = response.text
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(request, response.status_code, error.get("code"), error.get("message"), body)
        return cls(request, response.status_code, None, "", body)


def burst(server: RegistryServer, token: str, calls: Sequence[Call]) -> list[Answer]:
    """Send every call at once (one thread each, released together by a barrier) with
    ``token``; the answers, in the order of ``calls``. A request that gets no answer within
    :data:`ANSWER_TIMEOUT` is answered with status 0 and the transport error as its message."""
    barrier = threading.Barrier(len(calls), timeout=GATHER_TIMEOUT)
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=ANSWER_TIMEOUT,
        limits=httpx.Limits(max_connections=len(calls), max_keepalive_connections=len(calls)),
        trust_env=False,
    ) as http:

        def send(call: Call) -> Answer:
            method, path, options = call
            barrier.wait()
            try:
                return Answer.of(f"{method} {path}", http.request(method, path, **options))
            except httpx.TransportError as error:
                return Answer(f"{method} {path}", 0, None, repr(error), None)

        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(send, calls))


def summary(answers: Sequence[Answer]) -> str:
    """The answers counted by status and code, with one message of each kind (for failures)."""
    counts = Counter((answer.status, answer.code) for answer in answers)
    examples = {(answer.status, answer.code): answer for answer in answers}
    return "; ".join(
        f"{count}× {status} {code or ''} ({examples[status, code].request}: "
        f"{examples[status, code].message[:160]})"
        for (status, code), count in sorted(counts.items(), key=lambda item: str(item[0]))
    )


def assert_only(answers: Sequence[Answer], allowed: Mapping[int, str | None]) -> None:
    """Every answer has a status of ``allowed`` with the error code it maps to (``None``: a
    success without one)."""
    unexpected = [
        answer
        for answer in answers
        if answer.status not in allowed or answer.code != allowed[answer.status]
    ]
    assert not unexpected, (
        f"{len(unexpected)} of {len(answers)} answers outside {dict(allowed)}: {summary(answers)}"
    )


def checker(server: RegistryServer, account: Account) -> Client:
    """A client of ``account`` for setting up and reading back state; it does not retry, so a
    503 after the race shows as a failure instead of being waited out."""
    return server.client(account.token, retries=0)


def upload_concepts(client: Client, seeds: range) -> list[str]:
    """Upload one distinct concept file per seed (one after another); their digests."""
    return [client.upload_blob(concept_bytes(seed)).digest for seed in seeds]


def publish_call(ns: str, name: str, version: str, digest: str) -> Call:
    """``PUT R/versions/{version}`` of ``digest`` (tags default to ``latest``)."""
    return ("PUT", f"/v1/concepts/{ns}/{name}/versions/{version}", {"json": {"digest": digest}})


def assert_no_empty_repositories(client: Client, ns: str) -> None:
    """Every repository of ``ns`` the client sees has a version, each version resolves by its
    name to its digest, and each tag names one of them."""
    for summary_row in client.list_namespace(ns):
        repository = client.repository(ns, summary_row.name)
        assert repository.versions, f"{ns}/{repository.name} exists without any version"
        names = {version.version: version.digest for version in repository.versions}
        for name, digest in names.items():
            assert client.resolve(ns, repository.name, name).digest == digest
        assert set(repository.tags.values()) <= set(names), repository.tags


def test_parallel_first_publishes_create_one_repository(registry_server: RegistryServer) -> None:
    """Ten versions published at once into a repository of an organization that does not exist
    yet: all 201, one repository with the ten versions, ``latest`` on one of them."""
    owner = registry_server.create_user("owner", scope="admin")
    writer = registry_server.create_user("writer")
    org = registry_server.create_org(owner, "acme")
    with checker(registry_server, owner) as client:
        client.set_member(org, writer.name, "writer")
    with checker(registry_server, writer) as client:
        digests = upload_concepts(client, range(100, 110))
        answers = burst(
            registry_server,
            writer.token,
            [publish_call(org, "fresh", f"v{i}", digest) for i, digest in enumerate(digests)],
        )
        assert_only(answers, {201: None})
        repository = client.repository(org, "fresh")
    published = {version.version: version.digest for version in repository.versions}
    assert published == {f"v{i}": digest for i, digest in enumerate(digests)}
    assert repository.tags["latest"] in published


def test_identical_publishes_create_one_version(registry_server: RegistryServer) -> None:
    """The same version with the same digest, ten times at once into a new repository: exactly
    one 201 (the one that created it), nine 200, and one version."""
    alice = registry_server.create_user("alice")
    with checker(registry_server, alice) as client:
        (digest,) = upload_concepts(client, range(110, 111))
        answers = burst(
            registry_server, alice.token, [publish_call(alice.name, "same", "1", digest)] * 10
        )
        assert_only(answers, {201: None, 200: None})
        created = sum(answer.status == 201 for answer in answers)
        assert created == 1, f"{created} publishes answered 201: {summary(answers)}"
        repository = client.repository(alice.name, "same")
    assert [(v.version, v.digest) for v in repository.versions] == [("1", digest)]
    assert repository.tags == {"latest": "1"}


def preview_images(count: int) -> list[bytes]:
    """``count`` distinct small PNGs: the signature the server sniffs, then random bytes."""
    rng = random.Random(count)
    return [PNG_SIGNATURE + rng.randbytes(64) for _ in range(count)]


def test_parallel_previews_stop_at_eight(registry_server: RegistryServer) -> None:
    """Twenty different previews attached at once: at most eight are accepted (201), the rest
    are 409 TOO_MANY, and the repository shows exactly the accepted ones."""
    alice = registry_server.create_user("alice")
    images = preview_images(20)
    with checker(registry_server, alice) as client:
        (digest,) = upload_concepts(client, range(120, 121))
        client.publish(alice.name, "pictured", "1", digest)
        path = f"/v1/concepts/{alice.name}/pictured/previews"
        calls: list[Call] = [
            ("POST", path, {"content": image, "headers": {"Content-Type": "image/png"}})
            for image in images
        ]
        answers = burst(registry_server, alice.token, calls)
        assert_only(answers, {201: None, 409: "TOO_MANY"})
        shown = [preview.digest for preview in client.repository(alice.name, "pictured").previews]
    accepted = [answer.body["digest"] for answer in answers if answer.status == 201]
    assert len(accepted) <= MAX_PREVIEWS, (
        f"{len(accepted)} previews accepted, at most {MAX_PREVIEWS} allowed: {summary(answers)}"
    )
    assert sorted(shown) == sorted(accepted), (
        f"{len(shown)} previews attached, {len(accepted)} acknowledged: {summary(answers)}"
    )
    if len(accepted) < len(answers):  # someone was told "8 already attached"
        assert len(shown) == MAX_PREVIEWS
    digests = {"sha256:" + hashlib.sha256(image).hexdigest() for image in images}
    assert set(shown) <= digests


def test_parallel_key_registrations_stop_at_the_limit(registry_server: RegistryServer) -> None:
    """Forty different keys registered at once: at most 32 are accepted (201), the rest are
    409 TOO_MANY, and the namespace lists exactly the accepted ones (the count is taken under a
    lock of the namespace's row)."""
    owner = registry_server.create_user("keyring", scope="admin")
    keys = [pf.PrivateKey.generate().public_key.to_base64() for _ in range(40)]
    calls: list[Call] = [
        ("POST", f"/v1/namespaces/{owner.name}/keys", {"json": {"public_key": key}}) for key in keys
    ]
    answers = burst(registry_server, owner.token, calls)
    assert_only(answers, {201: None, 409: "TOO_MANY"})
    accepted = {answer.body["key_id"] for answer in answers if answer.status == 201}
    with checker(registry_server, owner) as client:
        listed = {key.key_id for key in client.list_keys(owner.name)}
    assert len(accepted) == MAX_KEYS, summary(answers)
    assert listed == accepted


def test_parallel_role_changes_leave_one_membership(registry_server: RegistryServer) -> None:
    """Ten role changes of one member at once, with mixed roles: all 200, and the member is
    listed once with one of the roles sent."""
    owner = registry_server.create_user("owner", scope="admin")
    bob = registry_server.create_user("bob")
    org = registry_server.create_org(owner, "acme")
    roles = list(islice(cycle(["reader", "writer", "admin"]), 10))
    with checker(registry_server, owner) as client:
        client.set_member(org, bob.name, "reader")
        answers = burst(
            registry_server,
            owner.token,
            [
                ("PUT", f"/v1/orgs/{org}/members", {"json": {"user": bob.name, "role": role}})
                for role in roles
            ],
        )
        assert_only(answers, {200: None})
        members = [member for member in client.list_members(org) if member.user == bob.name]
    assert len(members) == 1, members
    assert members[0].role in roles


def test_parallel_tag_moves_leave_one_target(registry_server: RegistryServer) -> None:
    """Ten moves of an existing tag and ten creations of a new one, to ten different versions,
    all at once: all 200, and each tag names one of the versions sent."""
    alice = registry_server.create_user("alice")
    versions = [f"v{i}" for i in range(10)]
    with checker(registry_server, alice) as client:
        for version, digest in zip(versions, upload_concepts(client, range(130, 140)), strict=True):
            client.publish(alice.name, "tagged", version, digest)
        base = f"/v1/concepts/{alice.name}/tagged/tags"
        calls: list[Call] = [
            ("PUT", f"{base}/{tag}", {"json": {"version": version}})
            for tag in ("latest", "stable")
            for version in versions
        ]
        answers = burst(registry_server, alice.token, calls)
        assert_only(answers, {200: None})
        tags = client.repository(alice.name, "tagged").tags
    assert tags["latest"] in versions and tags["stable"] in versions, tags


@pytest.mark.parametrize("round_", range(3))
def test_publishes_racing_a_delete(registry_server: RegistryServer, round_: int) -> None:
    """Ten publishes of new versions and two deletions of their repository, all at once:
    publishes answer 201 (or 404 when the repository went away under them), deletions 204 or
    404; never a 409 (every version is new) or a 5xx. Afterwards no repository is left without
    versions, and what is left resolves."""
    alice = registry_server.create_user("alice", scope="admin")  # deleting needs admin
    with checker(registry_server, alice) as client:
        digests = upload_concepts(client, range(140 + 20 * round_, 150 + 20 * round_))
        (first,) = upload_concepts(client, range(139, 140))
        client.publish(alice.name, "doomed", "v0", first)
        publishes = [
            publish_call(alice.name, "doomed", f"v{i + 1}", digest)
            for i, digest in enumerate(digests)
        ]
        deletion: Call = ("DELETE", f"/v1/concepts/{alice.name}/doomed", {})
        calls = [*publishes[:5], deletion, *publishes[5:], deletion]
        answers = burst(registry_server, alice.token, calls)
        assert_only(
            [a for a in answers if a.request.startswith("PUT")],
            {201: None, 200: None, 404: "NOT_FOUND"},
        )
        assert_only(
            [a for a in answers if a.request.startswith("DELETE")], {204: None, 404: "NOT_FOUND"}
        )
        assert_no_empty_repositories(client, alice.name)
