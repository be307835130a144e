"""``pfx generate``: a PNG from a tiny local pipeline with concepts applied, and clean failures.

The tiny sd-1-shaped pipeline is a ``custom`` family model (its layers are not SD 1.5's). Happy
paths call ``pfx.cli.main`` in-process (torch is imported once); a few error paths run the real
console script, so exit codes, the one-line error and the absence of tracebacks are what a user
sees. Every run uses 2 steps at 32×32.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_runners import PFX, Run, Runner, alice, cli, pfx, pfx_home, push  # noqa: F401 — fixtures
from concept_factory import VECTORS
from oci_registries import Distribution
from PIL import Image
from registry_server import Account

import perfusion_format as pf

SD1_VECTOR = VECTORS / "sd1-fp16.perfusion.safetensors"
CAPTIONS = ["a photo of a teddy bear", "a teapot on a table", "a red car in the garden"]
FAST = ("--steps", "2", "--size", "32x32")


@dataclass(frozen=True)
class Files:
    """What the tests generate from: the saved pipeline and concept files for it."""

    model: Path
    teddy: Path  # signed
    teapot: Path
    foreign: Path  # "<teddy>" made for a pipeline with other weights (seed 1)
    empty: Path  # a folder without model_index.json


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    from tiny_pipelines import build_pipeline, save_pipeline

    import perfusion_runtime as pr

    root = tmp_path_factory.mktemp("generate")
    pipe = build_pipeline("sd-1", seed=0)
    save_pipeline(pipe, root / "model")
    covariance = pr.build_covariance(pipe, CAPTIONS)
    teddy = pr.new_concept(pipe, token="<teddy>", superclass="teddy", covariance=covariance)
    teapot = pr.new_concept(pipe, token="<teapot>", superclass="teapot", covariance=covariance)
    other = build_pipeline("sd-1", seed=1)
    foreign = pr.new_concept(
        other, token="<teddy>", superclass="teddy", covariance=pr.build_covariance(other, CAPTIONS)
    )
    paths = Files(
        model=root / "model",
        teddy=root / "teddy.perfusion.safetensors",
        teapot=root / "teapot.perfusion.safetensors",
        foreign=root / "foreign.perfusion.safetensors",
        empty=root / "empty",
    )
    pf.save(pf.sign(teddy, pf.PrivateKey.generate()), paths.teddy)
    pf.save(teapot, paths.teapot)
    pf.save(foreign, paths.foreign)
    paths.empty.mkdir()
    return paths


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """In-process runs on one thread: a tiny UNet on several threads of a busy CPU (xdist,
    other jobs) is many times slower than on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PFX_DEBUG", raising=False)


def _generate(files: Files, out: Path, *extra: object, concepts: tuple[Path, ...] = ()) -> list:
    """Arguments of ``pfx generate`` with the tiny model, fast settings and ``concepts``."""
    arguments: list[object] = ["generate", "--model", files.model, "--out", out, *FAST]
    for concept in concepts or (files.teddy,):
        arguments += ["--concept", concept]
    return [*arguments, "--prompt", "a photo of a <teddy>", *extra]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _flip_first_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    data[8 + header_length] ^= 0x01
    path.write_bytes(bytes(data))


# -- images ----------------------------------------------------------------------------------


def test_one_concept_writes_a_png_and_reports_json(
    cli: Runner, files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "teddy.png"
    result = cli(*_generate(files, out, "--seed", 7, "--json"))
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (32, 32))
    report = result.json()
    assert report["output"] == str(out)
    assert report["concepts"] == {
        "<teddy>": {"beta": pytest.approx(0.7), "tau": pytest.approx(0.15)}
    }
    assert (report["seed"], report["steps"]) == (7, 2)
    assert (report["width"], report["height"]) == (32, 32)
    assert report["seconds"] >= 0
    assert [p.name for p in tmp_path.iterdir()] == ["teddy.png"]  # no temporary file left


