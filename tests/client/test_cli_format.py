"""``pfx keygen / sign / verify / inspect``: results, exit codes and one-line errors.

Error paths run the real console script (``.venv/bin/pfx``) in a subprocess, so exit codes and the
absence of tracebacks are what a user sees; the rest calls ``pfx.cli.main`` in-process.
"""

from __future__ import annotations

import json
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from cli_runners import PFX, Run, Runner, cli, pfx  # noqa: F401 — fixtures
from concept_factory import VECTORS, ConceptFactory

import perfusion_format as pf

MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
_INVALID_MANIFEST = VECTORS / "invalid" / "manifest.json"
INVALID = json.loads(_INVALID_MANIFEST.read_text())["vectors"] if _INVALID_MANIFEST.exists() else []
TEST_PUBLIC_KEY = VECTORS / MANIFEST["test_key"]["public_key"]


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys go to a temporary config folder; no debug tracebacks."""
    monkeypatch.setenv("PFX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("PFX_DEBUG", raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs on disk: ``signer`` / ``signer.pub`` and ``other`` / ``other.pub``."""
    paths = {}
    for name in ("signer", "other"):
        private_path = tmp_path / "keys" / name
        private_path.parent.mkdir(exist_ok=True)
        paths[f"{name}.pub"] = pf.save_private_key(pf.PrivateKey.generate(), private_path)
        paths[name] = private_path
    return paths


@pytest.fixture
def concept_file(tmp_path: Path, make_concept: ConceptFactory) -> Path:
    """An unsigned, valid concept file."""
    path = tmp_path / "teddy.perfusion.safetensors"
    pf.save(make_concept(), path)
    return path


@pytest.fixture
def signed_file(concept_file: Path, keys: dict[str, Path]) -> Path:
    """The concept file, signed by ``keys["signer"]``."""
    concept = pf.load(concept_file)
    pf.save(pf.sign(concept, pf.load_private_key(keys["signer"])), concept_file)
    return concept_file


def _flip_first_data_byte(path: Path) -> None:
    """Flip the lowest bit of the first tensor byte (a low mantissa bit: values stay finite)."""
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    data[8 + header_length] ^= 0x01
    path.write_bytes(bytes(data))


def _key_id(path: Path) -> str:
    return pf.load_public_key(path).key_id


# -- the app as a whole --------------------------------------------------------------------------


