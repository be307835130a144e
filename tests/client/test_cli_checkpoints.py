"""``pfx covariance`` and ``pfx import`` on a tiny local pipeline: the files they write, their
JSON, and one-line refusals (an unsafe pickle, a foreign layout, the wrong family)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_runners import Runner, cli, pfx  # noqa: F401 — fixtures
from perfusion_checks import covariance_tolerance
from perfusion_sources import SUPERCLASS, make_source, save_chendaryen, save_perfusion_pytorch

import perfusion_format as pf


@dataclass(frozen=True)
class World:
    """A saved tiny sd-1 pipeline (a ``custom`` family model), its pipeline, and checkpoints."""

    model: Path
    pipe: Any
    perfusion_pytorch: Path
    chendaryen: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from tiny_pipelines import build_pipeline, save_pipeline

    root = tmp_path_factory.mktemp("checkpoints")
    pipe = build_pipeline("sd-1")
    save_pipeline(pipe, root / "model")
    return World(
        model=root / "model",
        pipe=pipe,
        perfusion_pytorch=save_perfusion_pytorch(make_source(pipe, 1, 1), root / "teddy.pt"),
        chendaryen=save_chendaryen(make_source(pipe, 2, 77), root / "teddy.ckpt"),
    )


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PFX_DEBUG", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_covariance_writes_a_file_the_runtime_accepts(
    cli: Runner, world: World, tmp_path: Path
) -> None:
    import perfusion_runtime as pr

    captions = tmp_path / "captions.txt"
    captions.write_text("# corpus\na photo of a teddy bear\n\na red car in the garden\na cat\n")
    out = tmp_path / "cov.safetensors"
    result = cli(
        "covariance",
        "--model",
        world.model,
        "--captions",
        captions,
        "-o",
        out,
        "--batch",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert (report["captions"], report["text_dim"]) == (3, 32)
    loaded = pr.load_covariance(out, world.pipe)
    assert report["text_encoder_fingerprint"] == loaded.text_encoder
    assert report["tokens"] == loaded.tokens
    lines = pr.parse_captions(captions.read_text())
    expected = pr.build_covariance(world.pipe, lines)
    # The command reloads the model and encodes 2 captions at a time, build_covariance all 3 at
    # once: float32 rounding apart (then each rounded to the file's float32), see the helper.
    tolerance = covariance_tolerance(pr.encode_prompts(world.pipe, lines)[0], stored_float32=True)
    torch.testing.assert_close(loaded.matrix, expected.float().double(), rtol=0, atol=tolerance)

    text = cli("covariance", "--model", world.model, "-o", tmp_path / "default.safetensors")
    assert text.exit_code == 0, text.stderr
    assert "Wrote" in text.stdout and "320" in text.stdout  # the bundled captions
    (tmp_path / "empty.txt").write_text("# nothing\n")
    empty = cli(
        "covariance", "--model", world.model, "--captions", tmp_path / "empty.txt", "-o", out
    )
    assert empty.exit_code == 2 and "no caption" in empty.stderr


@pytest.mark.parametrize("kind", ["perfusion_pytorch", "chendaryen"])
def test_import_writes_a_concept_that_applies(
    cli: Runner, world: World, tmp_path: Path, kind: str
) -> None:
    import perfusion_runtime as pr

    out = tmp_path / "teddy.perfusion.safetensors"
    result = cli(
        "import",
        getattr(world, kind),
        "-o",
        out,
        "--base-family",
        "custom",
        "--model",
        world.model,
        "--superclass",
        SUPERCLASS,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = result.json()
    concept = pf.load(out)
    assert report["weights_digest"] == concept.weights_digest
    assert (report["token"], report["family"], report["layers"]) == ("<teddy>", "custom", 6)
    assert report["source"] == kind.replace("_", "-")
    assert report["keys"] == ("explicit" if kind == "chendaryen" else "locked to superclass")
    with pr.apply(world.pipe, [out]):
        pr.encode_prompts(world.pipe, ["a photo of a <teddy>"])


def test_import_without_a_model_needs_a_fingerprint_and_a_known_family(
    cli: Runner, world: World, tmp_path: Path
) -> None:
    out = tmp_path / "teddy.perfusion.safetensors"
    fingerprint = ("--base-fingerprint", "sha256:" + "cd" * 32)
    cases = [
        ("custom", fingerprint, "IMPORT_NEEDS_MODEL"),  # a custom family's layers
        ("sd-1", (), "IMPORT_NEEDS_MODEL"),  # the base fingerprint
        ("sd-1", fingerprint, "FAMILY_MISMATCH"),  # the checkpoint's text width is 32
    ]
    for family, options, code in cases:
        arguments = ("-o", out, "--base-family", family, "--superclass", SUPERCLASS, *options)
        cli("import", world.chendaryen, *arguments).assert_error(code, 1)
    assert not out.exists()


class Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_import_refuses_an_unsafe_pickle_unexecuted(
    pfx: Runner, world: World, tmp_path: Path
) -> None:
    """The console script, as a user runs it: exit 1, one error line, nothing executed."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"C_inv": torch.eye(32), "target_output": Evil(marker)}, evil)
    out = tmp_path / "out.perfusion.safetensors"
    result = pfx(
        "import",
        evil,
        "-o",
        out,
        "--base-family",
        "custom",
        "--superclass",
        SUPERCLASS,
        "--model",
        world.model,
    )
    result.assert_error("IMPORT_UNSAFE", 1)
    assert not marker.exists() and not out.exists()


def test_import_refusals_are_one_line(cli: Runner, world: World, tmp_path: Path) -> None:
    foreign = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)
    out = tmp_path / "out.perfusion.safetensors"
    common = ("-o", out, "--superclass", SUPERCLASS, "--model", world.model)
    cli("import", foreign, "--base-family", "custom", *common).assert_error("IMPORT_INVALID", 1)
    wrong = cli("import", world.perfusion_pytorch, "--base-family", "sd-1", *common, "--json")
    wrong.assert_error("FAMILY_MISMATCH", 1)
    assert wrong.json()["error"]["code"] == "FAMILY_MISMATCH"
    usage = cli("import", world.perfusion_pytorch, "--base-family", "sd-3", *common)
    assert usage.exit_code == 2 and "--base-family" in usage.stderr
    assert not out.exists()
