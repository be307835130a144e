"""``pfx push`` / ``pfx pull`` / ``pfx login`` with ``oci://`` references, against real OCI
registries: the CNCF distribution registry (Debian's ``docker-registry``, with and without
htpasswd authentication; tests/oci_registries.py), skopeo reading what pfx pushed, and the pfx
registry's own /v2/ (Bearer tokens; on S3, blob downloads redirected to storage)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_runners import (  # noqa: F401 — fixtures
    Home,
    KeyPair,
    Run,
    Runner,
    cache_files,
    cli,
    concept_file,
    key_pair,
    pfx,
    pfx_home,
    signer,
)
from oci_registries import PASSWORD, USER, Distribution, require_skopeo
from registry_server import Account, RegistryServer, Reply, scripted, unique_name

import perfusion_format as pf
import pfx as pfx_api
from pfx.errors import ClientError, ErrorCode
from pfx.oci_auth import Challenge, parse_challenge
from pfx.oci_reference import parse_oci_reference

pytestmark = pytest.mark.usefixtures("pfx_home", "docker_config")


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$DOCKER_CONFIG`` of the test's own (empty): the user's docker credentials never reach
    a test. Write ``config.json`` into it to give some."""
    folder = tmp_path / "docker"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repository() -> str:
    """A repository name no other test uses, two components deep."""
    return f"{unique_name('acme')}/teddy"


def canonical_manifest(file: Path, file_name: str) -> bytes:
    """The manifest every pfx tool writes for ``file`` named ``file_name``."""
    data = file.read_bytes()
    layer = pf.oci.concept_layer(pf.loads(data), sha256(data), len(data), file_name)
    return pf.oci.concept_manifest(layer)


def ok(run: Run) -> Any:
    """A run that must have succeeded: its JSON when it printed some (``--json``)."""
    assert run.exit_code == 0, (run.stdout, run.stderr)
    return run.json() if run.stdout.startswith("{") else None


# -- push and pull round trips ------------------------------------------------------------------


def test_push_then_pull_by_tag_and_by_manifest_digest(
    cli: Runner, distribution_registry: Distribution, signer: KeyPair, tmp_path: Path
) -> None:
    repo = repository()
    file = concept_file(tmp_path / "mine.perfusion.safetensors", signer.key)
    target = f"oci://{distribution_registry.host}/{repo}:1.0"

    pushed = ok(cli("push", file, target, "--plain-http", "--json"))
    manifest = canonical_manifest(file, "teddy.perfusion.safetensors")
    assert pushed["manifest_digest"] == sha256(manifest)
    assert pushed["digest"] == sha256(file.read_bytes())
    assert pushed["uploaded"] is True
    assert pushed["signers"] == [signer.key_id]
    again = ok(cli("push", file, target, "--plain-http", "--json"))
    assert again["uploaded"] is False and again["manifest_digest"] == pushed["manifest_digest"]

    assert cli("trust", "add", f"{distribution_registry.host}/{repo}", signer.public).exit_code == 0
    by_tag = tmp_path / "by-tag.safetensors"
    pulled = ok(cli("pull", target, "--plain-http", "-o", by_tag, "--json"))
    assert by_tag.read_bytes() == file.read_bytes()
    assert pulled["manifest_digest"] == pushed["manifest_digest"]
    assert pulled["trust"]["status"] == "trusted"

    pinned = f"oci://{distribution_registry.host}/{repo}@{pushed['manifest_digest']}"
    by_digest = tmp_path / "by-digest.safetensors"
    assert (
        ok(cli("pull", pinned, "--plain-http", "-o", by_digest, "--json"))["digest"]
        == (pushed["digest"])
    )
    assert by_digest.read_bytes() == file.read_bytes()


