"""pfx.cache: the content-addressed blob store, its refs, listing, verification and pruning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from concept_factory import build_concept

import perfusion_format as pf
from pfx.cache import Cache, registry_slug
from pfx.errors import ClientError, ErrorCode

REGISTRY = "http://127.0.0.1:8080"
DAY = 24 * 3600


def _blob(seed: int) -> tuple[str, bytes]:
    """A real concept file's bytes and their digest."""
    data = pf.dumps(build_concept(seed=seed))
    return pf.content_digest(data), data


BLOB = _blob(0)
OTHER = _blob(1)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def _blob_path(cache: Cache, digest: str) -> Path:
    return cache.root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir())


def _age(path: Path, seconds: float) -> None:
    """Set the file's modification time ``seconds`` into the past (without following links)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _assert_code(error: pytest.ExceptionInfo[ClientError], code: ErrorCode) -> None:
    assert error.value.code == code
    assert "\n" not in error.value.message


# -- blobs ---------------------------------------------------------------------------------------


def test_default_root_is_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFX_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert Cache().root == tmp_path / "elsewhere"


def test_store_then_get_round_trip(cache: Cache) -> None:
    digest, data = BLOB
    assert cache.get(digest) is None
    path = cache.store(digest, data)
    assert path == _blob_path(cache, digest)
    assert path.read_bytes() == data
    assert cache.get(digest) == path
    assert cache.store(digest, data) == path  # storing again is a no-op
    assert _files(cache.root) == [path]
    assert cache.corrupted == []
    assert pf.loads(path.read_bytes()).name == "Teddy"


def test_digest_mismatch_stores_nothing(cache: Cache) -> None:
    digest, _ = BLOB
    with pytest.raises(ClientError) as caught:
        cache.store(digest, OTHER[1])
    _assert_code(caught, ErrorCode.DIGEST_MISMATCH)
    assert OTHER[0] in caught.value.message
    assert _files(cache.root) == []
    assert cache.get(digest) is None


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "sha256:../../etc/passwd", ""],
)
def test_malformed_digest_is_refused(cache: Cache, digest: str) -> None:
    for call in (lambda: cache.get(digest), lambda: cache.store(digest, b"")):
        with pytest.raises(ClientError) as caught:
            call()
        _assert_code(caught, ErrorCode.REFERENCE_INVALID)


def test_corrupted_blob_is_removed_and_reported(cache: Cache) -> None:
    digest, data = BLOB
    path = cache.store(digest, data)
    _corrupt(path)
    assert cache.get(digest) is None
    assert not path.exists()
    assert cache.corrupted == [digest]
    assert cache.store(digest, data) == path  # the caller fetches it again
    assert cache.get(digest) == path


def test_store_replaces_a_corrupt_copy(cache: Cache) -> None:
    digest, data = BLOB
    _corrupt(cache.store(digest, data))
    assert cache.store(digest, data).read_bytes() == data
    assert cache.corrupted == [digest]


def test_a_link_in_place_of_a_blob_is_not_followed(cache: Cache, tmp_path: Path) -> None:
    digest, data = BLOB
    outside = tmp_path / "outside"
    outside.write_bytes(data)  # even the right bytes: the cache never hands out a link
    path = _blob_path(cache, digest)
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)
    assert cache.verify() == [(digest, False)]
    assert cache.get(digest) is None
    assert not path.is_symlink()
    assert outside.read_bytes() == data
    assert cache.corrupted == [digest]


def test_a_linked_folder_is_refused(cache: Cache, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cache.root.mkdir()
    (cache.root / "blobs").symlink_to(outside)
    (cache.root / "refs").symlink_to(outside)
    digest, data = BLOB
    calls = [
        lambda: cache.store(digest, data),
        lambda: cache.get(digest),
        lambda: cache.set_ref(REGISTRY, "acme", "teddy", "v1", digest),
        lambda: cache.ref(REGISTRY, "acme", "teddy", "v1"),
        cache.entries,
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        _assert_code(caught, ErrorCode.CACHE_CORRUPT)
    assert list(outside.iterdir()) == []


_STORE = """
import sys, time
from pathlib import Path
from pfx.cache import Cache
root, digest, data_file, ready, go = sys.argv[1:]
data = Path(data_file).read_bytes()
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
print(Cache(Path(root)).store(digest, data))
"""


def test_processes_storing_the_same_blob_at_once_all_succeed(cache: Cache, tmp_path: Path) -> None:
    """Six processes store one blob at the same moment: each marks itself ready (imports done,
    data read) and waits for ``go``, which is made once all six are ready, however slowly a busy
    machine starts them (at most a minute)."""
    digest, data = BLOB
    data_file, go = tmp_path / "data", tmp_path / "go"
    data_file.write_bytes(data)
    ready = [tmp_path / f"ready-{index}" for index in range(6)]
    arguments = [sys.executable, "-c", _STORE, str(cache.root), digest, str(data_file)]
    processes = [
        subprocess.Popen(
            [*arguments, str(mark), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mark in ready
    ]
    deadline = time.monotonic() + 60
    while not all(mark.exists() for mark in ready) and time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            break  # one failed before it was ready: its output is asserted below
        time.sleep(0.01)
    started = [mark.exists() for mark in ready]
    go.touch()
    results = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, results
    assert all(started), results  # all six were waiting when go was made
    expected = _blob_path(cache, digest)
    assert {stdout.strip() for stdout, _ in results} == {str(expected)}
    assert expected.read_bytes() == data
    assert _files(cache.root) == [expected]  # no temporary file left behind
    assert cache.verify() == [(digest, True)]


# -- refs ----------------------------------------------------------------------------------------


def test_set_ref_then_ref(cache: Cache) -> None:
    digest = BLOB[0]
    assert cache.ref(REGISTRY, "acme", "teddy", "v1") is None
    cache.set_ref(REGISTRY, "acme", "teddy", "v1", digest)
    assert cache.ref(REGISTRY, "acme", "teddy", "v1") == digest
    path = cache.root / "refs" / "127.0.0.1_8080" / "acme" / "teddy" / "v1"
    assert path.read_text() == f"{digest}\n"
    cache.set_ref(REGISTRY, "acme", "teddy", "v1", OTHER[0])  # a tag moves
    assert cache.ref(REGISTRY, "acme", "teddy", "v1") == OTHER[0]
    assert cache.ref("http://127.0.0.1:9090", "acme", "teddy", "v1") is None
    assert cache.ref(REGISTRY, "acme", "teddy", "v2") is None


def test_a_ref_file_without_a_digest_is_removed(cache: Cache) -> None:
    cache.set_ref(REGISTRY, "acme", "teddy", "latest", BLOB[0])
    path = cache.root / "refs" / "127.0.0.1_8080" / "acme" / "teddy" / "latest"
    path.write_text("sha256:not-hex\n")
    assert cache.ref(REGISTRY, "acme", "teddy", "latest") is None
    assert not path.exists()


@pytest.mark.parametrize(
    ("namespace", "name", "ref"),
    [
        ("..", "teddy", "v1"),
        ("acme", "..", "v1"),
        ("acme", "teddy", ".."),
        ("acme/..", "teddy", "v1"),
        ("acme", "teddy", "../../../../escape"),
        ("acme", "teddy", "/etc/passwd"),
        ("acme", "teddy", ".hidden"),
        ("acme", "teddy", ""),
        ("", "teddy", "v1"),
        ("Acme", "teddy", "v1"),
        ("acme", "teddy", "v1\x00"),
        ("acme", "teddy", "x" * 129),
    ],
)
def test_refs_that_could_escape_are_refused(
    cache: Cache, tmp_path: Path, namespace: str, name: str, ref: str
) -> None:
    for call in (
        lambda: cache.set_ref(REGISTRY, namespace, name, ref, BLOB[0]),
        lambda: cache.ref(REGISTRY, namespace, name, ref),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        _assert_code(caught, ErrorCode.REFERENCE_INVALID)
    assert sorted(path.name for path in tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("registry", "slug"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1_8080"),
        ("https://Registry.Example.com/", "registry.example.com"),
        ("https://registry.example.com:443/v1", "registry.example.com"),
        ("http://registry.example.com:443", "registry.example.com_443"),
        ("http://user:secret@host:81", "host_81"),
        ("http://[::1]:8080", "__1_8080"),
    ],
)
def test_registry_slug(registry: str, slug: str) -> None:
    assert registry_slug(registry) == slug


@pytest.mark.parametrize(
    "registry", ["127.0.0.1:8080", "ftp://host", "http://", "http://..", "http://host:99999", ""]
)
def test_registry_slug_refuses_what_is_not_a_registry_url(cache: Cache, registry: str) -> None:
    with pytest.raises(ClientError) as caught:
        cache.set_ref(registry, "acme", "teddy", "v1", BLOB[0])
    _assert_code(caught, ErrorCode.REFERENCE_INVALID)


# -- listing, verification, pruning --------------------------------------------------------------


def _populate(cache: Cache) -> tuple[Path, Path]:
    """BLOB referenced by acme/teddy:v1 and :latest; OTHER unreferenced and used earlier."""
    blob = cache.store(*BLOB)
    other = cache.store(*OTHER)
    for ref in ("v1", "latest"):
        cache.set_ref(REGISTRY, "acme", "teddy", ref, BLOB[0])
    _age(other, 60)
    return blob, other


def test_entries_list_blobs_with_their_refs_most_recent_first(cache: Cache) -> None:
    assert cache.entries() == []
    blob, other = _populate(cache)
    stray_folder = blob.parent
    (stray_folder / f".{BLOB[0][7:]}.0123.tmp").write_bytes(b"half")  # a writer's temp file
    (stray_folder / "README").write_text("not a blob")
    entries = cache.entries()
    assert [entry.digest for entry in entries] == [BLOB[0], OTHER[0]]
    assert [entry.path for entry in entries] == [blob, other]
    assert [entry.size for entry in entries] == [len(BLOB[1]), len(OTHER[1])]
    assert entries[0].refs == ("127.0.0.1_8080/acme/teddy:latest", "127.0.0.1_8080/acme/teddy:v1")
    assert entries[1].refs == ()
    assert entries[0].last_used > entries[1].last_used
    assert cache.size() == len(BLOB[1]) + len(OTHER[1])


def test_verify_reports_and_does_not_remove(cache: Cache) -> None:
    _, other = _populate(cache)
    _corrupt(other)
    expected = sorted([(BLOB[0], True), (OTHER[0], False)])
    assert cache.verify() == expected
    assert other.exists()
    assert cache.verify() == expected


def test_prune_without_age_removes_unreferenced_and_corrupt_blobs(cache: Cache) -> None:
    blob, other = _populate(cache)
    cache.set_ref(REGISTRY, "acme", "gone", "v1", "sha256:" + "0" * 64)  # a blob never cached
    report = cache.prune()
    assert report.blobs == (OTHER[0],)
    assert report.freed_bytes == len(OTHER[1])
    assert report.refs == ("127.0.0.1_8080/acme/gone:v1",)
    assert blob.exists()
    assert not other.exists()
    assert cache.ref(REGISTRY, "acme", "teddy", "v1") == BLOB[0]

    _corrupt(blob)
    report = cache.prune()
    assert report.blobs == (BLOB[0],)
    assert report.refs == ("127.0.0.1_8080/acme/teddy:latest", "127.0.0.1_8080/acme/teddy:v1")
    assert cache.corrupted == [BLOB[0]]
    assert _files(cache.root) == []


def test_prune_by_age_removes_blobs_unused_that_long_and_their_refs(cache: Cache) -> None:
    blob, other = _populate(cache)
    _age(blob, 3 * DAY)
    _age(other, 2 * 3600)
    report = cache.prune(older_than=timedelta(days=1))
    assert report.blobs == (BLOB[0],)  # referenced, but unused for three days
    assert report.refs == ("127.0.0.1_8080/acme/teddy:latest", "127.0.0.1_8080/acme/teddy:v1")
    assert other.exists()  # unreferenced, but used two hours ago
    assert cache.ref(REGISTRY, "acme", "teddy", "v1") is None
    assert cache.prune(older_than=timedelta(hours=1)).blobs == (OTHER[0],)


def test_get_marks_a_blob_as_used(cache: Cache) -> None:
    blob, _ = _populate(cache)
    _age(blob, 3 * DAY)
    assert cache.get(BLOB[0]) == blob
    assert cache.prune(older_than=timedelta(days=1)).blobs == ()
    assert blob.exists()


def test_prune_removes_stale_temporary_files_only(cache: Cache) -> None:
    blob, _ = _populate(cache)
    stale = blob.parent / f".{blob.name}.aaaa.tmp"
    fresh = blob.parent / f".{blob.name}.bbbb.tmp"
    stale_ref = cache.root / "refs" / "127.0.0.1_8080" / "acme" / "teddy" / ".v1.cccc.tmp"
    for path in (stale, fresh, stale_ref):
        path.write_bytes(b"partial")
    _age(stale, 2 * 3600)
    _age(stale_ref, 2 * 3600)
    report = cache.prune()
    assert report.temporary_files == 2
    assert not stale.exists()
    assert not stale_ref.exists()
    assert fresh.exists()  # another process may be writing it right now


def test_prune_removes_links_but_not_their_targets(cache: Cache, tmp_path: Path) -> None:
    _populate(cache)
    outside = tmp_path / "outside"
    outside.write_bytes(OTHER[1])
    link = _blob_path(cache, OTHER[0])
    link.unlink()
    link.symlink_to(outside)
    assert cache.prune().blobs == (OTHER[0],)
    assert not link.is_symlink()
    assert outside.read_bytes() == OTHER[1]
