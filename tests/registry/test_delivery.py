"""Download answers (spec/registry-api.md §4.1) from the registry itself: ETag, Cache-Control,
304, Range, signed URLs and X-Accel-Redirect. tests/registry/test_nginx.py checks the same through
a real nginx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api import World, concept_bytes, open_world

from pfx_registry import signing

SECRET = "a-test-secret-of-enough-length"


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with open_world(request, tmp_path, "folder+sqlite") as opened:
        yield opened


def _settings(world: World, **changes: object) -> None:
    registry = world.client.app.state.registry  # type: ignore[attr-defined]
    registry.settings = registry.settings.model_copy(update=changes)


def test_public_blob_carries_validators_and_answers_304_and_ranges(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(70)
    world.push(alice, "alice/open:1", data, private=False)
    digest = world.upload(data, alice)
    url = f"/v1/blobs/{digest}"
    whole = world.client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"] == f'"{digest}"'
    assert whole.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["x-accel-expires"] == "300"
    assert world.client.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    assert world.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    part = world.client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = world.client.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    beyond = world.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"
    backwards = world.client.get(url, headers={"Range": "bytes=9-3"})
    assert backwards.status_code == 200 and backwards.content == data
    other_bytes = world.client.get(url, headers={"Range": "bytes=0-3", "If-Range": '"old"'})
    assert other_bytes.status_code == 200 and other_bytes.content == data


def test_private_file_is_private_and_a_304_is_no_download(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(71)
    world.push(alice, "alice/c:1", data)
    url = "/v1/concepts/alice/c/versions/1/file"
    first = world.client.get(url, headers=world.auth(alice))
    assert first.status_code == 200 and first.content == data
    assert first.headers["cache-control"] == "private, no-cache"  # named by version, not digest
    assert "x-accel-expires" not in first.headers
    etag = first.headers["etag"]
    again = world.client.get(url, headers={**world.auth(alice), "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert world.client.get(url, headers={"If-None-Match": etag}).status_code == 404  # outsider
    by_digest = world.client.get(
        f"/v1/concepts/alice/c/versions/{etag.strip(chr(34))}/file", headers=world.auth(alice)
    )
    assert by_digest.headers["cache-control"] == "private, max-age=31536000, immutable"
    counted = world.client.get("/v1/concepts/alice/c", headers=world.auth(alice)).json()
    assert counted["downloads"] == 2  # the 304 is not counted


def test_only_public_resolves_are_marked_for_the_edge_cache(world: World) -> None:
    alice = world.user("alice")
    world.push(alice, "alice/open:1", concept_bytes(72), private=False)
    world.push(alice, "alice/closed:1", concept_bytes(73))
    public = world.client.get("/v1/concepts/alice/open/versions/1")
    assert public.status_code == 200 and public.headers["x-accel-expires"] == "1"
    assert "cache-control" not in public.headers  # clients ask again; the edge keeps it 1 s
    insider = world.client.get("/v1/concepts/alice/closed/versions/1", headers=world.auth(alice))
    assert insider.status_code == 200 and "x-accel-expires" not in insider.headers
    assert insider.headers["cache-control"] == "private, no-cache"
    outsider = world.client.get("/v1/concepts/alice/closed/versions/1")
    assert outsider.status_code == 404 and "x-accel-expires" not in outsider.headers
    missing = world.client.get("/v1/concepts/alice/open/versions/9")
    assert missing.status_code == 404 and "x-accel-expires" not in missing.headers
    _settings(world, edge_resolve_seconds=0)
    off = world.client.get("/v1/concepts/alice/open/versions/1")
    assert "x-accel-expires" not in off.headers
    assert off.headers["cache-control"] == "private, no-cache"


def test_private_downloads_redirect_to_a_signed_url_that_expires(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(72)
    world.push(alice, "alice/c:1", data)
    digest = world.upload(data, alice)
    _settings(world, signed_url_secret=SECRET, signed_url_seconds=30)
    answer = world.client.get(
        "/v1/concepts/alice/c/versions/1/file", headers=world.auth(alice), follow_redirects=False
    )
    assert answer.status_code == 307
    location = answer.headers["location"]
    key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}"
    assert location.startswith(f"/v1/signed/{key}?expires=")
    followed = world.client.get(location)  # no token: the URL is the credential
    assert followed.status_code == 200 and followed.content == data
    ranged = world.client.get(location, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == data[:10]
    assert world.client.get(location.replace("md5=", "md5=x")).status_code == 403
    past = time.time() - 120
    expired = world.client.get(signing.signed_url(key, SECRET, 60, now=past))
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "URL_EXPIRED"
    assert world.client.get(signing.signed_url(key, "another-secret-value", 60)).status_code == 403
    outsider = world.client.get(f"/v1/blobs/{digest}", follow_redirects=False)
    assert outsider.status_code == 404


def test_accel_redirect_hands_the_file_to_the_front_server(world: World) -> None:
    alice = world.user("alice")
    data = concept_bytes(73)
    world.push(alice, "alice/c:1", data)
    digest = world.upload(data, alice)
    _settings(world, accel_redirect="/_pfx/store/")
    answer = world.client.get("/v1/concepts/alice/c/versions/1/file", headers=world.auth(alice))
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["x-accel-redirect"] == (
        f"/_pfx/store/blobs/sha256/{digest[7:9]}/{digest[7:]}"
    )
    assert answer.headers["etag"] == f'"{digest}"'


def test_signatures_match_nginx_secure_link() -> None:
    # nginx: secure_link_md5 "$secure_link_expires$uri secret" → base64url(md5), no padding
    assert signing.sign("/v1/signed/x", 2147483647, "secret") == "LD31uD_yjkortiTHE3879g"
    assert signing.check("/v1/signed/x", "2147483647", "LD31uD_yjkortiTHE3879g", "secret") == "ok"
