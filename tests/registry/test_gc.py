"""Garbage collection removes only blobs that no version references, after the grace period,
from both the index and the store — never a referenced blob or a fresh upload."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from test_api import World, concept_bytes, world  # noqa: F401 — the fixture

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
