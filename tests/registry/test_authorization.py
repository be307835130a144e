"""The authorization matrix: every endpoint × every kind of caller × a public and a private
repository of the organization ``acme``, against the expected status written out below.

The table is derived from the rules (spec/registry-api.md §2, pfx_registry.auth, .service),
not from running the code:

- a token that is revoked or expired is 401 on every endpoint, public reads included;
- reads of a public repository need no token; a private one is read by the members of its
  namespace (reader and up) and answers 404 to everyone else, exactly like a repository that does
  not exist (same status and code; the message differs only by the name the caller typed);
- writes need a role: writer to publish, move tags, yank and edit the description; admin to change
  visibility, delete, manage members, register keys and set the policy. An anonymous caller gets
  401 for every write (a token comes first, whatever exists); an authenticated one lacking the
  role gets 403 — except on a private repository they may not read, which stays 404 (not 403),
  exactly as for a repository that does not exist.

Each backend builds its world once and runs the whole table in one test, collecting every wrong
cell, so one run reports them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from test_api import World, concept_bytes, world  # noqa: F401  (world: the backends fixture)

import perfusion_format as pf

ORG = "acme"
CALLERS = ("anonymous", "reader", "writer", "admin", "outsider", "revoked", "expired")
#: Callers who may not read the private repository: their answers must not tell it exists.
OUTSIDERS = ("anonymous", "outsider")
PUBLIC, PRIVATE = "open-zebra", "secret-zebra"
GHOST = "ghost-zebra"  # never created
UNKNOWN_DIGEST = "sha256:" + "ab" * 32

# Expected status per endpoint and visibility, one column per caller, in the order of CALLERS:
#                                anon reader writer admin outsider revoked expired
_READ_PUBLIC = (200, 200, 200, 200, 200, 401, 401)
_READ_PRIVATE = (404, 200, 200, 200, 404, 401, 401)
_LIST = (200, 200, 200, 200, 200, 401, 401)
EXPECTED: dict[str, dict[str, tuple[int, ...]]] = {
    "GET repo": {"public": _READ_PUBLIC, "private": _READ_PRIVATE},
    "GET version": {"public": _READ_PUBLIC, "private": _READ_PRIVATE},
    "GET file": {"public": _READ_PUBLIC, "private": _READ_PRIVATE},
    "HEAD blob": {"public": _READ_PUBLIC, "private": _READ_PRIVATE},
    "GET blob": {"public": _READ_PUBLIC, "private": _READ_PRIVATE},
    "GET namespace listing": {"public": _LIST, "private": _LIST},
    "GET search": {"public": _LIST, "private": _LIST},
    "PUT publish new version": {
        "public": (401, 403, 201, 201, 403, 401, 401),
        "private": (401, 403, 201, 201, 404, 401, 401),
    },
    "PUT tag": {
        "public": (401, 403, 200, 200, 403, 401, 401),
        "private": (401, 403, 200, 200, 404, 401, 401),
    },
    "POST yank": {
        "public": (401, 403, 200, 200, 403, 401, 401),
        "private": (401, 403, 200, 200, 404, 401, 401),
    },
    "PATCH repo description": {
        "public": (401, 403, 200, 200, 403, 401, 401),
        "private": (401, 403, 200, 200, 404, 401, 401),
    },
    "PATCH visibility": {
        "public": (401, 403, 403, 200, 403, 401, 401),
        "private": (401, 403, 403, 200, 404, 401, 401),
    },
    "DELETE repo": {
        "public": (401, 403, 403, 204, 403, 401, 401),
        "private": (401, 403, 403, 204, 404, 401, 401),
    },
    # Namespace-level endpoints: the repository's visibility does not enter; both columns agree.
    "PUT org member": {
        "public": (401, 403, 403, 200, 403, 401, 401),
        "private": (401, 403, 403, 200, 403, 401, 401),
    },
    "POST namespace key": {
        "public": (401, 403, 403, 201, 403, 401, 401),
        "private": (401, 403, 403, 201, 403, 401, 401),
    },
    "PUT policy": {
        "public": (401, 403, 403, 200, 403, 401, 401),
        "private": (401, 403, 403, 200, 403, 401, 401),
    },
}
# Whether the repository shows up in the namespace listing and in search (for 200 answers).
PRESENT = {
    "public": (True, True, True, True, True, None, None),
    "private": (False, True, True, True, False, None, None),
}
ERROR_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


@dataclass(frozen=True)
class Target:
    """What one cell acts on: a repository (by name), its blob's digest, its visibility, and the
    caller (for names that must not collide between cells)."""

    repo: str
    digest: str
    private: bool
    caller: str


@dataclass(frozen=True)
class Endpoint:
    """How to call one endpoint for a target."""

    method: str
    path: Callable[[Target], str]
    body: Callable[[Target], dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    #: Each cell acts on a repository of its own (the call may destroy it).
    own_repository: bool = False
    #: The endpoint names a repository (or blob) that outsiders may compare with a ghost.
    repository_level: bool = True


_KEY = pf.PrivateKey.generate().public_key.to_base64()

ENDPOINTS: dict[str, Endpoint] = {
    "GET repo": Endpoint("GET", lambda t: f"/v1/concepts/{ORG}/{t.repo}"),
    "GET version": Endpoint("GET", lambda t: f"/v1/concepts/{ORG}/{t.repo}/versions/1"),
    "GET file": Endpoint("GET", lambda t: f"/v1/concepts/{ORG}/{t.repo}/versions/1/file"),
    "HEAD blob": Endpoint("HEAD", lambda t: f"/v1/blobs/{t.digest}"),
    "GET blob": Endpoint("GET", lambda t: f"/v1/blobs/{t.digest}"),
    "GET namespace listing": Endpoint(
        "GET", lambda t: f"/v1/concepts/{ORG}", repository_level=False
    ),
    "GET search": Endpoint(
        "GET", lambda t: "/v1/search", params={"q": "zebra", "limit": 100}, repository_level=False
    ),
    "PUT publish new version": Endpoint(
        "PUT",
        lambda t: f"/v1/concepts/{ORG}/{t.repo}/versions/p-{t.caller}",
        lambda t: {"digest": t.digest, "tags": []},
    ),
    "PUT tag": Endpoint(
        "PUT",
        lambda t: f"/v1/concepts/{ORG}/{t.repo}/tags/t-{t.caller}",
        lambda t: {"version": "1"},
    ),
    "POST yank": Endpoint(
        "POST", lambda t: f"/v1/concepts/{ORG}/{t.repo}/versions/y-{t.caller}/yank"
    ),
    "PATCH repo description": Endpoint(
        "PATCH",
        lambda t: f"/v1/concepts/{ORG}/{t.repo}",
        lambda t: {"description": f"zebra by {t.caller}"},
    ),
    "PATCH visibility": Endpoint(
        "PATCH", lambda t: f"/v1/concepts/{ORG}/{t.repo}", lambda t: {"private": t.private}
    ),
    "DELETE repo": Endpoint(
        "DELETE", lambda t: f"/v1/concepts/{ORG}/{t.repo}", own_repository=True
    ),
    "PUT org member": Endpoint(
        "PUT",
        lambda t: f"/v1/orgs/{ORG}/members",
        lambda t: {"user": "nina", "role": "reader"},
        repository_level=False,
    ),
    "POST namespace key": Endpoint(
        "POST",
        lambda t: f"/v1/namespaces/{ORG}/keys",
        lambda t: {"public_key": _KEY, "name": "ci"},
        repository_level=False,
    ),
    "PUT policy": Endpoint(
        "PUT",
        lambda t: f"/v1/namespaces/{ORG}/policy",
        lambda t: {"require_signatures": False, "protected_tags": False},
        repository_level=False,
    ),
}


def _token(world: World, owner: str, **body: Any) -> tuple[int, str]:
    """A new admin-scope token of ``owner`` (created with their own token): its id and secret."""
    response = world.client.post(
        "/v1/tokens",
        json={"name": f"matrix-{uuid.uuid4().hex[:8]}", "scope": "admin", **body},
        headers=world.auth(owner),
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["token"]


def _check(response: httpx.Response, status: int, what: str) -> None:
    assert response.status_code == status, f"{what}: {response.status_code} {response.text}"


@dataclass
class Matrix:
    """The world of the matrix: the tokens of every caller and the two repositories' digests."""

    world: World
    tokens: dict[str, str | None]
    digests: dict[str, str]

    def call(self, endpoint: Endpoint, caller: str, target: Target) -> httpx.Response:
        """Call ``endpoint`` on ``target`` as ``caller``."""
        body = endpoint.body(target) if endpoint.body else None
        return self.world.client.request(
            endpoint.method,
            endpoint.path(target),
            json=body,
            params=endpoint.params,
            headers=self.world.auth(self.tokens[caller]),
        )


