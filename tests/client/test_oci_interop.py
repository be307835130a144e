"""The pfx registry's /v2/ with OCI clients nobody here wrote, on both backends of
``registry_server`` (folder+SQLite; S3+PostgreSQL, where blob downloads redirect to S3): the ORAS
Python SDK pushes a concept that ``pfx pull`` then verifies, and pulls what ``pfx push`` sent;
skopeo inspects, lists and copies concepts between the pfx registry and the CNCF distribution
registry (Debian's ``docker-registry``) in both directions, digests preserved."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runners import (  # noqa: F401 — fixtures
    KeyPair,
    Runner,
    alice,
    cli,
    concept_file,
    pfx_home,
    signer,
)
from concept_factory import VECTORS
from oci_registries import Distribution, require_skopeo
from registry_server import Account, RegistryServer, unique_name

import perfusion_format as pf

pytestmark = pytest.mark.usefixtures("pfx_home")

oras_client = pytest.importorskip(
    "oras.client", reason="the ORAS SDK is not installed (pip install oras)"
)


def host_of(server: RegistryServer) -> str:
    return server.url.removeprefix("http://")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oras(server: RegistryServer, account: Account) -> object:
    """An ORAS client of the pfx registry with the account's token as Basic credentials (set on
    the client, so that no docker config file is written)."""
    client = oras_client.OrasClient(hostname=host_of(server), insecure=True)
    client.auth.set_basic_auth(account.name, account.token)
    return client


def test_oras_pushes_a_concept_that_pfx_pull_verifies(
    cli: Runner,
    registry_server: RegistryServer,
    alice: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # ORAS names a layer by its path as given
    name = unique_name("teddy")
    file = tmp_path / "teddy.perfusion.safetensors"
    shutil.copy(VECTORS / "sd1-fp16.perfusion.safetensors", file)
    config = tmp_path / "config.json"
    config.write_bytes(b"{}")  # ORAS marks an artifact by its config's media type
    pushed = oras(registry_server, alice).push(
        target=f"{host_of(registry_server)}/{alice.name}/{name}:1.0",
        files=[f"{file.name}:{pf.MEDIA_TYPE}"],
        manifest_config=f"{config}:{pf.MEDIA_TYPE}",
        disable_path_validation=True,
    )
    assert pushed.status_code == 201
    assert cli("trust", "add", f"{alice.name}/*", VECTORS / "test-key.pem.pub").exit_code == 0
    out = tmp_path / "pulled.safetensors"
    pulled = cli("pull", f"{alice.name}/{name}:1.0", "-o", out, "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["trust"]["accepted"] is True
    assert out.read_bytes() == file.read_bytes()


def test_oras_pulls_what_pfx_push_sent(
    cli: Runner, registry_server: RegistryServer, alice: Account, signer: KeyPair, tmp_path: Path
) -> None:
    name = unique_name("teddy")
    file = concept_file(tmp_path / "mine.perfusion.safetensors", signer.key)
    assert cli("push", file, f"{alice.name}/{name}:2.0").exit_code == 0
    out = tmp_path / "oras"
    paths = oras(registry_server, alice).pull(
        target=f"{host_of(registry_server)}/{alice.name}/{name}:2.0", outdir=str(out)
    )
    assert [Path(path).name for path in paths] == [f"{name}.perfusion.safetensors"]
    assert Path(paths[0]).read_bytes() == file.read_bytes()


# -- skopeo and the CNCF distribution registry ------------------------------------------------


@pytest.fixture
def distribution(distribution_registry: Distribution) -> str:
    """The CNCF distribution registry (Debian's ``docker-registry``, tests/oci_registries.py) on
    a loopback port, with skopeo installed; its ``host:port``."""
    require_skopeo()
    return distribution_registry.host


def skopeo(*args: str, auth_file: Path) -> subprocess.CompletedProcess[str]:
    """skopeo with an auth file of the test's own (never the user's credentials)."""
    return subprocess.run(
        ["skopeo", *args, "--authfile", str(auth_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def auth_file(tmp_path: Path, registry_server: RegistryServer, alice: Account) -> Path:
    """A containers auth file holding the pfx registry's credentials for alice."""
    credentials = base64.b64encode(f"{alice.name}:{alice.token}".encode()).decode()
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {host_of(registry_server): {"auth": credentials}}}))
    return path