def test_a_missing_tag_means_latest_and_the_python_api_pulls(
    cli: Runner, distribution_registry: Distribution, tmp_path: Path, pfx_home: Home
) -> None:
    repo = repository()
    file = concept_file(tmp_path / "c.perfusion.safetensors")
    ok(cli("push", file, f"oci://{distribution_registry.host}/{repo}", "--plain-http", "--json"))
    path = pfx_api.pull(
        f"oci://{distribution_registry.host}/{repo}:latest", plain_http=True, allow_unsigned=True
    )
    assert path == pfx_home.cache / "blobs" / "sha256" / sha256(file.read_bytes())[7:]
    assert path.read_bytes() == file.read_bytes()
    with pytest.raises(ClientError) as refused:  # the trust policy holds from Python too
        pfx_api.pull(f"oci://{distribution_registry.host}/{repo}", plain_http=True)
    assert refused.value.code == pf.ErrorCode.NOT_SIGNED


def test_skopeo_lists_the_tag_and_reads_the_canonical_manifest(
    cli: Runner, distribution_registry: Distribution, tmp_path: Path
) -> None:
    skopeo = require_skopeo()
    repo = repository()
    file = concept_file(tmp_path / "s.perfusion.safetensors")
    ok(cli("push", file, f"oci://{distribution_registry.host}/{repo}:v1", "--plain-http", "--json"))
    source = f"docker://{distribution_registry.host}/{repo}"
    auth_file = tmp_path / "auth.json"
    auth_file.write_text("{}")
    flags = ("--tls-verify=false", "--authfile", str(auth_file))
    tags = subprocess.run([skopeo, "list-tags", *flags, source], capture_output=True, check=True)
    assert json.loads(tags.stdout)["Tags"] == ["v1"]
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", *flags, f"{source}:v1"], capture_output=True, check=True
    )
    assert raw.stdout == canonical_manifest(file, "teddy.perfusion.safetensors")


# -- trust --------------------------------------------------------------------------------------


def test_an_unsigned_concept_is_refused_unless_allowed_and_nothing_is_kept(
    cli: Runner, distribution_registry: Distribution, tmp_path: Path, pfx_home: Home
) -> None:
    target = f"oci://{distribution_registry.host}/{repository()}:1"
    ok(cli("push", concept_file(tmp_path / "u.perfusion.safetensors"), target, "--plain-http"))
    cli("pull", target, "--plain-http").assert_error(pf.ErrorCode.NOT_SIGNED, 1)
    assert cache_files(pfx_home.cache) == []
    allowed = ok(cli("pull", target, "--plain-http", "--allow-unsigned", "--json"))
    assert allowed["trust"]["status"] == "unsigned"


def test_a_signed_concept_is_trusted_by_a_host_and_repository_pattern(
    cli: Runner, distribution_registry: Distribution, signer: KeyPair, tmp_path: Path
) -> None:
    host = distribution_registry.host
    prefix = unique_name("acme")
    target = f"oci://{host}/{prefix}/teddy:1"
    file = concept_file(tmp_path / "s.perfusion.safetensors")
    ok(cli("push", file, target, "--sign", signer.private, "--plain-http", "--json"))
    cli("pull", target, "--plain-http").assert_error(ErrorCode.UNTRUSTED, 1)
    # the same repository on another port, or one level deeper, is another name
    other_port = f"{host.rsplit(':', 1)[0]}:1/{prefix}/*"
    for pattern in (other_port, f"{host}/{prefix}/*/*", f"{prefix}/*"):
        assert cli("trust", "add", pattern, signer.public).exit_code == 0
    cli("pull", target, "--plain-http").assert_error(ErrorCode.UNTRUSTED, 1)
    assert cli("trust", "add", f"{host}/{prefix}/*", signer.public).exit_code == 0
    pulled = ok(cli("pull", target, "--plain-http", "--json"))
    assert pulled["trust"]["trusted_by"] == [signer.key_id]
    assert file.read_bytes() != Path(str(pulled["path"])).read_bytes()  # pushed signed


# -- refusals that keep nothing -----------------------------------------------------------------


def test_a_tampered_layer_is_a_digest_mismatch_and_nothing_is_cached(
    cli: Runner, distribution_registry: Distribution, tmp_path: Path, pfx_home: Home
) -> None:
    target = f"oci://{distribution_registry.host}/{repository()}:1"
    file = concept_file(tmp_path / "t.perfusion.safetensors")
    pushed = ok(cli("push", file, target, "--plain-http", "--json"))
    stored = distribution_registry.blob_file(str(pushed["digest"]))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    stored.write_bytes(bytes(data))
    cli("pull", target, "--plain-http", "--allow-unsigned").assert_error(
        ErrorCode.DIGEST_MISMATCH, 1
    )
    assert cache_files(pfx_home.cache) == []


