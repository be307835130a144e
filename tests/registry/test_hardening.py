"""Hostile input, on every backend pair: what an external probe found answered with HTTP 500 or
bending a guarantee, and the rest of each class. Every answer here is a documented 4xx (or a
success) with the registry's JSON error shape — the same on SQLite and PostgreSQL.

Concurrency is tested in test_races.py, kill -9 in test_crash.py, a partitioned database in
test_partition.py; this file is about what one request can carry.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import select
from test_api import World, concept_bytes, world  # noqa: F401 (the fixture)

import perfusion_format as pf
from pfx_registry.db import accounts
from pfx_registry.service.access import RESERVED_NAMESPACES
from pfx_registry.state import transaction


def _cursor(value: Any) -> str:
    """A cursor as the registry encodes one: base64url of JSON, without padding."""
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """``response`` is the registry's error ``status`` (and ``code``), with a one-line message."""
    assert response.status_code == status, (response.request.url, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and "\n" not in error["message"]
    if code is not None:
        assert error["code"] == code, response.text


def _publish_public(world: World, token: str, count: int) -> None:
    for seed in range(count):
        response = world.push(token, f"alice/toy{seed}:1", concept_bytes(100 + seed), private=False)
        assert response.status_code == 201, response.text


def test_search_cursor_must_be_one_this_search_made(world: World) -> None:
    alice = world.user("alice")
    _publish_public(world, alice, 3)
    params = {"limit": 1}
    first = world.client.get("/v1/search", params=params).json()
    assert len(first["results"]) == 1 and first["next_cursor"]
    following = world.client.get("/v1/search", params={**params, "cursor": first["next_cursor"]})
    assert following.status_code == 200 and following.json()["results"]
    assert following.json()["results"][0]["name"] != first["results"][0]["name"]
    # the same cursor with another query, filter or order is not a cursor of that search
    for other in (
        {"q": "toy1"},
        {"family": "sd-1"},
        {"namespace": "alice"},
        {"sort": "recent"},
    ):
        response = world.client.get(
            "/v1/search", params={**params, **other, "cursor": first["next_cursor"]}
        )
        _error(response, 400, "INVALID_CURSOR")
    binding = json.loads(base64.urlsafe_b64decode(first["next_cursor"] + "=="))[0]
    for forged in (
        ["relevance", 10**30, 1],  # the probe's: an integer past 64 bits
        ["relevance", True, True],  # the probe's on PostgreSQL: booleans
        [binding, 10**30, 1],
        [binding, 1, 2**63],
        [binding, -1, 1],
        [binding, True, 1],
        [binding, 1.5, 1],
        [binding, "1", 1],
        [binding, None, 1],
        [binding, 1],
        {"key": 1},
        "x",
    ):
        response = world.client.get("/v1/search", params={**params, "cursor": _cursor(forged)})
        _error(response, 400, "INVALID_CURSOR")
    for garbage in ("garbage!", "%%%", "\u00e9t\u00e9", "AAAA", "_" * 300):
        response = world.client.get("/v1/search", params={**params, "cursor": garbage})
        _error(response, 400)


#: Lookups of names that cannot exist: 404, as for any absent thing, before any SQL.
NUL_LOOKUPS = [
    "/v1/concepts/a%00b",
    "/v1/concepts/alice/a%00b",
    "/v1/concepts/a%00b/x",
    "/v1/concepts/alice/x/versions/a%00b",
    "/v1/concepts/alice/x/versions/a%00b/file",
    "/v1/concepts/a%00b/x/versions/1",
    "/v1/namespaces/a%00b/keys",
    "/v1/namespaces/a%00b/policy",
    "/v1/orgs/a%00b/members",
    "/v1/concepts/alice/%ED%A0%80",  # the UTF-8 of a lone surrogate
    "/v1/namespaces/%ff%fe/keys",
]
#: Filters that cannot match: 400, before any SQL.
NUL_FILTERS = [
    {"family": "\x00"},
    {"namespace": "a\x00b"},
    {"superclass": "\x00"},
    {"signer": "\x00"},
    {"signer": "%"},
    {"signer": "ed25519:%"},
    {"family": "a_%"},
]


def test_names_that_cannot_exist_are_not_found(world: World) -> None:
    alice = world.user("alice")
    for path in NUL_LOOKUPS:
        for token in (alice, world.admin):
            _error(world.client.get(path, headers=world.auth(token)), 404, "NOT_FOUND")
        anonymous = world.client.get(path)  # 401 where the route needs a token, else 404
        _error(anonymous, 401 if path.startswith("/v1/orgs/") else 404)


def test_filters_and_writes_with_odd_bytes_are_refused(world: World) -> None:
    alice = world.user("alice")
    world.client.post("/v1/orgs", json={"name": "acme"}, headers=world.auth(alice))
    _publish_public(world, alice, 1)
    for params in NUL_FILTERS:
        _error(world.client.get("/v1/search", params=params), 400, "BAD_REQUEST")
    auth = world.auth(alice)
    writes = [
        ("PUT", "/v1/concepts/alice/toy0/tags/t", {"version": "a\x00b"}, 400),
        ("PUT", "/v1/concepts/alice/a%00b/tags/t", {"version": "1"}, 404),
        ("PUT", "/v1/concepts/alice/toy0/tags/a%00b", {"version": "1"}, 400),
        ("POST", "/v1/concepts/alice/toy0/versions/a%00b/yank", None, 404),
        ("DELETE", "/v1/concepts/a%00b/x", None, 404),
        ("DELETE", "/v1/orgs/acme/members/a%00b", None, 404),
        ("PUT", "/v1/orgs/acme/members", {"user": "a\x00b"}, 400),
        ("POST", "/v1/orgs", {"name": "a\x00b"}, 400),
        ("POST", "/v1/tokens", {"name": "a\x00b"}, 400),
        ("POST", "/v1/tokens", {"name": "x", "user": "a\x00b"}, 400),
        ("PUT", "/v1/orgs/acme/members", {"user": "nobody"}, 404),
        ("PUT", "/v1/concepts/alice/toy0/tags/t", {"version": "nope"}, 404),
        ("PATCH", "/v1/concepts/alice/toy0", {"description": "a\x00b"}, 400),
        ("PATCH", "/v1/concepts/alice/toy0", {"labels": ["a\x00b"]}, 400),
        ("POST", "/v1/namespaces/alice/keys", {"public_key": "a\x00b"}, 400),
    ]
    for method, path, body, status in writes:
        response = world.client.request(method, path, json=body, headers=auth)
        _error(response, status)
    # nothing was written by any of them
    repository = world.client.get("/v1/concepts/alice/toy0", headers=auth).json()
    assert repository["description"] == "" and repository["labels"] == []
    assert set(repository["tags"]) == {"latest"}


def _raw_json(text: str) -> dict[str, str]:
    """Headers for a JSON body sent as written (with ``\\ud800`` escapes, which httpx's own JSON
    encoder would never produce)."""
    return {"content-type": "application/json", "content-length": str(len(text.encode()))}


def test_lone_surrogates_are_refused_with_an_encodable_error(world: World) -> None:
    alice = world.user("alice")
    world.client.post("/v1/orgs", json={"name": "acme"}, headers=world.auth(alice))
    _publish_public(world, alice, 1)
    cases = [
        ("PUT", "/v1/concepts/alice/toy0/versions/2", '{"digest": "\\ud800"}'),
        ("PUT", "/v1/concepts/alice/toy0/tags/t", '{"version": "\\ud800"}'),
        ("POST", "/v1/tokens", '{"name": "x", "user": "\\ud800"}'),
        ("POST", "/v1/tokens", '{"name": "\\udfff"}'),
        ("PUT", "/v1/orgs/acme/members", '{"user": "\\ud800"}'),
        ("PATCH", "/v1/concepts/alice/toy0", '{"description": "a\\ud800b"}'),
        ("PATCH", "/v1/concepts/alice/toy0", '{"labels": ["\\ud800"]}'),
        ("POST", "/v1/orgs", '{"name": "\\ud800"}'),
        ("POST", "/v1/namespaces/alice/keys", '{"public_key": "\\ud800", "name": "k"}'),
        ("POST", "/v1/namespaces/alice/keys", '{"public_key": "AAAA", "name": "\\ud800"}'),
        ("PUT", "/v1/namespaces/alice/policy", '{"require_signatures": "\\ud800"}'),
    ]
    for method, path, text in cases:
        headers = {**world.auth(alice), **_raw_json(text)}
        response = world.client.request(method, path, content=text.encode(), headers=headers)
        assert response.status_code in (400, 404, 422), (path, text, response.text)
        response.content.decode("utf-8")  # the answer is valid UTF-8 JSON
        _error(response, response.status_code)


def test_malformed_json_bodies_are_refused(world: World) -> None:
    alice = world.user("alice")
    for body in (
        b"[" * 100_000 + b"]" * 100_000,  # nesting past any parser's recursion
        b'{"name": "\xff\xfe"}',  # not UTF-8
        b'{"name": ',
        b"NaN",
        b'{"name": 1e999}',
        b"[]",
        b'"acme"',
    ):
        headers = {**world.auth(alice), "content-type": "application/json"}
        _error(world.client.post("/v1/orgs", content=body, headers=headers), 400, "BAD_REQUEST")
    assert world.client.get("/v1/orgs", headers=world.auth(alice)).json()["orgs"] == []


def test_token_expiry_keeps_its_utc_offset(world: World) -> None:
    alice = world.user("alice")
    plus_five = timezone(timedelta(hours=5))
    now = datetime.now(UTC)
    # the probe's: "now + 5 h 10 min" written at +05:00 is ten minutes ago
    ten_minutes_ago = (now + timedelta(hours=5, minutes=-10)).replace(tzinfo=plus_five)
    refused = world.client.post(
        "/v1/tokens",
        json={"name": "past", "expires_at": ten_minutes_ago.isoformat()},
        headers=world.auth(alice),
    )
    _error(refused, 400, "BAD_REQUEST")
    # ten minutes from now, written at +05:00: works, and is listed as that instant
    soon = (now + timedelta(hours=5, minutes=10)).replace(tzinfo=plus_five)
    created = world.client.post(
        "/v1/tokens",
        json={"name": "soon", "expires_at": soon.isoformat()},
        headers=world.auth(alice),
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert world.client.get("/v1/whoami", headers=world.auth(token)).status_code == 200
    listed = world.client.get("/v1/tokens", headers=world.auth(alice)).json()["tokens"]
    expires = datetime.fromisoformat(next(t for t in listed if t["name"] == "soon")["expires_at"])
    assert expires.utcoffset() is not None
    assert abs(expires - (now + timedelta(minutes=10))) < timedelta(seconds=1)
    # past what UTC can represent (year 9999 at -14:00 is year 10000 in UTC): refused
    response = world.client.post(
        "/v1/tokens",
        json={"name": "far", "expires_at": "9999-12-31T23:59:59-14:00"},
        headers=world.auth(alice),
    )
    _error(response, 400, "BAD_REQUEST")
    # an expiry without an offset is ambiguous: refused
    naive = (now + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    response = world.client.post(
        "/v1/tokens", json={"name": "naive", "expires_at": naive}, headers=world.auth(alice)
    )
    _error(response, 400, "BAD_REQUEST")


def test_a_token_never_exceeds_the_token_that_minted_it(world: World) -> None:
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    parent = world.user("alice", scope="write", expires_at=in_an_hour.isoformat())

    def mint(token: str, **body: Any) -> httpx.Response:
        return world.client.post(
            "/v1/tokens", json={"name": "child", **body}, headers=world.auth(token)
        )

    _error(mint(parent, scope="admin"), 403, "FORBIDDEN")
    later = (in_an_hour + timedelta(days=1)).isoformat()
    _error(mint(parent, expires_at=later), 400, "BAD_REQUEST")
    child = mint(parent, scope="write")
    assert child.status_code == 201, child.text
    # no expiry asked for: the parent's is inherited
    inherited = datetime.fromisoformat(child.json()["expires_at"])
    assert abs(inherited - in_an_hour) < timedelta(seconds=1)
    grandchild = mint(child.json()["token"], scope="read")
    assert grandchild.status_code == 201, grandchild.text
    sibling = world.user("alice", scope="write")  # minted by the administrator's token
    # revoking the parent revokes what it minted, transitively, and nothing else
    listed = world.client.get("/v1/tokens", headers=world.auth(parent)).json()["tokens"]
    parent_id = next(t["id"] for t in listed if t["name"].startswith("alice-") and t["expires_at"])
    revoked = world.client.delete(f"/v1/tokens/{parent_id}", headers=world.auth(sibling))
    assert revoked.status_code == 204
    for token in (parent, child.json()["token"], grandchild.json()["token"]):
        _error(world.client.get("/v1/whoami", headers=world.auth(token)), 401, "UNAUTHORIZED")
    assert world.client.get("/v1/whoami", headers=world.auth(sibling)).status_code == 200


def test_one_request_carries_bounded_work(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(120)
    digest = world.upload(data, alice)
    publish = "/v1/concepts/alice/big/versions/1"
    too_much = [
        {"tags": [f"t{i}" for i in range(17)]},
        {"labels": [f"l{i}" for i in range(17)]},
        {"description": "x" * 16_385},
        {"tags": "latest"},  # a string is not a list
    ]
    for extra in too_much:
        response = world.client.put(
            publish, json={"digest": digest, **extra}, headers=world.auth(alice)
        )
        _error(response, 400, "BAD_REQUEST")
    _error(world.client.get("/v1/concepts/alice/big", headers=world.auth(alice)), 404)
    at_the_limit = {
        "tags": [f"t{i}" for i in range(16)],
        "labels": [f"l{i}" for i in range(16)],
        "description": "word " * 3276,
    }
    response = world.client.put(
        publish, json={"digest": digest, **at_the_limit}, headers=world.auth(alice)
    )
    assert response.status_code == 201, response.text
    assert (
        len(world.client.get("/v1/concepts/alice/big", headers=world.auth(alice)).json()["tags"])
        == 16
    )


MISTYPED = [
    ("private", "yes"),
    ("private", 1),
    ("private", "true"),
    ("digest", 5),
    ("tags", [1]),
    ("labels", "plush"),
    ("description", ["x"]),
]


def test_mistyped_fields_are_refused(world: World) -> None:
    alice = world.user("alice")
    digest = world.upload(concept_bytes(121), alice)
    for field, value in MISTYPED:
        body = {"digest": digest, field: value}
        response = world.client.put(
            "/v1/concepts/alice/typed/versions/1", json=body, headers=world.auth(alice)
        )
        _error(response, 400, "BAD_REQUEST")
    _error(world.client.get("/v1/concepts/alice/typed", headers=world.auth(alice)), 404)
    for value in ("yes", 0, None):  # PATCH has the same strict types (None: no change)
        response = world.client.patch(
            "/v1/concepts/alice/typed", json={"private": value}, headers=world.auth(alice)
        )
        _error(response, 400 if value is not None else 404)


def test_signer_filter_matches_key_ids_literally(world: World) -> None:
    alice = world.user("alice")
    key = pf.PrivateKey.generate()
    signed = world.push(alice, "alice/signed:1", concept_bytes(122, key), private=False)
    assert signed.status_code == 201
    key_id = key.public_key.key_id
    found = world.client.get("/v1/search", params={"signer": key_id}).json()["results"]
    assert [r["name"] for r in found] == ["signed"]
    # a key id with its last digit replaced by a LIKE wildcard names no key
    for wildcard in (key_id[:-1] + "_", key_id[:-1] + "%", key_id[:20] + "%"):
        _error(world.client.get("/v1/search", params={"signer": wildcard}), 400, "BAD_REQUEST")


def test_a_failed_transaction_leaves_nothing_savepoints_included(world: World) -> None:
    """The pysqlite driver's legacy transaction handling committed a SAVEPOINT opened before any
    write on its own; every transaction is now one unit on both databases."""
    registry = world.client.app.state.registry  # type: ignore[attr-defined]

    def half_done(connection: sqlalchemy.Connection) -> None:
        with connection.begin_nested():
            connection.execute(sqlalchemy.insert(accounts).values(name="ghost", kind="user"))
        raise RuntimeError("the request fails after its savepoint")

    for write in (False, True):
        with pytest.raises(RuntimeError), transaction(registry, write=write) as connection:
            half_done(connection)
    with registry.engine.connect() as connection:
        ghost = select(accounts).where(accounts.c.name == "ghost")
        assert connection.execute(ghost).first() is None
    _error(world.client.get("/v1/namespaces/ghost/keys"), 404)


def test_reserved_and_malformed_namespace_names_are_refused(world: World) -> None:
    alice = world.user("alice")
    for name in [*sorted(RESERVED_NAMESPACES), "Upper", "a b", "-x", "x" * 65]:
        for path, token in (("/v1/orgs", alice), ("/v1/users", world.admin)):
            response = world.client.post(path, json={"name": name}, headers=world.auth(token))
            _error(response, 400, "NAME_INVALID")
    assert (
        world.client.post("/v1/orgs", json={"name": "v3"}, headers=world.auth(alice)).status_code
        == 201
    )


def test_admin_command_refuses_a_bad_user_name(tmp_path: Path) -> None:
    command = str(Path(sys.executable).with_name("pfx-registry"))
    for name in ("v1", "Bad Name"):
        result = subprocess.run(
            [command, "admin", "create-token", "--data", str(tmp_path), "--user", name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert (
            result.stderr.startswith("pfx-registry: error: --user: ")
            and "Traceback" not in result.stderr
        )
    assert not (tmp_path / "index.db").exists()
