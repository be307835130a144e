"""The scaled-out shape through a real nginx (deploy/nginx.conf, started by deploy/cluster.py):
two registry replicas on one PostgreSQL database and one blob folder, nginx in front (and one
replica on S3 for X-Accel-Redirect).

Checked here: public blobs cached by digest (ETag, 304, Range answered by nginx), private blobs a
404 for outsiders and a signed URL for insiders that nginx checks by itself (tampered: 403,
expired: 410), X-Accel-Redirect to S3 through nginx, a push through one replica seen through
the other, download counts of both replicas adding up, and two replicas migrating an empty
database exactly once.
Skipped, with the reason, where nginx is not installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from backends import fresh_postgres_database

import perfusion_format as pf

REPO = Path(__file__).resolve().parents[2]
PFX_REGISTRY = Path(sys.executable).with_name("pfx-registry")


def _deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pfx_deploy_cluster", REPO / "deploy/cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


deploy = _deploy()
needs_nginx = pytest.mark.skipif(
    deploy.nginx_binary() is None,
    reason="nginx is not installed (Debian: apt-get install -y nginx)",
)
QUIET = {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0"}


def _start(postgres_url: str, replicas: int, store: str = "folder", **settings: str) -> Any:
    cluster = deploy.Cluster(
        port=deploy.free_port(),
        replicas=replicas,
        store=store,
        settings=QUIET | settings,
        database_url=fresh_postgres_database(postgres_url),
    )
    cluster.start()
    return cluster


@pytest.fixture(scope="module")
def cluster(postgres_url: str) -> Iterator[Any]:
    """Two replicas behind nginx; private downloads by signed URL."""
    started = _start(postgres_url, 2)
    try:
        yield started
    finally:
        started.stop()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _push(
    url: str,
    token: str,
    *,
    private: bool,
    seed: int | None = None,
    name: str | None = None,
    version: str = "1",
) -> tuple[str, bytes]:
    """Push a concept as the administrator (namespace ``admin``; a new repository unless
    ``name`` is given) as ``version``; its name and bytes."""
    from concept_factory import build_concept

    name = name or f"c-{uuid.uuid4().hex[:8]}"
    data = pf.dumps(build_concept(seed=seed if seed is not None else uuid.uuid4().int % 10_000))
    digest = pf.content_digest(data)
    assert httpx.put(f"{url}/v1/blobs/{digest}", content=data, headers=_auth(token)).is_success
    answer = httpx.put(
        f"{url}/v1/concepts/admin/{name}/versions/{version}",
        json={"digest": digest, "private": private},
        headers=_auth(token),
    )
    assert answer.status_code == 201, answer.text
    return name, data


@needs_nginx
def test_public_blobs_are_cached_by_digest_with_validators_and_ranges(cluster: Any) -> None:
    _name, data = _push(cluster.url, cluster.admin_token, private=False)
    digest = pf.content_digest(data)
    url = f"{cluster.url}/v1/blobs/{digest}"
    first, second = httpx.get(url), httpx.get(url)
    assert first.content == data and second.content == data
    assert first.headers["x-cache-status"] == "MISS" and second.headers["x-cache-status"] == "HIT"
    assert second.headers["etag"] == f'"{digest}"'
    assert second.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "x-accel-expires" not in second.headers  # for nginx, not for clients
    not_modified = httpx.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert not_modified.status_code == 304 and not_modified.headers["x-cache-status"] == "HIT"
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"


@needs_nginx
def test_private_blobs_are_hidden_and_signed_urls_are_checked_by_nginx(cluster: Any) -> None:
    name, data = _push(cluster.url, cluster.admin_token, private=True)
    digest = pf.content_digest(data)
    url = f"{cluster.url}/v1/blobs/{digest}"
    insider = httpx.get(url, headers=_auth(cluster.admin_token))
    assert insider.status_code == 307 and insider.headers["cache-control"] == "private, no-store"
    location = insider.headers["location"]
    assert location.startswith("/v1/signed/")
    outsider = httpx.get(url)  # after an insider's download: nothing was cached for everyone
    assert outsider.status_code == 404 and outsider.json()["error"]["code"] == "BLOB_UNKNOWN"
    file_url = f"{cluster.url}/v1/concepts/admin/{name}/versions/1/file"
    assert httpx.get(file_url).status_code == 404
    signed = httpx.get(cluster.url + location)  # no token: the URL is the credential
    assert signed.status_code == 200 and signed.content == data
    assert signed.headers["etag"] == f'"{digest}"'
    ranged = httpx.get(cluster.url + location, headers={"Range": "bytes=-16"})
    assert ranged.status_code == 206 and ranged.content == data[-16:]
    tampered = httpx.get(cluster.url + location.replace("expires=", "expires=1"))
    assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "FORBIDDEN"
    key = location.split("?")[0].removeprefix("/v1/signed/")
    expired = deploy_signed(key, cluster.secret, now=time.time() - 600)
    answer = httpx.get(cluster.url + expired)
    assert answer.status_code == 410 and answer.json()["error"]["code"] == "URL_EXPIRED"
    # pfx.Client follows the redirect without its token and gets the bytes
    from pfx.client import Client

    with Client(cluster.url, cluster.admin_token) as client:
        assert client.download_blob(digest) == data
        assert client.download("admin", name, "1") == data


def deploy_signed(key: str, secret: str, now: float) -> str:
    """A signed URL for ``key`` made at ``now`` with a lifetime of 60 s."""
    from pfx_registry import signing

    return str(signing.signed_url(key, secret, 60, now=now))


@needs_nginx
def test_anonymous_public_resolves_are_answered_by_nginx_and_nothing_else_is(
    cluster: Any,
) -> None:
    public, _data = _push(cluster.url, cluster.admin_token, private=False)
    private, _data = _push(cluster.url, cluster.admin_token, private=True)
    auth = _auth(cluster.admin_token)
    url = f"{cluster.url}/v1/concepts/admin/{public}/versions/1"
    assert _eventually(lambda: httpx.get(url).headers["x-cache-status"] == "HIT")
    cached = httpx.get(url)
    assert cached.status_code == 200 and cached.json()["reference"] == f"admin/{public}:1"
    assert "x-accel-expires" not in cached.headers  # for nginx, not for clients
    # with credentials the registry always answers: a bad token is refused, not served the copy
    bad = httpx.get(url, headers=_auth("pfx_" + "0" * 40))
    assert bad.status_code == 401 and bad.headers["x-cache-status"] == "BYPASS"
    assert httpx.get(url, headers=auth).headers["x-cache-status"] == "BYPASS"
    # a private concept: the insider's answer is never kept, the outsider gets 404 every time
    hidden = f"{cluster.url}/v1/concepts/admin/{private}/versions/1"
    for _ in range(3):
        assert httpx.get(hidden, headers=auth).status_code == 200
        outsider = httpx.get(hidden)
        assert outsider.status_code == 404, outsider.text
        assert outsider.headers["x-cache-status"] != "HIT"
    # a moved tag is seen through the edge cache within its bound (edge 1 s + read cache 1 s)
    tag = f"{cluster.url}/v1/concepts/admin/{public}/versions/latest"
    assert _eventually(lambda: httpx.get(tag).headers["x-cache-status"] == "HIT")
    assert httpx.get(tag).json()["version"] == "1"
    _name, data = _push(cluster.url, cluster.admin_token, private=False, name=public, version="2")
    digest = pf.content_digest(data)  # the push moved "latest" to 2
    assert _eventually(lambda: httpx.get(tag).json()["version"] == "2")
    assert httpx.get(tag).json()["digest"] == digest


@needs_nginx
def test_a_push_through_one_replica_is_seen_through_the_other(cluster: Any) -> None:
    first, second = cluster.replica_url(0), cluster.replica_url(1)
    name = f"c-{uuid.uuid4().hex[:8]}"
    resolve = f"/v1/concepts/admin/{name}/versions/1"
    auth = _auth(cluster.admin_token)
    assert httpx.get(second + resolve, headers=auth).status_code == 404  # now in its read cache
    from concept_factory import build_concept

    data = pf.dumps(build_concept(seed=uuid.uuid4().int % 10_000))
    digest = pf.content_digest(data)
    assert httpx.put(f"{first}/v1/blobs/{digest}", content=data, headers=auth).is_success
    pushed = httpx.put(first + resolve, json={"digest": digest}, headers=auth)
    assert pushed.status_code == 201
    # PFX_READ_CACHE_SECONDS (1 s) bounds how long the other replica may answer its cached 404
    seen = _eventually(lambda: httpx.get(second + resolve, headers=auth).status_code == 200)
    assert seen, "the second replica never saw the push"
    assert httpx.get(second + resolve, headers=auth).json()["digest"] == digest


@needs_nginx
def test_download_counts_of_all_replicas_add_up(cluster: Any) -> None:
    name, _data = _push(cluster.replica_url(0), cluster.admin_token, private=False)
    auth = _auth(cluster.admin_token)
    path = f"/v1/concepts/admin/{name}/versions/1/file"
    for replica, times in ((0, 3), (1, 4)):
        for _ in range(times):
            answer = httpx.get(cluster.replica_url(replica) + path, headers=auth)
            assert answer.status_code in (200, 307)
    for _ in range(2):
        assert httpx.get(cluster.url + path, headers=auth).status_code in (200, 307)

    def counted() -> int:
        answer = httpx.get(f"{cluster.replica_url(0)}/v1/concepts/admin/{name}", headers=auth)
        return int(answer.json()["downloads"])

    assert _eventually(lambda: counted() == 9), f"downloads counted: {counted()} of 9"


@needs_nginx
def test_accel_redirect_serves_private_files_from_s3_through_nginx(postgres_url: str) -> None:
    # S3 (the S3-protocol server): nginx fetches the file itself with the presigned query the
    # registry put in X-Accel-Redirect; the client needs no S3 access and never sees its URL
    accel = _start(postgres_url, 1, "s3", PFX_SIGNED_URL_SECRET="")
    try:
        name, data = _push(accel.url, accel.admin_token, private=True)
        url = f"{accel.url}/v1/concepts/admin/{name}/versions/1/file"
        answer = httpx.get(url, headers=_auth(accel.admin_token))
        assert answer.status_code == 200 and answer.content == data
        assert "x-accel-redirect" not in answer.headers  # nginx consumed it
        assert not any(name.startswith("x-amz") for name in answer.headers)
        assert answer.headers["etag"] == f'"{pf.content_digest(data)}"'
        assert answer.headers["cache-control"] == "private, no-cache"
        ranged = httpx.get(url, headers={**_auth(accel.admin_token), "Range": "bytes=0-7"})
        assert ranged.status_code == 206 and ranged.content == data[:8]
        assert httpx.get(url).status_code == 404
        assert httpx.get(f"{accel.url}/_pfx/store/{'0' * 64}").status_code == 404  # internal
    finally:
        accel.stop()


def test_two_replicas_migrate_an_empty_database_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    database = fresh_postgres_database(postgres_url)
    environment = {"PATH": "/usr/bin:/bin", "PFX_DATABASE_URL": database}
    migrators = [
        subprocess.Popen(
            [str(PFX_REGISTRY), "migrate", "--data", str(tmp_path)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [migrator.communicate(timeout=120) for migrator in migrators]
    assert [migrator.returncode for migrator in migrators] == [0, 0], results
    said = sorted(out.strip() for out, _err in results)
    assert said == ["index schema is up to date", "index schema migrated"]


def _eventually(check: Any, limit: float = 30.0) -> bool:
    """Whether ``check()`` becomes true before ``limit`` seconds pass (polled every 0.1 s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False