def _build(world: World) -> Matrix:
    """Users, the organization acme with a reader, a writer and an admin; an outsider (admin of
    another organization); a revoked and an expired token of acme's admin; and the repositories
    every cell needs, all published by acme's admin."""
    olga = world.user("olga")
    _check(world.client.post("/v1/orgs", json={"name": ORG}, headers=world.auth(olga)), 201, "org")
    tokens: dict[str, str | None] = {"anonymous": None, "admin": olga}
    for caller, user, role in (("reader", "rita", "reader"), ("writer", "walt", "writer")):
        tokens[caller] = world.user(user)
        member = world.client.put(
            f"/v1/orgs/{ORG}/members", json={"user": user, "role": role}, headers=world.auth(olga)
        )
        _check(member, 200, f"member {user}")
    world.user("nina")  # the user the "PUT org member" cells add
    tokens["outsider"] = world.user("otto")
    other_org = world.client.post(
        "/v1/orgs", json={"name": "globex"}, headers=world.auth(tokens["outsider"])
    )
    _check(other_org, 201, "org globex")
    revoked_id, tokens["revoked"] = _token(world, olga)
    _check(world.client.delete(f"/v1/tokens/{revoked_id}", headers=world.auth(olga)), 204, "rev")
    tokens["expired"] = _token(world, olga)[1]
    world.expire(tokens["expired"])

    digests = {"public": world.upload(concept_bytes(101), olga)}
    digests["private"] = world.upload(concept_bytes(102), olga)
    assert digests["public"] != digests["private"]

    def publish(repo: str, version: str, visibility: str, tags: list[str]) -> None:
        response = world.client.put(
            f"/v1/concepts/{ORG}/{repo}/versions/{version}",
            json={
                "digest": digests[visibility],
                "private": visibility == "private",
                "description": "a zebra",
                "tags": tags,
            },
            headers=world.auth(olga),
        )
        _check(response, 201, f"publish {repo}:{version}")

    for visibility, repo in (("public", PUBLIC), ("private", PRIVATE)):
        publish(repo, "1", visibility, ["latest"])
        for caller in CALLERS:
            publish(repo, f"y-{caller}", visibility, [])
            publish(_own(repo, caller), "1", visibility, ["latest"])
    return Matrix(world, tokens, digests)


