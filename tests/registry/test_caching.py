"""The read cache, the blob cache and batched download counts (caching.py, downloads.py):
writes through one process are seen by it at once, writes through another replica within
``read_cache_seconds``, and no download is lost or counted twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from test_api import World, concept_bytes, migrate_and_add_administrator

from pfx_registry.app import create_app
from pfx_registry.caching import BlobCache
from pfx_registry.db import create_index_engine, repositories
from pfx_registry.downloads import DownloadCounter
from pfx_registry.settings import Settings

TTL = 1.5


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[World, World]]:
    """Two registry processes' apps (each with its own caches) on one folder + SQLite index."""
    settings = Settings(
        data_dir=tmp_path / "data",
        rate_limit_token=0,
        rate_limit_address=0,
        read_cache_seconds=TTL,
    )
    first, second = create_app(settings), create_app(settings)
    admin = migrate_and_add_administrator(first.state.registry.engine)
    with TestClient(first) as one, TestClient(second) as two:
        yield World(one, settings, admin), World(two, settings, admin)


def _latest(world: World, token: str | None = None) -> int:
    """The status of resolving alice/c:latest; the version it names on 200."""
    response = world.client.get("/v1/concepts/alice/c/versions/latest", headers=world.auth(token))
    return int(response.json()["version"]) if response.status_code == 200 else response.status_code


def test_a_write_is_seen_at_once_by_its_process_and_within_the_ttl_by_others(
    replicas: tuple[World, World],
) -> None:
    one, two = replicas
    alice = one.user("alice")
    assert one.push(alice, "alice/c:1", concept_bytes(61), private=False).status_code == 201
    assert _latest(one) == 1 and _latest(two) == 1  # both now hold the answer
    cached_at = time.monotonic()

    assert two.push(alice, "alice/c:2", concept_bytes(62)).status_code == 201
    assert _latest(two) == 2  # the writer's own cache was dropped by its commit
    stale = _latest(one)
    if time.monotonic() - cached_at < TTL:  # (a machine too slow to get here in time skips it)
        assert stale == 1  # the other replica answers from its cache …
    time.sleep(TTL + 0.1)
    assert _latest(one) == 2  # … for read_cache_seconds at most

    # Visibility: a repository made private stops answering anonymous callers at once in the
    # process that changed it, and within the bound elsewhere.
    assert _latest(one) == 2 and _latest(two) == 2
    patched = one.client.patch(
        "/v1/concepts/alice/c", json={"private": True}, headers=one.auth(alice)
    )
    assert patched.status_code == 200
    assert _latest(one) == 404
    time.sleep(TTL + 0.1)
    assert _latest(two) == 404
    assert _latest(two, alice) == 2


def test_a_revoked_token_is_refused_at_once_by_the_process_that_revoked_it(
    replicas: tuple[World, World],
) -> None:
    one, two = replicas
    alice = one.user("alice")
    assert one.client.get("/v1/whoami", headers=one.auth(alice)).json()["name"] == "alice"
    assert two.client.get("/v1/whoami", headers=two.auth(alice)).json()["name"] == "alice"
    token_id = one.client.get("/v1/tokens", headers=one.auth(alice)).json()["tokens"][0]["id"]
    assert one.client.delete(f"/v1/tokens/{token_id}", headers=one.auth(alice)).status_code == 204
    assert one.client.get("/v1/whoami", headers=one.auth(alice)).status_code == 401
    time.sleep(TTL + 0.1)
    assert two.client.get("/v1/whoami", headers=two.auth(alice)).status_code == 401


def test_no_cache_means_every_read_sees_the_index(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", rate_limit_token=0, rate_limit_address=0)
    uncached = settings.model_copy(update={"read_cache_seconds": 0})
    first, second = create_app(uncached), create_app(uncached)
    admin = migrate_and_add_administrator(first.state.registry.engine)
    with TestClient(first) as one_client, TestClient(second) as two_client:
        one, two = World(one_client, uncached, admin), World(two_client, uncached, admin)
        alice = one.user("alice")
        assert one.push(alice, "alice/c:1", concept_bytes(63), private=False).status_code == 201
        assert _latest(one) == 1
        assert two.push(alice, "alice/c:2", concept_bytes(64)).status_code == 201
        assert _latest(one) == 2


def test_downloads_are_counted_exactly_across_replicas(replicas: tuple[World, World]) -> None:
    one, two = replicas
    alice = one.user("alice")
    assert one.push(alice, "alice/c:1", concept_bytes(65), private=False).status_code == 201
    for world, count in ((one, 3), (two, 2)):
        for _ in range(count):
            assert world.client.get("/v1/concepts/alice/c/versions/1/file").status_code == 200
    # Each replica writes its own pending counts before answering with download numbers; the
    # other's are written by its background flush within a second.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shown = one.client.get("/v1/concepts/alice/c").json()["downloads"]
        if shown >= 5:
            break
        time.sleep(0.1)
    assert shown == 5
    listed = two.client.get("/v1/concepts/alice").json()["concepts"]
    assert listed == [{"name": "c", "private": False, "downloads": 5}]


def test_a_failed_flush_keeps_the_counts(tmp_path: Path) -> None:
    good = create_index_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate_and_add_administrator(good)
    with good.begin() as connection:
        connection.execute(
            sqlalchemy.insert(repositories).values(id=7, namespace_id=1, name="c", private=False)
        )
    broken = create_index_engine(f"sqlite:///{tmp_path / 'missing' / 'index.db'}")
    counter = DownloadCounter()
    for _ in range(3):
        counter.add(7)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        counter.flush(broken)
    counter.add(7)
    assert counter.flush(good) == 4
    assert counter.flush(good) == 0
    with good.connect() as connection:
        downloads = connection.execute(
            sqlalchemy.select(repositories.c.downloads).where(repositories.c.id == 7)
        ).scalar_one()
    assert downloads == 4


def test_blob_cache_keeps_the_most_recent_bytes_within_its_capacity() -> None:
    cache = BlobCache(capacity=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"90ab")  # 12 bytes: b, the least recent, goes
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"90ab"
    assert cache.size == 8
    cache.put("huge", b"x" * 11)  # larger than the capacity: not kept, nothing evicted
    assert cache.get("huge") is None and cache.size == 8
    cache.discard("a")
    assert cache.get("a") is None and cache.size == 4
