"""One conformance suite for every blob backend (a local folder, and S3 over HTTP to moto's server
mode), plus what is particular to each: the folder's atomic writes, S3 outages and buckets, and
the throwaway PostgreSQL cluster script the SQL tests stand on."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from backends import S3Server, start_postgres, stop_postgres
from fastapi.testclient import TestClient
from test_api import concept_bytes, migrate_and_add_administrator

from perfusion_format import check_digest
from pfx_registry.app import create_app
from pfx_registry.blobs import UNAVAILABLE, BlobStore, FolderBlobStore, S3BlobStore
from pfx_registry.errors import BackendUnavailable
from pfx_registry.settings import Settings

SIZES = [0, 1, 256 * 1024 + 3, 4 * 1024 * 1024]


def blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    """Deterministic bytes of ``size`` and their digest."""
    data = random.Random(size * 7919 + seed).randbytes(size)
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- every backend ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_is_byte_identical(blob_store: BlobStore, size: int) -> None:
    digest, data = blob(size)
    blob_store.put(digest, data)
    assert blob_store.size(digest) == size
    assert blob_store.read(digest) == data


def test_put_is_idempotent(blob_store: BlobStore) -> None:
    digest, data = blob(1000)
    blob_store.put(digest, data)
    blob_store.put(digest, data)
    assert blob_store.size(digest) == len(data)
    assert blob_store.read(digest) == data
    assert list(blob_store.digests()) == [digest]


def test_absent_blob(blob_store: BlobStore) -> None:
    digest, _ = blob(10)
    assert blob_store.size(digest) is None
    with pytest.raises(FileNotFoundError):
        blob_store.read(digest)
    blob_store.delete(digest)  # deleting what is absent is fine
    assert list(blob_store.digests()) == []


def test_delete(blob_store: BlobStore) -> None:
    kept, kept_data = blob(5, seed=1)
    gone, gone_data = blob(5, seed=2)
    blob_store.put(kept, kept_data)
    blob_store.put(gone, gone_data)
    blob_store.delete(gone)
    assert blob_store.size(gone) is None
    with pytest.raises(FileNotFoundError):
        blob_store.read(gone)
    assert blob_store.read(kept) == kept_data
    assert list(blob_store.digests()) == [kept]
    blob_store.delete(gone)


def test_digests_lists_exactly_what_was_put(blob_store: BlobStore) -> None:
    stored = {}
    for seed in range(12):
        digest, data = blob(seed * 3, seed=seed)
        blob_store.put(digest, data)
        stored[digest] = data
    listed = list(blob_store.digests())
    assert len(listed) == len(set(listed))
    assert set(listed) == set(stored)


def test_check_answers(blob_store: BlobStore) -> None:
    blob_store.check()


#: Runs a put that SIGKILLs its own process in the middle: the folder store's after its bytes are
#: in the temp file (at the rename), the S3 store's as its PutObject is about to be sent.
_KILLED_PUT = """
import os, signal, sys
from pfx_registry.blobs import FolderBlobStore, S3BlobStore

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

kind, where, digest = sys.argv[1:4]
if kind == "folder":
    store = FolderBlobStore(where)
    os.replace = die
else:
    bucket, endpoint = where.split(" ")
    store = S3BlobStore(bucket, endpoint_url=endpoint)
    store._client.meta.events.register("before-send.s3.PutObject", die)
