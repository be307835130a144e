"""``pfx pull`` end to end: the trust policy, the cache's integrity (corrupted blobs,
``pfx cache``), offline use, concurrent pulls, and registries that misbehave.

Against the real registry (fixture ``registry_server``: both backends) wherever it can play its
part; a scripted stand-in (``registry_server.scripted``) plays a registry that serves bytes other
than the ones it resolved, or dies half-way through a download — neither can be produced through
the real one, which validates what it stores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from backends import free_port
from cli_runners import (  # noqa: F401 — fixtures
    PFX,
    Home,
    KeyPair,
    Runner,
    alice,
    cache_files,
    cli,
    concept_file,
    key_pair,
    pfx,
    pfx_home,
    push,
    signer,
)
from concept_factory import VECTORS
from registry_server import Account, RegistryServer, Reply, relay, scripted, unique_name

import perfusion_format as pf
from pfx.cache import registry_slug

pytestmark = pytest.mark.usefixtures("pfx_home")


def _publish(cli: Runner, account: Account, tmp_path: Path, key: KeyPair | None = None) -> str:
    """Push a new concept (signed by ``key``) as ``<account>/<new name>:1.0``; the reference."""
    name = unique_name("teddy")
    file = concept_file(tmp_path / f"{name}.perfusion.safetensors", key.key if key else None)
    reference = f"{account.name}/{name}:1.0"
    push(cli, file, reference)
    return reference


def _pull(cli: Runner, *args: object) -> dict[str, Any]:
    """``pfx pull ARGS… --json``, which must succeed: its JSON."""
    result = cli("pull", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def _cached(registry: str, reference: str, digest: str) -> list[str]:
    """What the cache holds after pulling ``reference`` (``ns/name:ref``) alone: its blob and
    its ref."""
    repository, ref = reference.split(":")
    blob = f"blobs/sha256/{digest.removeprefix('sha256:')}"
    return [blob, f"refs/{registry_slug(registry)}/{repository}/{ref}"]


# -- the trust policy ----------------------------------------------------------------------------


def test_a_trusted_signer_is_accepted_until_revoked(
    cli: Runner, alice: Account, signer: KeyPair, tmp_path: Path
) -> None:
    reference = _publish(cli, alice, tmp_path, signer)
    assert cli("trust", "add", f"{alice.name}/*", signer.public).exit_code == 0
    trust = _pull(cli, reference)["trust"]
    assert trust == {
        "status": "trusted",
        "signers": [signer.key_id],
        "trusted_by": [signer.key_id],
        "accepted": True,
        "message": f"{reference.split(':')[0]} is signed by {signer.key_id}, trusted for it",
    }

    assert cli("trust", "rm", signer.key_id).exit_code == 0
    cli("pull", reference).assert_error("UNTRUSTED", 1)  # cached, and judged again


def test_untrusted_and_unsigned_concepts_are_refused_and_not_cached(
    cli: Runner, alice: Account, signer: KeyPair, pfx_home: Home, tmp_path: Path
) -> None:
    stranger = key_pair(tmp_path / "stranger")
    untrusted = _publish(cli, alice, tmp_path, stranger)
    unsigned = _publish(cli, alice, tmp_path)
    assert cli("trust", "add", f"{alice.name}/*", signer.public).exit_code == 0
    refused = cli("pull", untrusted)
    refused.assert_error("UNTRUSTED", 1)
    assert f"signed by {stranger.key_id}, no key trusted for it" in refused.stderr
    assert cli("pull", unsigned).stderr.startswith("error[NOT_SIGNED]: ")
    assert cache_files(pfx_home.cache) == []

    allowed = _pull(cli, unsigned, "--allow-unsigned")["trust"]
    assert (allowed["status"], allowed["accepted"]) == ("unsigned", True)

    assert cli("trust", "level", "warn").exit_code == 0
    warned = cli("pull", untrusted)
    assert warned.exit_code == 0, warned.stderr
    message = " ".join(warned.stdout.split())  # rich folds long lines
    assert f"{stranger.key_id}, no key trusted for it; accepted (trust level warn)" in message


def test_an_unsigned_concept_is_refused_with_exit_1(
    cli: Runner, alice: Account, tmp_path: Path
) -> None:
    """Exit 1 is "not trusted" (pfx --help), as for UNTRUSTED: NOT_SIGNED is no usage error."""
    cli("pull", _publish(cli, alice, tmp_path)).assert_error("NOT_SIGNED", 1)


# -- the cache's integrity -----------------------------------------------------------------------


def test_a_corrupted_cached_blob_is_fetched_again(
    cli: Runner, registry_server: RegistryServer, alice: Account, pfx_home: Home, tmp_path: Path
) -> None:
    reference = _publish(cli, alice, tmp_path)
    first = _pull(cli, reference, "--allow-unsigned")
    blob = Path(first["path"])
    genuine = blob.read_bytes()
    blob.write_bytes(genuine[:-1] + bytes([genuine[-1] ^ 1]))

    second = _pull(cli, reference, "--allow-unsigned")
    assert (second["path"], second["from_cache"]) == (str(blob), False)
    assert blob.read_bytes() == genuine
    digest = first["digest"]
    assert cache_files(pfx_home.cache) == _cached(registry_server.url, reference, digest)


def test_cache_ls_verify_and_prune(
    cli: Runner, registry_server: RegistryServer, alice: Account, pfx_home: Home, tmp_path: Path
) -> None:
    references = [_publish(cli, alice, tmp_path) for _ in range(2)]
    pulled = [_pull(cli, reference, "--allow-unsigned") for reference in references]
    digests = [result["digest"] for result in pulled]
    slug = registry_slug(registry_server.url)
    listing = cli("cache", "ls", "--json").json()
    assert {entry["digest"]: entry["refs"] for entry in listing["entries"]} == {
        digest: [f"{slug}/{reference}"]
        for digest, reference in zip(digests, references, strict=True)
    }
    assert listing["size"] == sum(result["size"] for result in pulled)
    assert cli("cache", "verify", "--json").json() == {"checked": 2, "corrupt": []}

    Path(pulled[0]["path"]).write_bytes(b"not what it was")
    verified = cli("cache", "verify")
    assert verified.exit_code == 1
    assert f"corrupt: {digests[0]}" in verified.stdout
    pruned = cli("cache", "prune", "--json").json()
    assert (pruned["blobs"], pruned["refs"]) == ([digests[0]], [f"{slug}/{references[0]}"])
    assert cli("cache", "verify", "--json").json() == {"checked": 1, "corrupt": []}
    assert cli("cache", "prune", "--older-than", "1d", "--json").json()["blobs"] == []
    expected = _cached(registry_server.url, references[1], digests[1])
    assert cache_files(pfx_home.cache) == expected


# -- offline -------------------------------------------------------------------------------------


def test_offline_pulls_come_from_the_cache(
    cli: Runner,
    registry_server: RegistryServer,
    alice: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = _publish(cli, alice, tmp_path)
    with relay(registry_server.url) as registry:
        monkeypatch.setenv("PFX_REGISTRY", registry)
        digest = _pull(cli, reference, "--allow-unsigned")["digest"]
    # the registry is down from now on: its port refuses connections
    monkeypatch.setenv("PFX_OFFLINE", "1")
    offline = _pull(cli, reference, "--allow-unsigned")
    assert (offline["digest"], offline["from_cache"]) == (digest, True)
    repository = reference.split(":")[0]
    cli("pull", f"{repository}:2.0").assert_error("NOT_CACHED", 2)
    cli("pull", f"{repository}@sha256:{'0' * 64}").assert_error("NOT_CACHED", 2)

    monkeypatch.delenv("PFX_OFFLINE")
    monkeypatch.setenv("PFX_REGISTRY", f"http://127.0.0.1:{free_port()}")
    pinned = _pull(cli, f"{repository}@{digest}", "--allow-unsigned")  # never asks the network
    assert (pinned["digest"], pinned["from_cache"]) == (digest, True)


# -- several processes ---------------------------------------------------------------------------


def test_concurrent_pulls_of_one_concept(
    cli: Runner, registry_server: RegistryServer, alice: Account, pfx_home: Home, tmp_path: Path
) -> None:
    reference = _publish(cli, alice, tmp_path)
    command = [str(PFX), "pull", reference, "--allow-unsigned", "--json"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, outputs
    digests = {json.loads(stdout)["digest"] for stdout, _ in outputs}
    assert len(digests) == 1
    (digest,) = digests
    assert cache_files(pfx_home.cache) == _cached(registry_server.url, reference, digest)
    assert cli("cache", "verify", "--json").json() == {"checked": 1, "corrupt": []}


# -- registries that misbehave -------------------------------------------------------------------


def _resolved(data: bytes) -> Reply:
    """A registry's answer resolving ``fake/teddy:1.0`` to the digest of ``data``."""
    version = {
        "reference": "fake/teddy:1.0",
        "version": "1.0",
        "digest": pf.content_digest(data),
        "media_type": pf.MEDIA_TYPE,
        "size": len(data),
        "created_at": "2026-11-25T12:00:00Z",
        "yanked": False,
        "token": "<teddy>",
        "superclass": "teddy",
        "title": "Teddy",
        "family": "sd-1",
        "dtype": "F16",
        "format_version": "1.0",
        "base_fingerprint": "sha256:" + "0" * 64,
        "weights_digest": "sha256:" + "0" * 64,
        "signers": [],
    }
    return Reply(200, json.dumps(version).encode(), {"Content-Type": "application/json"})