def _put_blob(client: httpx.Client, repo: str, data: bytes) -> dict[str, object]:
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = httpx.URL(started.headers["location"]).copy_merge_params({"digest": sha256(data)})
    assert client.put(location, content=data).status_code == 201
    return {"digest": sha256(data), "size": len(data)}


def _put_manifest(client: httpx.Client, repo: str, tag: str, document: dict[str, object]) -> None:
    body = json.dumps(document).encode()
    put = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=body,
        headers={"Content-Type": str(document["mediaType"])},
    )
    assert put.status_code == 201, put.text


def test_a_container_image_and_an_index_are_not_concepts(
    cli: Runner, distribution_registry: Distribution, pfx_home: Home
) -> None:
    repo = repository()
    with httpx.Client(base_url=distribution_registry.url) as client:
        config = _put_blob(client, repo, b'{"architecture":"amd64","os":"linux"}')
        layer = _put_blob(client, repo, b"not really a tar")
        image = {
            "schemaVersion": 2,
            "mediaType": pf.oci.MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
        }
        _put_manifest(client, repo, "image", image)
        image_bytes = json.dumps(image).encode()
        index = {
            "schemaVersion": 2,
            "mediaType": pf.oci.INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    "mediaType": pf.oci.MANIFEST_MEDIA_TYPE,
                    "digest": sha256(image_bytes),
                    "size": len(image_bytes),
                }
            ],
        }
        _put_manifest(client, repo, "index", index)
    for tag, said in (("image", "application/vnd.oci.image.config.v1+json"), ("index", "index")):
        refused = cli("pull", f"oci://{distribution_registry.host}/{repo}:{tag}", "--plain-http")
        refused.assert_error(ErrorCode.NOT_A_CONCEPT, 1)
        assert said in refused.stderr
    assert cache_files(pfx_home.cache) == []


# -- credentials --------------------------------------------------------------------------------


def test_login_checks_saves_and_logout_forgets_credentials(
    cli: Runner,
    pfx: Runner,
    distribution_registry_with_auth: Distribution,
    tmp_path: Path,
    pfx_home: Home,
) -> None:
    host = distribution_registry_with_auth.host
    target = f"oci://{host}/{repository()}:1"
    file = concept_file(tmp_path / "a.perfusion.safetensors")
    anonymous = cli("push", file, target, "--plain-http")
    anonymous.assert_error("UNAUTHORIZED", 3)
    assert f"pfx login oci://{host}" in anonymous.stderr

    wrong = pfx(
        "login", f"oci://{host}", "-u", USER, "--password-stdin", "--plain-http", input="nope\n"
    )
    wrong.assert_error("UNAUTHORIZED", 3)
    assert "nope" not in wrong.stderr and not (pfx_home.config / "config.toml").exists()

    logged_in = pfx(
        "login", f"oci://{host}", "-u", USER, "--password-stdin", "--plain-http", "--json",
        input=f"{PASSWORD}\n",
    )  # fmt: skip
    assert logged_in.exit_code == 0, logged_in.stderr
    assert logged_in.json()["checked"] is True and PASSWORD not in logged_in.stdout
    config = pfx_home.config / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert ok(cli("push", file, target, "--plain-http", "--json"))["uploaded"] is True
    out = tmp_path / "out.safetensors"
    ok(cli("pull", target, "--plain-http", "--allow-unsigned", "-o", out, "--json"))
    assert out.read_bytes() == file.read_bytes()

    assert ok(cli("logout", f"oci://{host}", "--json"))["logged_out"] is True
    assert PASSWORD not in config.read_text()
    cli("pull", f"{target}", "--plain-http", "--allow-unsigned").assert_error("UNAUTHORIZED", 3)


