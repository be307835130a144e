"""Backend outages: the blob store (moto's S3 server) or the index (a PostgreSQL cluster of this
test's own) stops in the middle of a test. Requests then answer 503 UNAVAILABLE promptly (never a
500, never a hang); once the backend is back the registry works again, and the index holds no
half-written version: every version is whole, and none points at a blob that was not stored."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from backends import POSTGRES_SCRIPT, S3Server, start_postgres, stop_postgres
from fastapi.testclient import TestClient
from test_api import World, concept_bytes, migrate_and_add_administrator, world  # noqa: F401  (world: the backends fixture)

from pfx_registry.app import create_app
from pfx_registry.blobs import UNAVAILABLE
from pfx_registry.db import blobs, repositories, tags, versions
from pfx_registry.settings import Settings

#: The longest an answer may take while a backend is down (boto3 and psycopg fail fast on a
#: closed port; a hang would show here).
PROMPT = 10.0
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _client(world: World) -> TestClient:
    """A client of the world's app that answers server errors as 500 (as a real server would)
    instead of raising them into the test."""
    return TestClient(world.client.app, raise_server_exceptions=False)


def _timed(client: TestClient, method: str, url: str, **kwargs: object) -> httpx.Response:
    """Make a request and check that it answered within PROMPT seconds."""
    start = time.monotonic()
    response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    elapsed = time.monotonic() - start
    assert elapsed < PROMPT, f"{method} {url} took {elapsed:.1f} s"
    return response


def _unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "UNAVAILABLE", what


# -- S3 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", ["s3+sqlite", "s3+postgres"], indirect=True)
def test_s3_outage(world: World, s3_server: S3Server) -> None:
    """Uploads, downloads and /readyz are 503 while S3 is down; a publish of a blob uploaded before
    works (it needs only the index) or is a clean 503; after the restart nothing points at the
    blob whose upload failed, and the registry works again."""
    client = _client(world)
    alice = world.user("alice")
    auth = world.auth(alice)
    before, uploaded, refused = concept_bytes(31), concept_bytes(32), concept_bytes(33)
    assert world.push(alice, "alice/c:1", before, private=False).status_code == 201
    world.upload(uploaded, alice)
    bucket = world.settings.s3_bucket
    assert bucket is not None

    s3_server.stop()
    try:
        put = _timed(client, "PUT", f"/v1/blobs/{_digest(refused)}", content=refused, headers=auth)
        _unavailable(put, "upload")
        _unavailable(_timed(client, "GET", "/v1/concepts/alice/c/versions/1/file"), "download")
        _unavailable(_timed(client, "GET", f"/v1/blobs/{_digest(before)}"), "blob download")
        _unavailable(_timed(client, "GET", "/readyz"), "readyz")
        published = _timed(
            client,
            "PUT",
            "/v1/concepts/alice/c/versions/2",
            json={"digest": _digest(uploaded)},
            headers=auth,
        )
        assert published.status_code in (201, 503), published.text
        if published.status_code == 503:
            _unavailable(published, "publish of an uploaded blob")
        orphan = _timed(
            client,
            "PUT",
            "/v1/concepts/alice/c/versions/3",
            json={"digest": _digest(refused)},
            headers=auth,
        )
        assert orphan.status_code == 404 and orphan.json()["error"]["code"] == "BLOB_UNKNOWN"
    finally:
        s3_server.start()
        s3_server.create_bucket(bucket)  # moto keeps nothing across a restart

    assert client.get("/readyz").json() == {"status": "ready"}
    # The index never learnt of the refused blob: no blob row, no version, nothing to HEAD.
    engine = world.client.app.state.registry.engine
    with engine.connect() as connection:
        indexed = set(connection.execute(sqlalchemy.select(blobs.c.digest)).scalars())
        pointed = set(connection.execute(sqlalchemy.select(versions.c.digest)).scalars())
    assert _digest(refused) not in indexed | pointed
    assert pointed <= {_digest(before), _digest(uploaded)}
    assert client.head(f"/v1/blobs/{_digest(refused)}", headers=auth).status_code == 404
    # moto lost every object on restart (test_blob_lost_by_the_store covers that state); once
    # the blobs are restored, as from a backup, every version downloads whole.
    for data in (before, uploaded):
        world.upload(data, alice)
    assert client.get("/v1/concepts/alice/c/versions/1/file").content == before
    if published.status_code == 201:
        got = client.get("/v1/concepts/alice/c/versions/2/file", headers=auth)
        assert got.content == uploaded
    assert world.push(alice, "alice/c:3", refused).status_code == 201
    assert client.get("/v1/concepts/alice/c/versions/3/file", headers=auth).content == refused


@pytest.mark.parametrize("world", ["s3+sqlite", "folder+sqlite"], indirect=True)
def test_blob_store_outage_reveals_nothing_internal(
    world: World,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 503 from a blob store that is down tells anonymous callers and users only that the blob
    store is unavailable — no endpoint, bucket, key or folder; the cause is logged as a warning
    on the ``pfx_registry`` logger for the operator."""
    client = _client(world)
    alice = world.user("alice")
    data = concept_bytes(35)
    assert world.push(alice, "alice/c:1", data, private=False).status_code == 201
    refused = concept_bytes(36)
    s3_server: S3Server | None = None
    if world.settings.s3_bucket is not None:
        s3_server = request.getfixturevalue("s3_server")
        internal = [f"127.0.0.1:{s3_server.port}", world.settings.s3_bucket]
        requests = [
            ("GET", "/readyz", {}),
            ("GET", "/v1/concepts/alice/c/versions/1/file", {}),
            ("GET", f"/v1/blobs/{_digest(data)}", {}),
            (
                "PUT",
                f"/v1/blobs/{_digest(refused)}",
                {"content": refused, "headers": world.auth(alice)},
            ),
        ]
        s3_server.stop()
    else:  # the folder cannot be written (as to a full or read-only volume)
        internal = [str(world.settings.data_dir)]
        requests = [("GET", "/readyz", {})]
        monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)
    caplog.set_level(logging.WARNING, logger="pfx_registry")
    try:
        for method, url, kwargs in requests:
            caplog.clear()
            response = _timed(client, method, url, **kwargs)
            _unavailable(response, f"{method} {url}")
            assert response.json()["error"]["message"] == UNAVAILABLE, response.text
            assert not [part for part in internal if part in response.text], response.text
            assert all(part in caplog.text for part in internal), caplog.text
    finally:
        if s3_server is not None:
            s3_server.start()
            s3_server.create_bucket(world.settings.s3_bucket)