store.put(digest, sys.stdin.buffer.read())
"""


def test_write_cut_off_by_kill_is_removed_after_the_grace_only(
    blob_store: BlobStore, request: pytest.FixtureRequest
) -> None:
    """A process killed (SIGKILL) in the middle of a put leaves no blob. What it leaves behind —
    the folder store's temp file; nothing on S3, whose put is one PutObject — is kept while it
    could be a write in flight, and removed (and reported) once older than the grace."""
    kept, kept_data = blob(10, seed=1)
    blob_store.put(kept, kept_data)
    digest, data = blob(256 * 1024 + 3, seed=2)
    if isinstance(blob_store, FolderBlobStore):
        where = ["folder", str(blob_store.root)]
    else:
        assert isinstance(blob_store, S3BlobStore)
        server: S3Server = request.getfixturevalue("s3_server")
        where = ["s3", f"{blob_store.bucket} {server.url}"]
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_PUT, *where, digest], input=data, check=False, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL
    assert blob_store.size(digest) is None

    grace_start = datetime.now(UTC) - timedelta(hours=1)
    assert blob_store.remove_stale_uploads(grace_start) == []  # young: maybe a write in flight
    if isinstance(blob_store, FolderBlobStore):
        (leftover,) = (blob_store.root / "uploads").iterdir()
        assert leftover.read_bytes() == data
        two_hours_ago = time.time() - 2 * 3600
        os.utime(leftover, (two_hours_ago, two_hours_ago))
        stale = [leftover.name]
    else:
        uploads = server.client().list_multipart_uploads(Bucket=blob_store.bucket)
        assert uploads.get("Uploads", []) == []
        stale = []
    assert blob_store.remove_stale_uploads(grace_start, dry_run=True) == stale
    if isinstance(blob_store, FolderBlobStore):
        assert leftover.exists()
    assert blob_store.remove_stale_uploads(grace_start) == stale
    if isinstance(blob_store, FolderBlobStore):
        assert list((blob_store.root / "uploads").iterdir()) == []
    assert list(blob_store.digests()) == [kept]
    assert blob_store.read(kept) == kept_data
    blob_store.put(digest, data)
    assert blob_store.read(digest) == data


def test_check_digest() -> None:
    hexdigest = hashlib.sha256(b"x").hexdigest()
    assert check_digest(f"sha256:{hexdigest}") == hexdigest
    for bad in [
        f"sha256:{hexdigest.upper()}",
        f"sha256:{hexdigest[:32]}{hexdigest[32:].upper()}",
        f"sha256:{hexdigest[:-1]}",
        f"sha256:{hexdigest}0",
        f"sha256:{hexdigest[:-1]}g",
        f"sha512:{hashlib.sha512(b'x').hexdigest()}",
        f"md5:{hashlib.md5(b'x').hexdigest()}",
        f"SHA256:{hexdigest}",
        hexdigest,
        f"sha256:{hexdigest}\n",
        f" sha256:{hexdigest}",
        "sha256:",
        "",
    ]:
        with pytest.raises(ValueError, match="not a sha256 digest"):
            check_digest(bad)


MALFORMED = [
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha512:" + "a" * 128,
    "sha256:../../../etc/passwd",
    "sha256:" + "a" * 62 + "/.",
]


@pytest.mark.parametrize("digest", MALFORMED)
def test_malformed_digest_is_refused_by_every_method(blob_store: BlobStore, digest: str) -> None:
    calls: dict[str, Any] = {
        "size": lambda: blob_store.size(digest),
        "put": lambda: blob_store.put(digest, b"data"),
        "read": lambda: blob_store.read(digest),
        "delete": lambda: blob_store.delete(digest),
        "presigned_url": lambda: blob_store.presigned_url(digest, 60),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="not a sha256 digest"):
            call()
        assert list(blob_store.digests()) == [], name


def test_presigned_url(blob_store: BlobStore) -> None:
    digest, data = blob(256 * 1024 + 3)
    blob_store.put(digest, data)
    url = blob_store.presigned_url(digest, 60)
    if isinstance(blob_store, FolderBlobStore):
        assert url is None
        return
    assert isinstance(url, str)
    response = httpx.get(url, timeout=10, trust_env=False)
    assert response.status_code == 200
    assert response.content == data


# --- the folder backend -----------------------------------------------------------------------


def test_folder_layout_and_no_leftover_uploads(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    digests = []
    for size in SIZES:
        digest, data = blob(size)
        store.put(digest, data)
        digests.append(digest)
        hexdigest = digest.removeprefix("sha256:")
        assert (tmp_path / "blobs" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == data
    assert list((tmp_path / "uploads").iterdir()) == []
    assert sorted(store.digests()) == sorted(digests)


def test_folder_digests_ignores_strays(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    digest, data = blob(3)
    store.put(digest, data)
    (tmp_path / "blobs" / "sha256" / "ab" / "not-a-digest").parent.mkdir(exist_ok=True)
    (tmp_path / "blobs" / "sha256" / "ab" / "not-a-digest").write_bytes(b"x")
    (tmp_path / "blobs" / "sha256" / "ab" / ("A" * 64)).write_bytes(b"x")
    (tmp_path / "uploads" / "tmp123").write_bytes(b"half")
    assert list(store.digests()) == [digest]


@pytest.mark.parametrize("failing", ["os.fsync", "os.replace"])
def test_folder_put_that_fails_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A write that fails half-way (after the bytes were written, or at the rename) leaves
    neither the blob nor a temporary file."""
    store = FolderBlobStore(tmp_path)
    digest, data = blob(256 * 1024 + 3)

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing.removeprefix("os."), fail)
    with pytest.raises(BackendUnavailable) as raised:  # a full disk: the store is down (503)
        store.put(digest, data)
    assert str(raised.value) == UNAVAILABLE
    monkeypatch.undo()
    assert store.size(digest) is None
    assert list(store.digests()) == []
    assert list((tmp_path / "uploads").iterdir()) == []
    store.put(digest, data)  # and the next try works
    assert store.read(digest) == data


