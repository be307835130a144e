"""The registry answers as its own /openapi.json says, on the paths generated requests rarely reach:
a walk through every operation — successes and the usual refusals — on SQLite and PostgreSQL,
each answer checked against the document (a declared status, the declared content type, a body
that fits the declared schema). test_schemathesis.py covers what random requests reach."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import schemathesis
from starlette.routing import compile_path
from test_api import World, concept_bytes, world  # noqa: F401 (the fixture)

import perfusion_format as pf

#: A PNG signature and a few bytes: the registry sniffs previews by their magic bytes.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class Recorder:
    """Every answer the test client receives, read whole."""

    def __init__(self) -> None:
        self.answers: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append(response)


def _walk(world: World) -> None:
    """Every operation at least once with success, and the refusals users meet most."""
    c = world.client
    alice = world.user("alice")
    world.user("bob")
    a = world.auth(alice)
    data = concept_bytes(140, pf.PrivateKey.generate())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    c.head(f"/v1/blobs/{digest}", headers=a)  # 404 before the upload
    c.put(f"/v1/blobs/{digest}", content=data, headers=a)
    c.put(f"/v1/blobs/{digest}", content=b"not a concept", headers=a)  # 400 digest
    bad = b"\x00" * 64
    c.put(f"/v1/blobs/sha256:{hashlib.sha256(bad).hexdigest()}", content=bad, headers=a)  # 422
    c.head(f"/v1/blobs/{digest}", headers=a)
    c.get(f"/v1/blobs/{digest}", headers=a)
    body = {"digest": digest, "private": False, "labels": ["plush"], "tags": ["latest"]}
    c.put("/v1/concepts/alice/teddy/versions/1", json=body, headers=a)  # 201
    c.put("/v1/concepts/alice/teddy/versions/1", json=body, headers=a)  # 200
    other = world.upload(concept_bytes(141), alice)
    c.put("/v1/concepts/alice/teddy/versions/1", json={"digest": other}, headers=a)  # 409
    c.put("/v1/concepts/alice/teddy/versions/2", json={"digest": other}, headers=a)
    c.put("/v1/concepts/alice/teddy/versions/3", json={"digest": "sha256:x"}, headers=a)  # 400
    c.put("/v1/concepts/alice/teddy/versions/3", json={}, headers=a)  # 400
    c.put("/v1/concepts/alice/teddy/versions/3", json={"digest": digest})  # 401
    for reference in ("1", "latest", digest, "nope"):
        c.get(f"/v1/concepts/alice/teddy/versions/{reference}")
        c.get(f"/v1/concepts/alice/teddy/versions/{reference}/file")
    c.get("/v1/concepts/alice/teddy")
    c.get("/v1/concepts/alice")
    c.patch("/v1/concepts/alice/teddy", json={"description": "a bear"}, headers=a)
    c.patch("/v1/concepts/alice/teddy", json={"private": "yes"}, headers=a)  # 400
    c.put("/v1/concepts/alice/teddy/tags/stable", json={"version": "2"}, headers=a)
    c.put("/v1/concepts/alice/teddy/tags/stable", json={"version": "9"}, headers=a)  # 404
    c.post("/v1/concepts/alice/teddy/versions/2/yank", headers=a)
    c.delete("/v1/concepts/alice/teddy/versions/2/yank", headers=a)
    c.post("/v1/concepts/alice/teddy/previews", content=PNG, headers=a)
    c.post("/v1/concepts/alice/teddy/previews", content=b"GIF89a", headers=a)  # 415
    preview = "sha256:" + hashlib.sha256(PNG).hexdigest()
    c.delete(f"/v1/concepts/alice/teddy/previews/{preview}", headers=a)
    c.get("/v1/search", params={"q": "teddy", "limit": 1})
    c.get("/v1/search", params={"cursor": "garbage"})  # 400 INVALID_CURSOR
    c.get("/v1/whoami", headers=a)
    c.get("/v1/whoami", headers=world.auth("pfx_unknown"))  # 401
    c.post("/v1/users", json={"name": "carol"}, headers=a)  # 403
    c.post("/v1/users", json={"name": "carol"}, headers=world.auth(world.admin))
    c.post("/v1/orgs", json={"name": "acme"}, headers=a)
    c.post("/v1/orgs", json={"name": "acme"}, headers=a)  # 409
    c.get("/v1/orgs", headers=a)
    c.put("/v1/orgs/acme/members", json={"user": "bob", "role": "writer"}, headers=a)
    c.get("/v1/orgs/acme/members", headers=a)
    c.delete("/v1/orgs/acme/members/bob", headers=a)
    created = c.post("/v1/tokens", json={"name": "ci", "scope": "read"}, headers=a).json()
    c.get("/v1/tokens", headers=a)
    c.delete(f"/v1/tokens/{created['id']}", headers=a)
    key = pf.PrivateKey.generate().public_key.to_base64()
    c.post("/v1/namespaces/alice/keys", json={"public_key": key, "name": "laptop"}, headers=a)
    c.post("/v1/namespaces/alice/keys", json={"public_key": "AAAA"}, headers=a)  # 422
    c.get("/v1/namespaces/alice/keys")
    c.put("/v1/namespaces/alice/policy", json={"protected_tags": True}, headers=a)
    c.get("/v1/namespaces/alice/policy")
    c.delete("/v1/concepts/alice/teddy", headers=a)
    c.post("/v1/whoami")  # 405
    c.post("/v1/orgs", content=b"x" * 300_000, headers=a)  # 413
    for path in ("/healthz", "/readyz", "/metrics"):
        c.get(path)


@pytest.mark.parametrize("world", ["folder+sqlite", "folder+postgres"], indirect=True)
def test_every_answer_is_what_the_openapi_document_says(world: World) -> None:
    recorder = Recorder()
    world.client.event_hooks["response"] = [recorder]
    app = world.client.app
    document = app.openapi()  # type: ignore[attr-defined]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations[(operation.method.upper(), operation.path)] = operation
    _walk(world)
    covered: set[tuple[str, str]] = set()
    problems: list[str] = []
    for answer in recorder.answers:
        method, path = answer.request.method, answer.request.url.path
        where = f"{method} {path} → {answer.status_code}"
        matching = [
            key
            for key in operations
            if key[0] == method and compile_path(key[1])[0].fullmatch(path)
        ]
        if answer.status_code == 405:
            assert answer.headers["allow"], where
            continue
        if not matching:
            problems.append(f"{where}: no operation in the document")
            continue
        key = matching[0]
        declared = document["paths"][key[1]][key[0].lower()]["responses"]
        if str(answer.status_code) not in declared:
            problems.append(f"{where}: status not declared ({sorted(declared)})")
            continue
        try:
            operations[key].validate_response(answer)
        except Exception as error:  # schemathesis reports the schema violation
            problems.append(f"{where}: {str(error).splitlines()[0]}")
        if 200 <= answer.status_code < 300:
            covered.add(key)
    assert not problems, "\n".join(problems)
    assert covered == set(operations), f"not reached: {sorted(set(operations) - covered)}"