def test_skopeo_copies_concepts_both_ways_with_digests_preserved(
    cli: Runner,
    registry_server: RegistryServer,
    alice: Account,
    signer: KeyPair,
    distribution: str,
    auth_file: Path,
    tmp_path: Path,
) -> None:
    name = unique_name("teddy")
    file = concept_file(tmp_path / "t.perfusion.safetensors", signer.key)
    assert cli("push", file, f"{alice.name}/{name}:1.0").exit_code == 0
    source = f"docker://{host_of(registry_server)}/{alice.name}/{name}:1.0"
    flags = ("--src-tls-verify=false", "--dest-tls-verify=false")

    raw = skopeo("inspect", "--raw", "--tls-verify=false", source, auth_file=auth_file)
    assert raw.returncode == 0, raw.stderr
    manifest = json.loads(raw.stdout)
    assert manifest["artifactType"] == pf.MEDIA_TYPE
    assert manifest["layers"][0]["digest"] == sha256(file.read_bytes())

    mirror = f"docker://{distribution}/mirror/{name}:1.0"
    copied = skopeo("copy", *flags, source, mirror, auth_file=auth_file)
    assert copied.returncode == 0, copied.stderr
    mirrored = skopeo("inspect", "--raw", "--tls-verify=false", mirror, auth_file=auth_file)
    assert mirrored.stdout.encode() == raw.stdout.encode()  # the same manifest, byte for byte
    tags = skopeo(
        "list-tags",
        "--tls-verify=false",
        f"docker://{distribution}/mirror/{name}",
        auth_file=auth_file,
    )
    assert json.loads(tags.stdout)["Tags"] == ["1.0"]

    # back into the pfx registry under another name: validated, published, digest preserved
    back = f"docker://{host_of(registry_server)}/{alice.name}/{name}-copy:3.0"
    returned = skopeo("copy", *flags, mirror, back, auth_file=auth_file)
    assert returned.returncode == 0, returned.stderr
    again = skopeo("inspect", "--raw", "--tls-verify=false", back, auth_file=auth_file)
    assert sha256(again.stdout.encode()) == sha256(raw.stdout.encode())
    listed = skopeo(
        "list-tags",
        "--tls-verify=false",
        f"docker://{host_of(registry_server)}/{alice.name}/{name}-copy",
        auth_file=auth_file,
    )
    assert json.loads(listed.stdout)["Tags"] == ["3.0"]
    assert cli("trust", "add", f"{alice.name}/*", signer.public).exit_code == 0
    out = tmp_path / "back.safetensors"
    assert cli("pull", f"{alice.name}/{name}-copy:3.0", "-o", out).exit_code == 0
    assert out.read_bytes() == file.read_bytes()


def test_skopeo_cannot_see_a_private_concept_without_credentials(
    cli: Runner, registry_server: RegistryServer, alice: Account, tmp_path: Path
) -> None:
    name = unique_name("secret")
    file = concept_file(tmp_path / "s.perfusion.safetensors")
    assert cli("push", file, f"{alice.name}/{name}:1", "--private").exit_code == 0
    nobody = tmp_path / "nobody.json"
    nobody.write_text("{}")
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo: apt-get install -y skopeo")
    hidden = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{host_of(registry_server)}/{alice.name}/{name}:1",
        auth_file=nobody,
    )
    missing = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{host_of(registry_server)}/{alice.name}/absent-{name}:1",
        auth_file=nobody,
    )
    assert hidden.returncode == missing.returncode != 0
    assert "unauthorized" in hidden.stderr.lower() and "unauthorized" in missing.stderr.lower()