def test_login_to_a_registry_that_asks_for_nothing_says_it_checked_nothing(
    cli: Runner, distribution_registry: Distribution
) -> None:
    url = f"oci://{distribution_registry.host}"
    cli("login", url, "--token", "t", "--plain-http").assert_error(ErrorCode.USAGE_ERROR, 2)
    logged_in = ok(cli("login", url, "-u", "me", "--token", "t", "--plain-http", "--json"))
    assert logged_in["checked"] is False and logged_in["username"] == "me"
    assert ok(cli("logout", url, "--json"))["logged_out"] is True
    assert ok(cli("logout", url, "--json"))["logged_out"] is False


@pytest.mark.parametrize("form", ["auth", "username-password"])
def test_docker_config_credentials_work_without_login(
    cli: Runner,
    distribution_registry_with_auth: Distribution,
    docker_config: Path,
    tmp_path: Path,
    form: str,
) -> None:
    host = distribution_registry_with_auth.host
    if form == "auth":
        entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        key = host
    else:
        entry = {"username": USER, "password": PASSWORD}
        key = f"http://{host}/v2/"  # keys written as URLs count too
    (docker_config / "config.json").write_text(json.dumps({"auths": {key: entry}}))
    target = f"oci://{host}/{repository()}:1"
    file = concept_file(tmp_path / "d.perfusion.safetensors")
    ok(cli("push", file, target, "--plain-http", "--json"))
    pulled = ok(cli("pull", target, "--plain-http", "--allow-unsigned", "--json"))
    assert Path(str(pulled["path"])).read_bytes() == file.read_bytes()

    entry = {"auth": base64.b64encode(f"{USER}:wrong".encode()).decode()}
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: entry}}))
    refused = cli("pull", f"oci://{host}/{repository()}:1", "--plain-http")
    refused.assert_error("UNAUTHORIZED", 3)
    assert "refused the credentials in" in refused.stderr and "wrong" not in refused.stderr


def test_a_credential_helper_is_named_not_run(
    cli: Runner, distribution_registry_with_auth: Distribution, docker_config: Path
) -> None:
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "desktop"}))
    refused = cli("pull", f"oci://{distribution_registry_with_auth.host}/x/y:1", "--plain-http")
    refused.assert_error("UNAUTHORIZED", 3)
    assert "credential helper, which pfx does not run" in refused.stderr


