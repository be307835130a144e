"""`pfx-registry serve` starts a real uvicorn server on embedded defaults (a folder and SQLite):
first start says how to get an admin token, and a push/pull works over real HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
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
) -> Iterator[tuple[str, Path, str, list[str]]]:
    """A ``pfx-registry serve`` with 1 or 2 workers: its address, data folder, start-up banner
    and the lines it writes after the banner (stdout and stderr), collected as they come."""
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
        # generous: worker processes import everything anew, on a loaded 2-core machine
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()  # reading the output of a live process would block
                output = process.communicate()[0]
                pytest.fail(f"pfx-registry did not start:\n{output}")
            time.sleep(0.1)
        assert process.stdout is not None
        banner = "".join(process.stdout.readline() for _ in range(4))
        output: list[str] = []
        threading.Thread(target=output.extend, args=(process.stdout,), daemon=True).start()
        yield url, data, banner, output
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_first_start_says_how_to_get_an_admin_token(server) -> None:
    _, data, banner, _ = server
    assert "pfx-registry admin create-token" in banner
    assert "password" not in banner.lower()
    assert (data / "index.db").exists()


def test_ready_and_push_pull_over_http(server) -> None:
    url, data, _, _ = server
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


def test_one_set_of_metrics_and_an_access_log_on_stdout(server) -> None:
    """Whichever worker answers a scrape, it counts the requests of all (prometheus_client's
    multiprocess mode under ``--workers 2``); every request is one JSON line on stdout."""
    url, _, _, output = server
    for number in range(17):
        with httpx.Client() as fresh:  # a new connection each time: the kernel spreads them
            answer = fresh.get(f"{url}/v1/whoami", headers={"X-Request-ID": f"probe-{number}"})
            assert answer.status_code == 200 and answer.headers["x-request-id"] == f"probe-{number}"
    sample = 'pfx_requests_total{method="GET",route="/v1/whoami",status="200"} 17.0'
    for _ in range(6):
        with httpx.Client() as fresh:
            assert sample in fresh.get(f"{url}/metrics").text
    deadline = time.monotonic() + 10
    logged: dict[str, dict[str, object]] = {}
    while len(logged) < 17 and time.monotonic() < deadline:
        for line in list(output):
            if line.startswith("{") and '"probe-' in line:
                entry = json.loads(line)
                logged[str(entry["request_id"])] = entry
        time.sleep(0.1)
    assert sorted(logged) == sorted(f"probe-{number}" for number in range(17))
    entry = logged["probe-0"]
    assert entry["route"] == "/v1/whoami" and entry["status"] == 200 and entry["bytes"] > 0