def test_help_lists_the_commands_and_the_exit_codes(pfx: Runner) -> None:
    result = pfx("--help")
    assert result.exit_code == 0
    for command in ("keygen", "sign", "verify", "inspect"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout


def test_version(cli: Runner) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == "pfx 0.1.0"


_ASSERT_LIGHT = "assert not {'torch', 'diffusers', 'fastapi', 'boto3'} & set(sys.modules)"


def test_importing_the_cli_stays_light() -> None:
    subprocess.run([sys.executable, "-c", f"import pfx.cli, sys; {_ASSERT_LIGHT}"], check=True)


def test_commands_stay_light() -> None:
    vector = str(VECTORS / MANIFEST["files"][0]["file"])
    commands = f"assert main(['inspect', {vector!r}]) == main(['verify', {vector!r}]) == 0"
    code = f"import sys; from pfx.cli import main; {commands}; {_ASSERT_LIGHT}"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "args", [("frobnicate",), ("verify",), ("inspect", "--bogus", "x"), ()], ids=str
)
def test_usage_errors_exit_2_without_a_traceback(pfx: Runner, args: tuple[str, ...]) -> None:
    result = pfx(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_usage_error_in_json_mode_is_also_json(pfx: Runner) -> None:
    result = pfx("verify", "--json")
    assert result.exit_code == 2
    assert result.json()["error"]["code"] == "USAGE_ERROR"


def test_debug_variable_shows_the_traceback(pfx: Runner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.perfusion.safetensors"
    assert "Traceback" in pfx("inspect", missing, env={"PFX_DEBUG": "1"}).stderr
    pfx("inspect", missing).assert_error("IO_ERROR", 2)


# -- keygen --------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_0600_and_its_public_key(cli: Runner, tmp_path: Path) -> None:
    private_path = tmp_path / "new" / "deeper" / "id"
    result = cli("keygen", "--out", private_path, "--json")
    assert result.exit_code == 0, result.stderr
    public_path = private_path.with_name("id.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_path.parent.stat().st_mode) == 0o700
    key = pf.load_private_key(private_path)
    assert pf.load_public_key(public_path) == key.public_key
    assert result.json() == {
        "key_id": key.public_key.key_id,
        "private_key_path": str(private_path),
        "public_key_path": str(public_path),
    }


def test_keygen_defaults_to_the_config_dir(cli: Runner, tmp_path: Path) -> None:
    result = cli("keygen")
    assert result.exit_code == 0, result.stderr
    private_path = tmp_path / "config" / "keys" / "pfx_ed25519"
    key_id = pf.load_private_key(private_path).public_key.key_id
    assert key_id in result.stdout
    assert str(private_path) in result.stdout
    assert stat.S_IMODE((tmp_path / "config").stat().st_mode) == 0o700


def test_keygen_refuses_to_overwrite_without_force(pfx: Runner, keys: dict[str, Path]) -> None:
    before = keys["signer"].read_bytes(), keys["signer.pub"].read_bytes()
    pfx("keygen", "--out", keys["signer"]).assert_error("KEY_EXISTS", 2)
    keys["signer"].unlink()  # a lone public key blocks too
    pfx("keygen", "--out", keys["signer"]).assert_error("KEY_EXISTS", 2)
    assert keys["signer.pub"].read_bytes() == before[1]

    result = pfx("keygen", "--out", keys["signer"], "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert keys["signer.pub"].read_bytes() != before[1]
    assert result.json()["key_id"] == _key_id(keys["signer"])


# -- sign and verify -----------------------------------------------------------------------------


def test_sign_then_verify(cli: Runner, concept_file: Path, keys: dict[str, Path]) -> None:
    result = cli("sign", concept_file, "--key", keys["signer"], "--json")
    assert result.exit_code == 0, result.stderr
    signed = result.json()
    data = concept_file.read_bytes()
    concept = pf.loads(data)
    assert signed["key_id"] == _key_id(keys["signer"])
    assert signed["changed"] is True
    assert signed["signatures"] == 1
    assert signed["content_digest"] == pf.content_digest(data)
    assert signed["weights_digest"] == concept.weights_digest

    verified = cli("verify", concept_file, "--json")
    assert verified.exit_code == 0, verified.stderr
    assert verified.json()["signers"] == [signed["key_id"]]


@pytest.mark.parametrize("key_name", ["signer.pub", "signer"])
def test_verify_with_the_signers_key_passes(
    cli: Runner, signed_file: Path, keys: dict[str, Path], key_name: str
) -> None:
    result = cli("verify", signed_file, "--key", keys[key_name])
    assert result.exit_code == 0, result.stderr
    assert "OK" in result.stdout
    assert _key_id(keys["signer"]) in result.stdout


def test_signing_twice_with_one_key_is_a_no_op(
    cli: Runner, signed_file: Path, keys: dict[str, Path]
) -> None:
    before = signed_file.read_bytes()
    result = cli("sign", signed_file, "-k", keys["signer"])
    assert result.exit_code == 0, result.stderr
    assert "already signed" in result.stdout
    assert signed_file.read_bytes() == before


def test_a_second_signer_is_added(cli: Runner, signed_file: Path, keys: dict[str, Path]) -> None:
    result = cli("sign", signed_file, "-k", keys["other"], "--json")
    assert result.json()["signatures"] == 2
    both = cli("verify", signed_file, "-k", keys["signer.pub"], "-k", keys["other.pub"], "--json")
    assert both.exit_code == 0, both.stderr
    assert both.json()["required"] == [_key_id(keys["signer"]), _key_id(keys["other"])]


def test_sign_uses_the_keygen_key_by_default(cli: Runner, concept_file: Path) -> None:
    key_id = cli("keygen", "--json").json()["key_id"]
    result = cli("sign", concept_file, "--json")
    assert result.exit_code == 0, result.stderr
    assert pf.load(concept_file).signatures[0].key_id == key_id


def test_verify_unsigned_file_fails(pfx: Runner, concept_file: Path) -> None:
    pfx("verify", concept_file).assert_error("NOT_SIGNED", 1)


def test_verify_with_another_key_fails(
    pfx: Runner, signed_file: Path, keys: dict[str, Path]
) -> None:
    pfx("verify", signed_file, "--key", keys["other.pub"]).assert_error("SIGNER_MISSING", 1)
    result = pfx("verify", signed_file, "--key", keys["signer.pub"], "--key", keys["other.pub"])
    result.assert_error("SIGNER_MISSING", 1)
    assert _key_id(keys["other"]) in result.stderr


@pytest.mark.parametrize("command", ["verify", "inspect", "sign"])
def test_a_tampered_tensor_byte_breaks_the_signature(
    pfx: Runner, signed_file: Path, keys: dict[str, Path], command: str
) -> None:
    _flip_first_data_byte(signed_file)
    tampered = signed_file.read_bytes()
    extra = ["--key", keys["signer"]] if command == "sign" else []
    pfx(command, signed_file, *extra).assert_error("SIGNATURE_INVALID", 1)
    assert signed_file.read_bytes() == tampered  # a failed sign leaves the file as it was


def test_a_failed_sign_leaves_the_file_byte_identical(
    pfx: Runner, concept_file: Path, tmp_path: Path
) -> None:
    before = concept_file.read_bytes()
    garbage_key = tmp_path / "garbage.pem"
    garbage_key.write_text("not a key\n")
    pfx("sign", concept_file, "--key", garbage_key).assert_error("KEY_INVALID", 2)
    pfx("sign", concept_file, "--key", tmp_path / "absent").assert_error("IO_ERROR", 2)
    assert concept_file.read_bytes() == before
    invalid = tmp_path / "invalid.perfusion.safetensors"
    invalid.write_bytes(before[:-10])
    pfx("sign", invalid, "--key", garbage_key).assert_error("TRUNCATED", 1)
    assert invalid.read_bytes() == before[:-10]
    assert sorted(path.name for path in concept_file.parent.iterdir() if path.is_file()) == [
        "garbage.pem",
        "invalid.perfusion.safetensors",
        "teddy.perfusion.safetensors",
    ]  # no temporary file left behind


@pytest.mark.parametrize("command", ["verify", "inspect", "sign"])
def test_a_missing_file_is_an_io_error(pfx: Runner, tmp_path: Path, command: str) -> None:
    result = pfx(command, tmp_path / "absent.perfusion.safetensors")
    result.assert_error("IO_ERROR", 2)
    assert "absent.perfusion.safetensors: No such file or directory" in result.stderr


def test_a_garbage_key_file_is_key_invalid(pfx: Runner, signed_file: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    result = pfx("verify", signed_file, "--key", garbage)
    result.assert_error("KEY_INVALID", 2)
    assert str(garbage) in result.stderr


def test_errors_in_json_mode_are_also_json_on_stdout(pfx: Runner, concept_file: Path) -> None:
    result = pfx("verify", concept_file, "--json")
    result.assert_error("NOT_SIGNED", 1)
    error = result.json()["error"]
    assert error["code"] == "NOT_SIGNED"
    assert error["message"] in result.stderr


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_json_reports_everything(
    cli: Runner, signed_file: Path, keys: dict[str, Path]
) -> None:
    result = cli("inspect", signed_file, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    data = signed_file.read_bytes()
    concept = pf.loads(data)
    assert report["size"] == len(data)
    assert report["content_digest"] == pf.content_digest(data)
    assert report["weights_digest"] == concept.weights_digest
    assert report["signers"] == [_key_id(keys["signer"])]
    assert report["family"] == "sd-1"
    assert report["dtype"] == concept.dtype
    assert report["metadata"] == dict(concept.metadata)
    assert len(report["tensors"]) == len(concept.tensors)
    by_name = {row["name"]: row for row in report["tensors"]}
    tensor = concept.tensors["target_input"]
    assert by_name["target_input"] == {
        "name": "target_input",
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "bytes": tensor.array.nbytes,
    }
    sizes = pf.size_report(concept)
    assert report["size_report"]["total"] == sizes.total == len(data)
    assert report["size_report"]["value_targets"] == sizes.value_targets


def test_inspect_text_summarises_the_layers_unless_asked(cli: Runner, signed_file: Path) -> None:
    summary = cli("inspect", signed_file)
    assert summary.exit_code == 0, summary.stderr
    assert "value_target.* (16 layers)" in summary.stdout
    assert "down_blocks.0.attentions.0" not in summary.stdout
    assert pf.content_digest(signed_file.read_bytes()) in summary.stdout

    full = cli("inspect", signed_file, "--tensors")
    assert full.stdout.count("value_target.") >= 16


def test_inspect_shows_hostile_metadata_inert(
    cli: Runner, tmp_path: Path, make_concept: ConceptFactory
) -> None:
    path = tmp_path / "hostile.perfusion.safetensors"
    note = "\x1b[2J\x1b]8;;http://evil\x07[bold red]fake[/] \u202eevil"
    pf.save(make_concept(extra_metadata={"x.note": note}), path)
    result = cli("inspect", path)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "\u202e" not in result.stdout
    assert "\\x1b[2J" in result.stdout
    assert "[bold red]fake[/]" in result.stdout
    assert cli("inspect", path, "--json").json()["metadata"]["x.note"] == note


# -- the published test vectors ------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda entry: entry["file"])
def test_valid_vectors_verify_and_inspect(pfx: Runner, entry: dict[str, Any]) -> None:
    path = VECTORS / entry["file"]
    verified = pfx("verify", path, "--key", TEST_PUBLIC_KEY)
    assert verified.exit_code == 0, verified.stderr
    report = pfx("inspect", path, "--json").json()
    assert report["content_digest"] == entry["content_digest"]
    assert report["weights_digest"] == entry["weights_digest"]
    assert report["signers"] == entry["signers"]
    assert (report["family"], report["dtype"], report["size"]) == (
        entry["family"],
        entry["dtype"],
        entry["size"],
    )


@pytest.mark.parametrize("entry", INVALID, ids=lambda entry: entry["file"])
def test_invalid_vectors_fail_with_their_code(pfx: Runner, entry: dict[str, Any]) -> None:
    path = VECTORS / "invalid" / entry["file"]
    code = entry["code"]
    exit_code = 2 if code == "KEY_INVALID" else 1
    inspected = pfx("inspect", path, "--json")
    if entry["check"] == "load":
        inspected.assert_error(code, exit_code)
        assert inspected.json() == {"error": {"code": code, "message": ANY}}
        pfx("verify", path).assert_error(code, exit_code)
    else:
        assert entry["check"] == "verify"
        assert inspected.exit_code == 0, inspected.stderr
        key_args = [arg for key in entry["keys"] for arg in ("--key", VECTORS / key)]
        pfx("verify", path, *key_args).assert_error(code, exit_code)