def test_bytes_other_than_the_resolved_digest_are_refused(
    cli: Runner, pfx_home: Home, tmp_path: Path
) -> None:
    asked = concept_file(tmp_path / "asked.safetensors").read_bytes()
    sent = concept_file(tmp_path / "sent.safetensors").read_bytes()  # valid, but not those
    out = tmp_path / "out.safetensors"
    with scripted(_resolved(asked), Reply(200, sent)) as server:
        result = cli(
            "pull", "fake/teddy:1.0", "--registry", server.url, "--allow-unsigned", "-o", out
        )
    result.assert_error("DIGEST_MISMATCH", 1)
    digest = pf.content_digest(asked)
    paths = [request.path for request in server.seen]
    assert paths == [
        "/v1/concepts/fake/teddy/versions/1.0",
        f"/v1/concepts/fake/teddy/versions/{digest}/file",
    ]
    assert cache_files(pfx_home.cache) == []
    assert list(tmp_path.glob("*out*")) == []


def test_a_concept_whose_signature_does_not_hold_is_refused(cli: Runner, pfx_home: Home) -> None:
    """Bytes altered after signing, served under their own digest (only a registry whose storage
    was altered behind its back serves them): refused even with --allow-unsigned and trust level
    warn, with exit 1 as every refusal of the trust policy."""
    data = (VECTORS / "invalid" / "tampered-tensor.perfusion.safetensors").read_bytes()
    assert cli("trust", "level", "warn").exit_code == 0
    with scripted(_resolved(data), Reply(200, data)) as server:
        result = cli("pull", "fake/teddy:1.0", "--registry", server.url, "--allow-unsigned")
    result.assert_error("SIGNATURE_INVALID", 1)
    assert cache_files(pfx_home.cache) == []


