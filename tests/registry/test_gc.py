"""Garbage collection removes only blobs that no version references, after the grace period,
from both the index and the store — never a referenced blob or a fresh upload — and the temp
files of blob writes cut off by a crash, after the same grace."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import timedelta

import pytest
from test_api import World, concept_bytes, world  # noqa: F401 — the fixture

from pfx_registry.cli import main
from pfx_registry.gc import collect_garbage


def test_collects_deleted_and_abandoned_blobs_only(world: World) -> None:
    alice = world.user("alice")
    registry = world.client.app.state.registry
    kept, deleted, abandoned = concept_bytes(30), concept_bytes(31), concept_bytes(32)
    world.push(alice, "alice/kept:1", kept)
    world.push(alice, "alice/gone:1", deleted)
    abandoned_digest = world.upload(abandoned, alice)  # uploaded, never published
    stray = b"bytes a crashed push stored but never indexed"
    stray_digest = "sha256:" + hashlib.sha256(stray).hexdigest()
    registry.blobs.put(stray_digest, stray)
    assert (
        world.client.delete("/v1/concepts/alice/gone", headers=world.auth(alice)).status_code == 204
    )
    digest = {
        name: "sha256:" + hashlib.sha256(data).hexdigest()
        for name, data in (("kept", kept), ("gone", deleted))
    }

    fresh = collect_garbage(registry, grace=timedelta(hours=1))
    assert fresh.unreferenced == () and fresh.unindexed == ()  # everything is younger than 1 h

    dry = collect_garbage(registry, grace=timedelta(0), dry_run=True)
    assert set(dry.unreferenced) == {digest["gone"], abandoned_digest}
    assert registry.blobs.size(digest["gone"]) is not None

    report = collect_garbage(registry, grace=timedelta(0))
    assert set(report.unreferenced) == {digest["gone"], abandoned_digest}
    assert report.unindexed == (stray_digest,)
    for gone in (digest["gone"], abandoned_digest, stray_digest):
        assert registry.blobs.size(gone) is None
    assert registry.blobs.size(digest["kept"]) == len(kept)
    pulled = world.client.get("/v1/concepts/alice/kept/versions/1/file", headers=world.auth(alice))
    assert pulled.content == kept
    # the abandoned blob can be pushed again afterwards
    assert world.push(alice, "alice/again:1", abandoned).status_code == 201


@pytest.mark.parametrize("world", ["folder+sqlite", "s3+sqlite"], indirect=True)
def test_collects_stale_uploads_after_the_grace(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pfx-registry gc`` removes and lists the folder store's temp files older than the grace
    (what a killed write leaves in ``<data>/uploads/``), never a younger one that may be a write
    in flight; S3 has none to collect."""
    registry = world.client.app.state.registry
    alice = world.user("alice")
    world.push(alice, "alice/kept:1", concept_bytes(33))
    uploads = world.settings.data_dir / "uploads"
    stale = []
    if world.settings.s3_bucket is None:
        two_hours_ago = time.time() - 2 * 3600
        for name in ("tmp-killed-1", "tmp-killed-2"):
            (uploads / name).write_bytes(b"half a concept")
            os.utime(uploads / name, (two_hours_ago, two_hours_ago))
        (uploads / "tmp-in-flight").write_bytes(b"being written")
        stale = ["tmp-killed-1", "tmp-killed-2"]
        monkeypatch.delenv("PFX_S3_BUCKET", raising=False)
    else:
        monkeypatch.setenv("PFX_S3_BUCKET", world.settings.s3_bucket)
        monkeypatch.setenv("PFX_S3_ENDPOINT", str(world.settings.s3_endpoint))
    monkeypatch.delenv("PFX_DATABASE_URL", raising=False)

    dry = collect_garbage(registry, grace=timedelta(hours=1), dry_run=True)
    assert dry.stale_uploads == tuple(stale)
    if stale:
        assert (uploads / stale[0]).exists()
    with pytest.raises(SystemExit) as exited:
        main(["gc", "--data", str(world.settings.data_dir), "--grace-hours", "1"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0]
        == f"deleted 0 unreferenced and 0 unindexed blobs, and {len(stale)} stale uploads"
    )
    assert printed[1:] == [f"  uploads/{name}" for name in stale]
    if stale:
        assert sorted(path.name for path in uploads.iterdir()) == ["tmp-in-flight"]
    assert collect_garbage(registry, grace=timedelta(hours=1)).stale_uploads == ()
    kept = world.client.get("/v1/concepts/alice/kept/versions/1/file", headers=world.auth(alice))
    assert kept.content == concept_bytes(33)