def _own(repo: str, caller: str) -> str:
    """The repository of one cell of an endpoint that may destroy what it acts on."""
    return f"{repo}-{caller}"


def _show(response: httpx.Response) -> str:
    """Status and the start of the body, for a report."""
    return f"{response.status_code} {response.text[:160]}"


def _normalized(response: httpx.Response, typed: str) -> tuple[int, str]:
    """Status and body with the repository name or digest the caller typed replaced."""
    return response.status_code, response.text.replace(typed, "<typed>")


def test_authorization_matrix(world: World) -> None:
    """Every cell of EXPECTED, every presence of PRESENT, and no leak of the private repository
    to outsiders: all mismatches are collected and reported together."""
    matrix = _build(world)
    wrong: list[str] = []
    for name, endpoint in ENDPOINTS.items():
        for visibility in ("public", "private"):
            repo = PUBLIC if visibility == "public" else PRIVATE
            for column, caller in enumerate(CALLERS):
                own = _own(repo, caller) if endpoint.own_repository else repo
                target = Target(own, matrix.digests[visibility], visibility == "private", caller)
                response = matrix.call(endpoint, caller, target)
                cell = f"{name} | {visibility} | {caller}"
                expected = EXPECTED[name][visibility][column]
                if response.status_code != expected:
                    wrong.append(f"{cell}: expected {expected}, got {_show(response)}")
                    continue
                wrong.extend(_check_body(cell, name, response))
                if name in ("GET namespace listing", "GET search") and expected == 200:
                    wrong.extend(_check_presence(cell, name, response, caller, visibility, repo))
                if visibility == "private" and caller in OUTSIDERS and endpoint.repository_level:
                    wrong.extend(_check_like_ghost(matrix, cell, endpoint, target, response))
    wrong.extend(_check_state(matrix))
    assert not wrong, f"{len(wrong)} wrong cells:\n" + "\n".join(wrong)