def test_credentials_never_follow_a_redirect_to_another_host(
    docker_config: Path, tmp_path: Path
) -> None:
    """A blob download redirected to storage elsewhere goes there without the Authorization
    header the registry asked for."""
    file = concept_file(tmp_path / "r.perfusion.safetensors")
    data = file.read_bytes()
    manifest = canonical_manifest(file, "teddy.perfusion.safetensors")
    with scripted(Reply(200, data)) as storage:
        challenge = Reply(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
        served = Reply(200, manifest, {"Content-Type": pf.oci.MANIFEST_MEDIA_TYPE})
        moved = Reply(307, headers={"Location": f"{storage.url}/bucket/blob?X-Signature=abc"})
        with scripted(challenge, served, moved) as registry:
            host = registry.url.removeprefix("http://")
            auth = base64.b64encode(b"someone:s3cret").decode()
            (docker_config / "config.json").write_text(
                json.dumps({"auths": {host: {"auth": auth}}})
            )
            path = pfx_api.pull(f"oci://{host}/acme/teddy:1", plain_http=True, allow_unsigned=True)
    assert path.read_bytes() == data
    assert "Authorization" not in registry.seen[0].headers  # anonymous first
    assert registry.seen[1].headers["Authorization"] == f"Basic {auth}"
    assert registry.seen[2].path == f"/v2/acme/teddy/blobs/{sha256(data)}"  # by its digest
    assert registry.seen[2].headers["Authorization"] == f"Basic {auth}"
    assert storage.seen[0].path == "/bucket/blob?X-Signature=abc"
    assert "Authorization" not in storage.seen[0].headers


# -- the cache and offline pulls ----------------------------------------------------------------


def test_offline_pulls_resolve_tags_and_manifest_digests_from_the_cache(
    cli: Runner,
    distribution_registry: Distribution,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = repository()
    target = f"oci://{distribution_registry.host}/{repo}:stable"
    first = concept_file(tmp_path / "1.perfusion.safetensors")
    pushed = ok(cli("push", first, target, "--plain-http", "--json"))
    ok(cli("pull", target, "--plain-http", "--allow-unsigned", "--json"))
    ok(cli("push", concept_file(tmp_path / "2.perfusion.safetensors"), target, "--plain-http"))

    monkeypatch.setenv("PFX_OFFLINE", "1")
    offline = ok(cli("pull", target, "--allow-unsigned", "--json"))
    assert offline["digest"] == pushed["digest"]  # the tag as pulled, not as moved since
    assert offline["from_cache"] is True and offline["manifest_digest"] is None
    pinned = f"oci://{distribution_registry.host}/{repo}@{pushed['manifest_digest']}"
    assert ok(cli("pull", pinned, "--allow-unsigned", "--json"))["digest"] == pushed["digest"]
    cli("pull", f"oci://{distribution_registry.host}/{repo}:other").assert_error(
        ErrorCode.NOT_CACHED, 2
    )
    listed = ok(cli("cache", "ls", "--json"))
    labels = [ref for entry in listed["entries"] for ref in entry["refs"]]
    slug = distribution_registry.host.replace(":", "_")
    assert f"oci/{slug}/{repo}:stable" in labels
    assert f"oci/{slug}/{repo}@{pushed['manifest_digest']}" in labels
    assert ok(cli("cache", "prune", "--json"))["blobs"] == []  # OCI refs keep their concept
    monkeypatch.delenv("PFX_OFFLINE")
    online = ok(cli("pull", target, "--plain-http", "--allow-unsigned", "--json"))
    assert online["digest"] != pushed["digest"]  # online, the tag is resolved again


# -- the pfx registry's own /v2/ ----------------------------------------------------------------


def test_the_pfx_registry_speaks_the_same_manifests_with_bearer_tokens(
    cli: Runner,
    pfx: Runner,
    registry_server: RegistryServer,
    signer: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice: Account = registry_server.create_user("alice", scope="admin")
    host = registry_server.url.removeprefix("http://")
    login = pfx(
        "login", f"oci://{host}", "-u", alice.name, "--password-stdin", "--plain-http", "--json",
        input=f"{alice.token}\n",
    )  # fmt: skip
    assert login.exit_code == 0, login.stderr
    assert cli("trust", "add", f"{alice.name}/*", signer.public).exit_code == 0
    assert cli("trust", "add", f"{host}/{alice.name}/*", signer.public).exit_code == 0

    # pushed through /v2/, pulled through /v1/
    name = unique_name("teddy")
    file = concept_file(tmp_path / "v2.perfusion.safetensors", signer.key)
    target = f"oci://{host}/{alice.name}/{name}:1.0"
    pushed = ok(cli("push", file, target, "--plain-http", "--json"))
    assert pushed["manifest_digest"] == sha256(
        canonical_manifest(file, f"{name}.perfusion.safetensors")
    )
    monkeypatch.setenv("PFX_REGISTRY", registry_server.url)
    monkeypatch.setenv("PFX_TOKEN", alice.token)
    out = tmp_path / "v1.safetensors"
    ok(cli("pull", f"{alice.name}/{name}:1.0", "-o", out, "--json"))
    assert out.read_bytes() == file.read_bytes()

    # pushed through /v1/, pulled through /v2/: the registry's generated manifest is pfx's
    other = unique_name("teddy")
    second = concept_file(tmp_path / "v1.perfusion.safetensors", signer.key)
    ok(cli("push", second, f"{alice.name}/{other}:2.0", "--json"))
    monkeypatch.delenv("PFX_TOKEN")
    pulled = ok(cli("pull", f"oci://{host}/{alice.name}/{other}:2.0", "--plain-http", "--json"))
    expected = canonical_manifest(second, f"{other}.perfusion.safetensors")
    assert pulled["manifest_digest"] == sha256(expected)
    assert Path(str(pulled["path"])).read_bytes() == second.read_bytes()


# -- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "oci://127.0.0.1:5000",
        "oci://127.0.0.1:5000/",
        "oci://127.0.0.1:99999/acme/teddy",
        "oci://127.0.0.1:5000/Acme/teddy",
        "oci://127.0.0.1:5000/acme//teddy",
        "oci://127.0.0.1:5000/acme/teddy-/x",
        "oci://127.0.0.1:5000/acme/teddy:",
        "oci://127.0.0.1:5000/acme/teddy@sha256:abc",
        "oci://[::1]:5000/acme/teddy",
        "oci://user:pw@host/acme/teddy",
        "oci:///acme/teddy",
    ],
)
def test_malformed_references_are_one_line_errors(cli: Runner, text: str) -> None:
    cli("pull", text).assert_error(ErrorCode.REFERENCE_INVALID, 2)


def test_references_parse_as_the_distribution_spec_spells_them() -> None:
    digest = "sha256:" + "ab" * 32
    parsed = parse_oci_reference(f"oci://Registry.Example.com:8443/a/b.c/d__e--f:V1.0_x@{digest}")
    assert (parsed.host, parsed.repository) == ("registry.example.com:8443", "a/b.c/d__e--f")
    assert (parsed.tag, parsed.digest, parsed.target) == ("V1.0_x", digest, digest)
    assert parsed.file_name == "d__e--f.perfusion.safetensors"
    bare = parse_oci_reference("oci://localhost/teddy")
    assert (bare.target, bare.name, str(bare)) == (
        "latest",
        "localhost/teddy",
        "oci://localhost/teddy:latest",
    )
    with pytest.raises(ClientError, match="push to a tag"):
        parse_oci_reference(f"oci://localhost/teddy@{digest}", for_push=True)


def test_challenges_are_read_as_registries_write_them() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert bearer == Challenge(
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": "registry.example",
            "scope": "repository:a/b:pull,push",
            "error": "insufficient_scope",
        },
    )
    assert parse_challenge('Basic realm="a \\"quoted\\" realm"') == Challenge(
        "basic", {"realm": 'a "quoted" realm'}
    )
    assert parse_challenge("") is None and parse_challenge(None) is None


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (("push", "FILE", "oci://127.0.0.1:1/a/b:1", "--public"), "--public/--private"),
        (
            ("push", "FILE", "oci://127.0.0.1:1/a/b:1", "--tag", "x", "--label", "y"),
            "--tag, --label",
        ),
        (("push", "FILE", "oci://127.0.0.1:1/a/b:1", "--registry", "http://x"), "--registry"),
        (("push", "FILE", "acme/teddy:1", "--plain-http"), "--plain-http"),
        (("pull", "oci://127.0.0.1:1/a/b:1", "--token", "t"), "--token"),
        (("pull", "acme/teddy", "--plain-http"), "--plain-http"),
        (("login", "http://127.0.0.1:1", "--username", "u", "--token", "t"), "--username"),
        (("logout", "http://127.0.0.1:1"), "oci://HOST"),
    ],
)
def test_options_of_the_other_kind_of_registry_are_refused(
    cli: Runner, tmp_path: Path, arguments: tuple[str, ...], named: str
) -> None:
    file = concept_file(tmp_path / "f.perfusion.safetensors")
    result = cli(*(str(file) if argument == "FILE" else argument for argument in arguments))
    result.assert_error(ErrorCode.USAGE_ERROR, 2)
    assert named in result.stderr


def test_an_https_registry_that_speaks_http_is_not_retried_and_names_plain_http(
    cli: Runner, distribution_registry: Distribution
) -> None:
    refused = cli("pull", f"oci://{distribution_registry.host}/acme/teddy:1")
    refused.assert_error(ErrorCode.REGISTRY_UNREACHABLE, 3)
    assert "after 1 attempts" in refused.stderr and "--plain-http" in refused.stderr


def test_bad_oci_entries_in_the_config_file_are_refused(cli: Runner, pfx_home: Home) -> None:
    pfx_home.config.mkdir(parents=True)
    (pfx_home.config / "config.toml").write_text('[oci."127.0.0.1:5000"]\nusername = "u"\n')
    result = cli("logout", "oci://127.0.0.1:5000")
    result.assert_error(ErrorCode.CONFIG_INVALID, 2)
    assert "must hold exactly a username and a password" in result.stderr
