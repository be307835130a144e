"""`pfx-registry serve` starts a real uvicorn server; the validation endpoint reads the file
itself and answers the spec's error codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import VECTORS

import perfusion_format as pf


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    port = _free_port()
    command = Path(sys.executable).with_name("pfx-registry")
    process = subprocess.Popen(
        [str(command), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"pfx-registry did not start:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_health(registry_url: str) -> None:
    assert httpx.get(f"{registry_url}/healthz").json()["status"] == "ok"


def test_validate_describes_what_the_server_read(registry_url: str) -> None:
    data = (VECTORS / "sdxl-fp16.perfusion.safetensors").read_bytes()
    response = httpx.post(f"{registry_url}/v1/concepts/validate", content=data)
    assert response.status_code == 200
    body = response.json()
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["file"] == "sdxl-fp16.perfusion.safetensors")
    assert body["digest"] == entry["content_digest"]
    assert body["weights_digest"] == entry["weights_digest"]
    assert body["signers"] == entry["signers"]
    assert (body["family"], body["dtype"], body["size"]) == ("sdxl", "F16", entry["size"])
    assert body["token"] == "<teddy>" and body["media_type"] == pf.MEDIA_TYPE


@pytest.mark.parametrize(
    ("file", "code"),
    [
        ("tampered-tensor.perfusion.safetensors", "SIGNATURE_INVALID"),
        ("truncated-length.bin", "TRUNCATED"),
    ],
)
def test_validate_refuses_with_the_spec_code(registry_url: str, file: str, code: str) -> None:
    data = (VECTORS / "invalid" / file).read_bytes()
    response = httpx.post(f"{registry_url}/v1/concepts/validate", content=data)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def test_oversize_body_is_413(registry_url: str) -> None:
    response = httpx.post(
        f"{registry_url}/v1/concepts/validate", content=bytes(pf.MAX_FILE_SIZE + 1)
    )
    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "FILE_TOO_LARGE", "message": f"the body exceeds {pf.MAX_FILE_SIZE} bytes"}
    }
