"""``pfx`` against the real registry (fixture ``registry_server``: both backends): login, push and
pull, organizations with private catalogs, repository commands, tokens, keys and policies, what a
malformed command line gets, and the Python API (``pfx.pull``, ``pfx.push``, ``pfx.Client``).

Every test has its own configuration and cache folders (``pfx_home``) and users of its own. The
CLI runs in this process (``cli``) except where the process boundary is the point (``pfx``):
stdin, exit codes and the absence of tracebacks as a user sees them.
"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from backends import free_port
from cli_runners import (  # noqa: F401 — fixtures
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
    speak_as,
)
from concept_factory import VECTORS
from registry_server import Account, RegistryServer, scripted, unique_name

import perfusion_format as pf
import pfx as pfx_api
from pfx.errors import ClientError

pytestmark = pytest.mark.usefixtures("pfx_home")


def _config(home: Home) -> dict[str, object]:
    return tomllib.loads((home.config / "config.toml").read_text())


def _dead_registry() -> str:
    """A registry URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


# -- login, whoami, logout, settings -------------------------------------------------------------


def test_login_whoami_logout(
    cli: Runner, pfx: Runner, registry_server: RegistryServer, pfx_home: Home
) -> None:
    url = registry_server.url
    carol = registry_server.create_user("carol")
    cli("login", url, "--token", "pfx_not-a-token").assert_error("UNAUTHORIZED", 3)
    assert not (pfx_home.config / "config.toml").exists()

    logged_in = cli("login", f"{url}/", "--token", carol.token, "--json")
    config = pfx_home.config / "config.toml"
    assert logged_in.json() == {
        "registry": url,
        "user": carol.name,
        "scope": "write",
        "config": str(config),
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(pfx_home.config.stat().st_mode) == 0o700
    assert _config(pfx_home) == {"registry": url, "token": carol.token}
    whoami = {"registry": url, "name": carol.name, "scope": "write", "admin": False}
    assert cli("whoami", "--json").json() == whoami

    assert cli("logout", "--json").json() == {"logged_out": True}
    assert _config(pfx_home) == {"registry": url}  # the registry stays
    anonymous = {"registry": url, "name": None, "scope": None, "admin": False}
    assert cli("whoami", "--json").json() == anonymous
    assert cli("logout").stdout == "Not logged in.\n"

    piped = pfx("login", url, input=f"{carol.token}\n")  # the token from a pipe
    assert piped.exit_code == 0, piped.stderr
    assert f"as {carol.name} (write)" in piped.stdout
    assert _config(pfx_home) == {"registry": url, "token": carol.token}
    pfx("login", url, input="").assert_error("USAGE_ERROR", 2)  # an empty pipe: no token


def test_flags_beat_the_environment_which_beats_the_config_file(
    cli: Runner, registry_server: RegistryServer, pfx_home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = registry_server.create_user("alice"), registry_server.create_user("bob")
    dead = _dead_registry()
    pfx_home.config.mkdir()
    (pfx_home.config / "config.toml").write_text(f'registry = "{dead}"\ntoken = "{alice.token}"\n')

    def whoami(*flags: str) -> str:
        result = cli("whoami", *flags, "--json")
        assert result.exit_code == 0, result.stderr
        name: str = result.json()["name"]
        return name

    monkeypatch.setenv("PFX_REGISTRY", registry_server.url)
    assert whoami() == alice.name  # the environment's registry, the file's token
    monkeypatch.setenv("PFX_TOKEN", bob.token)
    assert whoami() == bob.name
    assert whoami("--token", alice.token) == alice.name
    monkeypatch.setenv("PFX_REGISTRY", dead)
    assert whoami("--registry", registry_server.url) == bob.name


# -- push and pull -------------------------------------------------------------------------------


def test_push_then_pull_is_byte_identical(
    cli: Runner, pfx: Runner, alice: Account, signer: KeyPair, tmp_path: Path
) -> None:
    file = concept_file(tmp_path / "teddy.perfusion.safetensors", signer.key)
    digest = pf.content_digest(file.read_bytes())
    repository = f"{alice.name}/{unique_name('teddy')}"
    pushed = push(cli, file, f"{repository}:1.0", "--public", "--tag", "stable")
    assert pushed == {
        "reference": f"{repository}:1.0",
        "digest": digest,
        "uploaded": True,
        "created": True,
        "signers": [signer.key_id],
        "previews": [],
    }
    again = push(cli, file, f"{repository}:1.0")  # the registry has the bytes: HEAD, no upload
    assert (again["digest"], again["uploaded"], again["created"]) == (digest, False, False)

    assert cli("trust", "add", f"{alice.name}/*", signer.public).exit_code == 0
    out = tmp_path / "pulled.perfusion.safetensors"
    pulled = cli("pull", f"{repository}:stable", "-o", out, "--json").json()
    assert out.read_bytes() == file.read_bytes()
    assert (pulled["digest"], pulled["path"], pulled["from_cache"]) == (digest, str(out), False)
    assert (pulled["size"], pulled["trust"]["status"]) == (len(file.read_bytes()), "trusted")

    other = concept_file(tmp_path / "other.perfusion.safetensors")
    taken = pfx("push", other, f"{repository}:1.0")  # a version names one digest forever
    taken.assert_error("VERSION_EXISTS", 3)


def test_an_invalid_file_is_refused_before_the_registry_hears_of_it(cli: Runner) -> None:
    vector = VECTORS / "invalid" / "tampered-tensor.perfusion.safetensors"
    with scripted() as server:
        result = cli("push", vector, "acme/teddy:1.0", "--registry", server.url)
    result.assert_error("SIGNATURE_INVALID", 1)
    assert server.seen == []


# -- organizations and private concepts ----------------------------------------------------------


def test_private_concepts_are_seen_by_members_only(
    cli: Runner,
    registry_server: RegistryServer,
    alice: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bob, carol = registry_server.create_user("bob"), registry_server.create_user("carol")
    private_org, public_org = unique_name("acme"), unique_name("open")
    for org in (private_org, public_org):
        assert cli("org", "create", org).exit_code == 0
    added = cli("org", "add-member", private_org, bob.name, "--json").json()
    assert added == {"org": private_org, "user": bob.name, "role": "reader"}
    assert {"name": private_org, "role": "admin"} in cli("org", "ls", "--json").json()["orgs"]
    members = cli("org", "ls", private_org, "--json").json()["members"]
    assert sorted((m["user"], m["role"]) for m in members) == sorted(
        [(alice.name, "admin"), (bob.name, "reader")]
    )
    secret = f"{private_org}/{unique_name('secret')}"
    shared = f"{public_org}/{unique_name('shared')}"
    push(cli, concept_file(tmp_path / "secret.safetensors"), f"{secret}:1.0")  # private: new
    push(cli, concept_file(tmp_path / "shared.safetensors"), f"{shared}:1.0", "--public")

    def found(org: str) -> list[str]:
        page = cli("search", "--ns", org, "--json").json()
        return [hit["reference"] for hit in page["results"]]

    def listed(org: str) -> list[tuple[str, bool]]:
        concepts = cli("ls", org, "--json").json()["concepts"]
        return [(concept["name"], concept["private"]) for concept in concepts]

    secret_name, shared_name = secret.split("/")[1], shared.split("/")[1]
    speak_as(monkeypatch, bob)
    assert cli("pull", f"{secret}:1.0", "--allow-unsigned").exit_code == 0
    assert cli("show", secret, "--json").json()["private"] is True
    assert found(private_org) == [f"{secret}:1.0"]
    assert listed(private_org) == [(secret_name, True)]

    for outsider in (carol, None):  # None: anonymous
        speak_as(monkeypatch, outsider)
        cli("pull", f"{secret}:1.0", "--allow-unsigned").assert_error("NOT_FOUND", 3)
        cli("show", secret).assert_error("NOT_FOUND", 3)
        assert found(private_org) == []
        assert listed(private_org) == []
        assert found(public_org) == [f"{shared}:1.0"]
        assert listed(public_org) == [(shared_name, False)]
        assert cli("pull", f"{shared}:1.0", "--allow-unsigned").exit_code == 0

    speak_as(monkeypatch, alice)
    assert cli("org", "remove-member", private_org, bob.name).exit_code == 0
    speak_as(monkeypatch, bob)
    cli("show", secret).assert_error("NOT_FOUND", 3)
    cli("org", "ls", private_org).assert_error("NOT_FOUND", 3)


# -- show, tag, yank, rm -------------------------------------------------------------------------


def test_show_tag_yank_and_rm(
    cli: Runner, pfx: Runner, alice: Account, signer: KeyPair, tmp_path: Path
) -> None:
    repository = f"{alice.name}/{unique_name('teddy')}"
    first = push(
        cli, concept_file(tmp_path / "1.safetensors"), f"{repository}:1.0", "--sign", signer.private
    )
    second = push(cli, concept_file(tmp_path / "2.safetensors"), f"{repository}:2.0")
    tagged = cli("tag", f"{repository}:1.0", "stable", "--json").json()
    assert tagged == {"tag": "stable", "version": "1.0"}

    info = cli("show", repository, "--json").json()
    assert (info["private"], info["tags"]) == (True, {"latest": "2.0", "stable": "1.0"})
    versions = [(v["version"], v["digest"], v["signers"], v["yanked"]) for v in info["versions"]]
    assert versions == [
        ("1.0", first["digest"], [signer.key_id], False),
        ("2.0", second["digest"], [], False),
    ]
    shown = cli("show", repository).stdout
    assert "latest -> 2.0, stable -> 1.0" in shown

    assert cli("yank", f"{repository}:1.0", "--json").json() == {"version": "1.0", "yanked": True}
    cli("pull", f"{repository}:stable", "--allow-unsigned").assert_error("NOT_FOUND", 3)
    cli("pull", f"{repository}:1.0", "--allow-unsigned").assert_error("NOT_FOUND", 3)
    pinned = cli("pull", f"{repository}@{first['digest']}", "--allow-unsigned", "--json")
    assert pinned.json()["digest"] == first["digest"]  # a pinned digest keeps working
    assert cli("show", repository, "--json").json()["versions"][0]["yanked"] is True
    assert not cli("yank", f"{repository}:1.0", "--undo", "--json").json()["yanked"]
    assert cli("pull", f"{repository}:stable", "--allow-unsigned").exit_code == 0

    declined = pfx("rm", repository, input="n\n")  # asks first
    assert declined.exit_code != 0 and "Traceback" not in declined.stderr
    assert cli("show", repository).exit_code == 0
    assert cli("rm", repository, "--yes", "--json").json() == {"deleted": repository}
    cli("show", repository).assert_error("NOT_FOUND", 3)


# -- tokens, keys, policies ----------------------------------------------------------------------


def test_tokens_are_created_listed_and_revoked(cli: Runner, alice: Account) -> None:
    created = cli("token", "create", "ci", "--days", "7", "--json").json()
    assert (created["name"], created["scope"]) == ("ci", "read")
    whoami = cli("whoami", "--token", created["token"], "--json").json()
    assert (whoami["name"], whoami["scope"]) == (alice.name, "read")
    tokens = {token["id"]: token for token in cli("token", "ls", "--json").json()["tokens"]}
    assert "token" not in tokens[created["id"]]  # secrets are shown once, never listed
    assert tokens[created["id"]]["expires_at"] is not None
    assert not tokens[created["id"]]["revoked"]

    assert cli("token", "revoke", created["id"], "--json").json() == {"revoked": created["id"]}
    tokens = {token["id"]: token for token in cli("token", "ls", "--json").json()["tokens"]}
    assert tokens[created["id"]]["revoked"]
    cli("whoami", "--token", created["token"]).assert_error("UNAUTHORIZED", 3)


def test_a_namespace_that_requires_signatures(
    cli: Runner, alice: Account, signer: KeyPair, tmp_path: Path
) -> None:
    namespace = alice.name
    added = cli("key", "add", namespace, signer.public, "--name", "laptop", "--json").json()
    assert (added["key_id"], added["name"]) == (signer.key_id, "laptop")
    keys = cli("key", "ls", namespace, "--json").json()["keys"]
    assert [(key["key_id"], key["name"]) for key in keys] == [(signer.key_id, "laptop")]
    policy = {"namespace": namespace, "require_signatures": True, "protected_tags": False}
    assert cli("policy", namespace, "--require-signatures", "--json").json() == policy
    assert cli("policy", namespace, "--json").json() == policy

    file = concept_file(tmp_path / "teddy.safetensors")
    reference = f"{namespace}/{unique_name('teddy')}:1.0"
    cli("push", file, reference).assert_error("SIGNATURE_REQUIRED", 3)
    stranger = key_pair(tmp_path / "stranger")
    cli("push", file, reference, "--sign", stranger.private).assert_error("SIGNATURE_REQUIRED", 3)
    before = file.read_bytes()
    assert push(cli, file, reference, "--sign", signer.private)["signers"] == [signer.key_id]
    assert file.read_bytes() == before  # signed for the push, not on disk


# -- malformed command lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("pull", "Not A Ref"),
        ("push", "teddy.safetensors", "acme/teddy"),  # no version
        ("push", "teddy.safetensors", "acme/teddy@sha256:" + "0" * 64),
        ("pull", "acme/teddy@sha256:zz"),
        ("show", "acme"),
        ("tag", "acme/teddy", "stable"),
        ("yank", "acme/Teddy:1.0"),
    ],
    ids=" ".join,
)
def test_malformed_references(
    cli: Runner, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFX_REGISTRY", _dead_registry())  # never reached
    cli(*args).assert_error("REFERENCE_INVALID", 2)


@pytest.mark.parametrize(
    "args",
    [("pull", "acme/teddy:1.0"), ("push", "teddy.safetensors", "acme/teddy:1"), ("whoami",)],
    ids=" ".join,
)
def test_no_registry_configured(cli: Runner, args: tuple[str, ...]) -> None:
    result = cli(*args)
    result.assert_error("USAGE_ERROR", 2)
    assert "pfx login URL" in result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("pull", "acme/teddy:1.0", "--bogus"), "No such option: --bogus"),
        (("cache", "prune", "--older-than", "3x"), "expected a number and d, h or m"),
        (("push", "teddy.safetensors"), "Missing argument"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_usage_errors_exit_2_without_a_traceback(
    cli: Runner, args: tuple[str, ...], complaint: str
) -> None:
    """Shown as typer shows them (usage, then the complaint), and as JSON with ``--json``."""
    result = cli(*args)
    assert result.exit_code == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    as_json = cli(*args, "--json")
    assert as_json.exit_code == 2
    assert as_json.json()["error"]["code"] == "USAGE_ERROR"


# -- the Python API ------------------------------------------------------------------------------


def test_python_api_push_pull_and_client(
    registry_server: RegistryServer, alice: Account, pfx_home: Home, tmp_path: Path
) -> None:
    file = concept_file(tmp_path / "teddy.safetensors")
    reference = f"{alice.name}/{unique_name('teddy')}:1.0"
    pushed = pfx_api.push(file, reference)
    assert pushed.uploaded and pushed.digest == pf.content_digest(file.read_bytes())

    with pytest.raises(ClientError) as refused:
        pfx_api.pull(reference)
    assert refused.value.code == "NOT_SIGNED"
    assert cache_files(pfx_home.cache) == []

    path = pfx_api.pull(reference, allow_unsigned=True)
    assert path.is_relative_to(pfx_home.cache)
    assert pf.content_digest(path.read_bytes()) == pushed.digest
    with pfx_api.Client() as client:  # $PFX_REGISTRY and $PFX_TOKEN
        assert client.url == registry_server.url
        assert client.whoami().name == alice.name