def test_folder_disk_errors_are_unavailable_through_the_api(tmp_path: Path) -> None:
    """A broken folder (here a file where a fan-out folder belongs, so every write and read
    there fails) answers 503 UNAVAILABLE without the path, never 500."""
    settings = Settings(data_dir=tmp_path, rate_limit_token=0, rate_limit_address=0)
    app = create_app(settings)
    admin = migrate_and_add_administrator(app.state.registry.engine)
    data = concept_bytes(150)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fan_out = tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")[:2]
    fan_out.write_bytes(b"not a folder")
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {admin}"}
        response = client.put(f"/v1/blobs/{digest}", content=data, headers=headers)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == {"code": "UNAVAILABLE", "message": UNAVAILABLE}
    assert response.headers["retry-after"]
    store = FolderBlobStore(tmp_path)
    with pytest.raises(BackendUnavailable):
        store.read(digest)


def test_folder_stale_upload_removal_spares_writes_in_flight(tmp_path: Path) -> None:
    """Removing stale uploads while puts run neither fails nor breaks any of them (their temp
    files are young, or renamed into place under the listing)."""
    store = FolderBlobStore(tmp_path)
    payloads = [blob(64 * 1024, seed=seed) for seed in range(200)]
    grace_start = datetime.now(UTC) - timedelta(minutes=1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        puts = [pool.submit(store.put, digest, data) for digest, data in payloads]
        while not all(put.done() for put in puts):
            assert store.remove_stale_uploads(grace_start) == []
        for put in puts:
            put.result()
    assert all(store.read(digest) == data for digest, data in payloads)
    assert list((tmp_path / "uploads").iterdir()) == []


def test_folder_unwritable_is_unavailable_without_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The error says only that the blob store is unavailable; the folder is in the log."""
    store = FolderBlobStore(tmp_path)
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)
    caplog.set_level(logging.WARNING, logger="pfx_registry")
    with pytest.raises(BackendUnavailable) as raised:
        store.check()
    assert str(raised.value) == UNAVAILABLE
    assert str(tmp_path) in caplog.text


# --- the S3 backend ---------------------------------------------------------------------------


def test_s3_digests_paginates(s3_server: S3Server) -> None:
    """More than one ListObjectsV2 page (1,000 keys) of blobs are all listed."""
    store = S3BlobStore(s3_server.create_bucket(), endpoint_url=s3_server.url)
    payloads = [f"blob {index}".encode() for index in range(1_005)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda data: store.put(digest_of(data), data), payloads))
    listed = list(store.digests())
    assert len(listed) == len(payloads)
    assert set(listed) == {digest_of(data) for data in payloads}


def test_s3_prefixes_keep_stores_apart(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    first = S3BlobStore(bucket, endpoint_url=s3_server.url, prefix="one/")
    second = S3BlobStore(bucket, endpoint_url=s3_server.url, prefix="two/")
    digest, data = blob(7)
    first.put(digest, data)
    s3_server.client().put_object(Bucket=bucket, Key="two/blobs/sha256/readme.txt", Body=b"x")
    assert first.size(digest) == 7
    assert second.size(digest) is None
    assert list(first.digests()) == [digest]
    assert list(second.digests()) == []


def test_s3_missing_bucket_is_unavailable_not_missing_blob(s3_server: S3Server) -> None:
    """A bucket that does not exist is a broken backend (503), never a missing blob (404)."""
    store = S3BlobStore(f"pfx-absent-{time.time_ns()}", endpoint_url=s3_server.url)
    digest, data = blob(4)
    with pytest.raises(BackendUnavailable):
        store.check()
    with pytest.raises(BackendUnavailable):
        store.put(digest, data)
    with pytest.raises(BackendUnavailable):
        store.read(digest)
    with pytest.raises(BackendUnavailable):
        list(store.digests())


def test_s3_outage_and_recovery(s3_server: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    """With the server down every S3 call fails fast with BackendUnavailable, whose message names
    neither the endpoint nor the bucket (the log does); once it is back, the same store works
    again."""
    bucket = s3_server.create_bucket()
    store = S3BlobStore(bucket, endpoint_url=s3_server.url)
    digest, data = blob(100)
    store.put(digest, data)
    calls: dict[str, Any] = {
        "check": store.check,
        "size": lambda: store.size(digest),
        "put": lambda: store.put(digest, data),
        "read": lambda: store.read(digest),
        "delete": lambda: store.delete(digest),
        "digests": lambda: list(store.digests()),
    }
    caplog.set_level(logging.WARNING, logger="pfx_registry")
    s3_server.stop()
    try:
        for name, call in calls.items():
            caplog.clear()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as raised:
                call()
            assert time.monotonic() - started < 5, f"{name} took too long to give up"
            assert str(raised.value) == UNAVAILABLE, name
            assert f"127.0.0.1:{s3_server.port}" in caplog.text and bucket in caplog.text, name
    finally:
        s3_server.start()
    s3_server.create_bucket(bucket)  # a restarted moto server is empty
    store.check()
    assert store.size(digest) is None
    store.put(digest, data)
    assert store.read(digest) == data
    assert list(store.digests()) == [digest]


class _FailingBody:
    """A GetObject body whose connection drops after ``good`` bytes (as botocore reports it)."""

    def __init__(self, good: bytes) -> None:
        from botocore.response import StreamingBody

        # Announces more bytes than it has: botocore raises IncompleteReadError at the end.
        self._body = StreamingBody(io.BytesIO(good), len(good) + 10)
        self.closed = False

    def read(self, amount: int | None = None) -> bytes:
        return self._body.read(amount)

    def iter_chunks(self, size: int) -> Any:
        return self._body.iter_chunks(size)

    def close(self) -> None:
        self.closed = True


class _DroppingClient:
    """An S3 client stand-in whose downloads break off mid-way."""

    def __init__(self) -> None:
        self.bodies: list[_FailingBody] = []

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.bodies.append(_FailingBody(b"x" * 300_000))
        return {"Body": self.bodies[-1]}


def test_s3_transfer_broken_mid_body_is_unavailable() -> None:
    """A download that breaks off after GetObject answered is BackendUnavailable too (and the
    body is closed), not a botocore error leaking out."""
    client = _DroppingClient()
    store = S3BlobStore("bucket", client=client)
    digest, _ = blob(1)
    with pytest.raises(BackendUnavailable):
        store.read(digest)
    assert all(body.closed for body in client.bodies)


# --- the PostgreSQL test cluster --------------------------------------------------------------


def _postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return str(connection.execute(sa.text("select version()")).scalar_one())
    finally:
        engine.dispose()


def test_postgres_url_fixture(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    assert "PostgreSQL 15" in _postgres_version(postgres_url)


def test_ci_postgres_start_and_stop(tmp_path: Path) -> None:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="pfx-postgres-test-"))
    try:
        url = start_postgres(directory)
        assert url == (directory / "url").read_text().strip()
        assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert url.endswith("/pfx_test")
        assert "PostgreSQL 15" in _postgres_version(url)
    finally:
        stop_postgres(directory)
    assert not directory.exists()