def test_text_output_names_the_file_and_the_gate(cli: Runner, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "teddy.png"
    result = cli(*_generate(files, out, "--beta", 0.5))
    assert result.exit_code == 0, result.stderr
    assert f"Wrote {out} (32×32)" in result.stdout
    assert "β=0.5 τ=0.15" in result.stdout


def test_same_arguments_give_the_same_bytes_and_settings_change_pixels(
    cli: Runner, files: Files, tmp_path: Path
) -> None:
    outs = {name: tmp_path / f"{name}.png" for name in ("a", "b", "seed", "beta")}
    assert cli(*_generate(files, outs["a"])).exit_code == 0
    assert cli(*_generate(files, outs["b"])).exit_code == 0
    assert cli(*_generate(files, outs["seed"], "--seed", 1)).exit_code == 0
    result = cli(*_generate(files, outs["beta"], "--beta", 0.2, "--json"))
    assert result.exit_code == 0, result.stderr
    assert result.json()["concepts"]["<teddy>"] == {
        "beta": pytest.approx(0.2),
        "tau": pytest.approx(0.15),
    }
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    assert not np.array_equal(_pixels(outs["a"]), _pixels(outs["seed"]))
    assert not np.array_equal(_pixels(outs["a"]), _pixels(outs["beta"]))


def test_two_concepts_in_one_prompt(cli: Runner, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "both.png"
    arguments = _generate(files, out, "--json", concepts=(files.teddy, files.teapot))
    arguments[arguments.index("--prompt") + 1] = "a <teddy> sitting in a <teapot>"
    result = cli(*arguments)
    assert result.exit_code == 0, result.stderr
    assert set(result.json()["concepts"]) == {"<teddy>", "<teapot>"}
    assert _pixels(out).shape == (32, 32, 3)


# -- failures --------------------------------------------------------------------------------


def test_base_mismatch_is_refused_unless_allowed(cli: Runner, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "foreign.png"
    cli(*_generate(files, out, concepts=(files.foreign,))).assert_error("BASE_MISMATCH", 1)
    assert not out.exists()
    with pytest.warns(UserWarning, match="was made for base"):
        result = cli(*_generate(files, out, "--allow-base-mismatch", concepts=(files.foreign,)))
    assert result.exit_code == 0, result.stderr
    assert out.is_file()


def test_a_degenerate_gate_is_refused(cli: Runner, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    cli(*_generate(files, out, "--tau", 0)).assert_error("INVALID_GATE", 1)
    assert not out.exists()


def test_a_folder_without_model_index_is_not_a_model(
    cli: Runner, files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "x.png"
    arguments = _generate(files, out)
    arguments[arguments.index("--model") + 1] = files.empty
    result = cli(*arguments)
    result.assert_error("MODEL_INVALID", 2)
    assert "model_index.json" in result.stderr
    assert not out.exists()


def test_a_concept_of_another_family_fails_in_one_line(
    pfx: Runner, files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "x.png"
    result = pfx(*_generate(files, out, concepts=(SD1_VECTOR,)))
    result.assert_error("FAMILY_MISMATCH", 1)
    assert "sd-1" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "code", "exit_code"),
    [
        ("missing-concept", "IO_ERROR", 2),
        ("missing-folder", "IO_ERROR", 2),
        ("tampered", "SIGNATURE_INVALID", 1),
    ],
)
def test_file_errors_fail_before_the_model_loads(
    pfx: Runner, files: Files, tmp_path: Path, case: str, code: str, exit_code: int
) -> None:
    out = tmp_path / "x.png"
    concept = files.teddy
    if case == "missing-concept":
        concept = tmp_path / "missing.perfusion.safetensors"
    elif case == "missing-folder":
        out = tmp_path / "nowhere" / "x.png"
    else:
        concept = tmp_path / "tampered.perfusion.safetensors"
        shutil.copyfile(files.teddy, concept)
        _flip_first_data_byte(concept)
    pfx(*_generate(files, out, concepts=(concept,))).assert_error(code, exit_code)
    assert not out.exists()


def test_a_size_not_a_multiple_of_8_is_a_usage_error(
    pfx: Runner, files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "x.png"
    arguments = _generate(files, out)
    arguments[arguments.index("--size") + 1] = "33x32"
    result = pfx(*arguments)
    assert result.exit_code == 2, result.stderr
    assert "multiples of 8" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


# -- imports ---------------------------------------------------------------------------------


def test_the_runtime_is_imported_only_when_generating(tmp_path: Path) -> None:
    """``import pfx.cli`` stays light, and so does a generate that fails on its concept file."""
    missing = tmp_path / "missing.perfusion.safetensors"
    arguments = ["generate", "--model", str(tmp_path), "-c", str(missing), "-p", "x", "-o"]
    code = (
        "import sys; import pfx.cli; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; "
        f"assert pfx.cli.main({[*arguments, str(tmp_path / 'x.png')]!r}) == 2; "
        "assert not {'torch', 'diffusers', 'perfusion_runtime'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


# -- registry references -------------------------------------------------------------------


def test_a_registry_reference_is_pulled_verified_and_applied_like_its_file(
    cli: Runner, files: Files, tmp_path: Path, alice: Account
) -> None:
    reference = f"{alice.name}/teddy:1.0"
    push(cli, files.teddy, reference)  # signed by a key nobody here trusts
    by_file, by_reference = tmp_path / "file.png", tmp_path / "reference.png"
    assert cli(*_generate(files, by_file)).exit_code == 0

    refused = cli(*_generate(files, by_reference, concepts=(reference,)))  # type: ignore[arg-type]
    refused.assert_error("UNTRUSTED", 1)
    assert not by_reference.exists()

    pulled = cli(*_generate(files, by_reference, "--allow-unsigned", concepts=(reference,)))  # type: ignore[arg-type]
    assert pulled.exit_code == 0, pulled.stderr
    assert by_reference.read_bytes() == by_file.read_bytes()


def test_an_oci_reference_is_pulled_verified_and_applied_like_its_file(
    cli: Runner, files: Files, tmp_path: Path, distribution_registry: Distribution
) -> None:
    reference = f"oci://{distribution_registry.host}/gen/teddy:1.0"
    assert cli("push", files.teddy, reference, "--plain-http").exit_code == 0
    by_file, by_reference = tmp_path / "file.png", tmp_path / "oci.png"
    assert cli(*_generate(files, by_file)).exit_code == 0
    refused = cli(*_generate(files, by_reference, "--plain-http", concepts=(reference,)))  # type: ignore[arg-type]
    refused.assert_error("UNTRUSTED", 1)
    pulled = cli(
        *_generate(files, by_reference, "--plain-http", "--allow-unsigned", concepts=(reference,))  # type: ignore[arg-type]
    )
    assert pulled.exit_code == 0, pulled.stderr
    assert by_reference.read_bytes() == by_file.read_bytes()