def test_blob_lost_by_the_store(world: World) -> None:
    """A version whose blob the store no longer has (lost with an S3 restart, a bucket lifecycle
    rule, a hand-deleted file) is answered with a clean error, never a 500."""
    client = _client(world)
    alice = world.user("alice")
    data = concept_bytes(34)
    assert world.push(alice, "alice/lost:1", data, private=False).status_code == 201
    world.client.app.state.registry.blobs.delete(_digest(data))
    wrong = []
    for url in ("/v1/concepts/alice/lost/versions/1/file", f"/v1/blobs/{_digest(data)}"):
        response = _timed(client, "GET", url)
        if response.status_code not in (404, 503):
            wrong.append(f"GET {url}: {response.status_code} {response.text[:120]}")
        elif response.json()["error"]["code"] not in ("BLOB_UNKNOWN", "NOT_FOUND", "UNAVAILABLE"):
            wrong.append(f"GET {url}: {response.text[:120]}")
    assert not wrong, wrong


# -- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own, which can be stopped and started again on the
    same data folder and port (``.ci/postgres`` only starts a new one and removes it)."""

    directory: Path
    url: str

    def _pg_ctl(self, *arguments: str) -> None:
        command = [str(PG_BIN / "pg_ctl"), f"--pgdata={self.directory / 'data'}", *arguments]
        if os.geteuid() == 0:  # the cluster belongs to the postgres OS user (.ci/postgres)
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        """A clean, fast shutdown: open sessions are cut off, in-flight transactions roll back,
        and every committed one is on disk (the cluster runs with fsync and synchronous_commit
        off, so an immediate shutdown could drop acknowledged commits)."""
        self._pg_ctl("--mode=fast", "--wait", "stop")

    def start(self) -> None:
        """Start again on the same data folder (and so the same port)."""
        self._pg_ctl(f"--log={self.directory / 'server.log'}", "--wait", "--timeout=60", "start")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh cluster (in a folder the postgres OS user can reach), removed at the end."""
    if not (POSTGRES_SCRIPT.exists() and (PG_BIN / "pg_ctl").exists()):
        pytest.fail(f"no PostgreSQL server binaries in {PG_BIN}", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="pfx-pg-outage-"))
    try:
        yield Cluster(directory, start_postgres(directory))
    finally:
        stop_postgres(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_world(cluster: Cluster, tmp_path: Path) -> Iterator[World]:
    """A registry with blobs in a folder and its index on ``cluster``."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=cluster.url,
        rate_limit_token=0,
        rate_limit_address=0,
    )
    app = create_app(settings)
    engine = app.state.registry.engine
    admin = migrate_and_add_administrator(engine)
    with TestClient(app) as client:
        yield World(client, settings, admin)
    engine.dispose()


def test_postgres_outage(pg_world: World, cluster: Cluster) -> None:
    """While the index is down every request that needs it is a prompt 503 UNAVAILABLE; publishes
    cut off by the shutdown either exist whole (repository, version and both tags) or not at
    all; after the restart the versions published before are intact and new work succeeds."""
    world = pg_world
    client = _client(world)
    alice = world.user("alice")
    auth = world.auth(alice)
    kept = {n: concept_bytes(40 + n) for n in range(3)}
    for n, data in kept.items():
        assert world.push(alice, f"alice/kept:{n}", data, private=False).status_code == 201
    burst_digest = world.upload(concept_bytes(50), alice)

    # Publishes to new repositories, one after another, while the cluster stops under them.
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def burst() -> None:
        n = 0
        while not stop.is_set():
            response = client.put(
                f"/v1/concepts/alice/burst-{n}/versions/1",
                json={"digest": burst_digest, "tags": ["latest", f"t{n}"]},
                headers=auth,
            )
            statuses[n] = response.status_code
            n += 1

    thread = threading.Thread(target=burst)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while sum(s == 201 for s in statuses.values()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.stop()
        # The burst keeps going against the stopped index; answers read before the stop (the
        # caller's token) may be reused for read_cache_seconds (caching.py), no longer.
        time.sleep(max(0.5, world.settings.read_cache_seconds + 0.1))
        for method, url, kwargs in (
            ("GET", "/readyz", {}),
            ("GET", "/v1/concepts/alice/kept", {}),
            ("GET", "/v1/concepts/alice/kept/versions/0/file", {}),
            ("GET", "/v1/search", {"params": {"q": "teddy"}}),
            ("GET", "/v1/whoami", {"headers": auth}),
            (
                "PUT",
                "/v1/concepts/alice/kept/versions/9",
                {"json": {"digest": burst_digest}, "headers": auth},
            ),
        ):
            _unavailable(_timed(client, method, url, **kwargs), f"{method} {url}")
        refused = concept_bytes(51)
        upload = _timed(
            client, "PUT", f"/v1/blobs/{_digest(refused)}", content=refused, headers=auth
        )
        _unavailable(upload, "upload")
    finally:
        stop.set()
        thread.join(timeout=60)
        cluster.start()
    assert not thread.is_alive(), "a publish hung while the index was down"
    assert set(statuses.values()) <= {201, 503}, statuses
    assert 503 in statuses.values(), "no publish met the outage"

    assert client.get("/readyz").json() == {"status": "ready"}
    for n, data in kept.items():
        got = client.get(f"/v1/concepts/alice/kept/versions/{n}/file")
        assert got.status_code == 200 and got.content == data, n
    for n, status in statuses.items():
        repository = client.get(f"/v1/concepts/alice/burst-{n}", headers=auth)
        if status == 201:
            assert repository.status_code == 200, (n, repository.text)
        if repository.status_code == 404:
            continue  # cut off before its commit: nothing of it exists
        body = repository.json()
        assert "versions" in body, (n, repository.status_code, body)
        assert [v["version"] for v in body["versions"]] == ["1"], (n, body)
        assert body["tags"] == {"latest": "1", f"t{n}": "1"}, (n, body)
    engine = world.client.app.state.registry.engine
    with engine.connect() as connection:
        empty = connection.execute(
            sqlalchemy.select(repositories.c.name)
            .outerjoin(versions, versions.c.repository_id == repositories.c.id)
            .where(versions.c.id.is_(None))
        ).all()
        untagged = connection.execute(  # every burst version carries its two tags
            sqlalchemy.select(repositories.c.name)
            .join(versions, versions.c.repository_id == repositories.c.id)
            .outerjoin(tags, tags.c.version_id == versions.c.id)
            .where(repositories.c.name.startswith("burst-"))
            .group_by(repositories.c.name)
            .having(sqlalchemy.func.count(tags.c.tag) != 2)
        ).all()
    assert empty == [] and untagged == [], (empty, untagged)
    assert world.push(alice, "alice/after:1", concept_bytes(52)).status_code == 201