def _check_state(matrix: Matrix) -> list[str]:
    """After the matrix, the repositories hold exactly what the allowed calls did: refused calls
    left nothing (versions, tags, yanks, description, deletions)."""
    allowed = {  # the callers whose writes succeed, by role needed
        "writer": [
            c for c, s in zip(CALLERS, EXPECTED["PUT tag"]["public"], strict=True) if s < 300
        ],
        "admin": [
            c for c, s in zip(CALLERS, EXPECTED["DELETE repo"]["public"], strict=True) if s < 300
        ],
    }
    wrong = []
    admin = matrix.world.auth(matrix.tokens["admin"])
    for visibility, repo in (("public", PUBLIC), ("private", PRIVATE)):
        response = matrix.world.client.get(f"/v1/concepts/{ORG}/{repo}", headers=admin)
        body = response.json()
        versions = {v["version"]: v["yanked"] for v in body["versions"]}
        expected_versions = {"1": False}
        expected_versions |= {f"y-{c}": c in allowed["writer"] for c in CALLERS}
        expected_versions |= {f"p-{c}": False for c in allowed["writer"]}
        if versions != expected_versions:
            wrong.append(f"state {repo}: versions {versions}, expected {expected_versions}")
        expected_tags = {"latest": "1"} | {f"t-{c}": "1" for c in allowed["writer"]}
        if body["tags"] != expected_tags:
            wrong.append(f"state {repo}: tags {body['tags']}, expected {expected_tags}")
        if body["description"] != "zebra by admin" or body["private"] != (visibility == "private"):
            wrong.append(f"state {repo}: {body['description']!r}, private={body['private']}")
        for caller in CALLERS:
            status = matrix.world.client.get(
                f"/v1/concepts/{ORG}/{_own(repo, caller)}", headers=admin
            ).status_code
            if status != (404 if caller in allowed["admin"] else 200):
                wrong.append(f"state {_own(repo, caller)}: GET answers {status} after the matrix")
    return wrong


def _check_body(cell: str, name: str, response: httpx.Response) -> list[str]:
    """Errors have the one error shape with the code that goes with their status."""
    if response.status_code < 400 or not response.content:
        return []
    body = response.json()
    code = "BLOB_UNKNOWN" if name == "GET blob" and response.status_code == 404 else None
    expected = code or ERROR_CODES.get(response.status_code)
    if set(body) != {"error"} or body["error"].get("code") != expected:
        return [f"{cell}: expected error code {expected}, got {response.text}"]
    return []


def _check_presence(
    cell: str, name: str, response: httpx.Response, caller: str, visibility: str, repo: str
) -> list[str]:
    """The repository is listed (or found) exactly when the caller may read it, and outsiders
    see no private repository at all (no name, no count)."""
    items = response.json()["concepts" if name == "GET namespace listing" else "results"]
    names = {item["name"] for item in items}
    wrong = []
    expected = PRESENT[visibility][CALLERS.index(caller)]
    if (repo in names) != expected:
        wrong.append(f"{cell}: {repo} {'missing from' if expected else 'leaked into'} {names}")
    if caller in OUTSIDERS and any(item["private"] for item in items):
        leaked = sorted(item["name"] for item in items if item["private"])
        wrong.append(f"{cell}: private repositories leaked: {leaked}")
    return wrong


def _check_like_ghost(
    matrix: Matrix, cell: str, endpoint: Endpoint, target: Target, private: httpx.Response
) -> list[str]:
    """An outsider's answer about the private repository (or its blob) equals the answer about
    one that does not exist, but for the name typed."""
    ghost = Target(GHOST, UNKNOWN_DIGEST, target.private, target.caller)
    absent = matrix.call(endpoint, target.caller, ghost)
    typed_private = target.digest if "blob" in endpoint.path(target) else target.repo
    typed_ghost = ghost.digest if "blob" in endpoint.path(ghost) else ghost.repo
    if _normalized(private, typed_private) != _normalized(absent, typed_ghost):
        return [
            f"{cell}: private answers {_show(private)} but an absent repository answers "
            f"{_show(absent)} — tells outsiders it exists"
        ]
    return []
