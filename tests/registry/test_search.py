"""Search: full text on SQLite FTS5 and PostgreSQL gives the same results in the same order;
filters, sorts and keyset pagination that stays stable while concepts are added."""

from __future__ import annotations

from typing import Any

import pytest
from concept_factory import build_concept
from test_api import World, world  # noqa: F401 — the fixture

import perfusion_format as pf

KEY = pf.PrivateKey.generate()

# (repository, token, superclass, description, labels, family, signed)
CATALOGUE = [
    ("teddy", "<teddy>", "bear", "a brown plush toy", ["toy"], "sd-1", True),
    ("old-bear", "<bruno>", "teddy", "worn teddy with a bow", ["plush"], "sd-1", False),
    ("teapot", "<pot>", "teapot", "blue china teapot next to a teddy", [], "sd-2", True),
    ("cat", "<kitty>", "cat", "a ginger cat", ["pet"], "sd-1", False),
    ("dog", "<rex>", "dog", "a small dog", ["pet", "toy"], "sdxl", True),
]
# Expected from the rules (name 3, token/superclass/title/labels 2, description 1; every word
# must match; ties newest first) — the same on SQLite and PostgreSQL.
EXPECTED = {
    "teddy": ["teddy", "old-bear", "teapot"],
    "TEAPOT, teddy!": ["teapot"],
    "toy": ["dog", "teddy"],
    "pet": ["dog", "cat"],
    "bear": ["old-bear", "teddy"],
    "nothing-matches": [],
    "": ["dog", "cat", "teapot", "old-bear", "teddy"],
}


def _publish_catalogue(world: World) -> tuple[str, dict[str, int]]:
    token = world.user("alice")
    for seed, (name, trigger, superclass, description, labels, family, signed) in enumerate(
        CATALOGUE
    ):
        concept = build_concept(
            family=family, seed=seed, name=name, token=trigger, superclass=superclass
        )
        data = pf.dumps(pf.sign(concept, KEY) if signed else concept)
        response = world.push(
            token, f"alice/{name}:1", data, private=False, description=description, labels=labels
        )
        assert response.status_code == 201, response.text
    downloads = {"cat": 3, "dog": 1, "teapot": 2}
    for name, count in downloads.items():
        for _ in range(count):
            world.client.get(f"/v1/concepts/alice/{name}/versions/1/file")
    return token, downloads


def _names(world: World, **params: Any) -> list[str]:
    response = world.client.get("/v1/search", params=params)
    assert response.status_code == 200, response.text
    return [result["name"] for result in response.json()["results"]]


@pytest.mark.parametrize("world", ["folder+sqlite", "folder+postgres"], indirect=True)
def test_relevance_filters_and_sorts(world: World) -> None:
    _publish_catalogue(world)
    for q, names in EXPECTED.items():
        assert _names(world, q=q) == names, q
    assert _names(world, q="teddy", family="sd-1") == ["teddy", "old-bear"]
    assert _names(world, superclass="teddy") == ["old-bear"]
    assert _names(world, signer=KEY.public_key.key_id) == ["dog", "teapot", "teddy"]
    assert _names(world, sort="downloads")[:3] == ["cat", "teapot", "dog"]
    assert _names(world, sort="recent") == ["dog", "cat", "teapot", "old-bear", "teddy"]
    assert world.client.get("/v1/search", params={"sort": "best"}).status_code == 400
    bad = world.client.get("/v1/search", params={"cursor": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_CURSOR"


@pytest.mark.parametrize("world", ["folder+sqlite", "folder+postgres"], indirect=True)
def test_one_word_search_follows_every_change(world: World) -> None:
    """One-word queries read their own index (search_terms): edits, visibility, yanks and
    deletions must reach it as they reach the full-text documents."""
    token, _ = _publish_catalogue(world)
    auth = world.auth(token)
    edited = world.client.patch(
        "/v1/concepts/alice/cat",
        json={"description": "a ginger cat in a teddy costume"},
        headers=auth,
    )
    assert edited.status_code == 200
    assert _names(world, q="teddy") == ["teddy", "old-bear", "cat", "teapot"]
    assert _names(world, q="ginger") == ["cat"]
    world.client.patch("/v1/concepts/alice/cat", json={"description": "a cat"}, headers=auth)
    assert _names(world, q="ginger") == []
    world.client.patch("/v1/concepts/alice/teapot", json={"private": True}, headers=auth)
    assert _names(world, q="teddy") == ["teddy", "old-bear"]
    world.client.post("/v1/concepts/alice/old-bear/versions/1/yank", headers=auth)
    assert _names(world, q="teddy") == ["teddy"]
    assert world.client.delete("/v1/concepts/alice/teddy", headers=auth).status_code == 204
    assert _names(world, q="teddy") == []
    assert _names(world, q="pet") == ["dog", "cat"]


@pytest.mark.parametrize("world", ["folder+sqlite", "folder+postgres"], indirect=True)
def test_cursor_pages_are_stable_while_concepts_are_added(world: World) -> None:
    token = world.user("alice")
    for seed in range(7):
        data = pf.dumps(build_concept(seed=100 + seed, name=f"toy {seed}"))
        world.push(token, f"alice/toy-{seed}:1", data, private=False, description="toy")
    first = world.client.get("/v1/search", params={"q": "toy", "limit": 3}).json()
    seen = [r["name"] for r in first["results"]]
    # new concepts that sort before everything arrive between pages
    for seed in range(7, 9):
        data = pf.dumps(build_concept(seed=100 + seed))
        world.push(token, f"alice/toy-{seed}:1", data, private=False, description="toy")
    cursor = first["next_cursor"]
    while cursor:
        page = world.client.get(
            "/v1/search", params={"q": "toy", "limit": 3, "cursor": cursor}
        ).json()
        seen += [r["name"] for r in page["results"]]
        cursor = page["next_cursor"]
    assert seen == [f"toy-{seed}" for seed in range(6, -1, -1)]