def test_a_registry_that_dies_mid_download_leaves_nothing(
    pfx: Runner, pfx_home: Home, tmp_path: Path
) -> None:
    data = concept_file(tmp_path / "teddy.safetensors").read_bytes()
    half = Reply(200, data, cut=len(data) // 2)  # Content-Length says all, half comes
    out = tmp_path / "out.safetensors"
    with scripted(_resolved(data), half) as server:
        result = pfx("pull", "fake/teddy:1.0", "--registry", server.url, "-o", out)
    result.assert_error("REGISTRY_UNREACHABLE", 3)
    assert "after 5 attempts" in result.stderr
    assert len(server.seen) == 1 + 5  # the resolve, then the download and its 4 retries
    assert cache_files(pfx_home.cache) == []
    assert list(tmp_path.glob("*out*")) == []


# -- what pulling imports ------------------------------------------------------------------------

_HEAVY = ("torch", "diffusers", "transformers", "fastapi", "boto3")


def test_pulling_never_imports_the_heavy_packages(
    pfx: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of them, imported, kills the process (exit 99): ``pfx --help``, ``import pfx`` and a
    whole ``pfx pull`` stand without them."""
    blockers = tmp_path / "blockers"
    for name in _HEAVY:
        (blockers / name).mkdir(parents=True)
        (blockers / name / "__init__.py").write_text(
            "import os, sys\nsys.stderr.write(f'imported {__name__}\\n')\nos._exit(99)\n"
        )
    monkeypatch.setenv("PYTHONPATH", str(blockers))
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=False)
    assert check.returncode == 99  # the blockers work

    assert pfx("--help").exit_code == 0
    code = "import pfx, pfx.cli; import sys; print(sorted(set(sys.modules) & set(sys.argv[1:])))"
    imported = subprocess.run(
        [sys.executable, "-c", code, *_HEAVY], capture_output=True, text=True, check=True
    )
    assert imported.stdout == "[]\n"
    data = concept_file(tmp_path / "teddy.safetensors").read_bytes()
    with scripted(_resolved(data), Reply(200, data)) as server:
        pulled = pfx("pull", "fake/teddy:1.0", "--registry", server.url, "--allow-unsigned")
    assert pulled.exit_code == 0, pulled.stderr
