"""`pfx-registry serve` starts a real uvicorn server on embedded defaults (a folder and SQLite):
first start says how to get an admin token, and a push/pull works over real HTTP."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from backends import free_port
from concept_factory import VECTORS

COMMAND = str(Path(sys.executable).with_name("pfx-registry"))


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, str]]:
    data = tmp_path_factory.mktemp("registry")
    port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [COMMAND, "serve", *address, "--data", str(data), "--workers", str(request.param)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    banner = ""
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"pfx-registry did not start:\n{output}")
            time.sleep(0.1)
        assert process.stdout is not None
        banner = "".join(process.stdout.readline() for _ in range(4))
        yield url, data, banner
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_first_start_says_how_to_get_an_admin_token(server) -> None:
    _, data, banner = server
    assert "pfx-registry admin create-token" in banner
    assert "password" not in banner.lower()
    assert (data / "index.db").exists()


def test_ready_and_push_pull_over_http(server) -> None:
    url, data, _ = server
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    token = subprocess.run(
        [COMMAND, "admin", "create-token", "--data", str(data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert token.startswith("pfx_")
    headers = {"Authorization": f"Bearer {token}"}
    payload = (VECTORS / "sdxl-fp16.perfusion.safetensors").read_bytes()
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert (
        httpx.put(f"{url}/v1/blobs/{digest}", content=payload, headers=headers).status_code == 201
    )
    published = httpx.put(
        f"{url}/v1/concepts/admin/teddy/versions/1.0", json={"digest": digest}, headers=headers
    )
    assert published.status_code == 201
    pulled = httpx.get(f"{url}/v1/concepts/admin/teddy/versions/latest/file", headers=headers)
    assert pulled.content == payload
    assert httpx.get(f"{url}/v1/concepts/admin/teddy").status_code == 404  # private by default

    # Downloads answered by any worker process all reach the shared counter (each process
    # writes its own counts within a second).
    for _ in range(20):
        with httpx.Client() as fresh:  # a new connection each time: the kernel spreads them
            got = fresh.get(f"{url}/v1/concepts/admin/teddy/versions/1.0/file", headers=headers)
            assert got.status_code == 200
    deadline = time.monotonic() + 10
    downloads = 0
    while downloads != 21 and time.monotonic() < deadline:
        time.sleep(0.2)
        downloads = httpx.get(f"{url}/v1/concepts/admin/teddy", headers=headers).json()["downloads"]
    assert downloads == 21
