"""``pfx train``: a concept file from a folder of pictures and a tiny local pipeline, resumed
runs, signing, and clean failures. In-process through ``pfx.cli.main`` (torch is imported once);
every run is 2–3 steps of a batch of 2 at 32×32."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runners import Run, Runner, cli  # noqa: F401 — fixtures
from training_images import draw_images

import perfusion_format as pf

CAPTIONS = ["a photo of a teddy bear", "a teapot on a table", "a red car in the garden"]
FAST = ("--steps", "2", "--batch", "2", "--accumulate", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Files:
    """What the tests train from."""

    model: Path
    images: Path
    covariance: Path  # for the model's text encoder
    foreign_covariance: Path  # for another pipeline's
    captions: Path
    key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    from tiny_pipelines import build_pipeline, save_pipeline

    import perfusion_runtime as pr

    root = tmp_path_factory.mktemp("train")
    pipe = build_pipeline("sd-1", seed=0)
    other = build_pipeline("sd-1", seed=1)
    paths = Files(
        model=save_pipeline(pipe, root / "model"),
        images=draw_images(root / "images"),
        covariance=root / "sd1.covariance.safetensors",
        foreign_covariance=root / "other.covariance.safetensors",
        captions=root / "captions.txt",
        key=root / "key",
    )
    for path, model in ((paths.covariance, pipe), (paths.foreign_covariance, other)):
        pr.save_covariance(path, pr.estimate_covariance(model, CAPTIONS), model)
    paths.captions.write_text("# captions\n" + "\n".join(CAPTIONS) + "\n")
    pf.save_private_key(pf.PrivateKey.generate(), paths.key)
    return paths


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PFX_DEBUG", raising=False)


def _train(files: Files, out: Path, *extra: object) -> list[object]:
    """Arguments of ``pfx train`` on the tiny model with fast settings."""
    return [
        "train",
        "--model",
        files.model,
        "--images",
        files.images,
        "--token",
        "<teddy>",
        "--superclass",
        "teddy",
        "-o",
        out,
        *FAST,
        *extra,
    ]


def test_train_writes_a_signed_concept_and_reports_json(
    cli: Runner, files: Files, tmp_path: Path
) -> None:
    from tiny_pipelines import build_pipeline

    import perfusion_runtime as pr

    out = tmp_path / "teddy.perfusion.safetensors"
    extra = ("--covariance", files.covariance, "--sign", files.key, "--name", "Teddy", "--json")
    result = cli(*_train(files, out, *extra))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no progress bar in JSON mode
    report = result.json()
    concept = pf.load(out)
    assert (concept.token, concept.superclass, concept.name) == ("<teddy>", "teddy", "Teddy")
    assert (report["steps"], report["resumed_from"], report["images"]) == (2, 0, 3)
    assert report["final_loss"] == pytest.approx(concept.training["final_loss"])
    assert report["signed_by"] == pf.load_private_key(files.key).public_key.key_id
    assert [s.key_id for s in concept.signatures] == [report["signed_by"]]
    assert report["content_digest"] == pf.content_digest(out.read_bytes())
    assert report["checkpoint_dir"] is None
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    pipe = build_pipeline("sd-1", seed=0)
    with pr.apply(pipe, concept):
        pipe("a photo of a <teddy>", num_inference_steps=1, height=32, width=32)


def test_text_output_and_a_resumed_run(cli: Runner, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "teddy.perfusion.safetensors"
    first = cli(*_train(files, out, "--captions", files.captions, "--checkpoint-every", "1"))
    assert first.exit_code == 0, first.stderr
    assert f"Wrote {out}" in first.stdout
    assert "final loss" in first.stdout
    checkpoints = tmp_path / "teddy.checkpoint"
    assert (checkpoints / "checkpoint.safetensors").is_file()
    more = _train(files, out, "--captions", files.captions, "--resume", "--json")
    more[more.index("--steps") + 1] = "3"
    result = cli(*more)
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert (report["steps"], report["resumed_from"]) == (3, 2)
    assert report["checkpoint_dir"] == str(checkpoints)
    assert pf.load(out).training["steps"] == 3


def test_help_shows_the_training_configs_defaults(
    cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options default to None (the config decides); --help shows the config's values."""
    import perfusion_runtime as pr

    defaults = pr.TrainingConfig(token="<t>", superclass="t")
    monkeypatch.setenv("COLUMNS", "300")  # one line per option
    result = cli("train", "--help")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for value in (defaults.steps, defaults.lr_embedding, defaults.beta, "flip", "lock-keys"):
        assert f"[default: {value}]" in text
    assert "[default: None]" not in text


