"""A network partition between the registry and PostgreSQL: its connections stay open but nothing
gets through. Every request that needs the index then answers 503 UNAVAILABLE with Retry-After
within the spec's bounds (§7.2 "Timeouts": 10 s, /readyz 2 s), and the registry works
again once the partition heals.

The registry reaches the session's cluster through a :class:`~backends.TcpProxy` of this test's
own, and the partition is made on that proxy's port only, in one of two ways:

- ``drop`` — a firewall rule (nftables, as root) drops every packet to or from the port: sent
  data is never acknowledged, handshakes never complete (TCP_USER_TIMEOUT and connect_timeout
  end the wait);
- ``blackhole`` — the proxy stops forwarding and accepting while the kernel still acknowledges
  everything: a peer that accepts and never answers (only the client-side round-trip deadline and
  connect_timeout end the wait).

The blob store gets the blackhole too (``test_blob_store_blackhole``): an S3 service behind the
proxy that stops answering makes downloads and uploads 503 within the same bound.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from backends import S3Server, TcpProxy, fresh_postgres_database
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from test_api import World, concept_bytes, migrate_and_add_administrator

import perfusion_format as pf
from pfx_registry.app import create_app
from pfx_registry.settings import Settings

#: The spec's bounds, with a little room for a loaded machine's scheduling.
ROUTE_BOUND = 10.0
READY_BOUND = 2.5
#: How long a healed registry may take to answer 200 again.
RECOVERY = 20.0


@dataclass
class Partition:
    """A way to cut the registry off from its index and to heal it again."""

    proxy: TcpProxy
    cut: Callable[[], None]
    heal: Callable[[], None]


def _nft(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", *arguments], capture_output=True, text=True, timeout=10, check=False
    )


def _can_drop_packets() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("nft") is not None
        and _nft("list", "tables").returncode == 0
    )


def _dropping(port: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """Cut and heal functions that add and remove an nftables table dropping every TCP packet to or
    from ``port`` (loopback traffic passes the output hook once in each direction)."""
    table = f"pfx_partition_{port}"

    def cut() -> None:
        script = (
            f"add table inet {table}\n"
            f"add chain inet {table} output {{ type filter hook output priority 0 ; }}\n"
            f"add rule inet {table} output tcp dport {port} drop\n"
            f"add rule inet {table} output tcp sport {port} drop\n"
        )
        result = subprocess.run(
            ["nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def heal() -> None:
        _nft("delete", "table", "inet", table)  # absent when cut failed: nothing to remove

    return cut, heal


@pytest.fixture(params=["drop", "blackhole"])
def partition(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[Partition]:
    """A proxy to the session's cluster, and the partition of the proxy's port."""
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    if request.param == "drop":
        if not _can_drop_packets():
            proxy.close()
            pytest.skip("dropping packets needs root and a working nft")
        cut, heal = _dropping(proxy.port)
    else:
        cut, heal = proxy.blackhole, proxy.heal
    try:
        yield Partition(proxy, cut, heal)
    finally:
        heal()
        proxy.close()


@pytest.fixture
def proxied_world(partition: Partition, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    """A registry with blobs in a folder and its index reached through the partition's proxy; no
    read cache, so every request asks the index."""
    proxied = make_url(fresh_postgres_database(postgres_url)).set(
        host="127.0.0.1", port=partition.proxy.port
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=proxied.render_as_string(hide_password=False),
        rate_limit_token=0,
        rate_limit_address=0,
        read_cache_seconds=0,
    )
    app = create_app(settings)
    engine = app.state.registry.engine
    admin = migrate_and_add_administrator(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield World(client, settings, admin)
    engine.dispose()


def _timed(client: TestClient, bound: float, method: str, url: str, **kwargs: object) -> float:
    """Make a request that must answer 503 UNAVAILABLE with Retry-After within ``bound`` seconds;
    the seconds it took."""
    start = time.monotonic()
    response: httpx.Response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    elapsed = time.monotonic() - start
    what = f"{method} {url}"
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "UNAVAILABLE", what
    assert int(response.headers["Retry-After"]) >= 1, what
    assert elapsed <= bound, f"{what} took {elapsed:.1f} s (bound {bound} s)"
    return elapsed


def test_partition(partition: Partition, proxied_world: World) -> None:
    """A read, a write and /readyz are prompt 503s while the index is cut off; repeated probes
    reuse the readiness check in flight; after the heal everything answers 200 again."""
    world = proxied_world
    client = world.client
    alice = world.user("alice")
    auth = world.auth(alice)
    assert world.push(alice, "alice/c:1", concept_bytes(61), private=False).status_code == 201
    pending = world.upload(concept_bytes(62), alice)
    publish = {"json": {"digest": pending}, "headers": auth}
    assert client.get("/readyz").status_code == 200

    partition.cut()
    try:
        took = {
            "read": _timed(client, ROUTE_BOUND, "GET", "/v1/concepts/alice/c"),
            "write": _timed(
                client, ROUTE_BOUND, "PUT", "/v1/concepts/alice/c/versions/2", **publish
            ),
        }
        for n in range(3):
            took[f"readyz {n}"] = _timed(client, READY_BOUND, "GET", "/readyz")
        checks = [t for t in threading.enumerate() if t.name == "pfx-readyz"]
        assert len(checks) <= 1, f"{len(checks)} readiness checks in flight"
    finally:
        partition.heal()
    print(" ".join(f"{what}={seconds:.2f}s" for what, seconds in took.items()))

    deadline = time.monotonic() + RECOVERY
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not recover"
        time.sleep(0.2)
    assert client.get("/v1/concepts/alice/c").status_code == 200
    written = client.put("/v1/concepts/alice/c/versions/2", **publish)  # type: ignore[arg-type]
    assert written.status_code == 201, written.text


def test_blob_store_blackhole(s3_server: S3Server, tmp_path: Path) -> None:
    """The S3 service accepts connections and never answers: a download whose bytes are not in
    the blob cache and an upload answer 503 UNAVAILABLE within the bound, /readyz within its own,
    and both work again after the heal."""
    bucket = s3_server.create_bucket()
    proxy = TcpProxy(("127.0.0.1", s3_server.port))
    settings = Settings(
        data_dir=tmp_path,
        s3_bucket=bucket,
        s3_endpoint=f"http://127.0.0.1:{proxy.port}",
        blob_cache_bytes=0,  # every download reads the store
        rate_limit_token=0,
        rate_limit_address=0,
    )
    app = create_app(settings)
    admin = migrate_and_add_administrator(app.state.registry.engine)
    headers = {"Authorization": f"Bearer {admin}"}
    data, other = concept_bytes(63), concept_bytes(64)
    digest, other_digest = (pf.content_digest(bytes_) for bytes_ in (data, other))
    try:
        with TestClient(app) as client:
            assert (
                client.put(f"/v1/blobs/{digest}", content=data, headers=headers).status_code == 201
            )
            proxy.blackhole()
            try:
                _timed(client, ROUTE_BOUND, "GET", f"/v1/blobs/{digest}", headers=headers)
                _timed(
                    client,
                    ROUTE_BOUND,
                    "PUT",
                    f"/v1/blobs/{other_digest}",
                    content=other,
                    headers=headers,
                )
                _timed(client, READY_BOUND, "GET", "/readyz")
            finally:
                proxy.heal()
            deadline = time.monotonic() + RECOVERY
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "/readyz did not recover"
                time.sleep(0.2)
            assert client.get(f"/v1/blobs/{digest}", headers=headers).content == data
    finally:
        proxy.close()