def test_templates_flips_and_learned_keys(cli: Runner, files: Files, tmp_path: Path) -> None:
    """--template (repeated), --no-flip and --learn-keys reach the run: the file says so, and
    carries key targets instead of the superclass input."""
    out = tmp_path / "teddy.perfusion.safetensors"
    templates = ("--template", "a photo of a {}", "--template", "a {} on a table")
    result = cli(*_train(files, out, "--captions", files.captions, *templates, "--no-flip"))
    assert result.exit_code == 0, result.stderr
    locked = pf.load(out)
    assert (locked.training["templates"], locked.training["flip"]) == (2, False)
    assert locked.key_targets is None and locked.superclass_input is not None
    result = cli(*_train(files, out, "--captions", files.captions, "--learn-keys"))
    assert result.exit_code == 0, result.stderr
    learned = pf.load(out)
    assert (learned.training["templates"], learned.training["lock_keys"]) == (10, False)
    assert learned.superclass_input is None
    assert learned.key_targets is not None
    assert learned.key_targets.keys() == learned.value_targets.keys()


@pytest.mark.parametrize(
    ("case", "code", "exit_code"),
    [
        ("missing-images", "NO_IMAGES", 2),
        ("token-in-vocabulary", "DUPLICATE_TOKEN", 1),
        ("superclass-split", "SUPERCLASS_NOT_ONE_TOKEN", 1),
        ("foreign-covariance", "COVARIANCE_MISMATCH", 1),
        ("bad-key", "KEY_INVALID", 2),
        ("missing-out-folder", "IO_ERROR", 2),
        ("bad-dtype", "USAGE_ERROR", 2),
        ("template-without-token", "INVALID_TRAINING_CONFIG", 2),
        ("covariance-and-captions", "USAGE_ERROR", 2),
    ],
)
def test_bad_input_fails_in_one_line(
    cli: Runner, files: Files, tmp_path: Path, case: str, code: str, exit_code: int
) -> None:
    out = tmp_path / "x.perfusion.safetensors"
    arguments = _train(files, out, "--captions", files.captions, "--json")
    if case == "missing-images":
        arguments[arguments.index("--images") + 1] = tmp_path / "nowhere"
    elif case == "token-in-vocabulary":
        arguments[arguments.index("--token") + 1] = "teapot"
    elif case == "superclass-split":
        arguments[arguments.index("--superclass") + 1] = "teddybear"
    elif case == "foreign-covariance":
        arguments = _train(files, out, "--covariance", files.foreign_covariance, "--json")
    elif case == "bad-key":
        (tmp_path / "key").write_text("not a key")
        arguments += ["--sign", tmp_path / "key"]
    elif case == "missing-out-folder":
        out = tmp_path / "nowhere" / "x.perfusion.safetensors"
        arguments[arguments.index("-o") + 1] = out
    elif case == "bad-dtype":
        arguments += ["--dtype", "fp8"]
    elif case == "template-without-token":
        arguments += ["--template", "a photo of a {}", "--template", "a photo"]
    else:
        arguments += ["--covariance", files.covariance]
    result = cli(*arguments)
    if code == "USAGE_ERROR":  # typer's own usage message, then the JSON error
        assert result.exit_code == exit_code
        assert result.json()["error"]["code"] == code
    else:
        result.assert_error(code, exit_code)
        assert result.json()["error"]["code"] == code
    assert not out.exists()


def test_the_runtime_is_imported_only_when_training(tmp_path: Path) -> None:
    """``pfx train`` with a bad key fails before torch or the runtime is imported."""
    (tmp_path / "key").write_text("not a key")
    arguments = [
        "train",
        "--model",
        str(tmp_path),
        "--images",
        str(tmp_path),
        "--token",
        "<t>",
        "--superclass",
        "t",
        "-o",
        str(tmp_path / "t.perfusion.safetensors"),
        "--sign",
        str(tmp_path / "key"),
    ]
    code = (
        "import sys, pfx.cli; "
        f"assert pfx.cli.main({arguments!r}) == 2; "
        "assert not {'torch', 'diffusers', 'perfusion_runtime'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
